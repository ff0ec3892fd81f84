//! Tensor roles of the model contract: which inputs the server feeds each graph and which
//! outputs it reads. A manifest maps every role to the graph's own tensor name. The server
//! scores candidates itself: `logits = keys · query` (a pointer network), so the decoder
//! graph never sees N.

use super::manifest::FeatureSchema;

pub const CONTEXT_DENSE: &str = "context_dense";
pub const CONTEXT_CATEGORICAL: &str = "context_categorical";
pub const CANDIDATE_DENSE: &str = "candidate_dense";
pub const CANDIDATE_CATEGORICAL: &str = "candidate_categorical";
pub const KEYS: &str = "keys";
pub const VALUES: &str = "values";
pub const STATE: &str = "state";
pub const PREV_VALUE: &str = "prev_value";
pub const QUERY: &str = "query";
pub const NEXT_STATE: &str = "next_state";

/// Encoder input roles, in the order the server feeds them. A feature group without
/// features has no input.
pub fn encoder_inputs(schema: &FeatureSchema) -> Vec<&'static str> {
    [
        (CONTEXT_DENSE, schema.context_dense.len()),
        (CONTEXT_CATEGORICAL, schema.context_categorical.len()),
        (CANDIDATE_DENSE, schema.candidate_dense.len()),
        (CANDIDATE_CATEGORICAL, schema.candidate_categorical.len()),
    ]
    .into_iter()
    .filter(|(_, width)| *width > 0)
    .map(|(role, _)| role)
    .collect()
}

pub const ENCODER_OUTPUTS: [&str; 3] = [KEYS, VALUES, STATE];
pub const DECODER_INPUTS: [&str; 2] = [STATE, PREV_VALUE];
pub const DECODER_OUTPUTS: [&str; 2] = [QUERY, NEXT_STATE];
