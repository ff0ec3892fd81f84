//! Property tests: the served decode (exported ONNX run by tract, incremental state, masks)
//! equals the reference network decoded naively, for random schemas, weights and requests.

use degre::contract::manifest::{Categorical, FeatureSchema, Limits};
use degre::network::export::version_files;
use degre::network::reference::ReferenceSteps;
use degre::network::{Dims, Mixer, Weights};
use degre::repository::Repository;
use degre::rerank::decode::{greedy, StepModel};
use degre::rerank::{InputBuilder, RerankInput};
use degre::runtime::{Engine, LoadedModel};
use proptest::prelude::*;

fn schema(ctx_dense: usize, ctx_cats: usize, cand_dense: usize, cand_cats: usize) -> FeatureSchema {
    let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect();
    let cats = |p: &str, n: usize| {
        (0..n)
            .map(|i| Categorical {
                name: format!("{p}{i}"),
                vocab_size: 5 + 3 * i as u64,
                hashed: i % 2 == 1,
            })
            .collect()
    };
    FeatureSchema {
        context_dense: names("c", ctx_dense),
        context_categorical: cats("cc", ctx_cats),
        candidate_dense: names("x", cand_dense),
        candidate_categorical: cats("xc", cand_cats),
        ranking_score: cand_dense % 2 == 1,
    }
}

/// A deterministic pseudo-random request with `n` candidates.
fn input(schema: &FeatureSchema, n: usize, slots: u32, seed: u64) -> RerankInput {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut dense = |len: usize| {
        (0..len)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect::<Vec<_>>()
    };
    let ctx_dense = dense(schema.context_dense.len());
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| dense(schema.candidate_dense.len()))
        .collect();
    // Ids range past the vocabulary to exercise the unknown bucket.
    let ids = |cats: &[Categorical], salt: usize| {
        cats.iter()
            .enumerate()
            .map(|(j, c)| ((salt * 7 + j * 3) as u64 % (c.vocab_size + 4)) as i64)
            .collect::<Vec<_>>()
    };
    let mut b = InputBuilder::new(schema, n, n).unwrap();
    b.context(&ctx_dense, &ids(&schema.context_categorical, seed as usize))
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        b.candidate(
            i,
            format!("i{i}"),
            row,
            &ids(&schema.candidate_categorical, i + seed as usize),
            Some((next() % 13) as f32),
        )
        .unwrap();
    }
    b.finish(slots).unwrap()
}

/// Naive decode: every slot re-encodes and replays the prefix from scratch, ranks all
/// candidates by a full sort, and normalises in f64. Each slot also gives the margin of
/// the winner over the runner-up.
fn naive_decode(
    weights: &Weights,
    schema: &FeatureSchema,
    input: &RerankInput,
) -> Vec<(usize, f64, f32)> {
    let mut prefix: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..input.slots {
        let mut model = ReferenceSteps::new(weights, schema, input);
        let mut logits = model.next_logits(None).unwrap().to_vec();
        for &p in &prefix {
            logits = model.next_logits(Some(p)).unwrap().to_vec();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let mut open = order.iter().filter(|i| !prefix.contains(i));
        let best = *open.next().unwrap();
        let margin = open
            .next()
            .map_or(f32::INFINITY, |&second| logits[best] - logits[second]);
        let norm: f64 = (0..logits.len())
            .filter(|i| !prefix.contains(i))
            .map(|i| (logits[i] as f64).exp())
            .sum();
        out.push((best, logits[best] as f64 - norm.ln(), margin));
        prefix.push(best);
    }
    out
}

fn load(schema: &FeatureSchema, weights: &Weights) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let files = version_files(
        weights,
        schema,
        "m",
        Limits { max_candidates: 64 },
        serde_json::Value::Null,
    );
    degre::repository::publish::publish_files(dir.path(), "m", &files).unwrap();
    let generator = Repository::open(dir.path(), None).unwrap().load(1).unwrap();
    (dir, generator)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn served_decode_equals_naive_reference(
        widths in (0usize..3, 0usize..3, 0usize..4, 0usize..3).prop_filter("candidates need a feature", |w| w.2 + w.3 > 0),
        n in 1usize..40,
        k in 0u32..45,
        seed in 0u64..1000,
    ) {
        let schema = schema(widths.0, widths.1, widths.2, widths.3);
        let weights = Weights::init(&schema, Dims {
                hidden: 8,
                embed: 3,
                // Every encoder through every engine.
                mixer: [Mixer::Attention, Mixer::Mean, Mixer::Induced][seed as usize % 3],
            }, seed);
        let input = input(&schema, n, k, seed);
        let (_dir, served) = load(&schema, &weights);

        prop_assert_eq!(served.engine(), Engine::Native);
        let fast = served.rerank(&input).unwrap();
        let reference = greedy(&mut ReferenceSteps::new(&weights, &schema, &input), n, input.slots).unwrap();
        let naive = naive_decode(&weights, &schema, &input);

        prop_assert_eq!(fast.len(), input.slots);
        for ((f, r), (ni, ns, margin)) in fast.iter().zip(&reference).zip(&naive) {
            if *margin < 1e-5 && (f.index != *ni || r.index != *ni) {
                break; // an exact tie (e.g. identical candidates): either choice is right
            }
            prop_assert_eq!(f.index, *ni);
            prop_assert_eq!(r.index, *ni);
            prop_assert!((f.score as f64 - ns).abs() < 1e-4, "served {} vs naive {}", f.score, ns);
        }
    }
}

#[test]
fn exported_graphs_match_the_reference_forward_within_1e5() {
    let schema = degre::network::export::default_schema();
    let weights = Weights::init(
        &schema,
        Dims {
            hidden: 32,
            embed: 8,
            mixer: Mixer::Attention,
        },
        11,
    );
    let (_dir, served) = load(&schema, &weights);
    assert_eq!(served.engine(), Engine::Native);
    let engines = [Engine::TractGeneric, Engine::Tract, Engine::Native];
    for (n, engine) in [1, 7, 64].into_iter().flat_map(|n| engines.map(|e| (n, e))) {
        let input = input(&schema, n, n as u32, n as u64);
        let prefix: Vec<usize> = (0..n).rev().collect();
        let served_logits = served.logits_along(&input, &prefix, engine).unwrap();
        let mut reference = ReferenceSteps::new(&weights, &schema, &input);
        let mut prev = None;
        for (step, expected) in served_logits.iter().enumerate() {
            let want = reference.next_logits(prev).unwrap();
            for (a, b) in expected.iter().zip(want) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "n {n} step {step}: {engine:?} {a} vs reference {b}"
                );
            }
            prev = Some(prefix[step]);
        }
    }
}
