//! The serving process: binds the gRPC and metrics listeners, starts the model watcher,
//! serves Rerank, health and reflection, and drains on shutdown within a grace period.

mod answers;
mod bodies;
mod connections;
mod deadline;
mod metrics_http;
mod queue;
mod routing;
mod service;
pub mod status;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::api::v1::reranker_server::RerankerServer;
use crate::config::Config;
use crate::repository::watcher::Watcher;
use crate::repository::ModelStore;
use crate::repository::Repository;
use queue::ComputeQueue;
use service::RerankService;

const SERVICE_NAME: &str = "degre.v1.Reranker";
const STREAM_WINDOW: u32 = 128 << 10;
const CONNECTION_WINDOW: u32 = 256 << 10;

/// A server whose listeners are bound; `run` serves until `shutdown` resolves.
pub struct BoundServer {
    config: Config,
    repo: Repository,
    grpc: TcpListener,
    metrics: TcpListener,
    tls: Option<Arc<tls::Tls>>,
}

impl BoundServer {
    /// Opens the repository and binds both listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<BoundServer> {
        let repo = Repository::open(&config.models, config.model_name.as_deref())
            .map_err(crate::config::ConfigError)?;
        // A folder that is missing is a wrong path, not a model still to come: a server that
        // started anyway would answer UNAVAILABLE forever. (An empty folder is fine.)
        let model_dir = repo.model_dir();
        if !model_dir.is_dir() {
            return Err(crate::config::ConfigError(format!(
                "model folder {} does not exist: --models names the repository root, which holds one folder per model (<root>/<model>/<version>/)",
                std::path::absolute(&model_dir).unwrap_or(model_dir).display()
            ))
            .into());
        }
        // Certificates are checked before binding: a typo exits 64 naming the file.
        let tls = match &config.tls {
            Some(files) => Some(
                tls::Tls::load(files.clone())
                    .map_err(|why| crate::config::ConfigError(format!("TLS: {why}")))?,
            ),
            None => None,
        };
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the {what} listener to {addr}"))
        };
        let grpc = bind("gRPC", config.grpc_addr).await?;
        let metrics = bind("metrics", config.metrics_addr).await?;
        Ok(BoundServer {
            config,
            repo,
            grpc,
            metrics,
            tls,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr().expect("bound listener")
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let BoundServer {
            config,
            repo,
            grpc,
            metrics,
            tls,
        } = self;
        let handle = crate::telemetry::metrics_handle();
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in ["", SERVICE_NAME] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }

        let (model, model_dir) = (repo.name().to_string(), repo.model_dir());
        let store = Arc::new(ModelStore::new(config.keep_previous_versions));
        let (loaded_tx, mut loaded_rx) = tokio::sync::watch::channel(None::<u64>);
        let pin = config.model_version;
        let watcher = Watcher::new(
            repo,
            store.clone(),
            pin,
            config.model_load_timeout,
            move |v| {
                let _ = loaded_tx.send(Some(v));
            },
        );
        let (stop_watcher, stop_rx) = std::sync::mpsc::channel::<()>();
        let poll_interval = config.poll_interval;
        std::thread::Builder::new()
            .name("model-watcher".into())
            .spawn(move || watcher.run(poll_interval, stop_rx))?;
        let reporter = health.clone();
        tokio::spawn(async move {
            if loaded_rx.wait_for(Option::is_some).await.is_ok() {
                for name in ["", SERVICE_NAME] {
                    reporter
                        .set_service_status(name, ServingStatus::Serving)
                        .await;
                }
            }
        });

        let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(metrics_http::serve(metrics, handle, async {
            let _ = metrics_stopped.await;
        }));

        // Reflection in both protocol versions (grpcurl and Postman speak v1, older tools
        // v1alpha), listing the Reranker and health; off with `--reflection false`.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = if config.reflection {
            (
                Some(reflection().build_v1()?),
                Some(reflection().build_v1alpha()?),
            )
        } else {
            (None, None)
        };
        crate::api::codec::set_max_candidates(config.max_candidates);
        let queue = Arc::new(ComputeQueue::new(config.compute_threads, config.max_queue));
        let reranker = RerankerServer::new(RerankService::new(store, queue.clone(), &config))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        // tonic ignores the builder's TCP options for a listener we bound ourselves. Without
        // TCP_NODELAY, Nagle + delayed ACKs held every response ~40 ms (seen in loadtest).
        let incoming = TcpIncoming::from(grpc)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let incoming = connections::bounded(incoming, config.max_connections, config.idle_timeout);
        let (drain, draining) = tokio::sync::oneshot::channel::<()>();
        let answers =
            answers::CountAnswers::new(config.max_in_flight, queue, config.request_timeout);
        let budget = bodies::BodyBudget::new(config.max_buffered_request_bytes);
        let in_flight = answers.in_flight.clone();
        // Per connection, at most `streams × max_message_bytes` of request bodies are held,
        // each for at most the request timeout;
        // pings find dead peers; an age limit spreads long-lived channels over new replicas.
        let serving = tonic::transport::Server::builder()
            // A request is answered within `request_timeout` once its body has arrived (a
            // computation that started in time may end a little later); this also ends one
            // whose body never finishes arriving (a slow sender holding a buffer of up to
            // `max_message_bytes`), answered CANCELLED.
            .timeout(2 * config.request_timeout)
            .max_concurrent_streams(config.max_streams_per_connection)
            // What a connection may send ahead of the server reading it (hyper's default is
            // 1 MiB each): one request of N = 100 fits a stream's window.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_max_header_list_size(16 * 1024)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_connection_age(config.max_connection_age)
            .max_connection_age_grace(config.shutdown_grace)
            // The client's deadline first: admission to the compute queue reads it.
            .layer(tower::util::MapRequestLayer::new(
                deadline::record_client_timeout::<tonic::body::Body>,
            ))
            .layer(answers.clone())
            .layer(tower::util::MapRequestLayer::new(move |request| {
                budget.count::<tonic::body::Body>(request)
            }))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(reranker);
        let draining = async {
            let _ = draining.await;
        };
        let mut serving: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &tls {
                Some(tls) => {
                    let incoming = tls.clone().accept(incoming);
                    Box::pin(serving.serve_with_incoming_shutdown(incoming, draining))
                }
                None => Box::pin(serving.serve_with_incoming_shutdown(incoming, draining)),
            };
        let tls_reloader = tls.map(|tls| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(poll_interval);
                loop {
                    tick.tick().await;
                    tls.reload_if_changed();
                }
            })
        });
        tracing::info!(
            grpc = %config.grpc_addr,
            tls = tls_mode(&config),
            metrics = %config.metrics_addr,
            model,
            dir = %model_dir.display(),
            "degre serving"
        );

        let result = tokio::select! {
            result = &mut serving => result.map_err(Into::into),
            () = shutdown => {
                tracing::info!(grace_ms = config.shutdown_grace.as_millis() as u64, "shutting down, draining requests");
                for name in ["", SERVICE_NAME] {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
                let _ = drain.send(());
                // Done when every Rerank call is answered: a health Watch stream a client
                // keeps open would otherwise hold the process for the whole grace period.
                let answered = async {
                    while in_flight.load(Ordering::Acquire) > 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                let drained = async {
                    tokio::select! {
                        result = &mut serving => result.map_err(Into::into),
                        () = answered => {
                            // The last answers' final frames still need writing.
                            let flush = Duration::from_millis(100);
                            match tokio::time::timeout(flush, &mut serving).await {
                                Ok(result) => result.map_err(Into::into),
                                Err(_) => Ok(()), // only long-lived streams were left
                            }
                        }
                    }
                };
                match tokio::time::timeout(config.shutdown_grace, drained).await {
                    Ok(result) => result,
                    Err(_) => {
                        let dropped = in_flight.load(Ordering::Acquire);
                        tracing::warn!(dropped, "grace period over, dropping requests still in flight");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_watcher.send(());
        if let Some(reloader) = tls_reloader {
            reloader.abort();
        }
        let _ = metrics_stop.send(());
        tracing::info!("stopped");
        result
    }
}

fn tls_mode(config: &Config) -> &'static str {
    match &config.tls {
        None => "off",
        Some(files) if files.client_ca.is_some() => "mutual",
        Some(_) => "on",
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(%e, "cannot listen for SIGTERM; only SIGINT stops the server");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
