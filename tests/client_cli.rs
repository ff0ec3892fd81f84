//! The README's example: `degre rerank` sends docs/examples/rerank_request.json to a server
//! on the bundled model; and reflection (v1, v1alpha) lists the services for tools like grpcurl.

mod common;

use std::path::Path;

use common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_degre");

/// Runs a `degre` client command against `server`.
async fn degre(
    server: &TestServer,
    command: &str,
    args: &[&std::ffi::OsStr],
) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args([command, "--addr", &format!("http://{}", server.grpc_addr)])
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_request_reranks_on_the_bundled_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("docs/examples/rerank_request.json");
    let server = TestServer::start(&root.join("models"), |_| {}).await;
    server.wait_serving().await;
    let out = degre(&server, "rerank", &["--request".as_ref(), example.as_ref()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["model_name"], "degre");
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    let candidates = request["candidates"].as_array().unwrap();
    let items = response["items"].as_array().unwrap();
    assert_eq!(items.len() as u64, request["top_k"].as_u64().unwrap());
    let mut shown = std::collections::HashSet::new();
    for item in items {
        let index = item["candidate_index"].as_u64().unwrap() as usize;
        assert!(shown.insert(index), "candidate {index} shown twice");
        assert_eq!(item["item_id"], candidates[index]["item_id"]);
    }
    server.stop().await;
}

/// What a caller needs to build requests comes from the server: over gRPC and from
/// `degre model-info`, the bundled model's schema exactly as its manifest says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_info_gives_the_served_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = TestServer::start(&root.join("models"), |a| a.max_candidates = Some(100)).await;
    server.wait_serving().await;
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("models/degre/1/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut client = server.client().await;
    let info = client
        .get_model_info(degre::api::v1::GetModelInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.model_version, info.serving_version), (1, 1));
    assert_eq!(info.loaded_versions, [1]);
    assert_eq!(
        info.max_candidates, 100,
        "the server's limit is the smaller"
    );
    assert_eq!(info.engine, "native");
    assert_eq!(
        info.objective,
        manifest["provenance"]["objective"].as_str().unwrap()
    );
    let status = client
        .get_model_info(degre::api::v1::GetModelInfoRequest {
            model_version: Some(7),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let out = degre(&server, "model-info", &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut schema = manifest["schema"].clone();
    // The proto always carries the flag; the manifest omits it when false.
    schema["ranking_score"] = schema.get("ranking_score").cloned().unwrap_or(false.into());
    assert_eq!(printed["schema"], schema);
    let provenance: serde_json::Value =
        serde_json::from_str(printed["provenance_json"].as_str().unwrap()).unwrap();
    assert_eq!(provenance, manifest["provenance"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "{\"candidates\": [{\"item\": 1}]}").unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["rerank", "--request"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json: not a rerank request") && stderr.contains("line 1"),
        "{stderr}"
    );
}

/// The services a reflection client lists, over v1 or v1alpha; the gRPC code if refused.
async fn reflected_services(
    channel: tonic::transport::Channel,
    v1alpha: bool,
) -> Result<Vec<String>, tonic::Code> {
    macro_rules! list {
        ($pb:path) => {{
            use pb::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            use $pb as pb;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .map_err(|s| s.code())?
                .into_inner();
            let response = responses.message().await.map_err(|s| s.code())?.unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("unexpected {response:?}");
            };
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }};
    }
    if v1alpha {
        list!(tonic_reflection::pb::v1alpha)
    } else {
        list!(tonic_reflection::pb::v1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_reranker_and_health_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    common::publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    for v1alpha in [false, true] {
        let names = reflected_services(server.channel().await, v1alpha)
            .await
            .unwrap();
        for service in ["degre.v1.Reranker", "grpc.health.v1.Health"] {
            assert!(names.contains(&service.to_string()), "{v1alpha}: {names:?}");
        }
    }
    server.stop().await;

    let off = TestServer::start(dir.path(), |a| a.reflection = Some(false)).await;
    for v1alpha in [false, true] {
        let refused = reflected_services(off.channel().await, v1alpha).await;
        assert_eq!(refused, Err(tonic::Code::Unimplemented));
    }
    off.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_exits_with_its_grpc_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = TestServer::start(&root.join("models"), |_| {}).await;
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("empty.json");
    std::fs::write(&request, r#"{"candidates": []}"#).unwrap();
    let out = degre(&server, "rerank", &["--request".as_ref(), request.as_ref()]).await;
    // 20 + INVALID_ARGUMENT (3).
    assert_eq!(out.status.code(), Some(23), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidArgument: candidates"), "{stderr}");
    server.stop().await;
}
