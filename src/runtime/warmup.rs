//! The checks a version passes before it may serve: synthetic requests that reach every
//! embedding row (up to a budget), the unknown buckets, and several candidate counts, each
//! decoded to the end with every logit finite; and, for the native engine, agreement with
//! tract on the same requests.

use super::{Engine, LoadedModel};
use crate::contract::{LoadError, Manifest};
use crate::rerank::RerankInput;

/// Candidate rows the warm-up spends covering embedding rows; larger vocabularies are
/// covered by the initializer scan only.
const COVERED_ROWS: usize = 4096;
/// Largest warm-up request, and most slots decoded per request: enough to exercise every
/// operator and many decoder states, cheap enough to load a version in milliseconds.
const MAX_ROWS: usize = 256;
const MAX_SLOTS: usize = 32;

/// Native and tract logits may differ by this, relative to `1 + |logit|` (summation order
/// and `exp`/`tanh` approximations; a wrong operator is off by far more).
const TOLERANCE: f32 = 1e-4;

pub fn check(model: &mut LoadedModel) -> Result<(), LoadError> {
    let requests = requests(&model.manifest);
    if model.native.is_some() {
        // Agreement decodes every request natively to the end, finite: the whole warm-up.
        match agreement(model, &requests) {
            Ok(()) => return Ok(()),
            Err(why) => {
                tracing::warn!(version = model.version, %why, "served by tract: the native engine disagrees with it");
                model.native = None;
            }
        }
    }
    for input in &requests {
        model
            .rerank(input)
            .map_err(|e| LoadError::Warmup(format!("{} candidates: {e}", input.candidates())))?;
    }
    Ok(())
}

/// Whether the native engine's logits match tract's along the native greedy path.
fn agreement(model: &LoadedModel, requests: &[RerankInput]) -> Result<(), String> {
    for input in requests {
        let n = input.candidates();
        let picks = model
            .rerank_with(Engine::Native, input)
            .map_err(|e| format!("{n} candidates: {e}"))?;
        let path: Vec<usize> = picks.iter().map(|p| p.index).collect();
        let native = model.logits_along(input, &path, Engine::Native);
        let tract = model.logits_along(input, &path, Engine::TractGeneric);
        let (native, tract) = match (native, tract) {
            (Ok(native), Ok(tract)) => (native, tract),
            (Err(e), _) | (_, Err(e)) => return Err(format!("{n} candidates: {e}")),
        };
        for (slot, (a, b)) in native.iter().zip(&tract).enumerate() {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                if (x - y).abs() > TOLERANCE * (1.0 + y.abs()) {
                    return Err(format!(
                        "{n} candidates, slot {slot}, candidate {index}: native {x}, tract {y}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Requests of 1, a few, and the limit's candidates (at most `MAX_ROWS`), whose rows walk through
/// every id of every categorical feature (the unknown bucket included), and whose context
/// ids change from request to request.
fn requests(manifest: &Manifest) -> Vec<RerankInput> {
    let schema = &manifest.schema;
    let limit = manifest.limits.max_candidates.clamp(1, MAX_ROWS);
    let ids = |vocab: u64| vocab as usize + 1;
    let rows_to_cover = schema
        .candidate_categorical
        .iter()
        .map(|c| ids(c.vocab_size))
        .max()
        .unwrap_or(0)
        .min(COVERED_ROWS);
    let mut sizes = vec![1, limit.min(16), limit];
    let mut covered = limit.min(16) + limit + 1;
    while covered < rows_to_cover {
        sizes.push(limit);
        covered += limit;
    }
    let wave = |len: usize, seed: usize| {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 17) as f32 / 8.0) - 1.0)
            .collect()
    };
    let mut first_row = 0;
    sizes
        .into_iter()
        .enumerate()
        .map(|(r, n)| {
            let rows = first_row..first_row + n;
            first_row += n;
            RerankInput {
                context_dense: wave(schema.context_dense.len(), r),
                context_ids: schema
                    .context_categorical
                    .iter()
                    .map(|c| (r % ids(c.vocab_size)) as i64)
                    .collect(),
                candidate_dense: wave(n * schema.candidate_dense.len(), r),
                candidate_ids: rows
                    .flat_map(|row| {
                        schema
                            .candidate_categorical
                            .iter()
                            .map(move |c| (row % ids(c.vocab_size)) as i64)
                    })
                    .collect(),
                item_ids: (0..n).map(|i| i.to_string()).collect(),
                upstream: upstream_of(schema, &wave(n, r)),
                slots: n.min(MAX_SLOTS),
                rules: Default::default(),
                explain: false,
            }
        })
        .collect()
}

/// The `upstream` input of a warm-up request whose ranking scores are `scores`.
fn upstream_of(schema: &crate::contract::FeatureSchema, scores: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    if schema.ranking_score {
        crate::contract::upstream::features(scores, &mut out);
    }
    out
}
