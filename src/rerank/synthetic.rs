//! Synthetic requests over a schema: the warm-up a version passes before it serves
//! (`runtime::warmup`) and the golden set the exporter ships with it (`contract::golden`).

use super::RerankInput;
use crate::contract::{upstream, FeatureSchema};

/// Candidate rows the warm-up spends covering embedding rows; larger vocabularies are
/// covered by the initializer scan only.
const COVERED_ROWS: usize = 4096;
/// Largest synthetic request, and most slots decoded per request: enough to exercise every
/// operator and many decoder states, cheap enough to load a version in milliseconds.
const MAX_ROWS: usize = 256;
const MAX_SLOTS: usize = 32;

/// Requests of 1, a few, and the limit's candidates (at most `MAX_ROWS`), whose rows walk through
/// every id of every categorical feature (the unknown bucket included), and whose context
/// ids change from request to request.
pub fn requests(schema: &FeatureSchema, max_candidates: usize) -> Vec<RerankInput> {
    let limit = max_candidates.clamp(1, MAX_ROWS);
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
fn upstream_of(schema: &FeatureSchema, scores: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    if schema.ranking_score {
        upstream::features(scores, &mut out);
    }
    out
}
