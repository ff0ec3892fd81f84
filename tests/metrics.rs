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
        "degre_request_duration_seconds_bucket{version=\"1\",le=\"0.001\"}",
        "degre_request_candidates_bucket{le=\"20\"} 1",
        // By the version that answered; `none` when no model did.
        "degre_requests_total{code=\"OK\",version=\"1\"} 1",
        "degre_requests_total{code=\"INVALID_ARGUMENT\",version=\"none\"} 1",
        "degre_model_loads_total{result=\"success\",reason=\"none\"} 1",
        "degre_model_version 1",
        "degre_queue_wait_seconds_bucket{le=\"0.001\"}",
        concat!(
            "degre_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    // This test process: tens of MB resident, some sockets open, a load that took time.
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 3.0);
    assert!(value("degre_model_load_duration_seconds") > 0.0);
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

/// Sends one raw gRPC call whose message is `payload`, and returns the `grpc-status` the
/// client sees (in the headers of a trailers-only answer, or in the trailers).
async fn raw_rerank(addr: std::net::SocketAddr, payload: &[u8]) -> String {
    let (response, mut stream) = common::raw_rerank_stream(addr, false).await;
    let mut frame = vec![0u8];
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    stream.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().unwrap();
    trailers["grpc-status"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_tonic_gives_before_the_service_are_counted_too() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    // Not a protobuf message: the codec refuses it before the service runs.
    let status = raw_rerank(server.grpc_addr, &[0xff; 7]).await;
    assert_eq!(status, (tonic::Code::InvalidArgument as i32).to_string());
    // An empty message decodes (no candidates): the service answers INVALID_ARGUMENT.
    let status = raw_rerank(server.grpc_addr, &[]).await;
    assert_eq!(status, (tonic::Code::InvalidArgument as i32).to_string());
    let text = server.metrics().await;
    let line = "degre_requests_total{code=\"INVALID_ARGUMENT\",version=\"none\"} 2";
    assert!(text.contains(line), "{line} missing:\n{text}");
    server.stop().await;
}
