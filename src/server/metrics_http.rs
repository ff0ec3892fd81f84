//! The metrics listener: Prometheus text format at `/metrics`, apart from gRPC traffic.

use std::future::Future;

use axum::{http::header, response::IntoResponse, routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(
    listener: TcpListener,
    handle: &'static PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    let app = Router::new().route(
        "/metrics",
        get(move || async move {
            let text = crate::telemetry::render(handle);
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%e, "metrics listener failed");
    }
    upkeep.abort();
}
