//! The tract engine: a version's encoder and decoder as tract plans (the encoder's per
//! candidate count in `plans`). It runs every graph the ONNX contract allows, and is the
//! reference the native engine is checked against at load.

use std::path::Path;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::plans::{Bound, Budget, EncoderPlans, Plan, N};
use super::InferenceError;
use crate::contract::manifest::{GraphSpec, Manifest};
use crate::contract::roles::{self as role, EncoderInput};
use crate::contract::LoadError;
use crate::rerank::decode::{self, pointer_logits, DecodeError, Pick, StepModel};
use crate::rerank::{Feed, RerankInput};

/// Which encoder plan runs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// Specialised to N if compiled; else generic, and N queued for compilation.
    AsServed,
    /// Specialised to N, compiled now if it is not yet.
    Specialised,
    /// Generic in N.
    Generic,
}

pub struct TractModel {
    encoder: EncoderPlans,
    decoder: Plan,
    hidden: usize,
    /// Encoder inputs in feed order.
    encoder_inputs: Vec<EncoderInput>,
}

impl TractModel {
    /// Builds the plans of a version's graphs, parsed from `encoder` and `decoder`.
    pub fn load(
        dir: &Path,
        manifest: &Manifest,
        encoder: &ModelProto,
        decoder: &ModelProto,
    ) -> Result<TractModel, LoadError> {
        let schema = &manifest.schema;
        let h = manifest.hidden_size.to_dim();
        let (f32t, i64t) = (f32::datum_type(), i64::datum_type());
        let encoder_inputs = role::encoder_inputs(schema);
        let budget = Budget::new(weight_bytes(encoder) + weight_bytes(decoder));
        let encoder = {
            let model = parse(dir, &manifest.encoder, encoder)?;
            let n = model.symbols.sym(N).to_dim();
            let one = 1.to_dim();
            let inputs: Vec<_> = encoder_inputs
                .iter()
                .map(|i| {
                    let dt = if i.categorical { i64t } else { f32t };
                    let rows = if i.per_candidate {
                        n.clone()
                    } else {
                        one.clone()
                    };
                    (i.role, dt, tvec![rows, i.width.to_dim()])
                })
                .collect();
            let outputs = [
                (role::KEYS, tvec![n.clone(), h.clone()]),
                (role::VALUES, tvec![n, h.clone()]),
                (role::STATE, tvec![one, h.clone()]),
            ];
            Bound::new(model, &manifest.encoder, &inputs, &outputs, &budget)?
        };
        let decoder = {
            let model = parse(dir, &manifest.decoder, decoder)?;
            let row = tvec![1.to_dim(), h];
            let inputs = [
                (role::STATE, f32t, row.clone()),
                (role::PREV_VALUE, f32t, row.clone()),
            ];
            let outputs = [(role::QUERY, row.clone()), (role::NEXT_STATE, row)];
            Bound::new(model, &manifest.decoder, &inputs, &outputs, &budget)?
        };
        let optimise = |e: TractError| LoadError::Graph(format!("cannot optimise: {e:#}"));
        Ok(TractModel {
            decoder: decoder.plan(None).map_err(optimise)?,
            encoder: EncoderPlans::new(encoder).map_err(optimise)?,
            hidden: manifest.hidden_size,
            encoder_inputs,
        })
    }

    /// Encodes the candidates once, then decodes `input.slots` slots greedily.
    pub fn rerank(
        &self,
        input: &RerankInput,
        plans: Plans,
    ) -> Result<Vec<Pick>, DecodeError<InferenceError>> {
        let encoder = self.encoder_plan(input.candidates(), plans);
        let mut steps = self.encode(&encoder, input).map_err(DecodeError::Model)?;
        decode::decode_request(&mut steps, input)
    }

    /// Compiles the encoder specialised to `n` candidates now rather than on first use.
    pub fn prepare(&self, n: usize) {
        self.encoder.specialise_now(n);
    }

    /// The candidate counts this version has specialised plans for (traffic's hot sizes).
    pub fn prepared_sizes(&self) -> Vec<usize> {
        self.encoder.specialised_sizes()
    }

    /// Logits at every step when decoding is forced along `prefix` (teacher forcing).
    pub fn logits_along(
        &self,
        input: &RerankInput,
        prefix: &[usize],
        plans: Plans,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let encoder = self.encoder_plan(input.candidates(), plans);
        let mut steps = self.encode(&encoder, input)?;
        decode::forced(&mut steps, prefix)
    }

    fn encoder_plan(&self, n: usize, plans: Plans) -> Plan {
        match plans {
            Plans::AsServed => self.encoder.get(n),
            Plans::Specialised => self.encoder.specialise_now(n),
            Plans::Generic => self.encoder.generic(),
        }
    }

    fn encode(&self, encoder: &Plan, input: &RerankInput) -> Result<TractSteps, InferenceError> {
        let n = input.candidates();
        let feed = self
            .encoder_inputs
            .iter()
            .map(|i| {
                let shape = [if i.per_candidate { n } else { 1 }, i.width];
                match input.feed(i.role) {
                    Feed::Dense(values) => tensor(&shape, values),
                    Feed::Ids(ids) => tensor(&shape, ids),
                }
            })
            .collect::<Result<TVec<_>, _>>()?;
        let [keys, values, state] = outputs(encoder.run(feed).map_err(infer)?)?;
        Ok(TractSteps {
            decoder: self.decoder.spawn().map_err(infer)?,
            hidden: self.hidden,
            state,
            values,
            keys,
            logits: Vec::with_capacity(n),
        })
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
            Some(i) => tensor(&[1, h], &f32s(&self.values)?[i * h..(i + 1) * h])?,
            None => Tensor::zero::<f32>(&[1, h]).map_err(infer)?.into_tvalue(),
        };
        let feed = tvec![self.state.clone(), prev_value];
        let [query, next_state] = outputs(self.decoder.run(feed).map_err(infer)?)?;
        self.state = next_state;
        pointer_logits(f32s(&self.keys)?, f32s(&query)?, &mut self.logits);
        Ok(&self.logits)
    }
}

/// A plan's outputs, in the order its roles were bound.
fn outputs<const K: usize>(values: TVec<TValue>) -> Result<[TValue; K], InferenceError> {
    let got = values.len();
    values
        .into_vec()
        .try_into()
        .map_err(|_| InferenceError(format!("expected {K} outputs, got {got}")))
}

fn f32s(t: &TValue) -> Result<&[f32], InferenceError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(infer)
}

fn tensor<T: Datum + Copy>(shape: &[usize], data: &[T]) -> Result<TValue, InferenceError> {
    Ok(Tensor::from_shape(shape, data)
        .map_err(infer)?
        .into_tvalue())
}

fn infer(e: impl std::fmt::Display) -> InferenceError {
    InferenceError(format!("{e:#}"))
}

fn parse(dir: &Path, spec: &GraphSpec, proto: &ModelProto) -> Result<InferenceModel, LoadError> {
    let graph = |e: String| LoadError::Graph(format!("{}: {e}", spec.file));
    let parsed = tract_onnx::onnx()
        .parse(proto, dir.to_str())
        .map_err(|e| graph(format!("{e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(graph(format!(
            "unresolved inputs {:?}",
            parsed.unresolved_inputs
        )));
    }
    Ok(parsed.model)
}

/// Bytes of a graph's initializers (its weights), in whichever field they are stored.
fn weight_bytes(proto: &ModelProto) -> usize {
    let initializers = proto.graph.iter().flat_map(|g| &g.initializer);
    initializers
        .map(|t| {
            t.raw_data.len()
                + 4 * (t.float_data.len() + t.int32_data.len())
                + 8 * (t.int64_data.len() + t.double_data.len() + t.uint64_data.len())
        })
        .sum()
}
