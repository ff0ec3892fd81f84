//! Writes a generator in the model contract: `encoder.onnx`, `decoder.onnx` and a
//! `manifest.json` with every file's sha256.

use std::collections::BTreeMap;

use super::{onnx, Weights};
use crate::contract::manifest::{
    sha256_hex, FeatureSchema, GraphSpec, Limits, Manifest, FORMAT_VERSION, MANIFEST_FILE,
};
use crate::contract::roles as role;

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
        ]
        .into_iter()
        .map(|(f, bytes)| (f.to_string(), sha256_hex(bytes)))
        .collect(),
    };
    let manifest = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    vec![
        (ENCODER_FILE.into(), graphs.encoder),
        (DECODER_FILE.into(), graphs.decoder),
        (MANIFEST_FILE.into(), manifest),
    ]
}

/// The schema of the bundled default model (see models/README.md): the simulator's default
/// log format, with the positional names the pipeline gives features.
pub fn default_schema() -> FeatureSchema {
    FeatureSchema {
        ranking_score: true,
        ..FeatureSchema::positional(4, &[8], 8, &[16, 64])
    }
}
