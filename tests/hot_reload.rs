//! Hot reload: health flips after the first load, new versions swap in under load without a
//! failed request, and broken versions never replace a good one.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{model_files, model_files_edited, publish, request, TestServer, MODEL};
use degre::network::export::default_schema;
use degre::repository::publish::publish_files;

/// Polls until the server answers with `version`, or panics after 20 s.
async fn wait_for_version(server: &TestServer, version: u64) {
    let mut client = server.client().await;
    for _ in 0..400 {
        let response = client.rerank(request(5, 5, 0)).await.unwrap().into_inner();
        if response.model_version == version {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("version {version} never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_to_serving_once_a_model_loads() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    // The model's folder exists, with no version yet (a mining job publishes later).
    std::fs::create_dir(dir.path().join(MODEL)).unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let mut health = HealthClient::new(server.channel().await);
    let check = || HealthCheckRequest {
        service: "degre.v1.Reranker".into(),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let status = server
        .client()
        .await
        .rerank(request(5, 5, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    publish(dir.path(), 1);
    server.wait_serving().await;
    let overall = HealthCheckRequest {
        service: String::new(),
    };
    let status = health.check(overall).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_swaps_in_under_load_with_zero_failures() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            let channel_addr = format!("http://{}", server.grpc_addr);
            tokio::spawn(async move {
                let mut client =
                    degre::api::v1::reranker_client::RerankerClient::connect(channel_addr)
                        .await
                        .unwrap();
                let (mut ok, mut versions) = (0u64, std::collections::BTreeSet::new());
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let response = client
                        .rerank(request(50, 10, c * 1000 + i))
                        .await
                        .expect("no failed request");
                    assert_eq!(response.get_ref().items.len(), 10);
                    versions.insert(response.into_inner().model_version);
                    ok += 1;
                }
                (ok, versions)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(dir.path(), 2), 2);
    wait_for_version(&server, 2).await;
    assert_eq!(publish(dir.path(), 3), 3);
    wait_for_version(&server, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = std::collections::BTreeSet::new();
    for client in clients {
        let (ok, versions) = client.await.expect("client saw no failure");
        assert!(ok > 0);
        seen.extend(versions);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"degre_model_info{model="degre",version="3"} 1"#),
        "{metrics}"
    );
    let info_series = metrics
        .lines()
        .filter(|l| l.starts_with("degre_model_info{"));
    assert_eq!(
        info_series.count(),
        1,
        "only the serving version's: {metrics}"
    );
    server.stop().await;
}

/// Writes a version by hand, so tests can break it: its files in a staging folder, moved
/// in whole as a publisher does. The watcher never judges a version half-written (it would
/// count a failure for every state it saw, not one per broken version).
fn write_version(root: &std::path::Path, version: u64, files: &[(String, Vec<u8>)]) {
    let staging = tempfile::tempdir_in(root).unwrap();
    for (name, bytes) in files {
        std::fs::write(staging.path().join(name), bytes).unwrap();
    }
    let dir = root.join(MODEL).join(version.to_string());
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::rename(staging.path(), &dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    let good = model_files(&default_schema(), 2);
    let at = |name: &str| good.iter().position(|(f, _)| f == name).unwrap();
    let (encoder, decoder, manifest_at) =
        (at("encoder.onnx"), at("decoder.onnx"), at("manifest.json"));

    // Corrupt: one graph byte flipped after the checksum was taken.
    let mut corrupt = good.clone();
    let last = corrupt[encoder].1.len() - 1;
    corrupt[encoder].1[last] ^= 0xff;
    // Written a minute ago (corrupt, not a copy still under way), and moved in whole so
    // the watcher never sees it fresh.
    let staging = tempfile::tempdir_in(dir.path()).unwrap();
    write_version(staging.path(), 2, &corrupt);
    let flipped = staging.path().join(MODEL).join("2").join("encoder.onnx");
    let file = std::fs::File::options().write(true).open(flipped).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    std::fs::rename(
        staging.path().join(MODEL).join("2"),
        dir.path().join(MODEL).join("2"),
    )
    .unwrap();
    // Partial: the manifest arrived, a graph did not.
    write_version(
        dir.path(),
        3,
        &[good[decoder].clone(), good[manifest_at].clone()],
    );
    // Schema mismatch: a model that expects another candidate feature.
    let mut schema = default_schema();
    schema.candidate_dense.push("extra".into());
    write_version(dir.path(), 4, &model_files(&schema, 4));
    // Garbage graph with a matching checksum.
    let mut garbage = good.clone();
    garbage[encoder].1 = b"not onnx".to_vec();
    let mut manifest: serde_json::Value = serde_json::from_slice(&good[manifest_at].1).unwrap();
    manifest["files"]["encoder.onnx"] = degre::contract::manifest::sha256_hex(b"not onnx").into();
    garbage[manifest_at].1 = serde_json::to_vec(&manifest).unwrap();
    write_version(dir.path(), 5, &garbage);
    // Partial: graphs copied, manifest not yet.
    write_version(
        dir.path(),
        6,
        &[good[encoder].clone(), good[decoder].clone()],
    );
    // A manifest that is not one.
    write_version(
        dir.path(),
        7,
        &[
            good[encoder].clone(),
            good[decoder].clone(),
            ("manifest.json".into(), b"{".to_vec()),
        ],
    );

    // Limits that would refuse today's callers: fewer candidates than the serving 256.
    write_version(
        dir.path(),
        8,
        &model_files_edited(&default_schema(), 8, 50, |_| {}),
    );
    // Poisoned weights: NaN in one brand row, then in the brand feature's unknown bucket.
    let poison = |row: usize| {
        move |w: &mut degre::network::Weights| {
            let embedding = w.cand_embedding.as_mut().unwrap();
            let at = (embedding.offsets[1] as usize + row) * embedding.table.cols;
            embedding.table.data[at] = f32::NAN;
        }
    };
    write_version(
        dir.path(),
        9,
        &model_files_edited(&default_schema(), 9, 256, poison(33)),
    );
    let unknown = default_schema().candidate_categorical[1].vocab_size as usize;
    write_version(
        dir.path(),
        10,
        &model_files_edited(&default_schema(), 10, 256, poison(unknown)),
    );

    // Graphs the runtime reads differently from what the exporter meant: one logit of the
    // golden set moved (checksum recomputed, as a publisher would).
    let mut drifted = good.clone();
    let golden = at("golden.json");
    let mut set: degre::contract::golden::Golden = serde_json::from_slice(&good[golden].1).unwrap();
    set.cases[1].logits[2][3] += 0.01;
    drifted[golden].1 = serde_json::to_vec(&set).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&good[manifest_at].1).unwrap();
    manifest["files"]["golden.json"] =
        degre::contract::manifest::sha256_hex(&drifted[golden].1).into();
    drifted[manifest_at].1 = serde_json::to_vec(&manifest).unwrap();
    write_version(dir.path(), 11, &drifted);

    let expected = [
        ("golden", 1),
        ("checksum", 1),
        ("incomplete", 2),
        ("schema", 2),
        ("weights", 2),
        ("graph", 1),
        ("manifest", 1),
    ];
    let wanted: Vec<String> = expected
        .iter()
        .map(|(r, n)| format!("degre_model_loads_total{{result=\"failure\",reason=\"{r}\"}} {n}"))
        .collect();
    let metrics = server.metrics_with(&wanted).await;
    for line in &wanted {
        assert!(
            metrics.contains(line.as_str()),
            "missing {line} in:\n{metrics}"
        );
    }
    let mut client = server.client().await;
    let response = client.rerank(request(20, 5, 1)).await.unwrap().into_inner();
    assert_eq!(response.model_version, 1, "the good version keeps serving");

    // A good version published later is taken; the broken ones are not retried.
    let v12 = publish_files(dir.path(), MODEL, &good).unwrap();
    assert_eq!(v12, 12);
    wait_for_version(&server, 12).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_version_in_config_is_served_instead_of_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    publish(dir.path(), 2);
    let server = TestServer::start(dir.path(), |a| a.model_version = Some(1)).await;
    server.wait_serving().await;
    publish(dir.path(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = server
        .client()
        .await
        .rerank(request(5, 5, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_folder_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    // The model's folder given as the repository root: an easy mistake.
    let args = degre::config::ServeArgs {
        models: Some(dir.path().join(MODEL)),
        model_name: Some(MODEL.into()),
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..degre::config::ServeArgs::default()
    };
    let err = match degre::server::BoundServer::bind(args.resolve().unwrap()).await {
        Ok(_) => panic!("a server started on a missing model folder"),
        Err(err) => err,
    };
    assert!(err.is::<degre::config::ConfigError>(), "{err:#}");
    let expected = dir.path().join(MODEL).join(MODEL);
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_an_error_naming_the_listener_and_address() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let args = degre::config::ServeArgs {
        models: Some(dir.path().to_path_buf()),
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        metrics_addr: Some(addr.to_string()),
        ..degre::config::ServeArgs::default()
    };
    let err = match degre::server::BoundServer::bind(args.resolve().unwrap()).await {
        Ok(_) => panic!("bound a port that is taken"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains(&format!("cannot bind the metrics listener to {addr}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_linked_from_outside_the_model_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    // A complete, valid version, but elsewhere on disk, linked in as version 2.
    let outside = tempfile::tempdir().unwrap();
    publish(outside.path(), 2);
    std::os::unix::fs::symlink(
        outside.path().join(MODEL).join("1"),
        dir.path().join(MODEL).join("2"),
    )
    .unwrap();
    let refused = "degre_model_loads_total{result=\"failure\",reason=\"manifest\"} 1";
    let metrics = server.metrics_with(&[refused.to_string()]).await;
    assert!(metrics.contains(refused), "{metrics}");
    let response = server
        .client()
        .await
        .rerank(request(5, 5, 0))
        .await
        .unwrap();
    assert_eq!(response.into_inner().model_version, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_serving_versions_folder_does_not_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    publish(dir.path(), 2);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    wait_for_version(&server, 2).await;
    std::fs::remove_dir_all(dir.path().join(MODEL).join("2")).unwrap();
    // Many polls (every 50 ms) later, version 2 still answers from memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = server
        .client()
        .await
        .rerank(request(5, 5, 0))
        .await
        .unwrap();
    assert_eq!(response.into_inner().model_version, 2);
    // The next publish never reuses the removed number, and is taken as usual.
    assert_eq!(publish(dir.path(), 3), 3);
    wait_for_version(&server, 3).await;
    server.stop().await;
}

/// Canary: a newly published version answers its share of the requests, by routing key,
/// and one key always lands on the same version; shadow: the other version decodes the
/// sampled requests too, and how the lists differ reaches /metrics by version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_answers_its_canary_share_and_the_other_shadows_it() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |a| {
        a.canary_share = Some(0.2);
        a.shadow_share = Some(1.0);
    })
    .await;
    server.wait_serving().await;
    publish(dir.path(), 2);
    let mut client = server.client().await;
    let mut serving = 0;
    for _ in 0..400 {
        let info = client
            .get_model_info(degre::api::v1::GetModelInfoRequest::default())
            .await
            .unwrap()
            .into_inner();
        serving = info.serving_version;
        if serving == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serving, 2, "version 2 never loaded");
    let mut answer = async |request_id: String, routing_key: &str, pin: Option<u64>| {
        let mut r = request(10, 5, 3);
        r.request_id = request_id;
        r.routing_key = routing_key.into();
        r.model_version = pin;
        client.rerank(r).await.unwrap().into_inner().model_version
    };
    let n = 600;
    let mut on_new = 0;
    for i in 0..n {
        on_new += usize::from(answer(format!("user-{i}"), "", None).await == 2);
    }
    let share = on_new as f64 / n as f64;
    assert!(
        (share - 0.2).abs() < 4.0 * (0.16 / n as f64).sqrt(),
        "share {share}"
    );
    // The routing key decides, whatever the request id; a pin overrides the split.
    for key in ["a", "b", "c", "d", "e"] {
        let first = answer("x".into(), key, None).await;
        assert_eq!(answer("y".into(), key, None).await, first);
        assert_eq!(answer("z".into(), key, Some(1)).await, 1);
    }
    let both = [
        "version=\"1\",answered_by=\"2\"",
        "version=\"2\",answered_by=\"1\"",
    ]
    .map(|labels| format!("degre_shadow_overlap_count{{{labels}}}"));
    let text = server.metrics_with(&both).await;
    for line in &both {
        assert!(text.contains(line.as_str()), "{line} missing:\n{text}");
    }
    server.stop().await;
}

/// The encoder of `files` with a node that folds into a `side × side` f32 tensor, multiplied
/// by 0 into the state: the same model, and a memory bomb for a runtime that folds it.
fn with_folding_bomb(files: &[(String, Vec<u8>)], side: i64) -> Vec<(String, Vec<u8>)> {
    use degre::contract::manifest::sha256_hex;
    use prost::Message;
    use tract_onnx::pb::{attribute_proto::AttributeType, tensor_proto::DataType};
    use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto};
    let mut files = files.to_vec();
    let at = |name: &str| files.iter().position(|(f, _)| f == name).unwrap();
    let (encoder, manifest_at) = (at("encoder.onnx"), at("manifest.json"));
    let mut model = ModelProto::decode(files[encoder].1.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.push(TensorProto {
        name: "bomb_shape".into(),
        dims: vec![2],
        data_type: DataType::Int64 as i32,
        int64_data: vec![side, side],
        ..TensorProto::default()
    });
    graph.initializer.push(TensorProto {
        name: "bomb_zero".into(),
        data_type: DataType::Float as i32,
        float_data: vec![0.0],
        ..TensorProto::default()
    });
    let node =
        |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..NodeProto::default()
        };
    let keepdims = AttributeProto {
        name: "keepdims".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..AttributeProto::default()
    };
    let value = AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(TensorProto {
            dims: vec![1],
            data_type: DataType::Float as i32,
            float_data: vec![1.0],
            ..TensorProto::default()
        }),
        ..AttributeProto::default()
    };
    let last = graph
        .node
        .iter()
        .position(|n| n.output == ["state"])
        .unwrap();
    let state_in = graph.node[last].input[0].clone();
    graph.node[last].input[0] = "bombed_state".into();
    let bomb = [
        node("ConstantOfShape", &["bomb_shape"], "bomb", vec![value]),
        node("ReduceMax", &["bomb"], "bomb_max", vec![keepdims]),
        node("Mul", &["bomb_max", "bomb_zero"], "bomb_nothing", vec![]),
        node("Add", &[&state_in, "bomb_nothing"], "bombed_state", vec![]),
    ];
    graph.node.splice(last..last, bomb);
    files[encoder].1 = model.encode_to_vec();
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[manifest_at].1).unwrap();
    manifest["files"]["encoder.onnx"] = sha256_hex(&files[encoder].1).into();
    files[manifest_at].1 = serde_json::to_vec(&manifest).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_that_folds_into_a_huge_tensor_is_refused_before_it_takes_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    let rss = |metrics: &str| -> f64 {
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "));
        line.unwrap().parse().unwrap()
    };
    let before = rss(&server.metrics().await);

    // The bomb is harmless when small: the model is the same, so it loads and serves.
    let small = with_folding_bomb(&model_files(&default_schema(), 2), 4);
    write_version(dir.path(), 2, &small);
    wait_for_version(&server, 2).await;
    // 16384² f32 is 1 GiB: far above what a version of these weights may take.
    let huge = with_folding_bomb(&model_files(&default_schema(), 3), 16_384);
    write_version(dir.path(), 3, &huge);
    let refused = "degre_model_loads_total{result=\"failure\",reason=\"graph\"} 1".to_string();
    let metrics = server.metrics_with(std::slice::from_ref(&refused)).await;
    assert!(metrics.contains(&refused), "not refused:\n{metrics}");
    let grown = rss(&metrics) - before;
    assert!(grown < 256e6, "RSS grew by {grown} bytes while refusing it");
    let mut client = server.client().await;
    let response = client.rerank(request(20, 5, 1)).await.unwrap().into_inner();
    assert_eq!(
        response.model_version, 2,
        "the serving version keeps serving"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_loads_too_slowly_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    // No version loads, checks and warms up within 1 ms.
    let server = TestServer::start(dir.path(), |a| a.model_load_timeout_ms = Some(1)).await;
    let timed_out = "degre_model_loads_total{result=\"failure\",reason=\"timeout\"} 1".to_string();
    let metrics = server.metrics_with(std::slice::from_ref(&timed_out)).await;
    assert!(
        metrics.contains(&timed_out),
        "no timeout counted:\n{metrics}"
    );
    let mut client = server.client().await;
    let status = client.rerank(request(5, 5, 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    server.stop().await;
}
