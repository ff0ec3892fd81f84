//! The generated gRPC API (`proto/degre/v1`) and its conversion into the domain.

pub mod v1 {
    tonic::include_proto!("degre.v1");
}

/// Encoded descriptors of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("degre_descriptor");

use crate::contract::manifest::FeatureSchema;
use crate::rerank::{InputBuilder, InvalidField, RerankInput};

/// Validates a request against the serving schema. Destructured field by field, so a new
/// proto field fails to compile until it is handled here.
pub fn rerank_input(
    request: v1::RerankRequest,
    schema: &FeatureSchema,
    max_candidates: usize,
) -> Result<RerankInput, InvalidField> {
    let v1::RerankRequest {
        request_id: _,
        context,
        candidates,
        top_k,
        model_version: _,
    } = request;
    let mut input = InputBuilder::new(schema, candidates.len(), max_candidates)?;
    let v1::Features { dense, categorical } = context.unwrap_or_default();
    input.context(&dense, &categorical)?;
    for (index, candidate) in candidates.into_iter().enumerate() {
        let v1::Candidate { item_id, features } = candidate;
        let v1::Features { dense, categorical } = features.unwrap_or_default();
        input.candidate(index, item_id, &dense, &categorical)?;
    }
    input.finish(top_k)
}
