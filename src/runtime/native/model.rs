//! A version's encoder and decoder as native programs, with a pool of reusable scratch
//! space: a request allocates only its answer.

use std::sync::Mutex;

use tract_onnx::pb::ModelProto;

use super::{kernels, Dim, InputSpec, Program, RunError, Shape, Ty, Unsupported, Workspace};
use crate::contract::manifest::{GraphSpec, Manifest};
use crate::contract::roles::{self as role, EncoderInput};
use crate::rerank::decode::{self, DecodeError, Pick, StepModel};
use crate::rerank::{Feed, RerankInput};

/// Scratch spaces kept for reuse; more requests at once than this allocate and drop theirs.
const POOL: usize = 64;

pub struct NativeModel {
    encoder: Program,
    decoder: Program,
    encoder_inputs: Vec<EncoderInput>,
    hidden: usize,
    pool: Mutex<Vec<Scratch>>,
}

#[derive(Default)]
struct Scratch {
    encoder: Workspace,
    decoder: Workspace,
    state: Vec<f32>,
    zeros: Vec<f32>,
    /// The encoder's keys transposed, `[H, N]`: pointer scores become H vector
    /// multiply-adds over N instead of N horizontal dot products.
    keys_t: Vec<f32>,
    logits: Vec<f32>,
}

impl NativeModel {
    /// Compiles both graphs of a version whose tract plans already loaded.
    pub fn compile(
        encoder: &ModelProto,
        decoder: &ModelProto,
        manifest: &Manifest,
    ) -> Result<NativeModel, Unsupported> {
        let h = manifest.hidden_size;
        let encoder_inputs = role::encoder_inputs(&manifest.schema);
        let inputs = encoder_inputs
            .iter()
            .map(|i| {
                let ty = if i.categorical { Ty::I64 } else { Ty::F32 };
                let rows = if i.per_candidate {
                    Dim::N
                } else {
                    Dim::Fixed(1)
                };
                let shape = Shape {
                    rows,
                    cols: Dim::Fixed(i.width),
                };
                input(&manifest.encoder, i.role, ty, shape)
            })
            .collect::<Result<_, _>>()?;
        let encoder = compile(encoder, &manifest.encoder, inputs, &role::ENCODER_OUTPUTS)?;
        let row = Shape {
            rows: Dim::Fixed(1),
            cols: Dim::Fixed(h),
        };
        let inputs = role::DECODER_INPUTS
            .iter()
            .map(|r| input(&manifest.decoder, r, Ty::F32, row))
            .collect::<Result<_, _>>()?;
        let decoder = compile(decoder, &manifest.decoder, inputs, &role::DECODER_OUTPUTS)?;
        Ok(NativeModel {
            encoder,
            decoder,
            encoder_inputs,
            hidden: h,
            pool: Mutex::default(),
        })
    }

    /// Encodes the candidates once, then decodes `input.slots` slots greedily.
    pub fn rerank(&self, input: &RerankInput) -> Result<Vec<Pick>, DecodeError<RunError>> {
        self.with_steps(input, DecodeError::Model, |steps| {
            decode::decode_request(steps, input)
        })
    }

    /// Logits at every step when decoding is forced along `prefix` (indices below N).
    pub fn logits_along(
        &self,
        input: &RerankInput,
        prefix: &[usize],
    ) -> Result<Vec<Vec<f32>>, RunError> {
        self.with_steps(input, |e| e, |steps| decode::forced(steps, prefix))
    }

    /// Encodes `input` in pooled scratch space, then runs `decode` over its steps.
    fn with_steps<T, E>(
        &self,
        input: &RerankInput,
        encode_error: impl FnOnce(RunError) -> E,
        decode: impl FnOnce(&mut NativeSteps<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut scratch = self.take_scratch();
        let result = self
            .encode(&mut scratch, input)
            .map_err(encode_error)
            .and_then(|()| {
                let mut steps = NativeSteps {
                    model: self,
                    scratch: &mut scratch,
                };
                decode(&mut steps)
            });
        self.return_scratch(scratch);
        result
    }

    fn encode(&self, scratch: &mut Scratch, input: &RerankInput) -> Result<(), RunError> {
        let mut dense: [&[f32]; 3] = [&[]; 3];
        let mut ids: [&[i64]; 2] = [&[]; 2];
        let (mut nd, mut ni) = (0, 0);
        for i in &self.encoder_inputs {
            match input.feed(i.role) {
                Feed::Dense(values) => (dense[nd], nd) = (values, nd + 1),
                Feed::Ids(values) => (ids[ni], ni) = (values, ni + 1),
            }
        }
        let n = input.candidates();
        self.encoder
            .run(&mut scratch.encoder, n, &dense[..nd], &ids[..ni])?;
        let state = self.encoder.output(&scratch.encoder, 2);
        scratch.state.clear();
        scratch.state.extend_from_slice(state);
        scratch.zeros.clear();
        scratch.zeros.resize(self.hidden, 0.0);
        let keys = self.encoder.output(&scratch.encoder, 0);
        scratch.keys_t.resize(keys.len(), 0.0);
        kernels::transpose(keys, &mut scratch.keys_t, n, self.hidden);
        Ok(())
    }

    fn take_scratch(&self) -> Scratch {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL {
            pool.push(scratch);
        }
    }
}

struct NativeSteps<'a> {
    model: &'a NativeModel,
    scratch: &'a mut Scratch,
}

impl StepModel for NativeSteps<'_> {
    type Error = RunError;

    fn next_logits(&mut self, prev: Option<usize>) -> Result<&[f32], RunError> {
        let (m, s) = (self.model, &mut *self.scratch);
        let h = m.hidden;
        let values = m.encoder.output(&s.encoder, 1);
        let prev_value = match prev {
            Some(i) => &values[i * h..(i + 1) * h],
            None => &s.zeros[..],
        };
        m.decoder
            .run(&mut s.decoder, 1, &[&s.state, prev_value], &[])?;
        s.state.copy_from_slice(m.decoder.output(&s.decoder, 1));
        let query = m.decoder.output(&s.decoder, 0);
        // `[1, H] · [H, N]`: the matmul kernel keeps a block of logits in registers over
        // all H (a loop over H that loaded and stored every logit on each pass cost ~0.1 µs
        // more per step at N = 100).
        let n = s.keys_t.len() / h.max(1);
        s.logits.resize(n, 0.0);
        kernels::matmul(query, &s.keys_t, &mut s.logits, h, n);
        Ok(&s.logits)
    }
}

fn input(spec: &GraphSpec, role: &str, ty: Ty, shape: Shape) -> Result<InputSpec, Unsupported> {
    let name = spec
        .inputs
        .get(role)
        .ok_or_else(|| Unsupported(format!("{}: no tensor name for input {role:?}", spec.file)))?;
    Ok(InputSpec {
        name: name.clone(),
        ty,
        shape,
    })
}

fn compile(
    model: &ModelProto,
    spec: &GraphSpec,
    inputs: Vec<InputSpec>,
    roles: &[&str],
) -> Result<Program, Unsupported> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Unsupported(format!("{}: no graph", spec.file)))?;
    let outputs = roles
        .iter()
        .map(|role| {
            spec.outputs.get(*role).map(String::as_str).ok_or_else(|| {
                Unsupported(format!("{}: no tensor name for output {role:?}", spec.file))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let foreign = model
        .opset_import
        .iter()
        .find(|o| !o.domain.is_empty() && o.domain != "ai.onnx");
    if let Some(o) = foreign {
        return Err(Unsupported(format!(
            "{}: opset domain {:?}",
            spec.file, o.domain
        )));
    }
    Program::compile(graph, &inputs, &outputs)
        .map_err(|Unsupported(why)| Unsupported(format!("{}: {why}", spec.file)))
}
