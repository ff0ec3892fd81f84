//! Runs a version's graphs. Two engines execute the same ONNX files: `tract` runs any graph
//! the contract allows; `native` runs the operators degre's exporter emits, without per-run
//! bookkeeping, and serves a version only once it agreed with tract at load. tract stays
//! behind this module.

use std::path::Path;

use tract_onnx::pb::{tensor_proto::DataType, ModelProto};
use tract_onnx::prelude::Framework;

mod native;
mod plans;
mod tract;
mod warmup;

use native::NativeModel;
use tract::{Plans, TractModel};

use crate::contract::golden::{Golden, GOLDEN_FILE};
use crate::contract::manifest::{GraphSpec, Manifest};
use crate::contract::LoadError;
use crate::rerank::decode::{DecodeError, Pick};
use crate::rerank::RerankInput;

/// Which engine computes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Compiled programs over reused buffers (the default when a version qualifies).
    Native,
    /// tract, with the encoder specialised to the request's N (compiled on first use here;
    /// in the background when tract serves a version).
    Tract,
    /// tract, with the encoder generic in N (what serves an N before its plan is compiled).
    TractGeneric,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Tract | Engine::TractGeneric => "tract",
        }
    }
}

/// A loaded, validated model version, ready to serve.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub manifest: Manifest,
    tract: TractModel,
    native: Option<NativeModel>,
}

#[derive(Debug, thiserror::Error)]
#[error("model inference failed: {0}")]
pub struct InferenceError(String);

impl LoadedModel {
    /// Loads a version directory whose manifest has already been verified, checks its
    /// weights, and warms it up; the native engine serves it if it reproduces tract.
    pub fn load(dir: &Path, version: u64, manifest: Manifest) -> Result<LoadedModel, LoadError> {
        let encoder = read_proto(dir, &manifest.encoder)?;
        let decoder = read_proto(dir, &manifest.decoder)?;
        let tract = TractModel::load(dir, &manifest, &encoder, &decoder)?;
        let native = match NativeModel::compile(&encoder, &decoder, &manifest) {
            Ok(native) => Some(native),
            Err(why) => {
                tracing::info!(version, %why, "served by tract: the native engine cannot run it");
                None
            }
        };
        let mut model = LoadedModel {
            name: manifest.model_name.clone(),
            version,
            manifest,
            tract,
            native,
        };
        warmup::check(&mut model)?;
        if model.manifest.files.contains_key(GOLDEN_FILE) {
            let path = dir.join(GOLDEN_FILE);
            let golden: Golden = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
                .map_err(|e| LoadError::Golden(format!("{}: {e}", path.display())))?;
            warmup::reproduce(&model, &golden)?;
        }
        Ok(model)
    }

    /// The engine serving this version.
    pub fn engine(&self) -> Engine {
        if self.native.is_some() {
            Engine::Native
        } else {
            Engine::Tract
        }
    }

    /// Effective candidate limit: the model's, capped by the server's.
    pub fn max_candidates(&self, server_limit: usize) -> usize {
        self.manifest.limits.max_candidates.min(server_limit)
    }

    /// Encodes the candidates once, then decodes `input.slots` slots greedily.
    pub fn rerank(&self, input: &RerankInput) -> Result<Vec<Pick>, DecodeError<InferenceError>> {
        match &self.native {
            Some(_) => self.rerank_with(Engine::Native, input),
            None => self.tract.rerank(input, Plans::AsServed),
        }
    }

    /// [`Self::rerank`] on a chosen engine (benches, parity tests).
    pub fn rerank_with(
        &self,
        engine: Engine,
        input: &RerankInput,
    ) -> Result<Vec<Pick>, DecodeError<InferenceError>> {
        match engine {
            Engine::Native => {
                let native = self.native().map_err(DecodeError::Model)?;
                native.rerank(input).map_err(|e| e.map_model(infer))
            }
            Engine::Tract => self.tract.rerank(input, Plans::Specialised),
            Engine::TractGeneric => self.tract.rerank(input, Plans::Generic),
        }
    }

    /// Compiles tract's encoder specialised to `n` candidates now rather than on first use
    /// (a version served natively needs no per-N plan).
    pub fn prepare(&self, n: usize) {
        if self.native.is_none() {
            self.tract.prepare(n);
        }
    }

    /// The candidate counts this version has specialised tract plans for.
    pub fn prepared_sizes(&self) -> Vec<usize> {
        self.tract.prepared_sizes()
    }

    /// Logits at every step when decoding is forced along `prefix` (teacher forcing).
    pub fn logits_along(
        &self,
        input: &RerankInput,
        prefix: &[usize],
        engine: Engine,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let n = input.candidates();
        if let Some(bad) = prefix.iter().find(|&&i| i >= n) {
            return Err(InferenceError(format!(
                "prefix index {bad} is not below {n} candidates"
            )));
        }
        match engine {
            Engine::Native => self.native()?.logits_along(input, prefix).map_err(infer),
            Engine::Tract => self.tract.logits_along(input, prefix, Plans::Specialised),
            Engine::TractGeneric => self.tract.logits_along(input, prefix, Plans::Generic),
        }
    }

    fn native(&self) -> Result<&NativeModel, InferenceError> {
        self.native.as_ref().ok_or_else(|| {
            InferenceError("this version has no native program: it is served by tract".into())
        })
    }
}

fn infer(e: impl std::fmt::Display) -> InferenceError {
    InferenceError(format!("{e:#}"))
}

/// Reads a graph and refuses weights that hold NaN or infinity: such a version would
/// answer some requests with wrong lists or errors however it is warmed up.
fn read_proto(dir: &Path, spec: &GraphSpec) -> Result<ModelProto, LoadError> {
    let path = dir.join(&spec.file);
    let proto = tract_onnx::onnx()
        .proto_model_for_path(&path)
        .map_err(|e| LoadError::Graph(format!("{}: {e:#}", path.display())))?;
    let initializers = proto.graph.iter().flat_map(|g| &g.initializer);
    for init in initializers.filter(|i| i.data_type == DataType::Float as i32) {
        let raw = init
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut values = raw.chain(init.float_data.iter().copied());
        if let Some(at) = values.position(|v| !v.is_finite()) {
            return Err(LoadError::Weights(format!(
                "{}: initializer {:?} holds a non-finite value at element {at}",
                spec.file, init.name
            )));
        }
    }
    Ok(proto)
}
