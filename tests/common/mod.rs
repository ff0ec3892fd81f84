//! Test helpers: publish generated models, start a real server on loopback, build requests.
#![allow(dead_code)]

#[cfg(feature = "offline")]
pub mod sim;

use std::path::Path;
use std::time::Duration;

use degre::api::v1::{self, reranker_client::RerankerClient};
use degre::config::ServeArgs;
use degre::contract::manifest::{FeatureSchema, Limits};
use degre::network::export::{default_schema, version_files};
use degre::network::{Dims, Mixer, Weights};
use degre::repository::publish::publish_files;
use degre::server::BoundServer;
use tonic::transport::Channel;

pub const MODEL: &str = "degre";

pub fn model_files(schema: &FeatureSchema, seed: u64) -> Vec<(String, Vec<u8>)> {
    model_files_limited(schema, seed, 256)
}

/// An untrained generator accepting up to `max_candidates` candidates.
pub fn model_files_limited(
    schema: &FeatureSchema,
    seed: u64,
    max_candidates: usize,
) -> Vec<(String, Vec<u8>)> {
    model_files_edited(schema, seed, max_candidates, |_| {})
}

/// An untrained generator whose weights `edit` changes before export (e.g. to poison them).
pub fn model_files_edited(
    schema: &FeatureSchema,
    seed: u64,
    max_candidates: usize,
    edit: impl FnOnce(&mut Weights),
) -> Vec<(String, Vec<u8>)> {
    let mut weights = Weights::init(
        schema,
        Dims {
            hidden: 16,
            embed: 4,
            mixer: Mixer::Attention,
        },
        seed,
    );
    edit(&mut weights);
    let limits = Limits { max_candidates };
    version_files(
        &weights,
        schema,
        MODEL,
        limits,
        serde_json::json!({ "seed": seed }),
    )
}

/// Publishes an untrained generator with the default schema; returns its version.
pub fn publish(root: &Path, seed: u64) -> u64 {
    publish_files(root, MODEL, &model_files(&default_schema(), seed)).unwrap()
}

pub struct TestServer {
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server on ephemeral loopback ports; `tweak` adjusts the settings.
    pub async fn start(root: &Path, tweak: impl FnOnce(&mut ServeArgs)) -> TestServer {
        let mut args = ServeArgs {
            models: Some(root.to_path_buf()),
            model_name: Some(MODEL.into()),
            grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            poll_interval_ms: Some(50),
            // Unoptimised compute on a shared CI machine: the 10 ms default would shed
            // requests in tests that are not about overload.
            max_queue_ms: Some(10_000),
            ..ServeArgs::default()
        };
        tweak(&mut args);
        let server = BoundServer::bind(args.resolve().unwrap()).await.unwrap();
        let (grpc_addr, metrics_addr) = (server.grpc_addr(), server.metrics_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            grpc_addr,
            metrics_addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn client(&self) -> RerankerClient<Channel> {
        RerankerClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Waits until the health service reports SERVING, or panics after 20 s.
    pub async fn wait_serving(&self) {
        use tonic_health::pb::{
            health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
        };
        let mut health = HealthClient::new(self.channel().await);
        for _ in 0..400 {
            let request = HealthCheckRequest {
                service: "degre.v1.Reranker".into(),
            };
            let status = health.check(request).await.unwrap().into_inner().status;
            if status == ServingStatus::Serving as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never became SERVING");
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        http_get(&url).await
    }

    /// Scrapes until every line of `wanted` is in the text (or 30 s pass); the last scrape.
    pub async fn metrics_with(&self, wanted: &[String]) -> String {
        // Generous: on a loaded 2-core CI machine ten versions can take seconds to refuse.
        let mut text = String::new();
        for _ in 0..600 {
            text = self.metrics().await;
            if wanted.iter().all(|line| text.contains(line.as_str())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        text
    }

    /// Waits until at least `n` requests are in flight, per the server's own gauge.
    pub async fn wait_in_flight(&self, n: usize) -> usize {
        wait_in_flight(&format!("http://{}/metrics", self.metrics_addr), n).await
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A loopback port free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `degre` binary serving `models` as its own process, gRPC on `host:grpc`, metrics on
/// a free port, stderr piped, with `args` added.
pub fn serve_process(models: &Path, host: &str, grpc: u16, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_degre"))
        .args(["serve", "--models"])
        .arg(models)
        .args(["--grpc-addr", &format!("{host}:{grpc}")])
        .args(["--metrics-addr", &format!("{host}:{}", free_port())])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A raw HTTP/2 Rerank call on a connection of its own (headers sent, the body is the
/// caller's to write), for what a gRPC client library would not send.
pub async fn raw_rerank_stream(
    addr: std::net::SocketAddr,
    end_of_stream: bool,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<tonic::codegen::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/degre.v1.Reranker/Rerank"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    send.send_request(request, end_of_stream).unwrap()
}

/// The call's `grpc-status` (from the trailers, or the headers of a trailers-only
/// answer), or `None` if it is not answered within 5 s.
pub async fn grpc_status(response: h2::client::ResponseFuture) -> Option<String> {
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let response = response.await.ok()?;
        let headers = response.headers().clone();
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let trailers = body.trailers().await.ok().flatten();
        Some(trailers.unwrap_or(headers))
    });
    let headers = answered.await.ok()??;
    Some(headers.get("grpc-status")?.to_str().ok()?.to_string())
}

/// A plain HTTP/1.0 GET, enough for /metrics.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    let (head, body) = body.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// A valid request for the default schema: `n` candidates, deterministic from `seed`.
pub fn request(n: usize, top_k: u32, seed: u64) -> v1::RerankRequest {
    let schema = default_schema();
    let value =
        |i: usize, j: usize| (((i * 31 + j * 17 + seed as usize * 7) % 23) as f32 / 11.0) - 1.0;
    v1::RerankRequest {
        request_id: format!("req-{seed}"),
        context: Some(v1::Features {
            dense: (0..schema.context_dense.len())
                .map(|j| value(99, j))
                .collect(),
            categorical: vec![3],
        }),
        candidates: (0..n)
            .map(|i| v1::Candidate {
                item_id: format!("item-{i}"),
                features: Some(v1::Features {
                    dense: (0..schema.candidate_dense.len())
                        .map(|j| value(i, j))
                        .collect(),
                    categorical: vec![(i % 64) as i64, (i * 7 % 256) as i64],
                }),
                ranking_score: Some((i * 37 % 101) as f32 / 10.0),
            })
            .collect(),
        top_k,
        model_version: None,
        constraints: None,
        explain: false,
        routing_key: String::new(),
    }
}

/// Polls a /metrics URL until `degre_requests_in_flight` reaches `n`; returns the value
/// seen. Panics after 20 s.
pub async fn wait_in_flight(metrics_url: &str, n: usize) -> usize {
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "never saw {n} requests in flight"
        );
        let text = http_get(metrics_url).await;
        let seen = text
            .lines()
            .find_map(|l| l.strip_prefix("degre_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        if seen >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
