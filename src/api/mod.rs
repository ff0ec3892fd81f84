//! The generated gRPC API (`proto/degre/v1`) and its conversion into the domain.

pub mod codec;

pub mod v1 {
    tonic::include_proto!("degre.v1");
}

/// Encoded descriptors of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("degre_descriptor");

use crate::contract::manifest::FeatureSchema;
use crate::rerank::{Constraints, GroupCap, InputBuilder, InvalidField, RerankInput, Rules};

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
        constraints,
        explain,
    } = request;
    let mut input = InputBuilder::new(schema, candidates.len(), max_candidates)?;
    let v1::Features { dense, categorical } = context.unwrap_or_default();
    input.context(&dense, &categorical)?;
    // Group caps count items by the ids the client sent (not by embedding row).
    let capped = constraints
        .as_ref()
        .is_some_and(|c| !c.group_caps.is_empty());
    let mut raw_ids = Vec::new();
    for (index, candidate) in candidates.into_iter().enumerate() {
        let v1::Candidate { item_id, features } = candidate;
        let v1::Features { dense, categorical } = features.unwrap_or_default();
        input.candidate(index, item_id, &dense, &categorical)?;
        if capped {
            raw_ids.push(categorical);
        }
    }
    let mut input = input.finish(top_k)?;
    input.explain = explain;
    if let Some(constraints) = constraints {
        let features = schema.candidate_categorical.len();
        let groups = |f: usize| (f < features).then(|| raw_ids.iter().map(|ids| ids[f]).collect());
        let (rules, slots) = Rules::new(
            &rerank_constraints(constraints),
            &input.item_ids,
            input.slots,
            groups,
        )?;
        (input.rules, input.slots) = (rules, slots);
    }
    Ok(input)
}

fn rerank_constraints(c: v1::Constraints) -> Constraints {
    Constraints {
        pins: c.pins.into_iter().map(|p| (p.item_id, p.slot)).collect(),
        group_caps: c
            .group_caps
            .into_iter()
            .map(|g| GroupCap {
                feature: g.categorical_feature,
                max_count: g.max_count,
                window: g.window,
            })
            .collect(),
        exclude_item_ids: c.exclude_item_ids,
    }
}
