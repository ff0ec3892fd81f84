//! The generated gRPC API (`proto/degre/v1`) and its conversion into the domain and back.

pub mod codec;

pub mod v1 {
    tonic::include_proto!("degre.v1");
    // serde in canonical proto3 JSON, generated from the same descriptors (pbjson).
    include!(concat!(env!("OUT_DIR"), "/degre.v1.serde.rs"));
}

/// Encoded descriptors of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("degre_descriptor");

use crate::contract::manifest::FeatureSchema;
use crate::rerank::{Constraints, GroupCap, InputBuilder, InvalidField, Pick, RerankInput, Rules};

/// What `GetModelInfo` says of a loaded version: its manifest, the engine computing it and
/// the candidate limit it serves under; `serving` and `loaded` are the store's versions.
pub fn model_info(
    version: u64,
    manifest: &crate::contract::Manifest,
    engine: &str,
    max_candidates: usize,
    serving: u64,
    loaded: Vec<u64>,
) -> v1::ModelInfo {
    let categorical = |features: &[crate::contract::Categorical]| {
        features
            .iter()
            .map(|c| v1::CategoricalFeature {
                name: c.name.clone(),
                vocab_size: c.vocab_size,
                hashed: c.hashed,
            })
            .collect()
    };
    let schema = &manifest.schema;
    let objective = manifest
        .provenance
        .get("objective")
        .and_then(|o| o.as_str());
    v1::ModelInfo {
        model_name: manifest.model_name.clone(),
        model_version: version,
        serving_version: serving,
        loaded_versions: loaded,
        schema: Some(v1::FeatureSchema {
            context_dense: schema.context_dense.clone(),
            context_categorical: categorical(&schema.context_categorical),
            candidate_dense: schema.candidate_dense.clone(),
            candidate_categorical: categorical(&schema.candidate_categorical),
            ranking_score: schema.ranking_score,
        }),
        max_candidates: u32::try_from(max_candidates).unwrap_or(u32::MAX),
        objective: objective.unwrap_or_default().to_string(),
        engine: engine.to_string(),
        provenance_json: manifest.provenance.to_string(),
    }
}

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
        routing_key: _,
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
        let v1::Candidate {
            item_id,
            features,
            ranking_score,
        } = candidate;
        let v1::Features { dense, categorical } = features.unwrap_or_default();
        input.candidate(index, item_id, &dense, &categorical, ranking_score)?;
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

/// The answer to a request: its picks in order, with their item ids, and the explanations
/// asked for; `unfilled` says where the constraints stopped a list short.
pub fn rerank_response(
    picks: Vec<Pick>,
    input: RerankInput,
    model_name: String,
    model_version: u64,
) -> v1::RerankResponse {
    let unfilled = if picks.len() < input.slots {
        format!(
            "slot {}: the constraints allow none of the remaining candidates; {} of {} slots filled",
            picks.len(),
            picks.len(),
            input.slots
        )
    } else {
        String::new()
    };
    let mut item_ids = input.item_ids;
    let items = picks
        .into_iter()
        .map(|pick| {
            // An alternative at this step is chosen later, if at all: its id is still here.
            let (alternatives, masked_by) = match pick.why {
                Some(why) => (
                    why.alternatives
                        .iter()
                        .map(|&(index, probability)| v1::Alternative {
                            item_id: item_ids[index].clone(),
                            candidate_index: index as u32,
                            probability,
                        })
                        .collect(),
                    why.masked_by,
                ),
                None => (Vec::new(), Vec::new()),
            };
            v1::RankedItem {
                item_id: std::mem::take(&mut item_ids[pick.index]),
                candidate_index: pick.index as u32,
                score: pick.score,
                alternatives,
                masked_by,
            }
        })
        .collect();
    v1::RerankResponse {
        items,
        model_name,
        model_version,
        unfilled,
    }
}
