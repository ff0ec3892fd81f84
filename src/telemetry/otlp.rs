//! OpenTelemetry: with `--otlp-endpoint`, every Rerank span (with its `request_id`) is
//! exported over OTLP/gRPC, batched off the request path; off by default. A request that
//! carries W3C trace context (`traceparent` metadata) continues the caller's trace, and
//! its trace id is on the span (so in the logs) whether or not spans are exported.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Exports until dropped; dropping flushes the spans still batched.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("degre: flushing OTLP spans: {e}");
        }
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans sent to `endpoint`, keeping
/// `sample_ratio` of the traces started here (a caller's sampling decision is followed).
/// Needs a tokio runtime (the exporter's channel and batching run on it).
pub fn layer<S>(endpoint: &str, sample_ratio: f64) -> Result<(impl Layer<S>, Exporting), String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let batches = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name("degre")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("degre");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Exporting(provider)))
}

/// Makes `span` a child of the caller's span if `metadata` carries W3C trace context, and
/// records the trace id on it (field `trace_id`, which the span must declare).
pub fn continue_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if metadata.get("traceparent").is_none() {
        return;
    }
    let caller = TraceContextPropagator::new().extract(&Headers(metadata.as_ref()));
    let remote = caller.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    span.record("trace_id", tracing::field::display(remote.trace_id()));
    // Without an OpenTelemetry layer (no endpoint) there is nothing to parent.
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
