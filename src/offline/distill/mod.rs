//! `degre distill`: the generator (`network`, the network the server runs) trained
//! by teacher forcing along target lists. DeGRe's targets are the miner's dense soft labels
//! `softmax(Q_t/τ)` at every step (plus `β`·CE on the mined item); the same trainer learns
//! from one-hot targets (hard labels, heuristic labels), and [`reinforce`] trains it from a
//! sparse list-level reward instead.
//!
//! The network sees standardised dense features while training; [`TrainedGenerator::fold`]
//! folds the standardisation into the first layers so the exported graph takes raw features.

mod batched;
mod ops;
mod reinforce;

pub use batched::forced_loss_sum;
pub use ops::{CandleOps, Ids};
pub use reinforce::reinforce;

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::contract::manifest::{FeatureSchema, Limits};
use crate::network::export::version_files;
use crate::network::reference::ReferenceSteps;
use crate::network::{Dims, Encoded, EncoderInputs, Mixer, Weights};
use crate::offline::evaluator::{is_hashed, FeatureMap};
use crate::offline::logs::LoggedRequest;
use crate::offline::mine::Mined;
use crate::offline::training::{self, Schedule, Split};
use crate::rerank::{decode, Rules};

/// Sizes, schedule and targets of the generator's training; the pipeline's `[distill]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    pub hidden: usize,
    pub embed: usize,
    /// How the encoder mixes the candidates: `attention` (default) or `mean` (no N² term).
    pub mixer: Mixer,
    pub epochs: usize,
    /// Requests per optimiser step.
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Softmax temperature of the soft targets, in units of an average click's reward
    /// (1 for clicks; the mean value per click for value), so one default fits both.
    pub temperature: f64,
    /// Weight of the cross-entropy on the teacher's own item, added to the soft targets.
    pub ce_weight: f64,
    pub patience: usize,
    pub valid_fraction: f64,
    /// Validation and the kept generator use a moving average of the weights whose horizon
    /// is this many epochs of steps (0, the default: the weights as they are), as the
    /// evaluator's `average_epochs`. 0.5 measured +0.08 / +0.16 / +0.30 points on the bundled
    /// seeds for 2.3× the distillation time (it stops later): docs/offline.md.
    pub average_epochs: f64,
    /// Epochs of the sparse-reward (REINFORCE) baseline.
    pub reinforce_epochs: usize,
    /// Set per run (the pipeline's seed), not in a config file.
    #[serde(skip)]
    pub seed: u64,
    #[serde(skip)]
    pub progress: bool,
}

impl DistillConfig {
    /// Ranges serde cannot check, named as the pipeline's `[distill]` keys.
    pub fn check(&self) -> Result<(), String> {
        training::ensure_nonzero("distill.hidden", self.hidden)?;
        training::ensure_nonzero("distill.embed", self.embed)?;
        training::ensure_positive("distill.learning_rate", self.learning_rate)?;
        training::ensure_positive("distill.temperature", self.temperature)?;
        training::ensure_non_negative("distill.ce_weight", self.ce_weight)?;
        training::ensure_non_negative("distill.average_epochs", self.average_epochs)?;
        training::ensure_fraction("distill.valid_fraction", self.valid_fraction)
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            epochs: self.epochs,
            batch_size: self.batch_size,
            patience: self.patience,
            seed: self.seed,
            progress: self.progress,
        }
    }
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            hidden: 32,
            embed: 8,
            mixer: Mixer::default(),
            epochs: 48,
            batch_size: 32,
            learning_rate: 3e-3,
            temperature: 0.02,
            ce_weight: 0.5,
            patience: 3,
            valid_fraction: 0.1,
            average_epochs: 0.0,
            reinforce_epochs: 6,
            seed: 0,
            progress: true,
        }
    }
}

/// A list to teacher-force along, and the target distribution at each of its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub list: Vec<usize>,
    /// Per step: (candidate, probability) pairs summing to 1, over candidates not yet placed.
    pub targets: Vec<Vec<(usize, f32)>>,
}

impl Forced {
    /// DeGRe's dense soft targets, `softmax(Q_t/τ)` over the remaining candidates; where
    /// the teacher kept the incumbent (no evidence to depart from it), the incumbent itself.
    pub fn soft(mined: &Mined, temperature: f64) -> Forced {
        if mined.kept_incumbent {
            return Forced::hard(&mined.list);
        }
        Forced {
            list: mined.list.clone(),
            targets: mined
                .steps
                .iter()
                .map(|step| {
                    let p = step.soft_target(temperature);
                    step.candidates
                        .iter()
                        .zip(p)
                        .map(|(&a, p)| (a, p as f32))
                        .collect()
                })
                .collect(),
        }
    }

    /// One-hot targets along a list.
    pub fn hard(list: &[usize]) -> Forced {
        Forced {
            list: list.to_vec(),
            targets: list.iter().map(|&a| vec![(a, 1.0)]).collect(),
        }
    }
}

/// The feature schema of a generator for logs of a given shape.
pub fn schema_of(map: &FeatureMap) -> FeatureSchema {
    let mut schema = FeatureSchema {
        ranking_score: map.ranking_score,
        ..FeatureSchema::positional(
            map.context_mean.len(),
            &map.context_vocab,
            map.candidate_mean.len(),
            &map.candidate_vocab,
        )
    };
    let sides = [
        (&mut schema.context_categorical, &map.context_hashed),
        (&mut schema.candidate_categorical, &map.candidate_hashed),
    ];
    for (features, hashed) in sides {
        for (j, feature) in features.iter_mut().enumerate() {
            feature.hashed = is_hashed(hashed, j);
        }
    }
    schema
}

/// One request as the generator's training inputs (standardised dense features), row-major.
pub struct Inputs {
    ctx_dense: Vec<f32>,
    ctx_ids: Vec<u32>,
    cand_dense: Vec<f32>,
    upstream: Vec<f32>,
    cand_ids: Vec<u32>,
    pub candidates: usize,
}

impl Inputs {
    pub fn new(map: &FeatureMap, request: &LoggedRequest) -> Inputs {
        let mut inputs = Inputs {
            ctx_dense: vec![],
            ctx_ids: vec![],
            cand_dense: vec![],
            upstream: vec![],
            cand_ids: vec![],
            candidates: request.candidates.len(),
        };
        map.upstream(request, &mut inputs.upstream);
        map.context_dense(&request.context.dense, &mut inputs.ctx_dense);
        map.context_ids(&request.context.categorical, &mut inputs.ctx_ids);
        for c in &request.candidates {
            map.candidate_dense(&c.features.dense, &mut inputs.cand_dense);
            map.candidate_ids(&c.features.categorical, &mut inputs.cand_ids);
        }
        inputs
    }

    /// The encoder's outputs for this request alone.
    pub fn encode(
        &self,
        ops: &mut CandleOps,
        weights: &Weights,
    ) -> candle_core::Result<Encoded<Tensor>> {
        let n = self.candidates;
        let dense = |data: &[f32], rows: usize| -> candle_core::Result<Option<Tensor>> {
            let cols = data.len() / rows;
            (cols > 0)
                .then(|| Tensor::from_slice(data, (rows, cols), &Device::Cpu))
                .transpose()
        };
        let ids = |data: &[u32], rows: usize| {
            let cols = data.len() / rows;
            (cols > 0).then(|| Ids {
                rows,
                cols,
                data: data.to_vec(),
            })
        };
        let (ctx_dense, ctx_ids) = (dense(&self.ctx_dense, 1)?, ids(&self.ctx_ids, 1));
        let (cand_dense, cand_ids) = (dense(&self.cand_dense, n)?, ids(&self.cand_ids, n));
        let upstream = dense(&self.upstream, n)?;
        Ok(weights.encode(
            ops,
            EncoderInputs {
                ctx_dense: ctx_dense.as_ref(),
                ctx_ids: ctx_ids.as_ref(),
                cand_dense: cand_dense.as_ref(),
                upstream: upstream.as_ref(),
                cand_ids: cand_ids.as_ref(),
            },
        ))
    }
}

/// Steps the decoder along a list chosen as it goes: `choose(t, log_probs)` returns slot
/// t's item. Returns every step's log-probabilities over all candidates (`[N]`, placed
/// items at about -1e9).
pub fn decode_steps(
    ops: &mut CandleOps,
    weights: &Weights,
    inputs: &Inputs,
    steps: usize,
    mut choose: impl FnMut(usize, &Tensor) -> candle_core::Result<usize>,
) -> candle_core::Result<(Vec<usize>, Vec<Tensor>)> {
    let n = inputs.candidates;
    let encoded = inputs.encode(ops, weights)?;
    let mut state = encoded.state;
    let mut prev = Tensor::zeros(
        (1, weights.dims.hidden),
        candle_core::DType::F32,
        &Device::Cpu,
    )?;
    let mut mask = vec![0f32; n];
    let (mut list, mut log_probs) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for t in 0..steps.min(n) {
        let (query, next) = weights.step(ops, &state, &prev);
        let logits = encoded.keys.matmul(&query.t()?)?.reshape(n)?;
        let logits = (logits + Tensor::from_slice(&mask, n, &Device::Cpu)?)?;
        let lp = candle_nn::ops::log_softmax(&logits, 0)?;
        let a = choose(t, &lp)?;
        mask[a] = -1e9;
        prev = encoded.values.narrow(0, a, 1)?;
        state = next;
        list.push(a);
        log_probs.push(lp);
    }
    Ok((list, log_probs))
}

/// Cross-entropy of the generator against a [`Forced`] target, averaged over steps.
pub fn forced_loss(
    ops: &mut CandleOps,
    weights: &Weights,
    inputs: &Inputs,
    forced: &Forced,
    ce_weight: f64,
) -> candle_core::Result<Tensor> {
    let n = inputs.candidates;
    let (_, log_probs) = decode_steps(ops, weights, inputs, forced.list.len(), |t, _| {
        Ok(forced.list[t])
    })?;
    let mut total: Option<Tensor> = None;
    for (t, lp) in log_probs.iter().enumerate() {
        let mut target = vec![0f32; n];
        for &(a, p) in &forced.targets[t] {
            target[a] += p;
        }
        target[forced.list[t]] += ce_weight as f32;
        let term = (lp * Tensor::from_vec(target, n, &Device::Cpu)?)?
            .sum_all()?
            .neg()?;
        total = Some(match total {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    let steps = log_probs.len().max(1) as f64;
    total.map_or_else(|| Tensor::new(0f32, &Device::Cpu), |t| t / steps)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillSummary {
    pub train_requests: usize,
    pub valid_requests: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub valid_loss: f64,
    pub seconds: f64,
}

impl DistillSummary {
    fn new(split: &Split, outcome: &training::Outcome) -> DistillSummary {
        DistillSummary {
            train_requests: split.train.len(),
            valid_requests: split.valid.len(),
            epochs_run: outcome.epochs_run,
            best_epoch: outcome.best_epoch,
            valid_loss: outcome.best_valid_loss,
            seconds: outcome.seconds,
        }
    }
}

/// The generator's weights as they train (in candle) and as last validated (plain Rust).
pub(crate) struct Trainable {
    pub ops: CandleOps,
    pub optimizer: AdamW,
    pub weights: Weights,
    pub best: Weights,
}

impl Trainable {
    pub fn new(schema: &FeatureSchema, config: &DistillConfig) -> anyhow::Result<Trainable> {
        let dims = Dims {
            hidden: config.hidden,
            embed: config.embed,
            mixer: config.mixer,
        };
        let weights = Weights::init(schema, dims, config.seed);
        let ops = CandleOps::new(&weights)?;
        let optimizer = AdamW::new(
            ops.all(),
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(Trainable {
            ops,
            optimizer,
            best: weights.clone(),
            weights,
        })
    }

    /// Copies the trained parameters out of candle, for validation and keeping.
    pub fn sync(&mut self) -> candle_core::Result<()> {
        self.ops.store(&mut self.weights)
    }
}

/// Teacher forcing along [`Forced`] targets, as the training loop sees it.
struct ForcedTrainee<'a> {
    net: Trainable,
    inputs: &'a [Inputs],
    targets: &'a [Forced],
    valid: &'a [usize],
    ce_weight: f64,
    /// `d` of [`DistillConfig::average_epochs`], and the average from the first step on.
    average_decay: f64,
    average: Option<Snapshot>,
}

/// A batch's requests are split into this many shards, each run as one padded batch on
/// its own core and the gradients summed in shard order: a fixed count, so a run gives the
/// same numbers on any machine.
const GRADIENT_SHARDS: usize = 4;

/// Requests per padded batch when validating.
const VALIDATION_CHUNK: usize = 64;

/// The generator's weights by name, as plain tensors (the moving average, a snapshot).
type Snapshot = HashMap<&'static str, Tensor>;

fn snapshot(ops: &CandleOps) -> candle_core::Result<Snapshot> {
    (ops.vars.iter())
        .map(|(&name, var)| Ok((name, var.as_tensor().copy()?)))
        .collect()
}

fn assign(ops: &CandleOps, values: &Snapshot) -> candle_core::Result<()> {
    (ops.vars.iter()).try_for_each(|(name, var)| var.set(&values[name]))
}

impl ForcedTrainee<'_> {
    fn update_average(&mut self) -> candle_core::Result<()> {
        let (d, vars) = (self.average_decay, &self.net.ops.vars);
        let average = match self.average.take() {
            None => snapshot(&self.net.ops)?,
            Some(average) => (average.into_iter())
                .map(|(name, a)| {
                    let w = vars[name].as_tensor();
                    Ok((name, (a.affine(d, 0.0)? + w.affine(1.0 - d, 0.0)?)?))
                })
                .collect::<candle_core::Result<_>>()?,
        };
        self.average = Some(average);
        Ok(())
    }

    /// Runs `f` with the averaged weights in place, then puts the current ones back.
    fn with_average<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(average) = self.average.take() else {
            return f(self);
        };
        let current = snapshot(&self.net.ops)?;
        assign(&self.net.ops, &average)?;
        let result = f(self);
        assign(&self.net.ops, &current)?;
        self.average = Some(average);
        result
    }

    /// Σ of the requests' losses, as one padded batch.
    fn loss_sum(&self, requests: &[usize]) -> candle_core::Result<Tensor> {
        let inputs: Vec<&Inputs> = requests.iter().map(|&i| &self.inputs[i]).collect();
        let targets: Vec<&Forced> = requests.iter().map(|&i| &self.targets[i]).collect();
        batched::forced_loss_sum(
            &self.net.ops,
            &self.net.weights,
            &inputs,
            &targets,
            self.ce_weight,
        )
    }
}

impl training::Trainee for ForcedTrainee<'_> {
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
        anyhow::ensure!(!batch.is_empty(), "empty batch");
        let scale = batch.len() as f64;
        let shards: Vec<(f64, GradStore)> = batch
            .par_chunks(batch.len().div_ceil(GRADIENT_SHARDS))
            .map(|shard| {
                let loss = (self.loss_sum(shard)? / scale)?;
                Ok((f64::from(loss.to_scalar::<f32>()?), loss.backward()?))
            })
            .collect::<candle_core::Result<_>>()?;
        let mut shards = shards.into_iter();
        let (mut loss, mut grads) = shards.next().expect("a non-empty batch has a shard");
        for (shard_loss, shard_grads) in shards {
            loss += shard_loss;
            for var in self.net.ops.vars.values() {
                if let Some(add) = shard_grads.get(var.as_tensor()) {
                    let sum = match grads.remove(var.as_tensor()) {
                        Some(acc) => (acc + add)?,
                        None => add.clone(),
                    };
                    grads.insert(var.as_tensor(), sum);
                }
            }
        }
        self.net.optimizer.step(&grads)?;
        if self.average_decay > 0.0 {
            self.update_average()?;
        }
        Ok(loss)
    }

    fn validate(&mut self) -> anyhow::Result<f64> {
        self.with_average(Self::validation_loss)
    }

    fn keep_best(&mut self) -> anyhow::Result<()> {
        self.with_average(|t| {
            t.net.sync()?;
            t.net.best = t.net.weights.clone();
            Ok(())
        })
    }
}

impl ForcedTrainee<'_> {
    fn validation_loss(&mut self) -> anyhow::Result<f64> {
        self.net.sync()?;
        let sums: Vec<f64> = self
            .valid
            .par_chunks(VALIDATION_CHUNK)
            .map(|chunk| Ok(f64::from(self.loss_sum(chunk)?.to_scalar::<f32>()?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(sums.iter().sum::<f64>() / self.valid.len().max(1) as f64)
    }
}

/// Trains a generator by teacher forcing; keeps the epoch with the best validation loss.
pub fn distill(
    requests: &[&LoggedRequest],
    targets: &[Forced],
    map: &FeatureMap,
    config: &DistillConfig,
    label: &str,
) -> anyhow::Result<(TrainedGenerator, DistillSummary)> {
    anyhow::ensure!(
        requests.len() == targets.len() && requests.len() >= 2,
        "{label}: need targets for at least 2 requests"
    );
    let inputs: Vec<Inputs> = requests.iter().map(|r| Inputs::new(map, r)).collect();
    let split = training::split(requests.len(), config.valid_fraction, config.seed);
    let mut trainee = ForcedTrainee {
        net: Trainable::new(&schema_of(map), config)?,
        inputs: &inputs,
        targets,
        valid: &split.valid,
        ce_weight: config.ce_weight,
        average_decay: training::average_decay(
            &config.schedule(),
            config.average_epochs,
            split.train.len(),
        ),
        average: None,
    };
    let outcome = training::run(&config.schedule(), &split.train, &mut trainee, label, None)?;
    let summary = DistillSummary::new(&split, &outcome);
    Ok((TrainedGenerator::fold(trainee.net.best, map), summary))
}

/// A trained generator as served: weights that take raw features, and its schema.
#[derive(Debug, Clone)]
pub struct TrainedGenerator {
    pub weights: Weights,
    pub schema: FeatureSchema,
}

impl TrainedGenerator {
    /// Folds `x ↦ (x − mean)·scale` of the dense inputs into the first layers:
    /// `W' = diag(scale)·W` on the dense rows and `b' = b − (mean·scale)·W`.
    pub fn fold(mut weights: Weights, map: &FeatureMap) -> TrainedGenerator {
        let fold = |w: &mut crate::network::Param,
                    b: &mut crate::network::Param,
                    mean: &[f32],
                    scale: &[f32]| {
            let cols = w.cols;
            for (j, (&m, &s)) in mean.iter().zip(scale).enumerate() {
                let row = &mut w.data[j * cols..(j + 1) * cols];
                for (c, v) in row.iter_mut().enumerate() {
                    b.data[c] -= m * s * *v;
                    *v *= s;
                }
            }
        };
        if let Some(w_ctx) = weights.w_ctx.as_mut() {
            fold(
                w_ctx,
                &mut weights.b_ctx,
                &map.context_mean,
                &map.context_scale,
            );
        }
        fold(
            &mut weights.w_item,
            &mut weights.b_item,
            &map.candidate_mean,
            &map.candidate_scale,
        );
        TrainedGenerator {
            weights,
            schema: schema_of(map),
        }
    }

    /// The files of a model version (ONNX graphs + manifest) serving this generator.
    pub fn version_files(
        &self,
        model_name: &str,
        limits: Limits,
        provenance: serde_json::Value,
    ) -> Vec<(String, Vec<u8>)> {
        version_files(&self.weights, &self.schema, model_name, limits, provenance)
    }

    /// One greedy pass, exactly as served (the reference forward the exported graph matches).
    pub fn rerank(&self, request: &LoggedRequest, slots: usize) -> Result<Vec<usize>, String> {
        self.rerank_under(request, slots, &Rules::default())
    }

    /// [`TrainedGenerator::rerank`] with business rules enforced inside the pass.
    pub fn rerank_under(
        &self,
        request: &LoggedRequest,
        slots: usize,
        rules: &Rules,
    ) -> Result<Vec<usize>, String> {
        let mut input = request
            .rerank_input(&self.schema, slots)
            .map_err(|e| e.to_string())?;
        input.rules = rules.clone();
        let mut steps = ReferenceSteps::new(&self.weights, &self.schema, &input);
        decode::decode_request(&mut steps, &input)
            .map(|picks| picks.iter().map(|p| p.index).collect())
            .map_err(|e| e.to_string())
    }
}
