//! The Rerank RPC: deadline, validation, compute queue, and model compute. Transport only: the
//! math is in `rerank` and `runtime`.
//!
//! Compute runs on the tokio worker that received the request, at most `compute_threads` at
//! once. A request computes for ~0.1 ms (N=100, K=20) and at most ~1.5 ms (N=K=256); handing
//! it to a blocking pool cost two thread switches per request, 13% of one core's throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::answers::ServedBy;
use super::deadline;
use super::queue::{ComputeQueue, Ticket};
use super::routing::Routing;
use super::status::ServeError;
use crate::api::{self, v1};
use crate::config::Config;
use crate::repository::ModelStore;
use crate::telemetry;

pub struct RerankService {
    store: Arc<ModelStore>,
    /// Requests computing at once (so that some workers stay free for I/O and health),
    /// and how long they may queue for it; requests are admitted to it on arrival
    /// (`answers.rs`).
    compute: Arc<ComputeQueue>,
    max_candidates: usize,
    request_timeout: Duration,
    routing: Routing,
    access_log: bool,
}

impl RerankService {
    pub fn new(
        store: Arc<ModelStore>,
        compute: Arc<ComputeQueue>,
        config: &Config,
    ) -> RerankService {
        RerankService {
            store,
            compute,
            max_candidates: config.max_candidates,
            request_timeout: config.request_timeout,
            routing: Routing::new(config.canary_share, config.shadow_share),
            access_log: config.access_log,
        }
    }

    /// Answers `request`, which must be answered by `deadline`; `ticket` is its place in
    /// the compute queue, taken on arrival.
    async fn handle(
        &self,
        request: v1::RerankRequest,
        ticket: Option<Arc<Ticket>>,
        deadline: Instant,
    ) -> Result<v1::RerankResponse, ServeError> {
        let budget = || deadline.saturating_duration_since(Instant::now());
        // Admission (`--max-in-flight`, the queue's length) and the in-flight count happen
        // before the body is read, in `answers.rs`; a request that came another way is
        // admitted now.
        let ticket = match ticket {
            Some(ticket) => ticket,
            None => Arc::new(self.compute.admit(Instant::now(), budget())?),
        };
        let draw = self.routing.draw(&request);
        let model = self
            .routing
            .answering(&self.store, request.model_version, &draw)?;
        let limit = model.max_candidates(self.max_candidates);
        let input = api::rerank_input(request, &model.manifest.schema, limit)?;
        let slot = self.compute.enter(ticket, budget()).await?;
        let started = Instant::now();
        let picks = model.rerank(&input);
        telemetry::request_compute(input.candidates(), started.elapsed().as_secs_f64());
        drop(slot);
        let picks = picks?;
        self.routing
            .shadow(&self.store, &draw, model.version, &input, &picks);
        Ok(api::rerank_response(
            picks,
            input,
            model.name.clone(),
            model.version,
        ))
    }
}

#[tonic::async_trait]
impl v1::reranker_server::Reranker for RerankService {
    async fn rerank(
        &self,
        mut request: Request<v1::RerankRequest>,
    ) -> Result<Response<v1::RerankResponse>, Status> {
        let started = Instant::now();
        let client = request
            .extensions()
            .get::<deadline::ClientTimeout>()
            .copied();
        let budget = deadline::budget(client, self.request_timeout);
        let peer = request.remote_addr();
        let ticket = request.extensions_mut().remove::<Arc<Ticket>>();
        // Debug-formatted: a client's newline cannot forge a log line.
        let span = tracing::info_span!(
            "rerank",
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        telemetry::otlp::continue_trace(&span, request.metadata());
        let request = request.into_inner();
        span.record("request_id", tracing::field::debug(&request.request_id));
        let candidates = request.candidates.len();
        let result = async {
            let result =
                tokio::time::timeout(budget, self.handle(request, ticket, started + budget))
                    .await
                    .unwrap_or(Err(ServeError::DeadlineExceeded));
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match &result {
                Ok(response) => tracing::debug!(
                    items = response.items.len(),
                    version = response.model_version,
                    "reranked"
                ),
                // The server's own failures: an operator must see these without debug logs.
                Err(err) if err.is_server_fault() => {
                    tracing::warn!(code = ?err.code(), latency_ms = ms, %err, "rerank failed")
                }
                Err(err) => {
                    tracing::debug!(code = ?err.code(), latency_ms = ms, %err, "rerank refused")
                }
            }
            if self.access_log {
                let (code, version, items) = match &result {
                    Ok(r) => (tonic::Code::Ok, Some(r.model_version), r.items.len()),
                    Err(err) => (err.code(), None, 0),
                };
                tracing::info!(
                    target: "degre::access",
                    peer = %peer.map_or_else(|| "unknown".into(), |p| p.to_string()),
                    code = ?code, latency_ms = ms, version, candidates, items,
                    "rerank"
                );
            }
            result
        }
        .instrument(span)
        .await;
        result
            .map(|answer| {
                let version = answer.model_version;
                let mut response = Response::new(answer);
                response.extensions_mut().insert(ServedBy(version));
                response
            })
            .map_err(Status::from)
    }

    async fn get_model_info(
        &self,
        request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let model = self
            .store
            .get(request.into_inner().model_version)
            .map_err(|e| Status::from(ServeError::from(e)))?;
        // The versions are read after the model: a swap in between lists the newer ones.
        let (serving, loaded) = self.store.versions().unwrap_or((model.version, vec![]));
        Ok(Response::new(api::model_info(
            model.version,
            &model.manifest,
            model.engine().name(),
            model.max_candidates(self.max_candidates),
            serving,
            loaded,
        )))
    }
}
