//! Writes a generator in the model contract: `encoder.onnx`, `decoder.onnx`, the golden set
//! (`golden.json`) and a `manifest.json` with every file's sha256.

use std::collections::BTreeMap;

use super::reference::ReferenceSteps;
use super::{onnx, Weights};
use crate::contract::golden::{Golden, GoldenCase, GOLDEN_FILE};
use crate::contract::manifest::{
    sha256_hex, FeatureSchema, GraphSpec, Limits, Manifest, FORMAT_VERSION, MANIFEST_FILE,
};
use crate::contract::roles as role;
use crate::rerank::decode::{forced, greedy};
use crate::rerank::synthetic;

pub const ENCODER_FILE: &str = "encoder.onnx";
pub const DECODER_FILE: &str = "decoder.onnx";

/// The files of one model version: the two graphs and the manifest, ready to publish.
pub fn version_files(
    weights: &Weights,
    schema: &FeatureSchema,
    model_name: &str,
    limits: Limits,
    provenance: serde_json::Value,
) -> Vec<(String, Vec<u8>)> {
    let graphs = onnx::export(weights, schema);
    let golden = golden_set(weights, schema, limits.max_candidates);
    let identity = |roles: &[&str]| -> BTreeMap<String, String> {
        roles
            .iter()
            .map(|r| (r.to_string(), r.to_string()))
            .collect()
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_name: model_name.to_string(),
        schema: schema.clone(),
        limits,
        hidden_size: weights.dims.hidden,
        encoder: GraphSpec {
            file: ENCODER_FILE.into(),
            inputs: identity(
                &role::encoder_inputs(schema)
                    .iter()
                    .map(|i| i.role)
                    .collect::<Vec<_>>(),
            ),
            outputs: identity(&role::ENCODER_OUTPUTS),
        },
        decoder: GraphSpec {
            file: DECODER_FILE.into(),
            inputs: identity(&role::DECODER_INPUTS),
            outputs: identity(&role::DECODER_OUTPUTS),
        },
        provenance,
        files: [
            (ENCODER_FILE, &graphs.encoder),
            (DECODER_FILE, &graphs.decoder),
            (GOLDEN_FILE, &golden),
        ]
        .into_iter()
        .map(|(f, bytes)| (f.to_string(), sha256_hex(bytes)))
        .collect(),
    };
    let manifest = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    vec![
        (ENCODER_FILE.into(), graphs.encoder),
        (DECODER_FILE.into(), graphs.decoder),
        (GOLDEN_FILE.into(), golden),
        (MANIFEST_FILE.into(), manifest),
    ]
}

/// Slots of each golden request: enough to exercise the decoder's state, small on disk.
const GOLDEN_SLOTS: usize = 8;

/// `golden.json`: the reference forward pass on the first synthetic requests (1, 16 and
/// the limit's candidates, at most 256), the logits of `GOLDEN_SLOTS` greedy slots each.
fn golden_set(weights: &Weights, schema: &FeatureSchema, max_candidates: usize) -> Vec<u8> {
    let cases = synthetic::requests(schema, max_candidates)
        .into_iter()
        .take(3)
        .filter_map(|input| {
            let n = input.candidates();
            let slots = input.slots.min(GOLDEN_SLOTS);
            // Weights that give non-finite logits make no case (the server refuses them).
            let picks = greedy(&mut ReferenceSteps::new(weights, schema, &input), n, slots);
            let path: Vec<usize> = picks.ok()?.iter().map(|p| p.index).collect();
            let mut steps = ReferenceSteps::new(weights, schema, &input);
            let logits = match forced(&mut steps, &path) {
                Ok(logits) => logits,
                Err(e) => match e {},
            };
            Some(GoldenCase {
                context_dense: input.context_dense,
                context_ids: input.context_ids,
                candidate_dense: input.candidate_dense,
                candidate_ids: input.candidate_ids,
                upstream: input.upstream,
                candidates: n,
                path,
                logits,
            })
        })
        .collect();
    serde_json::to_vec(&Golden { cases }).expect("a golden set serialises")
}

/// The schema of the bundled default model (see models/README.md): the simulator's default
/// log format, with the positional names the pipeline gives features.
pub fn default_schema() -> FeatureSchema {
    FeatureSchema {
        ranking_score: true,
        ..FeatureSchema::positional(4, &[8], 8, &[16, 64])
    }
}
