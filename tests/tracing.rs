//! OpenTelemetry export: the real binary sends its Rerank spans over OTLP/gRPC to a
//! collector (a fake one here, speaking the OTLP trace service), continuing the caller's
//! W3C trace context and carrying the request id.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, publish, request, serve_process};
use degre::api::v1::reranker_client::RerankerClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_spans_reach_an_otlp_collector_in_the_callers_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (exported, mut received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(exported)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let grpc = free_port();
    let endpoint = format!("http://{collector_addr}");
    let args = [
        "--otlp-endpoint",
        &endpoint,
        "--log-format",
        "json",
        "--access-log",
        "true",
    ];
    let child = serve_process(dir.path(), "127.0.0.1", grpc, &args);
    let addr = format!("http://127.0.0.1:{grpc}");
    let mut client = loop {
        if let Ok(mut c) = RerankerClient::connect(addr.clone()).await {
            if c.rerank(request(5, 5, 0)).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut traced = tonic::Request::new(request(20, 5, 7));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    traced
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    client.rerank(traced).await.unwrap();

    // SIGTERM flushes the batched spans before the process exits.
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut spans = Vec::new();
    let mut service = None;
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(5), received.recv()).await
    {
        for resource in batch.resource_spans {
            for attribute in resource.resource.iter().flat_map(|r| &r.attributes) {
                if attribute.key == "service.name" {
                    service = attribute.value.clone().and_then(|v| v.value);
                }
            }
            spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
        if spans.iter().any(|s| hex(&s.trace_id) == TRACE_ID) {
            break;
        }
    }
    assert_eq!(service, Some(Value::StringValue("degre".into())));
    let span = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no span in the caller's trace among {spans:?}"));
    assert_eq!(span.name, "rerank");
    assert_eq!(
        hex(&span.parent_span_id),
        PARENT_ID,
        "a child of the caller's span"
    );
    let request_id = span.attributes.iter().find(|a| a.key == "request_id");
    let request_id = request_id
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value);
    assert_eq!(request_id, Some(Value::StringValue("\"req-7\"".into())));

    // The logs carry the caller's trace id too.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let access = stderr
        .lines()
        .find(|l| l.contains("degre::access") && l.contains("req-7"))
        .unwrap_or_else(|| panic!("no access line: {stderr}"));
    let access: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(access["span"]["trace_id"], TRACE_ID);
}
