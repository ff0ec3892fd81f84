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
    // Canonical proto3 JSON: lowerCamelCase names, 64-bit integers as strings.
    assert_eq!(response["modelName"], "degre");
    assert_eq!(response["modelVersion"], "1");
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    let candidates = request["candidates"].as_array().unwrap();
    let items = response["items"].as_array().unwrap();
    assert_eq!(items.len() as u64, request["top_k"].as_u64().unwrap());
    let mut shown = std::collections::HashSet::new();
    for item in items {
        let index = item["candidateIndex"].as_u64().unwrap() as usize;
        assert!(shown.insert(index), "candidate {index} shown twice");
        assert_eq!(item["itemId"], candidates[index]["item_id"]);
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
    let (printed_schema, schema) = (&printed["schema"], &manifest["schema"]);
    for (json, manifest) in [
        ("contextDense", "context_dense"),
        ("candidateDense", "candidate_dense"),
    ] {
        assert_eq!(printed_schema[json], schema[manifest], "{json}");
    }
    for (json, manifest) in [
        ("contextCategorical", "context_categorical"),
        ("candidateCategorical", "candidate_categorical"),
    ] {
        let printed = printed_schema[json].as_array().unwrap();
        let declared = schema[manifest].as_array().unwrap();
        assert_eq!(printed.len(), declared.len(), "{json}");
        for (p, d) in printed.iter().zip(declared) {
            assert_eq!(p["name"], d["name"]);
            assert_eq!(
                p["vocabSize"],
                d["vocab_size"].to_string(),
                "uint64 as a string"
            );
        }
    }
    // The proto always carries the flag; the manifest omits it when false.
    let ranking_score = schema.get("ranking_score").cloned().unwrap_or(false.into());
    assert_eq!(printed_schema["rankingScore"], ranking_score);
    let provenance: serde_json::Value =
        serde_json::from_str(printed["provenanceJson"].as_str().unwrap()).unwrap();
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
        stderr.contains("bad.json: not a rerank request in proto3 JSON")
            && stderr.contains("line 1"),
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

/// Canonical proto3 JSON in (lowerCamelCase, 64-bit integers as strings) is read like the
/// proto's own field names; what is printed parses back into the response message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_reads_and_writes_canonical_proto3_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = TestServer::start(&root.join("models"), |_| {}).await;
    server.wait_serving().await;
    let example: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/examples/rerank_request.json")).unwrap(),
    )
    .unwrap();
    let snake: degre::api::v1::RerankRequest = serde_json::from_value(example).unwrap();
    let canonical = serde_json::to_value(&snake).unwrap();
    assert_eq!(canonical["topK"], snake.top_k, "lowerCamelCase names");
    let mut pinned = canonical.clone();
    pinned["modelVersion"] = "1".into();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("canonical.json");
    std::fs::write(&file, serde_json::to_vec(&pinned).unwrap()).unwrap();
    let out = degre(&server, "rerank", &["--request".as_ref(), file.as_ref()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: degre::api::v1::RerankResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response.model_version, 1);
    assert_eq!(response.items.len(), snake.top_k as usize);

    // The same request sent over gRPC gives the same list.
    let direct = server
        .client()
        .await
        .rerank(snake)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(direct.items, response.items);
    server.stop().await;
}

/// protobuf's own JSON parser and printer (Python) on `json`, a `message`; `None` where Python's
/// protobuf is missing, unless CI requires it (DEGRE_REQUIRE_ONNXRUNTIME: onnx brings it).
fn protobuf_json(message: &str, json: &[u8]) -> Option<String> {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let descriptors = dir.path().join("degre.desc");
    std::fs::write(&descriptors, degre::api::FILE_DESCRIPTOR_SET).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proto3_json.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(&descriptors)
        .arg(message)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(json).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("ModuleNotFoundError")
        && std::env::var_os("DEGRE_REQUIRE_ONNXRUNTIME").is_none()
    {
        eprintln!("protobuf JSON check not run: {stderr}");
        return None;
    }
    assert!(
        out.status.success(),
        "protobuf's parse of {message}: {stderr}"
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// A request printed by protobuf's JSON printer is read by `degre rerank`, and its answer
/// is valid proto3 JSON to protobuf's parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_round_trips_json_from_protobufs_own_printer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read(root.join("docs/examples/rerank_request.json")).unwrap();
    let Some(printed) = protobuf_json("degre.v1.RerankRequest", &example) else {
        return;
    };
    assert!(printed.contains("\"topK\""), "{printed}");
    let server = TestServer::start(&root.join("models"), |_| {}).await;
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.json");
    std::fs::write(&file, &printed).unwrap();
    let out = degre(&server, "rerank", &["--request".as_ref(), file.as_ref()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = protobuf_json("degre.v1.RerankResponse", &out.stdout).unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    assert_eq!(
        theirs, ours,
        "protobuf prints degre's answer exactly as degre did"
    );
    assert_eq!(theirs["modelVersion"], "1");
    server.stop().await;
}
