//! One request's compute on the bundled model, on each engine: encode N candidates once,
//! then K greedy decoder steps; request validation; protobuf decoding. Run: `cargo bench --bench decode`.
//! A decoder step is `(time(K=N) − time(K=1)) / (N − 1)` at the same N.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use degre::api::{self, v1};
use degre::contract::FeatureSchema;
use degre::repository::Repository;
use degre::runtime::{Engine, LoadedModel};

/// The server's allocator (`src/main.rs`): validation allocates per candidate, and under
/// glibc it measured 8.3–8.5 µs at N = 100 against 5.2–5.5 with this one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A deterministic request of `n` candidates that fits `schema`.
fn request(schema: &FeatureSchema, n: usize, k: u32) -> v1::RerankRequest {
    let value = |i: usize, j: usize| ((i * 31 + j * 17) % 23) as f32 / 11.0 - 1.0;
    let features = |i: usize, dense: usize, categorical: usize| v1::Features {
        dense: (0..dense).map(|j| value(i, j)).collect(),
        categorical: (0..categorical).map(|j| (i * 7 + j) as i64).collect(),
    };
    v1::RerankRequest {
        request_id: "bench".into(),
        context: Some(features(
            99,
            schema.context_dense.len(),
            schema.context_categorical.len(),
        )),
        candidates: (0..n)
            .map(|i| v1::Candidate {
                item_id: format!("item-{i}"),
                features: Some(features(
                    i,
                    schema.candidate_dense.len(),
                    schema.candidate_categorical.len(),
                )),
                ranking_score: Some((i * 37 % 101) as f32),
            })
            .collect(),
        top_k: k,
        model_version: None,
        constraints: None,
        explain: false,
        routing_key: String::new(),
    }
}

/// The bundled model, or the newest version under `$DEGRE_BENCH_MODELS` (a repository root
/// holding a `degre` model), to bench another model on the same requests.
fn bundled() -> LoadedModel {
    let models = std::env::var("DEGRE_BENCH_MODELS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/models").to_string());
    let repo = Repository::open(models.as_ref(), None).expect("bundled model repository");
    let version = repo.versions().expect("versions")[0];
    repo.load(version).expect("bundled model loads")
}

fn decode(c: &mut Criterion) {
    let model = bundled();
    let schema = model.manifest.schema.clone();
    for (group, engine) in [("native", Engine::Native), ("tract", Engine::Tract)] {
        let mut group = c.benchmark_group(group);
        // Engine::Tract compiles its plan for N on first use (warm-up), then runs it: the
        // steady state of a server that has seen this N.
        for n in [10usize, 50, 100, 200] {
            let mut ks = vec![1, 10, 20, n];
            ks.retain(|&k| k <= n);
            ks.dedup();
            for k in ks {
                let input = api::rerank_input(request(&schema, n, k as u32), &schema, n)
                    .expect("valid request");
                let id = BenchmarkId::new(format!("n{n}"), format!("k{k}"));
                group.bench_with_input(id, &input, |b, input| {
                    b.iter(|| model.rerank_with(engine, input).expect("decode"))
                });
            }
        }
        group.finish();
    }
}

/// N = 100, K = 20 with two pins, three exclusions and a cap of 2 items per value of the
/// first candidate categorical feature in any 4 slots, against the same request without.
fn constrained(c: &mut Criterion) {
    let model = bundled();
    let schema = model.manifest.schema.clone();
    let plain = request(&schema, 100, 20);
    let mut ruled = plain.clone();
    ruled.constraints = Some(v1::Constraints {
        pins: vec![
            v1::Pin {
                item_id: "item-42".into(),
                slot: 0,
            },
            v1::Pin {
                item_id: "item-7".into(),
                slot: 9,
            },
        ],
        group_caps: vec![v1::GroupCap {
            categorical_feature: 0,
            max_count: 2,
            window: 4,
        }],
        exclude_item_ids: vec!["item-1".into(), "item-2".into(), "item-3".into()],
    });
    let mut explained = ruled.clone();
    explained.explain = true;
    let mut group = c.benchmark_group("constraints");
    let cases = [
        ("none", plain),
        ("pins_caps_exclusions", ruled),
        ("pins_caps_exclusions_explained", explained),
    ];
    for (name, request) in cases {
        let input = api::rerank_input(request, &schema, 100).expect("valid request");
        group.bench_with_input(BenchmarkId::new(name, "n100_k20"), &input, |b, input| {
            b.iter(|| model.rerank(input).expect("decode"))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let model = bundled();
    let schema = &model.manifest.schema;
    let mut group = c.benchmark_group("validate");
    for n in [10usize, 100, 200] {
        let request = request(schema, n, 20);
        group.bench_with_input(BenchmarkId::from_parameter(n), &request, |b, request| {
            b.iter_batched(
                || request.clone(),
                |request| api::rerank_input(request, schema, n).expect("valid"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The wire bytes of a request to its message (prost, as tonic's codec does): transport
/// work the echo floor pays too, measured apart from the model's.
fn wire(c: &mut Criterion) {
    use prost::Message;
    let model = bundled();
    let schema = &model.manifest.schema;
    let mut group = c.benchmark_group("protobuf_decode");
    for n in [10usize, 100, 200] {
        let bytes = request(schema, n, 20).encode_to_vec();
        group.bench_with_input(BenchmarkId::from_parameter(n), &bytes, |b, bytes| {
            b.iter(|| v1::RerankRequest::decode(bytes.as_slice()).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, constrained, validate, wire);
criterion_main!(benches);
