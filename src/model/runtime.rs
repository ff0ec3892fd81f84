//! The tract runtime: loads a version's encoder and decoder graphs once, optimised for a
//! symbolic candidate count N, and runs the greedy decode of one request. tract stays
//! behind this module.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::contract as role;
use super::manifest::{GraphSpec, Manifest};
use super::LoadError;
use crate::decode::{self, DecodeError, Pick, StepModel};
use crate::rerank::RerankInput;

/// A loaded, validated model version, ready to serve.
pub struct Generator {
    pub name: String,
    pub version: u64,
    pub manifest: Manifest,
    encoder: Arc<TypedRunnableModel>,
    decoder: Arc<TypedRunnableModel>,
    /// Encoder input roles in feed order.
    encoder_inputs: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
#[error("model inference failed: {0}")]
pub struct InferenceError(String);

impl Generator {
    /// Loads a version directory whose manifest has already been verified, and warms it up.
    pub fn load(dir: &Path, version: u64, manifest: Manifest) -> Result<Generator, LoadError> {
        let schema = &manifest.schema;
        let h = manifest.hidden_size;
        let encoder_inputs = role::encoder_inputs(schema);
        let encoder = {
            let model = read_graph(dir, &manifest.encoder)?;
            let n = model.symbols.sym("N");
            let shape_of = |r: &str| -> (DatumType, TVec<TDim>) {
                let (rows, width, dt) = match r {
                    role::CONTEXT_DENSE => (1.to_dim(), schema.context_dense.len(), f32::datum_type()),
                    role::CONTEXT_CATEGORICAL => (1.to_dim(), schema.context_categorical.len(), i64::datum_type()),
                    role::CANDIDATE_DENSE => (n.to_dim(), schema.candidate_dense.len(), f32::datum_type()),
                    _ => (n.to_dim(), schema.candidate_categorical.len(), i64::datum_type()),
                };
                (dt, tvec![rows, width.to_dim()])
            };
            let inputs: Vec<_> = encoder_inputs.iter().map(|r| (*r, shape_of(r))).collect();
            let hn = tvec![n.to_dim(), h.to_dim()];
            let outputs = [(role::KEYS, hn.clone()), (role::VALUES, hn), (role::STATE, tvec![1.to_dim(), h.to_dim()])];
            plan(model, &manifest.encoder, &inputs, &outputs)?
        };
        let decoder = {
            let model = read_graph(dir, &manifest.decoder)?;
            let n = model.symbols.sym("N");
            let row = tvec![1.to_dim(), h.to_dim()];
            let f32t = f32::datum_type();
            let inputs = [
                (role::STATE, (f32t, row.clone())),
                (role::PREV_VALUE, (f32t, row.clone())),
                (role::KEYS, (f32t, tvec![n.to_dim(), h.to_dim()])),
            ];
            let outputs = [(role::LOGITS, tvec![1.to_dim(), n.to_dim()]), (role::NEXT_STATE, row)];
            plan(model, &manifest.decoder, &inputs, &outputs)?
        };
        let generator = Generator {
            name: manifest.model_name.clone(),
            version,
            manifest,
            encoder,
            decoder,
            encoder_inputs,
        };
        generator.warm_up()?;
        Ok(generator)
    }

    /// Effective candidate limit: the model's, capped by the server's.
    pub fn max_candidates(&self, server_limit: usize) -> usize {
        self.manifest.limits.max_candidates.min(server_limit)
    }

    /// Encodes the candidates once, then decodes `input.slots` slots greedily.
    pub fn rerank(&self, input: &RerankInput) -> Result<Vec<Pick>, DecodeError<InferenceError>> {
        let mut steps = self.encode(input).map_err(DecodeError::Model)?;
        decode::greedy(&mut steps, input.candidates(), input.slots)
    }

    /// Logits at every step when decoding is forced along `prefix` (teacher forcing).
    pub fn logits_along(&self, input: &RerankInput, prefix: &[usize]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut steps = self.encode(input)?;
        let mut prev = None;
        let mut out = Vec::with_capacity(prefix.len());
        for &next in prefix {
            out.push(steps.next_logits(prev)?.to_vec());
            prev = Some(next);
        }
        Ok(out)
    }

    fn encode(&self, input: &RerankInput) -> Result<TractSteps, InferenceError> {
        let n = input.candidates();
        let schema = &self.manifest.schema;
        let feed = self
            .encoder_inputs
            .iter()
            .map(|r| match *r {
                role::CONTEXT_DENSE => tensor(&[1, schema.context_dense.len()], &input.context_dense),
                role::CONTEXT_CATEGORICAL => tensor(&[1, schema.context_categorical.len()], &input.context_ids),
                role::CANDIDATE_DENSE => tensor(&[n, schema.candidate_dense.len()], &input.candidate_dense),
                _ => tensor(&[n, schema.candidate_categorical.len()], &input.candidate_ids),
            })
            .collect::<Result<TVec<_>, _>>()?;
        let [keys, values, state] = outputs(self.encoder.run(feed).map_err(infer)?)?;
        Ok(TractSteps {
            decoder: self.decoder.spawn().map_err(infer)?,
            hidden: self.manifest.hidden_size,
            state,
            values,
            keys,
            logits: Vec::with_capacity(n),
        })
    }

    /// Decodes a synthetic request so a broken graph fails here, not on a user's request.
    fn warm_up(&self) -> Result<(), LoadError> {
        let schema = &self.manifest.schema;
        let n = self.manifest.limits.max_candidates.min(16);
        let wave = |len: usize| (0..len).map(|i| ((i * 7919 % 17) as f32 / 8.0) - 1.0).collect();
        let input = RerankInput {
            context_dense: wave(schema.context_dense.len()),
            context_ids: vec![0; schema.context_categorical.len()],
            candidate_dense: wave(n * schema.candidate_dense.len()),
            candidate_ids: (0..n as i64)
                .flat_map(|row| schema.candidate_categorical.iter().map(move |c| row.min(c.vocab_size as i64)))
                .collect(),
            item_ids: (0..n).map(|i| i.to_string()).collect(),
            slots: n,
        };
        let picks = self.rerank(&input).map_err(|e| LoadError::Warmup(e.to_string()))?;
        if let Some(p) = picks.iter().find(|p| !p.score.is_finite()) {
            return Err(LoadError::Warmup(format!("non-finite score for candidate {}", p.index)));
        }
        Ok(())
    }
}

struct TractSteps {
    decoder: TypedSimpleState,
    hidden: usize,
    state: TValue,
    values: TValue,
    keys: TValue,
    logits: Vec<f32>,
}

impl StepModel for TractSteps {
    type Error = InferenceError;

    fn next_logits(&mut self, prev: Option<usize>) -> Result<&[f32], InferenceError> {
        let h = self.hidden;
        let prev_value = match prev {
            Some(i) => {
                let values = f32s(&self.values)?;
                tensor(&[1, h], &values[i * h..(i + 1) * h])?
            }
            None => Tensor::zero::<f32>(&[1, h]).map_err(infer)?.into_tvalue(),
        };
        let feed = tvec![self.state.clone(), prev_value, self.keys.clone()];
        let [logits, next_state] = outputs(self.decoder.run(feed).map_err(infer)?)?;
        self.state = next_state;
        self.logits.clear();
        self.logits.extend_from_slice(f32s(&logits)?);
        Ok(&self.logits)
    }
}

/// The plan's outputs, in the order `plan` selected them.
fn outputs<const K: usize>(values: TVec<TValue>) -> Result<[TValue; K], InferenceError> {
    let got = values.len();
    values
        .into_vec()
        .try_into()
        .map_err(|_| InferenceError(format!("expected {K} outputs, got {got}")))
}

fn f32s(t: &TValue) -> Result<&[f32], InferenceError> {
    t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(infer)
}

fn tensor<T: Datum + Copy>(shape: &[usize], data: &[T]) -> Result<TValue, InferenceError> {
    Ok(Tensor::from_shape(shape, data).map_err(infer)?.into_tvalue())
}

fn infer(e: impl std::fmt::Display) -> InferenceError {
    InferenceError(format!("{e:#}"))
}

fn read_graph(dir: &Path, spec: &GraphSpec) -> Result<InferenceModel, LoadError> {
    let path = dir.join(&spec.file);
    tract_onnx::onnx()
        .model_for_path(&path)
        .map_err(|e| LoadError::Graph(format!("{}: {e:#}", path.display())))
}

/// Binds the graph's tensors to roles, declares the input shapes the schema implies,
/// optimises, and checks the output shapes.
fn plan(
    mut model: InferenceModel,
    spec: &GraphSpec,
    inputs: &[(&str, (DatumType, TVec<TDim>))],
    outputs: &[(&str, TVec<TDim>)],
) -> Result<Arc<TypedRunnableModel>, LoadError> {
    let file = &spec.file;
    let name_of = |map: &std::collections::BTreeMap<String, String>, r: &str, kind: &str| {
        map.get(r)
            .cloned()
            .ok_or_else(|| LoadError::Manifest(format!("{file}: no tensor name for {kind} {r:?}")))
    };
    let graph_inputs = model.input_outlets().map_err(graph(file))?.len();
    if graph_inputs != inputs.len() {
        return Err(LoadError::Schema(format!(
            "{file} has {graph_inputs} inputs, the schema needs {}",
            inputs.len()
        )));
    }
    let input_names = inputs
        .iter()
        .map(|(r, _)| name_of(&spec.inputs, r, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let output_names = outputs
        .iter()
        .map(|(r, _)| name_of(&spec.outputs, r, "output"))
        .collect::<Result<Vec<_>, _>>()?;
    model.select_inputs_by_name(&input_names).map_err(graph(file))?;
    model.select_outputs_by_name(&output_names).map_err(graph(file))?;
    for (ix, (_, (dt, shape))) in inputs.iter().enumerate() {
        let fact = InferenceFact::dt_shape(*dt, shape.clone());
        model.set_input_fact(ix, fact).map_err(graph(file))?;
    }
    let typed = model
        .into_optimized()
        .map_err(|e| LoadError::Schema(format!("{file} does not fit the manifest's schema: {e:#}")))?;
    for (ix, (r, expected)) in outputs.iter().enumerate() {
        let fact = typed.output_fact(ix).map_err(graph(file))?;
        if fact.datum_type != f32::datum_type() || fact.shape.to_tvec() != *expected {
            return Err(LoadError::Schema(format!(
                "{file}: output {r:?} is {fact:?}, expected f32 {expected:?}"
            )));
        }
    }
    typed.into_runnable().map_err(graph(file))
}

fn graph(file: &str) -> impl Fn(TractError) -> LoadError + '_ {
    move |e| LoadError::Graph(format!("{file}: {e:#}"))
}
