//! `degre pipeline --logs` on logs that `degre simulate` did not make (other feature sizes,
//! a GMV-like `values` column, no simulator), publishing into a repository a running server
//! watches: the server picks the trained generator up and reranks with it. Where the ranking
//! stage's order is already the best there is, the publish gate refuses to publish.
#![cfg(feature = "offline")]

mod common;

use std::process::Command;

use common::TestServer;
use degre::api::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How good the ranking stage is in the hand-rolled logs.
#[derive(Clone, Copy, PartialEq)]
enum Upstream {
    /// Scores items by a feature users do not care about.
    Blind,
    /// Scores items by their exact expected value: its order is the best list.
    Perfect,
}

/// Hand-rolled logs: 3 dense context features and no categorical one; candidates with 5
/// dense features and one categorical (vocab 6). Users click items whose first feature is
/// high, less often further down the list; a click is worth `1 + (x₁ + 10)/2` (a price).
fn user_logs(requests: usize, upstream: Upstream) -> String {
    let mut rng = StdRng::seed_from_u64(17);
    let mut lines = Vec::new();
    for r in 0..requests {
        let n = rng.random_range(6..=9);
        let attractiveness = |x: f64| (0.1 + 0.06 * x).clamp(0.0, 1.0);
        let price = |x: f64| 1.0 + (x + 10.0) / 2.0;
        let candidates: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let dense: Vec<f32> = (0..5)
                    .map(|_| rng.random_range(-1.0f32..1.0) * 10.0)
                    .collect();
                let (x0, x1) = (f64::from(dense[0]), f64::from(dense[1]));
                let score = match upstream {
                    Upstream::Blind => dense[4],
                    Upstream::Perfect => (attractiveness(x0) * price(x1)) as f32,
                };
                serde_json::json!({
                    "item_id": format!("p{r}-{i}"),
                    "dense": dense,
                    "categorical": [rng.random_range(0..6)],
                    "ranking_score": score,
                })
            })
            .collect();
        let feature = |i: usize, j: usize| candidates[i]["dense"][j].as_f64().unwrap();
        // The logging policy shows four random candidates.
        let exposed: Vec<usize> = rand::seq::index::sample(&mut rng, n, 4).into_vec();
        let clicks: Vec<bool> = exposed
            .iter()
            .enumerate()
            .map(|(slot, &i)| {
                rng.random_bool(attractiveness(feature(i, 0)) / (1.0 + slot as f64 * 0.3))
            })
            .collect();
        let values: Vec<f64> = exposed
            .iter()
            .zip(&clicks)
            .map(|(&i, &click)| if click { price(feature(i, 1)) } else { 0.0 })
            .collect();
        let context: Vec<f32> = (0..3).map(|_| rng.random_range(0.0f32..100.0)).collect();
        lines.push(
            serde_json::json!({
                "request_id": format!("u{r}"),
                "context": { "dense": context, "categorical": [] },
                "candidates": candidates,
                "exposed": exposed,
                "clicks": clicks,
                "values": values,
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
epochs = 6
[mining]
beam_width = 4
sweep = [1, 4]
max_requests = 400
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
    // The model's folder exists, empty: the pipeline publishes its first version.
    std::fs::create_dir_all(repo.join(common::MODEL)).unwrap();
    let server = TestServer::start(&repo, |_| {}).await;

    let logs = dir.path().join("logs.jsonl");
    std::fs::write(&logs, user_logs(2000, Upstream::Blind)).unwrap();
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
        "--baselines".into(),
        "true".into(),
        "--quiet".into(),
    ];
    let out = tokio::task::spawn_blocking(move || degre(&args))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(run.join("report.md")).unwrap_or_default()
    );
    // `--quiet` silences the progress bars, not the line each stage prints as it ends.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stages = [
        "split-logs",
        "train-evaluators",
        "mine",
        "mine-b1",
        "distill-and-baselines",
        "eval",
        "gate",
    ];
    for stage in stages {
        assert!(
            stderr.contains(&format!("seed 3: stage {stage} done in")),
            "{stage}: {stderr}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["simulated"], false);
    // The logs carry values, so the objective is value, end to end.
    assert_eq!(report["objective"], "value");
    let gate = &report["runs"][0]["gate"];
    assert_eq!(gate["objective"], "value");
    // How DeGRe's distillation went is in the report, beside the evaluator's.
    let distill = &report["runs"][0]["distill_training"];
    let epochs = distill["epochs_run"].as_u64().unwrap();
    let best = distill["best_epoch"].as_u64().unwrap();
    assert!(epochs >= 1 && best <= epochs, "{distill}");
    assert!(
        distill["valid_loss"].as_f64().unwrap().is_finite(),
        "{distill}"
    );
    assert_eq!(gate["passed"], true, "{gate}");
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
    assert_eq!(manifest["provenance"]["objective"], "value");
    assert_eq!(manifest["provenance"]["gate"]["passed"], true);
    assert!(manifest["provenance"]["config"]["simulator"].is_null());

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
                ranking_score: None,
            })
            .collect(),
        top_k: 4,
        model_version: None,
        constraints: None,
        explain: false,
        routing_key: String::new(),
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

fn degre(args: &[std::path::PathBuf]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_degre"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_gate_refuses_to_publish_where_the_ranking_stage_is_already_best() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs.jsonl");
    std::fs::write(&logs, user_logs(2000, Upstream::Perfect)).unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let repo = dir.path().join("repo");
    let args = |force: bool| {
        let mut args: Vec<std::path::PathBuf> = vec![
            "pipeline".into(),
            "--logs".into(),
            logs.clone(),
            "--config".into(),
            config.clone(),
            "--out".into(),
            dir.path().join("run"),
            "--publish".into(),
            repo.clone(),
            "--quiet".into(),
        ];
        if force {
            args.push("--force-publish".into());
        }
        args
    };
    let out = degre(&args(false));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap_or_default();
    assert!(!out.status.success(), "published: {stderr}\n{report}");
    assert!(stderr.contains("not published"), "{stderr}");
    assert!(!repo.join("degre").join("1").exists());
    // Refused on the merits: the judges know the logged lists, and find DeGRe not ahead.
    let gate: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/seed-3/gate.json")).unwrap(),
    )
    .unwrap();
    let ratio = gate["judged_logged"].as_f64().unwrap() / gate["logged_reward"].as_f64().unwrap();
    assert!((0.8..1.25).contains(&ratio), "{gate}\n{report}");
    assert!(
        gate["degre_vs_incumbent"][0].as_f64().unwrap() < 0.05,
        "{gate}"
    );
    // The model and the report are still there to look at, and the override publishes.
    assert!(dir.path().join("run/model/manifest.json").exists());
    let out = degre(&args(true));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(repo.join("degre").join("1").join("manifest.json").exists());
}
