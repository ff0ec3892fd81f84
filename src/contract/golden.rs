//! `golden.json`: requests and the logits the exporter's reference forward pass gave them,
//! shipped inside a version so the server can refuse a runtime that does not reproduce the
//! model it was given (an engine bug, an operator tract reads differently, a graph the
//! exporter wrote wrong). Optional: versions without it load as before.

use serde::{Deserialize, Serialize};

pub const GOLDEN_FILE: &str = "golden.json";

/// Logits may differ from the reference by this, relative to `1 + |logit|`: summation
/// order and `exp`/`tanh` approximations; a wrong operator is off by far more.
pub const TOLERANCE: f32 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub cases: Vec<GoldenCase>,
}

/// One request, in the encoder's terms (ids already mapped into the vocabulary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    pub context_dense: Vec<f32>,
    pub context_ids: Vec<i64>,
    /// `N × candidate_dense` values, row-major.
    pub candidate_dense: Vec<f32>,
    /// `N × candidate_categorical` ids, row-major.
    pub candidate_ids: Vec<i64>,
    /// `N × upstream::WIDTH` when the model reads the incumbent's order, else empty.
    #[serde(default)]
    pub upstream: Vec<f32>,
    pub candidates: usize,
    /// The reference's greedy choice at each slot.
    pub path: Vec<usize>,
    /// The reference's N logits at each slot, decoding forced along `path`.
    pub logits: Vec<Vec<f32>>,
}
