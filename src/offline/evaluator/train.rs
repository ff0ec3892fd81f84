//! Training by cumulative regression: every prefix of every logged list at once (the causal
//! structure makes slot t's prediction depend on slots < t only), seeded, with a validation
//! split, early stopping and per-epoch checkpoints that `--resume` continues from.

use std::path::Path;

use anyhow::Context;
use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::model::{
    Params, AMOUNT_BIAS, AMOUNT_LOG_VARIANCE, BUY_BIAS, BUY_NETWORK, VALUE_NETWORK,
};
use super::{
    click_loss, purchase_losses, slot_outputs, value_error, value_loss, value_outputs, Batch, Dims,
    Evaluator, FeatureMap, Labels, ListRef, Spec, ValueOutputs,
};
use crate::offline::logs::{LogShape, LoggedRequest};
use crate::offline::objective::Objective;
use crate::offline::training::{self, Checkpoints, Schedule, Split};

/// Sizes and schedule of the evaluator; the pipeline's `[evaluator]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub hidden: usize,
    pub attention: usize,
    /// Width of an id's embedding and of its pair tables (the rank of the id pairs).
    pub embed: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Validation and the kept model use a moving average of the weights over the
    /// optimiser's steps, `avg ← d·avg + (1 − d)·w`, whose horizon `1 / (1 − d)` is this
    /// many epochs (0: the weights as they are): it smooths out the noise of small batches
    /// of 0/1 clicks. In epochs, not steps, so small logs average as recent a stretch.
    pub average_epochs: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub valid_fraction: f64,
    /// The evaluator, and every generator distilled from it, read the incumbent's order
    /// (each candidate's `ranking_score`, as `contract::upstream` derives it).
    pub ranking_score: bool,
    /// Each slot sees the items above it; off trains a pointwise model (`Dims`).
    pub interactions: bool,
    /// The cascade: the user may stop reading, more or less after a click (`Dims`).
    pub examination: bool,
    /// Id pairs: which ids above a slot lift or damp its item (`Dims`).
    pub pairs: bool,
    /// The user-item affinity as a bilinear form (`Dims`).
    pub bilinear: bool,
    /// With a value objective: whether a click buys and a purchase's (log-normal) amount
    /// are two networks, each stopped at its own best epoch (`Dims::value_parts`).
    pub value_parts: bool,
    /// Set per run (the pipeline's objective and seed), not in the `[evaluator]` section.
    /// No objective: value when the logs carry it, else clicks.
    #[serde(skip)]
    pub objective: Option<Objective>,
    #[serde(skip)]
    pub seed: u64,
    #[serde(skip)]
    pub progress: bool,
}

impl TrainConfig {
    /// Ranges serde cannot check, named as the pipeline's `[evaluator]` keys.
    pub fn check(&self) -> Result<(), String> {
        for (key, n) in [
            ("evaluator.hidden", self.hidden),
            ("evaluator.attention", self.attention),
            ("evaluator.embed", self.embed),
        ] {
            training::ensure_nonzero(key, n)?;
        }
        training::ensure_positive("evaluator.learning_rate", self.learning_rate)?;
        training::ensure_non_negative("evaluator.weight_decay", self.weight_decay)?;
        training::ensure_non_negative("evaluator.average_epochs", self.average_epochs)?;
        training::ensure_fraction("evaluator.valid_fraction", self.valid_fraction)
    }

    /// AdamW over `vars` at this learning rate and weight decay.
    fn optimizer(&self, vars: Vec<candle_core::Var>) -> candle_core::Result<AdamW> {
        AdamW::new(
            vars,
            ParamsAdamW {
                lr: self.learning_rate,
                weight_decay: self.weight_decay,
                ..ParamsAdamW::default()
            },
        )
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

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 64,
            attention: 16,
            // 16 rather than 8: the teacher +0.2 points of the oracle on 3 of 3 seeds
            // (docs/offline.md, "Results on the default config").
            embed: 16,
            epochs: 30,
            // 64 rather than 128: twice the steps an epoch before it starts to overfit
            // (epoch ~2–5); the teacher +0.36 / +0.16 points on seeds 1 and 2, level on
            // seed 0 (docs/offline.md).
            batch_size: 64,
            learning_rate: 3e-3,
            weight_decay: 1e-4,
            // Half an epoch: ~100 steps of the bundled logs (docs/offline.md).
            average_epochs: 0.5,
            patience: 3,
            valid_fraction: 0.1,
            ranking_score: true,
            interactions: true,
            examination: true,
            pairs: true,
            bilinear: true,
            value_parts: true,
            objective: None,
            seed: 0,
            progress: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub seed: u64,
    pub train_requests: usize,
    pub valid_requests: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_loss: f64,
    /// Per-slot click BCE on the validation split: the model (with examination, given the
    /// clicks logged above each slot: the click sequence's likelihood), and the best
    /// constant.
    pub valid_loss: f64,
    pub constant_valid_loss: f64,
    /// The squared error of a click's predicted value against the logged one on the
    /// validation split (units of the mean value per click; `model::value_error`).
    #[serde(default)]
    pub valid_value_loss: Option<f64>,
    /// The value network's own training after the click model stopped: its epochs run
    /// and best epoch (0: the weights it had then).
    #[serde(default)]
    pub value_epochs: Option<[usize; 2]>,
    /// The learned cascade: the probability of reading on after a click, after a skip.
    #[serde(default)]
    pub continuation: Option<[f64; 2]>,
    /// Wall time of the training, the value network's own included.
    pub seconds: f64,
}

const CHECKPOINT_DIR: &str = "checkpoint";

/// A logged request's labels: clicks as 0/1, values in units of the mean value per click.
struct Logged {
    clicks: Vec<f32>,
    values: Option<Vec<f32>>,
}

impl Logged {
    fn of(row: &LoggedRequest, value_per_click: f64) -> Logged {
        Logged {
            clicks: row.clicks.iter().map(|&c| f32::from(u8::from(c))).collect(),
            values: row.values.as_ref().map(|v| {
                v.iter()
                    .map(|&v| (f64::from(v) / value_per_click) as f32)
                    .collect()
            }),
        }
    }

    fn list<'a>(&'a self, row: &'a LoggedRequest) -> ListRef<'a> {
        ListRef {
            request: row,
            list: &row.exposed,
            labels: Some(Labels {
                clicks: &self.clicks,
                values: self.values.as_deref(),
            }),
        }
    }
}

/// The mean value of a clicked slot that logged one, over `rows`; 1 without values.
fn value_per_click<'a>(rows: impl Iterator<Item = &'a LoggedRequest>) -> f64 {
    let (mut sum, mut clicks) = (0.0, 0usize);
    for row in rows {
        if let Some(values) = &row.values {
            for (&click, &value) in row.clicks.iter().zip(values) {
                if click {
                    sum += f64::from(value);
                    clicks += 1;
                }
            }
        }
    }
    if clicks > 0 && sum > 0.0 {
        sum / clicks as f64
    } else {
        1.0
    }
}

/// Over the clicked slots that logged a value in `rows`: the share that bought (value
/// above zero), and a purchase's mean amount in units of the mean value per click.
fn purchases<'a>(
    rows: impl Iterator<Item = &'a LoggedRequest>,
    value_per_click: f64,
) -> Option<Purchases> {
    let (mut clicks, mut amounts) = (0usize, Vec::new());
    for row in rows {
        let values = row.values.as_deref().unwrap_or_default();
        for (&click, &value) in row.clicks.iter().zip(values) {
            clicks += usize::from(click);
            if click && value > 0.0 {
                amounts.push(f64::from(value) / value_per_click);
            }
        }
    }
    if amounts.is_empty() {
        return None;
    }
    let n = amounts.len() as f64;
    let log_mean = amounts.iter().map(|a| a.ln()).sum::<f64>() / n;
    let log_variance = amounts
        .iter()
        .map(|a| (a.ln() - log_mean).powi(2))
        .sum::<f64>()
        / n;
    Some(Purchases {
        share: n / clicks as f64,
        amount: amounts.iter().sum::<f64>() / n,
        log_mean,
        log_variance,
    })
}

/// [`purchases`]: the share of clicks that bought, a purchase's mean amount and the mean
/// and variance of its log.
struct Purchases {
    share: f64,
    amount: f64,
    log_mean: f64,
    log_variance: f64,
}

/// The floor of the log-amount's variance: amounts a deterministic function of the
/// features (a price) fit it to rounding, and `ln 0` is no variance to store.
const MIN_LOG_VARIANCE: f64 = 1e-6;

/// `d` of the weights' moving average: a horizon of `average_epochs` epochs of optimiser
/// steps on `examples` training requests (0 when off).
fn average_decay(config: &TrainConfig, examples: usize) -> f64 {
    training::average_decay(&config.schedule(), config.average_epochs, examples)
}

/// Held-out losses: per-slot click BCE, and (with a value objective) the value MSE.
#[derive(Debug, Clone, Copy)]
struct Losses {
    click: f64,
    value: Option<f64>,
}

fn mean_losses(
    evaluator: &Evaluator,
    lists: &[ListRef<'_>],
    batch_size: usize,
) -> anyhow::Result<Losses> {
    let learns_value = evaluator.spec.objective.uses_value();
    let (mut click, mut slots, mut value, mut valued) = (0.0, 0.0, 0.0, 0.0);
    for chunk in lists.chunks(batch_size) {
        let batch = Batch::new(&evaluator.spec.features, chunk)?;
        let (params, dims) = (&evaluator.params, &evaluator.spec.dims);
        let o = slot_outputs(params, dims, &batch)?;
        let n = f64::from(batch.slot_mask.sum_all()?.to_scalar::<f32>()?);
        let loss = click_loss(params, dims, &o.click_logits, &batch)?;
        click += f64::from(loss.to_scalar::<f32>()?) * n;
        slots += n;
        if learns_value {
            let (sum, m) = summed_value_error(&o.value, &batch)?;
            value += sum;
            valued += m;
        }
    }
    Ok(Losses {
        click: click / slots.max(1.0),
        value: (learns_value && valued > 0.0).then(|| value / valued),
    })
}

/// A batch's `value_error` summed over its clicked slots, and how many there are: batches
/// add up to the split's mean.
fn summed_value_error(o: &ValueOutputs, batch: &Batch) -> candle_core::Result<(f64, f64)> {
    let m = f64::from(batch.value_mask.sum_all()?.to_scalar::<f32>()?);
    Ok((f64::from(value_error(o, batch)?.to_scalar::<f32>()?) * m, m))
}

fn bce(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// The evaluator as the training loop sees it: batches of logged lists, the validation
/// split's loss (click BCE, plus the value MSE when the objective has value), the best
/// epoch saved to `out`.
struct Trainee<'a> {
    evaluator: Evaluator,
    optimizer: AdamW,
    rows: &'a [LoggedRequest],
    labels: &'a [Logged],
    valid: &'a [ListRef<'a>],
    out: &'a Path,
    /// The value network's best validation error so far (`value_error`) and its weights
    /// then: it shares no weight with the click model, so it keeps its own best epoch, and
    /// [`train_value`] goes on from it.
    best_value: Option<(f64, Vec<(String, Tensor)>)>,
    /// `d` of [`TrainConfig::average_epochs`], and the average from the first step on.
    average_decay: f64,
    average: Option<Params>,
}

const AVERAGE_FILE: &str = "average.safetensors";

impl Trainee<'_> {
    fn update_average(&mut self) -> candle_core::Result<()> {
        let d = self.average_decay;
        match &self.average {
            None => self.average = Some(self.evaluator.params.copy()?),
            Some(average) => {
                for ((_, a), (_, w)) in average.vars.iter().zip(&self.evaluator.params.vars) {
                    let next =
                        (a.as_tensor().affine(d, 0.0)? + w.as_tensor().affine(1.0 - d, 0.0)?)?;
                    a.set(&next)?;
                }
            }
        }
        Ok(())
    }

    /// The validation split's click loss; keeps the value network's best weights apart
    /// (with `value_parts` they do not move here: nothing to keep).
    fn validation_loss(&mut self) -> anyhow::Result<f64> {
        let losses = mean_losses(&self.evaluator, self.valid, 512)?;
        let joint_value = losses.value.filter(|_| !self.evaluator.spec.dims.parts());
        if let Some(value) = joint_value {
            if self
                .best_value
                .as_ref()
                .is_none_or(|(best, _)| value < *best)
            {
                self.best_value = Some((value, value_weights(&self.evaluator.params)?));
            }
        }
        Ok(losses.click)
    }

    /// Runs `f` with the averaged weights in place (the current ones before any step),
    /// then puts the current weights back.
    fn with_average<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(average) = self.average.take() else {
            return f(self);
        };
        let current = self.evaluator.params.copy()?;
        self.evaluator.params.assign(&average)?;
        let result = f(self);
        self.evaluator.params.assign(&current)?;
        self.average = Some(average);
        result
    }
}

impl training::Trainee for Trainee<'_> {
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
        let lists: Vec<ListRef<'_>> = batch
            .iter()
            .map(|&i| self.labels[i].list(&self.rows[i]))
            .collect();
        let batch = Batch::new(&self.evaluator.spec.features, &lists)?;
        let (params, dims) = (&self.evaluator.params, &self.evaluator.spec.dims);
        let o = slot_outputs(params, dims, &batch)?;
        let mut loss = click_loss(params, dims, &o.click_logits, &batch)?;
        if self.evaluator.spec.objective.uses_value() && !dims.parts() {
            loss = (loss + value_loss(&o.value, &batch)?)?;
        }
        self.optimizer.backward_step(&loss)?;
        if self.average_decay > 0.0 {
            self.update_average()?;
        }
        Ok(f64::from(loss.to_scalar::<f32>()?))
    }

    fn validate(&mut self) -> anyhow::Result<f64> {
        self.with_average(Self::validation_loss)
    }

    fn keep_best(&mut self) -> anyhow::Result<()> {
        self.with_average(|t| t.evaluator.save(t.out))
    }

    fn save_checkpoint(&self, dir: &Path) -> anyhow::Result<()> {
        self.evaluator.params.save(&dir.join(super::WEIGHTS_FILE))?;
        if let Some(average) = &self.average {
            average.save(&dir.join(AVERAGE_FILE))?;
        }
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.evaluator
            .params
            .load_into(&dir.join(super::WEIGHTS_FILE))?;
        let average = dir.join(AVERAGE_FILE);
        if average.exists() {
            let copy = self.evaluator.params.copy()?;
            copy.load_into(&average)?;
            self.average = Some(copy);
        }
        Ok(())
    }
}

/// Trains on `rows` (split into train and validation) and writes the best model to `out`.
pub fn train(
    rows: &[LoggedRequest],
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> anyhow::Result<Evaluator> {
    anyhow::ensure!(rows.len() >= 2, "need at least 2 logged requests");
    let split = training::split(rows.len(), config.valid_fraction, config.seed);
    train_split(rows, split, config, out, resume)
}

/// [`train`] on a given split of `rows` into training and validation. A bootstrap sample
/// needs it: a request drawn twice must not land on both sides, or early stopping
/// validates on what it trained on and never stops an evaluator that memorises.
pub fn train_split(
    rows: &[LoggedRequest],
    split: Split,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> anyhow::Result<Evaluator> {
    config.check().map_err(anyhow::Error::msg)?;
    let shape = LogShape::of(rows).context("no logged requests to train on")?;
    anyhow::ensure!(
        !split.train.is_empty() && !split.valid.is_empty(),
        "need logged requests both to train on and to validate on"
    );
    let objective = config
        .objective
        .unwrap_or_else(|| shape.default_objective());
    anyhow::ensure!(
        !objective.uses_value() || shape.has_values,
        "the objective {objective} needs the `values` column, and some rows lack it"
    );
    anyhow::ensure!(
        !objective.uses_value() || shape.any_value,
        "the objective {objective} needs some `values` that are not 0, and every logged value is 0"
    );
    let Split { train, valid } = split;
    let value_per_click = value_per_click(train.iter().map(|&i| &rows[i]));
    let labels: Vec<Logged> = rows
        .iter()
        .map(|r| Logged::of(r, value_per_click))
        .collect();
    let valid_lists: Vec<ListRef<'_>> = valid.iter().map(|&i| labels[i].list(&rows[i])).collect();

    let (clicks, slots) = train.iter().fold((0.0, 0.0), |(c, s), &i| {
        let r = &labels[i].clicks;
        (
            c + r.iter().map(|&x| f64::from(x)).sum::<f64>(),
            s + r.len() as f64,
        )
    });
    let base_rate = (clicks / f64::max(slots, 1.0)).clamp(1e-4, 1.0 - 1e-4);
    let constant_valid_loss = {
        let (sum, n) = valid
            .iter()
            .flat_map(|&i| &labels[i].clicks)
            .fold((0.0, 0.0), |(s, n), &y| {
                (s + bce(base_rate, f64::from(y)), n + 1.0)
            });
        sum / f64::max(n, 1.0)
    };
    let train_rows: Vec<&LoggedRequest> = train.iter().map(|&i| &rows[i]).collect();
    let spec = Spec {
        dims: Dims {
            context_dense: shape.context_dense,
            candidate_dense: shape.candidate_dense
                + if config.ranking_score {
                    crate::contract::upstream::WIDTH
                } else {
                    0
                },
            embed: config.embed,
            hidden: config.hidden,
            attention: config.attention,
            max_slots: shape.max_exposed,
            interactions: config.interactions,
            // A pointwise model sees nothing above a slot, its examination included.
            examination: config.interactions && config.examination,
            // Only a value objective trains the value network.
            purchases: objective.uses_value(),
            pairs: config.interactions && config.pairs,
            bilinear: config.bilinear,
            value_parts: config.value_parts,
        },
        features: FeatureMap::fit(&train_rows, &shape, config.ranking_score),
        objective,
        value_per_click,
        training: None,
    };
    let output_bias = (base_rate / (1.0 - base_rate)).ln() as f32;
    let evaluator = Evaluator::new(spec, output_bias, config.seed)?;
    let logged_purchases = objective
        .uses_value()
        .then(|| purchases(train.iter().map(|&i| &rows[i]), value_per_click));
    if let Some(logged) = logged_purchases.flatten() {
        // Start where the logs are: a click buys at their rate, for their mean amount.
        let share = logged.share.clamp(1e-3, 1.0 - 1e-3);
        let set = |name, value: f64| {
            let bias = Tensor::new(&[value as f32], &candle_core::Device::Cpu)?;
            evaluator.params.set(name, &bias)
        };
        set(BUY_BIAS, (share / (1.0 - share)).ln())?;
        let amount = logged.amount.max(1e-6);
        if evaluator.spec.dims.parts() {
            // The log-normal fitted to the logged amounts: their log's mean and variance.
            set(AMOUNT_BIAS, logged.log_mean)?;
            let variance = logged.log_variance.max(MIN_LOG_VARIANCE);
            set(AMOUNT_LOG_VARIANCE, variance.ln())?;
        } else {
            // The inverse of softplus, ln(e^x − 1), written not to overflow for rare, large
            // purchases.
            set(AMOUNT_BIAS, amount + (-(-amount).exp_m1()).ln())?;
        }
    }
    let identity = serde_json::to_value((&evaluator.spec.dims, &evaluator.spec.features))?;
    // With `value_parts` the value network trains only in its own phase (`train_value`),
    // from its initial weights: each part then starts where the logs are and leaves it
    // only as far as its held-out likelihood improves.
    let value_apart = evaluator.spec.dims.parts();
    let joint = (evaluator.params.vars.iter())
        .filter(|(name, _)| !(value_apart && name.starts_with(VALUE_NETWORK)))
        .map(|(_, var)| var.clone());
    let optimizer = config.optimizer(joint.collect())?;
    let mut trainee = Trainee {
        evaluator,
        optimizer,
        rows,
        labels: &labels,
        valid: &valid_lists,
        out,
        best_value: None,
        average_decay: average_decay(config, train.len()),
        average: None,
    };
    let outcome = training::run(
        &config.schedule(),
        &train,
        &mut trainee,
        "evaluator",
        Some(&Checkpoints {
            dir: out.join(CHECKPOINT_DIR),
            resume,
            identity,
        }),
    )?;
    let mut best = Evaluator::load(out)?;
    // The value network from its own best epoch (saved with the summary below).
    if let Some((_, weights)) = trainee.best_value.take() {
        for (name, weight) in &weights {
            best.params.set(name, weight)?;
        }
    }
    let value = (objective.uses_value())
        .then(|| train_value(&best, config, rows, &labels, &train, &valid_lists))
        .transpose()?;
    // Of the saved best, also after a resumed run that never improved.
    let losses = mean_losses(&best, &valid_lists, 512)?;
    best.spec.training = Some(TrainSummary {
        seed: config.seed,
        train_requests: train.len(),
        valid_requests: valid.len(),
        epochs_run: outcome.epochs_run,
        best_epoch: outcome.best_epoch,
        train_loss: outcome.train_loss,
        valid_loss: losses.click,
        valid_value_loss: losses.value,
        value_epochs: value.map(|v| [v.epochs_run, v.best_epoch]),
        continuation: best.continuation()?,
        constant_valid_loss,
        seconds: outcome.seconds + value.map_or(0.0, |v| v.seconds),
    });
    best.save(out)?;
    Ok(best)
}

/// The value network alone, from its best weights of the joint training (with
/// `value_parts`: from its start at the logs, which the joint training leaves alone), until
/// its validation error (each part's) has not improved for `patience` epochs; keeps its
/// best (each part's own). The click
/// model stops long before it where purchases are sparse: a step carries a value only for
/// the clicked slots that bought, so at the click model's best epoch the value network had
/// seen few of them (docs/offline.md, "The objective"). Its steps are cheap: no list.
fn train_value(
    evaluator: &Evaluator,
    config: &TrainConfig,
    rows: &[LoggedRequest],
    labels: &[Logged],
    train: &[usize],
    valid: &[ListRef<'_>],
) -> anyhow::Result<training::Outcome> {
    // The log-amount's variance is not a gradient's: each validation sets it to the held-out
    // residuals' (`ValueTrainee::validate`).
    let weights = (value_network(&evaluator.params))
        .filter(|(name, _)| name != AMOUNT_LOG_VARIANCE)
        .map(|(_, var)| var.clone());
    let mut trainee = ValueTrainee {
        evaluator,
        optimizer: config.optimizer(weights.collect())?,
        rows,
        labels,
        valid,
        best: Vec::new(),
        parts: None,
        latest: None,
    };
    let outcome = training::run(
        &config.schedule(),
        train,
        &mut trainee,
        "value network",
        None,
    )?;
    let parts = trainee.parts.iter().flat_map(|p| [&p.buy, &p.amount]);
    for best in parts.flatten() {
        for (name, weight) in &best.weights {
            evaluator.params.set(name, weight)?;
        }
    }
    for (name, weight) in &trainee.best {
        evaluator.params.set(name, weight)?;
    }
    Ok(outcome)
}

/// With `value_parts`, each part's best so far (the buy network's `value.buy.` weights;
/// the amount's, the rest), counting validations from 1.
#[derive(Default)]
struct PartBests {
    buy: Option<PartBest>,
    amount: Option<PartBest>,
    epoch: usize,
}

/// A part's best held-out loss, the validation it came in, and its weights then.
struct PartBest {
    loss: f64,
    epoch: usize,
    weights: Vec<(String, Tensor)>,
}

impl PartBests {
    /// Keeps each part whose `loss` beats its best; the loop's criterion is minus the
    /// latest validation where either part did, so it stops when neither has for
    /// `patience` epochs.
    fn update(&mut self, params: &Params, buy: f64, amount: f64) -> candle_core::Result<f64> {
        self.epoch += 1;
        let is_buy = |name: &str| name.starts_with(BUY_NETWORK);
        for (best, loss, buy_part) in [
            (&mut self.buy, buy, true),
            (&mut self.amount, amount, false),
        ] {
            if best.as_ref().is_none_or(|b| loss < b.loss) {
                let weights = value_weights(params)?;
                let part = weights.into_iter().filter(|(n, _)| is_buy(n) == buy_part);
                *best = Some(PartBest {
                    loss,
                    epoch: self.epoch,
                    weights: part.collect(),
                });
            }
        }
        let latest = |best: &Option<PartBest>| best.as_ref().map_or(0, |b| b.epoch);
        Ok(-(latest(&self.buy).max(latest(&self.amount)) as f64))
    }
}

/// The value network as the training loop sees it; the click model's weights stay put.
struct ValueTrainee<'a> {
    evaluator: &'a Evaluator,
    optimizer: AdamW,
    rows: &'a [LoggedRequest],
    labels: &'a [Logged],
    valid: &'a [ListRef<'a>],
    best: Vec<(String, Tensor)>,
    /// With `value_parts`: each part's own best (`best` stays empty).
    parts: Option<PartBests>,
    /// With `value_parts`: the latest validation's purchase loss and amount error, which
    /// the progress line states (the loop's criterion is an epoch count).
    latest: Option<[f64; 2]>,
}

impl training::Trainee for ValueTrainee<'_> {
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
        let lists: Vec<ListRef<'_>> = batch
            .iter()
            .map(|&i| self.labels[i].list(&self.rows[i]))
            .collect();
        let batch = Batch::new(&self.evaluator.spec.features, &lists)?;
        let o = value_outputs(&self.evaluator.params, &self.evaluator.spec.dims, &batch)?;
        let loss = value_loss(&o, &batch)?;
        self.optimizer.backward_step(&loss)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    }

    fn validate(&mut self) -> anyhow::Result<f64> {
        let (params, dims) = (&self.evaluator.params, &self.evaluator.spec.dims);
        // The value error, or with `value_parts` each part's own likelihood: sums and
        // weights.
        let (mut sums, mut weights) = ([0.0; 2], [0.0; 2]);
        for chunk in self.valid.chunks(512) {
            let batch = Batch::new(&self.evaluator.spec.features, chunk)?;
            let o = value_outputs(params, dims, &batch)?;
            if dims.parts() {
                let Some(p) = purchase_losses(&o, &batch)? else {
                    continue;
                };
                for (i, (loss, n)) in [(p.buy, p.clicks), (p.amount, p.purchases)]
                    .into_iter()
                    .enumerate()
                {
                    sums[i] += f64::from(loss.to_scalar::<f32>()?) * n;
                    weights[i] += n;
                }
            } else {
                let (error, m) = summed_value_error(&o, &batch)?;
                sums[0] += error;
                weights[0] += m;
            }
        }
        let [buy, amount] = [0, 1].map(|i| sums[i] / f64::max(weights[i], 1.0));
        if !dims.parts() {
            return Ok(buy);
        }
        let bests = self.parts.get_or_insert_with(PartBests::default);
        if weights[1] == 0.0 {
            // No held-out purchase: no evidence for any amount but the logs' (epoch 0).
            self.latest = Some([buy, f64::INFINITY]);
            return Ok(bests.update(params, buy, f64::INFINITY)?);
        }
        // The amount's loss was 0.5·(r²·e^{−v} + v) at the stored log-variance v: the
        // held-out log-amount's squared error r² is (2·loss − v)·e^v, which becomes the
        // variance, so that exp(μ + σ²/2) is the mean amount on requests not trained on.
        let v = f64::from(params.get(AMOUNT_LOG_VARIANCE)?.to_vec1::<f32>()?[0]);
        let squared_error = ((2.0 * amount - v) * v.exp()).max(MIN_LOG_VARIANCE);
        let variance = Tensor::new(&[squared_error.ln() as f32], &candle_core::Device::Cpu)?;
        params.set(AMOUNT_LOG_VARIANCE, &variance)?;
        self.latest = Some([buy, squared_error]);
        Ok(bests.update(params, buy, squared_error)?)
    }

    fn describe_validation(&self, loss: f64) -> String {
        match self.latest {
            Some([buy, amount]) => format!("validation purchase {buy:.4}, amount {amount:.4}"),
            None => format!("validation {loss:.4}"),
        }
    }

    fn keep_best(&mut self) -> anyhow::Result<()> {
        if self.parts.is_none() {
            self.best = value_weights(&self.evaluator.params)?;
        }
        Ok(())
    }
}

/// The value network's weights, by name.
fn value_network(params: &Params) -> impl Iterator<Item = &(String, candle_core::Var)> {
    (params.vars.iter()).filter(|(name, _)| name.starts_with(VALUE_NETWORK))
}

/// A copy of the value network's weights, by name.
fn value_weights(params: &Params) -> candle_core::Result<Vec<(String, Tensor)>> {
    value_network(params)
        .map(|(name, v)| Ok((name.clone(), v.as_tensor().copy()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_spans_the_same_share_of_an_epoch_on_any_log_size() {
        let config = TrainConfig::default();
        let horizon = |examples| 1.0 / (1.0 - average_decay(&config, examples));
        // 13,500 requests in batches of 64: 211 steps, half of them averaged.
        assert!(
            (horizon(13_500) - 105.5).abs() < 1e-6,
            "{}",
            horizon(13_500)
        );
        // 1,800 requests: 29 steps an epoch, still half an epoch, not 105 steps.
        assert!((horizon(1_800) - 14.5).abs() < 1e-6, "{}", horizon(1_800));
        // 8 requests: 8 steps of 1 (at least 8 batches an epoch), a horizon of 4.
        assert!((horizon(8) - 4.0).abs() < 1e-6, "{}", horizon(8));
        // Less than one step of horizon: the weights as they are.
        assert_eq!(average_decay(&config, 1), 0.0);
        let off = TrainConfig {
            average_epochs: 0.0,
            ..TrainConfig::default()
        };
        assert_eq!(average_decay(&off, 13_500), 0.0);
    }

    /// Each part keeps the weights of its own best epoch, and the loop's criterion improves
    /// whenever either part does, so it stops only when neither has for `patience` epochs.
    #[test]
    fn each_value_part_keeps_its_own_best_epoch() {
        let var =
            |x: f32| candle_core::Var::from_vec(vec![x], 1, &candle_core::Device::Cpu).unwrap();
        let params = Params {
            vars: vec![
                (BUY_BIAS.to_string(), var(0.0)),
                (AMOUNT_BIAS.to_string(), var(0.0)),
                ("out.b2".to_string(), var(0.0)),
            ],
        };
        let mut bests = PartBests::default();
        // Epochs 1 to 4: the buy loss is best at 2, the amount's at 3, neither improves at 4.
        let losses = [(0.5, 2.0), (0.4, 1.5), (0.45, 1.0), (0.42, 1.2)];
        let mut criteria = Vec::new();
        for (epoch, (buy, amount)) in losses.into_iter().enumerate() {
            for (_, var) in &params.vars {
                var.set(&Tensor::new(&[epoch as f32], var.device()).unwrap())
                    .unwrap();
            }
            criteria.push(bests.update(&params, buy, amount).unwrap());
        }
        assert_eq!(criteria, [-1.0, -2.0, -3.0, -3.0]);
        let kept = |best: &Option<PartBest>| {
            let best = best.as_ref().unwrap();
            let weights: Vec<(String, f32)> = (best.weights.iter())
                .map(|(n, w)| (n.clone(), w.to_vec1::<f32>().unwrap()[0]))
                .collect();
            (best.epoch, weights)
        };
        // The weights as they were at each part's best (weights hold their epoch − 1);
        // neither part holds the other's weights, nor anything outside the value network.
        assert_eq!(kept(&bests.buy), (2, vec![(BUY_BIAS.to_string(), 1.0)]));
        assert_eq!(
            kept(&bests.amount),
            (3, vec![(AMOUNT_BIAS.to_string(), 2.0)])
        );
    }
}
