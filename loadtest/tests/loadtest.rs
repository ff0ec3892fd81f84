//! Drives the load generator for a second against a real server on loopback (generated
//! requests in both modes, then a replayed Parquet log) and checks the report's counts add up.

use std::process::Command;

use degre::config::ServeArgs;
use degre::offline::logs::write_logs;
use degre::offline::sim::{sample_split, SimConfig, World};
use degre::server::BoundServer;

const BIN: &str = env!("CARGO_BIN_EXE_degre-loadtest");
const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

/// Generated requests sized by the bundled model's manifest.
fn generated() -> Vec<String> {
    let manifest = format!("{BUNDLED}/degre/1/manifest.json");
    [
        "--candidates",
        "50",
        "--top-k",
        "10",
        "--manifest",
        &manifest,
    ]
    .map(String::from)
    .to_vec()
}

fn run(addr: &str, args: &[String], json: &std::path::Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["run", "--addr", addr, "--duration-s", "1"])
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

/// sent = ok + errors = the sum over status codes = the sum over the timeline; returns sent.
fn counts_add_up(report: &serde_json::Value) -> u64 {
    let count = |v: &serde_json::Value| v.as_u64().unwrap();
    let sent = count(&report["sent"]);
    assert_eq!(
        sent,
        count(&report["ok"]) + count(&report["errors"]),
        "{report}"
    );
    let by_code: u64 = report["codes"]
        .as_object()
        .unwrap()
        .values()
        .map(count)
        .sum();
    assert_eq!(by_code, sent, "{report}");
    let timeline = report["timeline"].as_array().unwrap();
    let by_second: u64 = timeline
        .iter()
        .map(|s| count(&s["ok"]) + count(&s["errors"]))
        .sum();
    assert_eq!(by_second, sent, "{report}");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_add_up_in_both_modes() {
    let args = ServeArgs {
        models: Some(BUNDLED.into()),
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeArgs::default()
    };
    let server = BoundServer::bind(args.resolve().unwrap()).await.unwrap();
    let addr = format!("http://{}", server.grpc_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let dir = tempfile::tempdir().unwrap();

    let addr2 = addr.clone();
    let json = dir.path().join("open.json");
    let open = tokio::task::spawn_blocking(move || {
        let mode = ["--mode", "open", "--rate", "200"].map(String::from);
        run(&addr2, &[generated(), mode.to_vec()].concat(), &json)
    })
    .await
    .unwrap();
    let sent = counts_add_up(&open);
    // 200/s for 1 s: every request due was sent (or counted as not sent).
    assert_eq!(sent + open["client_overloaded"].as_u64().unwrap(), 200);
    assert!(open["ok"].as_u64().unwrap() > 0);
    assert!(open["latency"]["p99_ms"].as_f64().unwrap() > 0.0);

    let json = dir.path().join("closed.json");
    let addr2 = addr.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let mode = ["--mode", "closed", "--concurrency", "4"].map(String::from);
        run(&addr2, &[generated(), mode.to_vec()].concat(), &json)
    })
    .await
    .unwrap();
    assert!(counts_add_up(&closed) > 0);

    // Replay a log in degre's format: the simulator's default features fit the bundled model.
    let world = World::generate(SimConfig::default(), 2);
    let log = dir.path().join("replay.parquet");
    write_logs(&log, &sample_split(&world, "replay", 30)).unwrap();
    let json = dir.path().join("replay.json");
    let replayed = tokio::task::spawn_blocking(move || {
        let args = [
            "--replay",
            log.to_str().unwrap(),
            "--top-k",
            "0",
            "--rate",
            "100",
        ];
        run(&addr, &args.map(String::from), &json)
    })
    .await
    .unwrap();
    assert_eq!(counts_add_up(&replayed), 100, "{replayed}");
    assert_eq!(replayed["ok"], 100, "{replayed}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
