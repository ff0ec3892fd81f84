//! The real binary: bad configuration exits 64 before binding, and SIGTERM drains the
//! requests in flight before the process exits cleanly.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, publish, request, serve_process};
use degre::api::v1::reranker_client::RerankerClient;

const BIN: &str = env!("CARGO_BIN_EXE_degre");

/// A client of the server at `addr`, once it answers a request.
async fn answering_client(addr: &str) -> RerankerClient<tonic::transport::Channel> {
    loop {
        if let Ok(mut c) = RerankerClient::connect(addr.to_string()).await {
            if c.rerank(request(5, 5, 0)).await.is_ok() {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.unwrap().success());
}

#[test]
fn bad_configuration_exits_64_with_a_message() {
    let out = Command::new(BIN)
        .args(["serve", "--models", "/nonexistent/models"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("models: /nonexistent/models is not a directory"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let (grpc, metrics) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--models"])
        .arg(dir.path())
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args([
            "--compute-threads",
            "1",
            "--max-in-flight",
            "1000",
            "--request-timeout-ms",
            "60000",
            "--max-queue-ms",
            "60000",
            "--max-streams-per-connection",
            "1000",
            // Unoptimised compute in tests: the queue behind SIGTERM takes seconds to drain.
            "--shutdown-grace-ms",
            "60000",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{grpc}");
    let mut client = answering_client(&addr).await;

    // Queue a few hundred slow requests behind the single compute thread.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.rerank(request(256, 64, i)).await.map(|_| ()) })
        })
        .collect();
    let metrics_url = format!("http://127.0.0.1:{metrics}/metrics");
    let in_flight = common::wait_in_flight(&metrics_url, 60).await;
    sigterm(&child);

    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => ok += 1,
            // Not yet sent when the server stopped accepting: the client's connection closed.
            // Any status the server itself produced would be a request cut off mid-way.
            Err(status) => assert!(std::error::Error::source(&status).is_some(), "{status:?}"),
        }
    }
    assert!(
        ok >= in_flight,
        "{ok} answered, {in_flight} were in flight at SIGTERM"
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        client.rerank(request(5, 5, 0)).await.is_err(),
        "stopped server answers nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_does_not_hold_sigterm_for_the_grace_period() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let grpc = free_port();
    let child = serve_process(
        dir.path(),
        "127.0.0.1",
        grpc,
        &["--shutdown-grace-ms", "120000"],
    );
    let addr = format!("http://127.0.0.1:{grpc}");
    let mut client = answering_client(&addr).await;
    // A load balancer's health watch: a stream the server never ends by itself.
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "degre.v1.Reranker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    client.rerank(request(5, 5, 1)).await.unwrap();

    sigterm(&child);
    // With nothing to drain it stops long before its 120 s grace, and says nothing was lost.
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("SIGTERM waited for the health watch")
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("dropping requests"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_answer() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let grpc = free_port();
    let logs = ["--access-log", "true", "--log-format", "json"];
    let child = serve_process(dir.path(), "127.0.0.1", grpc, &logs);
    let mut client = answering_client(&format!("http://127.0.0.1:{grpc}")).await;
    let mut forged = request(5, 5, 1);
    forged.request_id = "r-1\n{\"forged\": true}".into();
    client.rerank(forged).await.unwrap();
    let mut refused = request(5, 5, 2);
    refused.candidates.clear();
    client.rerank(refused).await.unwrap_err();
    sigterm(&child);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l: &serde_json::Value| l["target"] == "degre::access")
        .collect();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        let id = format!("{id:?}");
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id.as_str())
            .collect()
    };
    let answered = of("r-1\n{\"forged\": true}");
    assert_eq!(answered.len(), 1, "{stderr}");
    assert_eq!(answered[0]["code"], "Ok");
    assert_eq!(answered[0]["items"], 5);
    assert_eq!(answered[0]["version"], 1);
    assert_eq!(answered[0]["candidates"], 5);
    assert!(answered[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let refused = of("req-2");
    assert_eq!(refused.len(), 1, "{stderr}");
    assert_eq!(refused[0]["code"], "InvalidArgument");
    assert!(
        !stderr.contains("\"forged\""),
        "a request id forged a log line"
    );
}

#[test]
fn a_bad_environment_value_exits_64_naming_the_variable() {
    let out = Command::new(BIN)
        .arg("serve")
        .env("DEGRE_MAX_IN_FLIGHT", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEGRE_MAX_IN_FLIGHT=\"lots\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_may_name_a_host() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let grpc = free_port();
    let child = serve_process(dir.path(), "localhost", grpc, &[]);
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        answering_client(&format!("http://127.0.0.1:{grpc}")),
    )
    .await;
    sigterm(&child);
    let out = child.wait_with_output().await.unwrap();
    assert!(answered.is_ok(), "{}", String::from_utf8_lossy(&out.stderr));
}
