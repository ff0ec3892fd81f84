//! TLS and mutual TLS on the gRPC listener, with a real TLS client (tonic over rustls):
//! handshakes, refusals, certificate rotation without a restart, and bad files at start.
//! Certificates: tests/fixtures/tls (make.sh regenerates them).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{publish, request, TestServer};
use degre::api::v1::reranker_client::RerankerClient;
use degre::config::ServeArgs;
use degre::server::BoundServer;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// A client trusting `ca`, presenting `identity` (a fixture name) if given.
fn tls_client(ca: &str, identity: Option<&str>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(&format!("{ca}.pem"))))
        .domain_name("localhost");
    match identity {
        Some(name) => config.identity(Identity::from_pem(
            pem(&format!("{name}.pem")),
            pem(&format!("{name}.key")),
        )),
        None => config,
    }
}

/// Connects and reranks once; the error, if any, as text.
async fn rerank(server: &TestServer, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut client = RerankerClient::new(channel);
    let response = client
        .rerank(request(20, 5, 1))
        .await
        .map_err(|s| format!("{s:?}"))?;
    assert_eq!(response.into_inner().items.len(), 5);
    Ok(())
}

/// Retries `rerank` until it succeeds (the model is loading, the files are being re-read).
async fn rerank_eventually(server: &TestServer, tls: impl Fn() -> ClientTlsConfig) {
    let mut last = String::new();
    for _ in 0..200 {
        match rerank(server, Some(tls())).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never answered over TLS: {last}");
}

fn with_tls(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> impl FnOnce(&mut ServeArgs) {
    move |args| {
        args.tls_cert = Some(cert);
        args.tls_key = Some(key);
        args.tls_client_ca = client_ca;
    }
}

#[tokio::test]
async fn tls_serves_a_trusting_client_and_refuses_plaintext_and_other_cas() {
    let root = tempfile::tempdir().unwrap();
    publish(root.path(), 1);
    let tls = with_tls(fixture("server1.pem"), fixture("server1.key"), None);
    let server = TestServer::start(root.path(), tls).await;
    rerank_eventually(&server, || tls_client("ca1", None)).await;

    assert!(rerank(&server, None).await.is_err(), "plaintext answered");
    let other_ca = rerank(&server, Some(tls_client("ca2", None))).await;
    assert!(other_ca.is_err(), "a client trusting another CA connected");
    // A client that presents a certificate the server did not ask for is still served.
    rerank(&server, Some(tls_client("ca1", Some("client2"))))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    let root = tempfile::tempdir().unwrap();
    publish(root.path(), 1);
    let tls = with_tls(
        fixture("server1.pem"),
        fixture("server1.key"),
        Some(fixture("ca1.pem")),
    );
    let server = TestServer::start(root.path(), tls).await;
    rerank_eventually(&server, || tls_client("ca1", Some("client1"))).await;

    let anonymous = rerank(&server, Some(tls_client("ca1", None))).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );
    let foreign = rerank(&server, Some(tls_client("ca1", Some("client2")))).await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted"
    );
    let metrics = server.metrics().await;
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("degre_tls_handshake_failures_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        failures >= Some(2.0),
        "handshake failures counted: {failures:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_and_a_broken_rotation_is_ignored() {
    let root = tempfile::tempdir().unwrap();
    publish(root.path(), 1);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    let install = |name: &str| {
        std::fs::write(&cert, pem(&format!("{name}.pem"))).unwrap();
        std::fs::write(&key, pem(&format!("{name}.key"))).unwrap();
    };
    install("server1");
    let server = TestServer::start(root.path(), with_tls(cert.clone(), key.clone(), None)).await;
    rerank_eventually(&server, || tls_client("ca1", None)).await;
    assert!(rerank(&server, Some(tls_client("ca2", None)))
        .await
        .is_err());

    // The rotation: a certificate from the second CA, picked up without a restart.
    install("server2");
    rerank_eventually(&server, || tls_client("ca2", None)).await;

    // A broken rotation: the server keeps the last good certificate and counts the failure.
    std::fs::write(&cert, b"not a certificate").unwrap();
    let failed = "degre_tls_reloads_total{result=\"failure\"}".to_string();
    let metrics = server.metrics_with(std::slice::from_ref(&failed)).await;
    assert!(metrics.contains(&failed), "broken rotation not counted");
    rerank(&server, Some(tls_client("ca2", None)))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_tls_file_stops_the_server_at_start_naming_it() {
    let root = tempfile::tempdir().unwrap();
    publish(root.path(), 1);
    let start = |cert: PathBuf, key: PathBuf| {
        let args = ServeArgs {
            models: Some(root.path().to_path_buf()),
            grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..ServeArgs::default()
        };
        async move {
            match BoundServer::bind(args.resolve().unwrap()).await {
                Ok(_) => panic!("started"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let missing = fixture("nope.key");
    let error = start(fixture("server1.pem"), missing.clone()).await;
    assert!(error.contains(&missing.display().to_string()), "{error}");
    // A key that does not belong to the certificate.
    let error = start(fixture("server1.pem"), fixture("server2.key")).await;
    assert!(error.contains("server1.pem"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_speak_mutual_tls() {
    let root = tempfile::tempdir().unwrap();
    let version = publish(root.path(), 1);
    let tls = with_tls(
        fixture("server1.pem"),
        fixture("server1.key"),
        Some(fixture("ca1.pem")),
    );
    let server = TestServer::start(root.path(), tls).await;
    rerank_eventually(&server, || tls_client("ca1", Some("client1"))).await;
    let model_info = |identity: Option<&'static str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_degre"));
        command.args([
            "model-info",
            "--addr",
            &format!("https://{}", server.grpc_addr),
        ]);
        command.arg("--tls-ca").arg(fixture("ca1.pem"));
        command.args(["--tls-domain", "localhost"]);
        if let Some(name) = identity {
            command
                .arg("--tls-cert")
                .arg(fixture(&format!("{name}.pem")));
            command
                .arg("--tls-key")
                .arg(fixture(&format!("{name}.key")));
        }
        async move { command.output().await.unwrap() }
    };
    let out = model_info(Some("client1")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["servingVersion"], version.to_string());
    assert!(
        !model_info(None).await.status.success(),
        "served without a client certificate"
    );
    server.stop().await;
}
