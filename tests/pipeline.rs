//! `degre pipeline --logs` on logs that `degre simulate` did not make (other feature sizes,
//! no simulator), publishing into a repository a running server watches: the server picks
//! the trained generator up and reranks with it.
#![cfg(feature = "offline")]

mod common;

use std::process::Command;

use common::TestServer;
use degre::api::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Hand-rolled logs: 3 dense context features and no categorical one; candidates with 5
/// dense features and one categorical (vocab 6). Users click items whose first feature is
/// high, less often further down the list.
fn user_logs(requests: usize) -> String {
    let mut rng = StdRng::seed_from_u64(17);
    let mut lines = Vec::new();
    for r in 0..requests {
        let n = rng.random_range(6..=9);
        let candidates: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let dense: Vec<f32> = (0..5)
                    .map(|_| rng.random_range(-1.0f32..1.0) * 10.0)
                    .collect();
                serde_json::json!({
                    "item_id": format!("p{r}-{i}"),
                    "dense": dense,
                    "categorical": [rng.random_range(0..6)],
                    "ranking_score": dense[0] + rng.random_range(-5.0f32..5.0),
                })
            })
            .collect();
        let exposed: Vec<usize> = (0..4).collect();
        let clicks: Vec<bool> = exposed
            .iter()
            .map(|&i| {
                let x = candidates[i]["dense"][0].as_f64().unwrap();
                rng.random_bool((0.1 + 0.06 * x).clamp(0.0, 1.0) / (1.0 + i as f64 * 0.3))
            })
            .collect();
        let context: Vec<f32> = (0..3).map(|_| rng.random_range(0.0f32..100.0)).collect();
        lines.push(
            serde_json::json!({
                "request_id": format!("u{r}"),
                "context": { "dense": context, "categorical": [] },
                "candidates": candidates,
                "exposed": exposed,
                "clicks": clicks,
            })
            .to_string(),
        );
    }
    lines.join("\n")
}

const CONFIG: &str = r#"
seeds = [3]
test_fraction = 0.2
[evaluator]
hidden = 16
epochs = 2
[mining]
beam_width = 4
sweep = [1, 4]
[distill]
hidden = 16
embed = 4
epochs = 2
reinforce_epochs = 1
[export]
model_name = "degre"
max_candidates = 64
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_user_logs_publishes_a_model_the_server_picks_up() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let server = TestServer::start(&repo, |_| {}).await;

    let logs = dir.path().join("logs.jsonl");
    std::fs::write(&logs, user_logs(150)).unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let run = dir.path().join("run");
    let args = [
        "pipeline".into(),
        "--logs".into(),
        logs.clone(),
        "--config".into(),
        config,
        "--out".into(),
        run.clone(),
        "--publish".into(),
        repo,
        "--quiet".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_degre"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["simulated"], false);
    let degre = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "degre")
        .unwrap();
    assert!(degre["true_utility"].is_null(), "{degre}");
    assert!(
        degre["evaluator_value"][0].as_f64().unwrap() > 0.0,
        "{degre}"
    );
    assert!(degre["ndcg_at_k"][0].as_f64().is_some(), "{degre}");
    // The paired table: a mean of differences is the difference of the means.
    let value = |name: &str| {
        let methods = report["methods"].as_array().unwrap();
        let method = methods.iter().find(|m| m["name"] == name).unwrap();
        method["evaluator_value"][0].as_f64().unwrap()
    };
    let paired = report["versus_degre"].as_array().unwrap();
    assert!(paired.len() >= 8, "{paired:?}");
    for row in paired {
        let name = row["name"].as_str().unwrap();
        assert_ne!(name, "degre");
        let difference = row["difference"][0].as_f64().unwrap();
        assert!(
            (difference - (value("degre") - value(name))).abs() < 1e-9,
            "{row}"
        );
        // One seed here: DeGRe "wins" it exactly when the difference is positive.
        assert_eq!(
            row["degre_wins"].as_u64(),
            Some(u64::from(difference > 0.0)),
            "{row}"
        );
    }
    assert!(run.join("report.md").exists() && run.join("utility.svg").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["schema"]["context_dense"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        manifest["schema"]["candidate_dense"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        manifest["schema"]["candidate_categorical"][0]["vocab_size"],
        6
    );

    // The running server loads the published version and reranks with it.
    server.wait_serving().await;
    let request = v1::RerankRequest {
        request_id: "after-publish".into(),
        context: Some(v1::Features {
            dense: vec![10.0, 50.0, 90.0],
            categorical: vec![],
        }),
        candidates: (0..7)
            .map(|i| v1::Candidate {
                item_id: format!("c{i}"),
                features: Some(v1::Features {
                    dense: vec![i as f32 - 3.0, 1.0, -2.0, 0.5, 4.0],
                    categorical: vec![i % 8],
                }),
            })
            .collect(),
        top_k: 4,
        model_version: None,
    };
    let response = server
        .client()
        .await
        .rerank(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, 1);
    assert_eq!(response.items.len(), 4);
    server.stop().await;
}
