//! Tensor roles of the model contract: which inputs the server feeds each graph and which
//! outputs it reads. A manifest maps every role to the graph's own tensor name. The server
//! scores candidates itself: `logits = keys · query` (a pointer network), so the decoder
//! graph never sees N.

use super::FeatureSchema;

pub const CONTEXT_DENSE: &str = "context_dense";
pub const CONTEXT_CATEGORICAL: &str = "context_categorical";
pub const CANDIDATE_DENSE: &str = "candidate_dense";
pub const CANDIDATE_CATEGORICAL: &str = "candidate_categorical";
/// `[N, upstream::WIDTH]` f32: the incumbent's order (only when `schema.ranking_score`).
pub const UPSTREAM: &str = "upstream";
pub const KEYS: &str = "keys";
pub const VALUES: &str = "values";
pub const STATE: &str = "state";
pub const PREV_VALUE: &str = "prev_value";
pub const QUERY: &str = "query";
pub const NEXT_STATE: &str = "next_state";

/// One encoder input: a row per candidate or a single context row, of categorical ids (i64)
/// or dense values (f32), `width` columns wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderInput {
    pub role: &'static str,
    pub per_candidate: bool,
    pub categorical: bool,
    pub width: usize,
}

/// The encoder's inputs, in the order the server feeds them. A feature group without
/// features has no input.
pub fn encoder_inputs(schema: &FeatureSchema) -> Vec<EncoderInput> {
    let input = |role, per_candidate, categorical, width| EncoderInput {
        role,
        per_candidate,
        categorical,
        width,
    };
    [
        input(CONTEXT_DENSE, false, false, schema.context_dense.len()),
        input(
            CONTEXT_CATEGORICAL,
            false,
            true,
            schema.context_categorical.len(),
        ),
        input(CANDIDATE_DENSE, true, false, schema.candidate_dense.len()),
        input(
            CANDIDATE_CATEGORICAL,
            true,
            true,
            schema.candidate_categorical.len(),
        ),
        input(
            UPSTREAM,
            true,
            false,
            if schema.ranking_score {
                super::upstream::WIDTH
            } else {
                0
            },
        ),
    ]
    .into_iter()
    .filter(|i| i.width > 0)
    .collect()
}

pub const ENCODER_OUTPUTS: [&str; 3] = [KEYS, VALUES, STATE];
pub const DECODER_INPUTS: [&str; 2] = [STATE, PREV_VALUE];
pub const DECODER_OUTPUTS: [&str; 2] = [QUERY, NEXT_STATE];
