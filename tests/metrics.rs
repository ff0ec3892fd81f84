//! The metrics listener serves Prometheus text that `promtool check metrics` accepts, with
//! real histogram buckets for latency.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{publish, request, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_histograms() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    let mut client = server.client().await;
    client.rerank(request(20, 5, 1)).await.unwrap();
    client.rerank(request(0, 5, 1)).await.unwrap_err();

    let text = server.metrics().await;
    for name in degre::telemetry::ALL {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    for line in [
        "# TYPE degre_request_duration_seconds histogram",
        "# TYPE degre_model_compute_duration_seconds histogram",
        "degre_request_duration_seconds_bucket{le=\"0.001\"}",
        "degre_request_candidates_bucket{le=\"20\"} 1",
        "degre_requests_total{code=\"OK\"}",
        "degre_requests_total{code=\"INVALID_ARGUMENT\"} 1",
        "degre_model_loads_total{result=\"success\",reason=\"none\"} 1",
        "degre_model_version 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    promtool_accepts(&text);
    server.stop().await;
}

/// Runs `promtool check metrics` when it is installed; CI installs it and sets
/// DEGRE_REQUIRE_PROMTOOL=1 so the check cannot be skipped there.
fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("DEGRE_REQUIRE_PROMTOOL").is_none() => {
            eprintln!("promtool not run ({e}); install Debian's prometheus package to check");
            return;
        }
        Err(e) => panic!("promtool is required: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
}
