//! The Rerank RPC over loopback with a real tonic client: results, determinism, bad input,
//! limits and deadlines.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{grpc_status, publish, request, TestServer};
use degre::api::v1::{reranker_client::RerankerClient, RerankRequest};
use tonic::transport::Channel;
use tonic::Code;

async fn serving_server(
    tweak: impl FnOnce(&mut degre::config::ServeArgs),
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), tweak).await;
    server.wait_serving().await;
    (dir, server)
}

/// The server still answers a valid request with `items` items.
async fn assert_serves(client: &mut RerankerClient<Channel>, request: RerankRequest, items: usize) {
    let response = client.rerank(request).await.unwrap().into_inner();
    assert_eq!(response.items.len(), items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_top_k_distinct_candidates_deterministically() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    let response = client
        .rerank(request(50, 10, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.items.len(), 10);
    assert_eq!(response.model_name, "degre");
    assert_eq!(response.model_version, 1);
    let indices: HashSet<u32> = response.items.iter().map(|i| i.candidate_index).collect();
    assert_eq!(indices.len(), 10, "distinct candidates");
    for item in &response.items {
        assert_eq!(item.item_id, format!("item-{}", item.candidate_index));
        assert!(
            item.score <= 0.0 && item.score.is_finite(),
            "a log-probability: {}",
            item.score
        );
    }
    let again = client
        .rerank(request(50, 10, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, response, "identical requests give identical lists");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_zero_ranks_all_and_large_top_k_returns_n() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    for top_k in [0, 12, 1000] {
        let items = client
            .rerank(request(12, top_k, 2))
            .await
            .unwrap()
            .into_inner()
            .items;
        let mut indices: Vec<u32> = items.iter().map(|i| i.candidate_index).collect();
        indices.sort();
        assert_eq!(indices, (0..12).collect::<Vec<_>>(), "top_k {top_k}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_categorical_ids_use_the_unknown_bucket() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    let mut req = request(8, 8, 3);
    req.candidates[2].features.as_mut().unwrap().categorical[0] = 1_000_000;
    req.context.as_mut().unwrap().categorical[0] = 77;
    let items = client.rerank(req).await.unwrap().into_inner().items;
    assert_eq!(items.len(), 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let (_dir, server) = serving_server(|a| a.max_candidates = Some(100)).await;
    let mut client = server.client().await;
    type Edit = fn(&mut degre::api::v1::RerankRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("candidates: must not be empty", |r| r.candidates.clear()),
        ("candidates: 101 candidates exceed the limit of 100", |r| {
            let big = request(101, 1, 0);
            r.candidates = big.candidates;
        }),
        (
            "candidates[3].features.dense: expected 8 values, got 7",
            |r| {
                r.candidates[3].features.as_mut().unwrap().dense.pop();
            },
        ),
        ("context.dense: expected 4 values, got 5", |r| {
            r.context.as_mut().unwrap().dense.push(1.0);
        }),
        (
            "candidates[1].features.categorical[1]: id -4 is negative",
            |r| {
                r.candidates[1].features.as_mut().unwrap().categorical[1] = -4;
            },
        ),
        (
            "candidates[4].features.categorical: expected 2 ids, got 1",
            |r| {
                r.candidates[4].features.as_mut().unwrap().categorical.pop();
            },
        ),
        ("candidates[5].item_id: duplicate item id \"item-0\"", |r| {
            r.candidates[5].item_id = "item-0".into();
        }),
        ("candidates[6].item_id: must not be empty", |r| {
            r.candidates[6].item_id.clear()
        }),
        (
            "candidates[2].features.dense[5]: NaN is not a finite number",
            |r| {
                r.candidates[2].features.as_mut().unwrap().dense[5] = f32::NAN;
            },
        ),
        ("context.dense[0]: inf is not a finite number", |r| {
            r.context.as_mut().unwrap().dense[0] = f32::INFINITY;
        }),
        (
            "candidates[7].ranking_score: missing: 9 of 10 candidates carry one; send it for \
             all or none",
            |r| r.candidates[7].ranking_score = None,
        ),
        (
            "candidates[2].ranking_score: NaN is not a finite number",
            |r| {
                r.candidates[2].ranking_score = Some(f32::NAN);
            },
        ),
    ];
    for (expected, edit) in cases {
        let mut req = request(10, 5, 4);
        edit(&mut req);
        let status = client.rerank(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
        assert_eq!(status.message(), expected);
    }
    // A finite value the model overflows on is the client's error, not INTERNAL.
    let mut huge = request(10, 5, 4);
    for candidate in &mut huge.candidates {
        candidate.features.as_mut().unwrap().dense.fill(3e38);
    }
    let status = client.rerank(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("features: "), "{status:?}");
    // The server keeps serving after bad input.
    assert_serves(&mut client, request(10, 5, 4), 5).await;
    server.stop().await;
}

/// The model reads the incumbent's order: from the scores when sent, else from the
/// request's own order, and only the order and spread within the request matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ranking_score_or_else_the_request_order_is_the_incumbents_order() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    let mut list = async |edit: &dyn Fn(usize) -> Option<f32>| {
        let mut req = request(30, 10, 9);
        for (i, c) in req.candidates.iter_mut().enumerate() {
            c.ranking_score = edit(i);
        }
        let items = client.rerank(req).await.unwrap().into_inner().items;
        items.iter().map(|i| i.candidate_index).collect::<Vec<_>>()
    };
    let by_request_order = list(&|_| None).await;
    assert_eq!(list(&|i| Some(-(i as f32))).await, by_request_order);
    // Any positive affine rescaling of the scores is the same input.
    let scores = |i: usize| ((i * 37) % 30) as f32;
    let scored = list(&|i| Some(scores(i))).await;
    assert_eq!(list(&|i| Some(1000.0 * scores(i) - 7.0)).await, scored);
    // The scores are read: reversing them changes the list.
    assert_ne!(list(&|i| Some(-scores(i))).await, scored);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_version_must_be_loaded() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    let mut req = request(5, 5, 5);
    req.model_version = Some(1);
    assert_eq!(
        client
            .rerank(req.clone())
            .await
            .unwrap()
            .into_inner()
            .model_version,
        1
    );
    req.model_version = Some(42);
    let status = client.rerank(req).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("model_version 42 is not loaded"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_resource_exhausted_not_an_unbounded_queue() {
    let (_dir, server) = serving_server(|a| {
        a.max_in_flight = Some(2);
        a.compute_threads = Some(1);
    })
    .await;
    let channel = server.channel().await;
    let calls = (0..64).map(|i| {
        let mut client = degre::api::v1::reranker_client::RerankerClient::new(channel.clone());
        tokio::spawn(async move { client.rerank(request(256, 256, i)).await.map(|_| ()) })
    });
    let mut codes = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        codes.push(call.await.unwrap().map_or_else(|s| s.code(), |()| Code::Ok));
    }
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)),
        "{codes:?}"
    );
    assert!(codes.contains(&Code::Ok));
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_would_queue_too_long_is_refused_at_once() {
    let (_dir, server) = serving_server(|a| {
        a.max_in_flight = Some(1000);
        a.compute_threads = Some(1);
        a.max_queue_ms = Some(5);
    })
    .await;
    let channel = server.channel().await;
    let calls = (0..64).map(|i| {
        let mut client = degre::api::v1::reranker_client::RerankerClient::new(channel.clone());
        tokio::spawn(async move { client.rerank(request(256, 256, i)).await.map(|_| ()) })
    });
    let mut outcomes = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        outcomes.push(call.await.unwrap());
    }
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(outcomes.iter().any(Result::is_ok));
    assert!(
        !refused.is_empty(),
        "64 requests at once all queued within 5 ms"
    );
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("compute queue"), "{status:?}");
    }
    // Refusals are counted like any answer, and the server keeps serving.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("degre_requests_total{code=\"RESOURCE_EXHAUSTED\",version=\"none\"}"),
        "{metrics}"
    );
    assert_serves(&mut server.client().await, request(10, 5, 4), 5).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_deadline_exceeded() {
    // Requests of 3,000 candidates (N² attention) queue behind a single compute thread, so
    // the deadline passes while the last request waits.
    let dir = tempfile::tempdir().unwrap();
    let files = common::model_files_limited(&degre::network::export::default_schema(), 1, 4096);
    degre::repository::publish::publish_files(dir.path(), common::MODEL, &files).unwrap();
    let server = TestServer::start(dir.path(), |a| {
        a.compute_threads = Some(1);
        a.max_candidates = Some(4096);
        a.max_queue_ms = Some(60_000); // queue until the deadline, not the queue limit
    })
    .await;
    server.wait_serving().await;
    let channel = server.channel().await;
    let busy: Vec<_> = (0..12)
        .map(|i| {
            let mut client = degre::api::v1::reranker_client::RerankerClient::new(channel.clone());
            tokio::spawn(async move { client.rerank(request(3000, 10, i)).await })
        })
        .collect();
    server.wait_in_flight(6).await;
    let mut client = server.client().await;
    let mut req = tonic::Request::new(request(3000, 10, 99));
    req.set_timeout(Duration::from_millis(200));
    let status = client.rerank(req).await.unwrap_err();
    // The server answers DEADLINE_EXCEEDED 10% early; on a loaded machine the client's own
    // timer (tonic: CANCELLED "Timeout expired") can still win the race.
    let client_gave_up = status.code() == Code::Cancelled && status.message() == "Timeout expired";
    assert!(
        status.code() == Code::DeadlineExceeded || client_gave_up,
        "{status:?}"
    );
    // Either way the server stopped the request and said why.
    let answered = "degre_requests_total{code=\"DEADLINE_EXCEEDED\",version=\"none\"}";
    let metrics = server.metrics_with(&[answered.to_string()]).await;
    assert!(
        metrics.contains(answered),
        "the server never answered DEADLINE_EXCEEDED"
    );
    for call in busy {
        let code = call.await.unwrap().map_or_else(|s| s.code(), |_| Code::Ok);
        assert!(
            matches!(code, Code::Ok | Code::DeadlineExceeded),
            "{code:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_and_the_server_keeps_serving() {
    let (_dir, server) = serving_server(|a| a.max_message_bytes = Some(8 * 1024)).await;
    let mut client = server.client().await;
    let status = client.rerank(request(256, 5, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 8192 bytes"),
        "{}",
        status.message()
    );
    assert_serves(&mut client, request(20, 5, 1), 5).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_open_only_the_configured_number_of_streams() {
    let (_dir, server) = serving_server(|a| a.max_streams_per_connection = Some(7)).await;
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    // The server's SETTINGS frame arrives just after the handshake.
    for _ in 0..100 {
        if send.current_max_send_streams() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.unwrap();
    }
    assert_eq!(send.current_max_send_streams(), 7);
    server.stop().await;
}

fn constraints(
    pins: &[(&str, u32)],
    caps: &[(u32, u32, u32)],
    exclude: &[&str],
) -> Option<degre::api::v1::Constraints> {
    use degre::api::v1::{Constraints, GroupCap, Pin};
    Some(Constraints {
        pins: pins
            .iter()
            .map(|&(item_id, slot)| Pin {
                item_id: item_id.into(),
                slot,
            })
            .collect(),
        group_caps: caps
            .iter()
            .map(|&(categorical_feature, max_count, window)| GroupCap {
                categorical_feature,
                max_count,
                window,
            })
            .collect(),
        exclude_item_ids: exclude.iter().map(|s| s.to_string()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_shape_the_list_and_bad_ones_are_invalid_argument() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;

    // Pins at their slots, exclusions absent, at most 2 of a brand (feature 0, id i % 64 →
    // with i % 4 below, four brands) in any 3 consecutive slots.
    let mut req = request(40, 12, 3);
    for (i, c) in req.candidates.iter_mut().enumerate() {
        c.features.as_mut().unwrap().categorical[0] = (i % 4) as i64;
    }
    req.constraints = constraints(
        &[("item-7", 0), ("item-9", 5)],
        &[(0, 2, 3)],
        &["item-1", "item-2"],
    );
    let response = client.rerank(req).await.unwrap().into_inner();
    let list: Vec<u32> = response.items.iter().map(|i| i.candidate_index).collect();
    assert_eq!(list.len(), 12, "{response:?}");
    assert_eq!((list[0], list[5]), (7, 9));
    assert!(!list.contains(&1) && !list.contains(&2));
    for window in list.windows(3) {
        for brand in 0..4 {
            assert!(
                window.iter().filter(|&&c| c % 4 == brand).count() <= 2,
                "{list:?}"
            );
        }
    }
    assert_eq!(response.unfilled, "");

    // Caps that leave too few items: the feasible prefix, and why.
    let mut req = request(10, 5, 3);
    for c in &mut req.candidates {
        c.features.as_mut().unwrap().categorical[0] = 1;
    }
    req.constraints = constraints(&[], &[(0, 2, 0)], &[]);
    let response = client.rerank(req).await.unwrap().into_inner();
    assert_eq!(response.items.len(), 2);
    assert!(response.unfilled.starts_with("slot 2: "), "{response:?}");

    let bad: [(&str, Option<degre::api::v1::Constraints>); 8] = [
        (
            "constraints.pins[1].slot: slot 2 is already pinned by constraints.pins[0]",
            constraints(&[("item-0", 2), ("item-1", 2)], &[], &[]),
        ),
        (
            "constraints.pins[0].slot: slot 5 is beyond the 5 slots to fill",
            constraints(&[("item-0", 5)], &[], &[]),
        ),
        (
            "constraints.pins[0].item_id: unknown item id \"nope\"",
            constraints(&[("nope", 0)], &[], &[]),
        ),
        (
            "constraints.exclude_item_ids[0]: unknown item id \"gone\"",
            constraints(&[], &[], &["gone"]),
        ),
        (
            "constraints.exclude_item_ids[0]: the item is pinned by constraints.pins[0]",
            constraints(&[("item-3", 1)], &[], &["item-3"]),
        ),
        (
            "constraints.group_caps[0].categorical_feature: the schema has no candidate categorical feature 2",
            constraints(&[], &[(2, 1, 0)], &[]),
        ),
        (
            "constraints.group_caps[0].max_count: must be > 0",
            constraints(&[], &[(0, 0, 0)], &[]),
        ),
        (
            "constraints.pins[1].item_id: already pinned by constraints.pins[0]",
            constraints(&[("item-4", 0), ("item-4", 1)], &[], &[]),
        ),
    ];
    for (expected, constraints) in bad {
        let mut req = request(10, 5, 4);
        req.constraints = constraints;
        let status = client.rerank(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
        assert_eq!(status.message(), expected);
    }
    assert_serves(&mut client, request(10, 5, 4), 5).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explained_items_name_their_alternatives_and_the_rules_that_masked() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    let mut req = request(30, 6, 5);
    req.constraints = constraints(&[("item-4", 1)], &[], &["item-0"]);
    let plain = client.rerank(req.clone()).await.unwrap().into_inner();
    assert!(plain
        .items
        .iter()
        .all(|i| i.alternatives.is_empty() && i.masked_by.is_empty()));

    req.explain = true;
    let explained = client.rerank(req).await.unwrap().into_inner();
    let order = |r: &degre::api::v1::RerankResponse| -> Vec<u32> {
        r.items.iter().map(|i| i.candidate_index).collect()
    };
    assert_eq!(
        order(&explained),
        order(&plain),
        "explaining changes nothing else"
    );
    for (slot, item) in explained.items.iter().enumerate() {
        let expected: &[&str] = match slot {
            0 => &["pin", "exclusion"],
            1 => &["pin"],
            _ => &["exclusion"],
        };
        assert_eq!(item.masked_by, expected, "slot {slot}");
        if slot == 1 {
            assert!(item.alternatives.is_empty(), "a pin has no alternative");
            continue;
        }
        assert_eq!(item.alternatives.len(), 3, "slot {slot}");
        let chosen = item.score.exp();
        let mut last = chosen;
        for alternative in &item.alternatives {
            assert_ne!(alternative.candidate_index, item.candidate_index);
            assert_ne!(
                alternative.item_id, "item-0",
                "an excluded item is no alternative"
            );
            assert_eq!(
                alternative.item_id,
                format!("item-{}", alternative.candidate_index)
            );
            assert!(alternative.probability > 0.0 && alternative.probability <= last);
            last = alternative.probability;
        }
        let total: f32 = chosen + item.alternatives.iter().map(|a| a.probability).sum::<f32>();
        assert!(total <= 1.0 + 1e-5, "slot {slot}: {total}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_empty_candidates_are_refused_before_decoding() {
    let (_dir, server) = serving_server(|_| {}).await;
    let mut client = server.client().await;
    // 2 bytes per candidate on the wire: 2 million fit in the 4 MiB message limit, and
    // would decode into ~160 MB of structs.
    let mut req = request(1, 1, 1);
    req.candidates = vec![degre::api::v1::Candidate::default(); 2_000_000];
    let status = client.rerank(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "candidates: 2000000 candidates exceed the limit of 1000"
    );
    assert_serves(&mut client, request(10, 5, 4), 5).await;
    server.stop().await;
}

/// Connections are bounded: beyond `--max-connections` one is closed on accept (and
/// counted), a silent one is closed after `--idle-timeout-s`, which frees its slot, and a
/// client in use is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_silent_ones_closed() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    let (_dir, server) = serving_server(|a| {
        a.max_connections = Some(3);
        a.idle_timeout_s = Some(1);
    })
    .await;
    // The health check's connection is gone before the slots are counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut busy = server.client().await;
    assert_serves(&mut busy, request(10, 5, 1), 5).await;
    let keep_busy = tokio::spawn(async move {
        for _ in 0..15 {
            assert_serves(&mut busy, request(10, 5, 1), 5).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let silent: Vec<TcpStream> = connect_many(server.grpc_addr, 2).await;
    // A fourth connection is closed at once: its first read sees the end of the stream.
    let mut extra = TcpStream::connect(server.grpc_addr).await.unwrap();
    let closed_at_once = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut [0; 64]))
        .await
        .expect("a connection beyond the limit is closed at once");
    assert!(
        matches!(closed_at_once, Ok(0) | Err(_)),
        "{closed_at_once:?}"
    );
    // The silent ones (they read the server's HTTP/2 settings, never answer) are closed
    // after a second of silence.
    for mut s in silent {
        let until_closed = async { while let Ok(1..) = s.read(&mut [0; 64]).await {} };
        tokio::time::timeout(Duration::from_secs(3), until_closed)
            .await
            .expect("a silent connection is closed");
    }
    // Their slots are free again, and the busy client never noticed.
    let mut fresh = server.client().await;
    assert_serves(&mut fresh, request(10, 5, 2), 5).await;
    keep_busy.await.unwrap();
    let refused = "degre_connections_refused_total 1";
    let text = server.metrics_with(&[refused.to_string()]).await;
    assert!(text.contains(refused), "{text}");
    server.stop().await;
}

async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// A Rerank stream whose gRPC frame declares 1 MB, of which `sent` bytes arrive; the rest
/// never does.
async fn unfinished_body(
    addr: std::net::SocketAddr,
    sent: usize,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<tonic::codegen::Bytes>,
) {
    let (response, mut body) = common::raw_rerank_stream(addr, false).await;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&1_000_000u32.to_be_bytes());
    frame.resize(5 + sent, 0);
    body.send_data(frame.into(), false).unwrap();
    (response, body)
}

/// A client that declares a large message and never finishes sending it does not hold the
/// server's buffer for it beyond the request timeout: the stream is answered and freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_cut_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    common::publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |a| a.request_timeout_ms = Some(300)).await;
    server.wait_serving().await;
    let started = std::time::Instant::now();
    let (response, _body) = unfinished_body(server.grpc_addr, 1024).await;
    assert_eq!(
        grpc_status(response).await.as_deref(),
        Some("1"),
        "CANCELLED"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

/// Request bytes held across all connections are bounded: past the budget a stream is
/// refused at once, small requests still pass, and a cut stream gives its bytes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_held_across_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    common::publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |a| {
        a.max_buffered_request_bytes = Some(64 << 10);
        a.request_timeout_ms = Some(300);
    })
    .await;
    server.wait_serving().await;
    let (held, _a) = unfinished_body(server.grpc_addr, 40 << 10).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (refused, _b) = unfinished_body(server.grpc_addr, 40 << 10).await;
    // Refused, not cut at its timeout (CANCELLED): the budget, not a clock, said no.
    assert_eq!(
        grpc_status(refused).await.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED"
    );
    let mut client = server.client().await;
    client
        .rerank(request(20, 5, 1))
        .await
        .expect("a small request fits");
    // The first stream is cut at its timeout, and its 40 KiB are free again.
    assert_eq!(grpc_status(held).await.as_deref(), Some("1"), "CANCELLED");
    let (again, _c) = unfinished_body(server.grpc_addr, 40 << 10).await;
    assert_eq!(
        grpc_status(again).await.as_deref(),
        Some("1"),
        "held, then cut: not refused"
    );
    server.stop().await;
}

/// A stream that ends before a whole request message arrived is the client's error
/// (INVALID_ARGUMENT), not the server's INTERNAL: overloaded clients that give up must not
/// look like a broken model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_message_is_the_clients_error() {
    let dir = tempfile::tempdir().unwrap();
    common::publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |_| {}).await;
    server.wait_serving().await;
    let (response, _) = common::raw_rerank_stream(server.grpc_addr, true).await;
    assert_eq!(
        grpc_status(response).await.as_deref(),
        Some("3"),
        "INVALID_ARGUMENT"
    );
    let counted = "degre_requests_total{code=\"INVALID_ARGUMENT\",version=\"none\"} 1";
    let metrics = server.metrics_with(&[counted.to_string()]).await;
    assert!(metrics.contains(counted), "{metrics}");
    assert!(!metrics.contains("code=\"INTERNAL\""), "{metrics}");
    server.stop().await;
}

/// Admission counts a request from its headers: past `--max-in-flight` the next one is
/// refused at once, before its body is read, and a slot frees when an answer is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_are_refused_before_their_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    common::publish(dir.path(), 1);
    let server = TestServer::start(dir.path(), |a| {
        a.max_in_flight = Some(1);
        a.compute_threads = Some(1);
        a.request_timeout_ms = Some(300);
    })
    .await;
    server.wait_serving().await;
    // One request in flight whose body never completes.
    let (held, _body) = unfinished_body(server.grpc_addr, 1024).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = server.client().await;
    // Refused while the held one is still in flight (after its cut it would be admitted):
    // no clock needed to tell "at once" from "after the timeout".
    let status = client.rerank(request(20, 5, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("in flight"), "{status:?}");
    // The held one is cut at its timeout; then there is room again.
    assert_eq!(grpc_status(held).await.as_deref(), Some("1"), "CANCELLED");
    client
        .rerank(request(20, 5, 2))
        .await
        .expect("admitted again");
    server.stop().await;
}
