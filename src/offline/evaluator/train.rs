//! Training by cumulative regression: every prefix of every logged list at once (the causal
//! structure makes slot t's prediction depend on slots < t only), seeded, with a validation
//! split, early stopping and per-epoch checkpoints that `--resume` continues from.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{click_loss, slot_logits, Batch, Dims, Evaluator, FeatureMap, ListRef, Spec};
use crate::offline::logs::{LogShape, LoggedRequest};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub hidden: usize,
    pub attention: usize,
    pub embed: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub valid_fraction: f64,
    pub seed: u64,
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 64,
            attention: 16,
            embed: 8,
            epochs: 30,
            batch_size: 128,
            learning_rate: 3e-3,
            weight_decay: 1e-4,
            patience: 3,
            valid_fraction: 0.1,
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
    /// Per-slot click BCE on the validation split: the model, and the best constant.
    pub valid_loss: f64,
    pub constant_valid_loss: f64,
    pub seconds: f64,
}

/// Resume point written after every epoch.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    epoch: usize,
    best_epoch: usize,
    best_valid_loss: f64,
    train_loss: f64,
    spec: Spec,
}

const CHECKPOINT_DIR: &str = "checkpoint";
const CHECKPOINT_FILE: &str = "state.json";

fn lists<'a>(
    rows: &'a [LoggedRequest],
    rewards: &'a [Vec<f32>],
    order: &[usize],
) -> Vec<ListRef<'a>> {
    order
        .iter()
        .map(|&i| ListRef {
            request: &rows[i],
            list: &rows[i].exposed,
            rewards: Some(&rewards[i]),
        })
        .collect()
}

fn mean_loss(
    evaluator: &Evaluator,
    lists: &[ListRef<'_>],
    batch_size: usize,
) -> anyhow::Result<f64> {
    let (mut total, mut slots) = (0.0, 0.0);
    for chunk in lists.chunks(batch_size) {
        let batch = Batch::new(&evaluator.spec.features, chunk)?;
        let logits = slot_logits(&evaluator.params, &evaluator.spec.dims, &batch)?;
        let n = batch.slot_mask.sum_all()?.to_scalar::<f32>()? as f64;
        total += click_loss(&logits, &batch)?.to_scalar::<f32>()? as f64 * n;
        slots += n;
    }
    Ok(total / slots.max(1.0))
}

fn bce(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// Trains on `rows` (split into train and validation) and writes the best model to `out`.
pub fn train(
    rows: &[LoggedRequest],
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> anyhow::Result<Evaluator> {
    let started = Instant::now();
    let shape = LogShape::of(rows).context("no logged requests to train on")?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(config.seed));
    let valid_len = ((rows.len() as f64 * config.valid_fraction).round() as usize)
        .clamp(1, rows.len().saturating_sub(1).max(1));
    let (valid_order, train_order) = order.split_at(valid_len);
    anyhow::ensure!(!train_order.is_empty(), "need at least 2 logged requests");
    let train_rows: Vec<&LoggedRequest> = train_order.iter().map(|&i| &rows[i]).collect();
    let rewards: Vec<Vec<f32>> = rows.iter().map(|r| r.rewards(false)).collect();
    let train_lists = lists(rows, &rewards, train_order);
    let valid_lists = lists(rows, &rewards, valid_order);

    let (clicks, slots) = train_lists.iter().fold((0.0, 0.0), |(c, s), l| {
        let r = l.rewards.unwrap_or_default();
        (
            c + r.iter().map(|&x| f64::from(x)).sum::<f64>(),
            s + r.len() as f64,
        )
    });
    let base_rate = (clicks / slots).clamp(1e-4, 1.0 - 1e-4);
    let constant_valid_loss = {
        let (sum, n) = valid_lists
            .iter()
            .flat_map(|l| l.rewards.unwrap_or_default())
            .fold((0.0, 0.0), |(s, n), &y| {
                (s + bce(base_rate, f64::from(y)), n + 1.0)
            });
        sum / f64::max(n, 1.0)
    };

    let spec = Spec {
        dims: Dims {
            context_dense: shape.context_dense,
            candidate_dense: shape.candidate_dense,
            embed: config.embed,
            hidden: config.hidden,
            attention: config.attention,
            max_slots: shape.max_exposed,
        },
        features: FeatureMap::fit(&train_rows, &shape),
        training: None,
    };
    let output_bias = (base_rate / (1.0 - base_rate)).ln() as f32;
    let evaluator = Evaluator::new(spec, output_bias, config.seed)?;
    let checkpoint_dir = out.join(CHECKPOINT_DIR);
    let mut start_epoch = 0;
    let (mut best_epoch, mut best_valid, mut train_loss) = (0, f64::INFINITY, f64::NAN);
    if resume && checkpoint_dir.join(CHECKPOINT_FILE).exists() {
        let path = checkpoint_dir.join(CHECKPOINT_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let state: Checkpoint =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(
            state.spec.dims == evaluator.spec.dims
                && state.spec.features == evaluator.spec.features,
            "{}: the checkpoint was trained with other sizes or data; remove it to start over",
            path.display()
        );
        evaluator
            .params
            .load_into(&checkpoint_dir.join(super::WEIGHTS_FILE))?;
        (start_epoch, best_epoch, best_valid, train_loss) = (
            state.epoch,
            state.best_epoch,
            state.best_valid_loss,
            state.train_loss,
        );
        tracing::info!(epoch = start_epoch, "resuming from checkpoint");
    }

    let mut optimizer = AdamW::new(
        evaluator.params.all(),
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let batches = train_lists.len().div_ceil(config.batch_size);
    let mut epoch = start_epoch;
    while epoch < config.epochs && epoch.saturating_sub(best_epoch) < config.patience.max(1) {
        epoch += 1;
        let bar = progress_bar(config.progress, batches as u64, epoch, config.epochs);
        let mut shuffled: Vec<usize> = (0..train_lists.len()).collect();
        // Seeded per epoch, so a resumed run sees the same batches as an uninterrupted one.
        shuffled.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64) << 32,
        ));
        let (mut sum, mut count) = (0.0, 0.0);
        for chunk in shuffled.chunks(config.batch_size) {
            let chunk: Vec<ListRef<'_>> = chunk
                .iter()
                .map(|&i| ListRef {
                    request: train_lists[i].request,
                    list: train_lists[i].list,
                    rewards: train_lists[i].rewards,
                })
                .collect();
            let batch = Batch::new(&evaluator.spec.features, &chunk)?;
            let logits = slot_logits(&evaluator.params, &evaluator.spec.dims, &batch)?;
            let loss = click_loss(&logits, &batch)?;
            optimizer.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? as f64;
            count += 1.0;
            bar.set_message(format!("loss {:.4}", sum / count));
            bar.inc(1);
        }
        train_loss = sum / count;
        let valid_loss = mean_loss(&evaluator, &valid_lists, 512)?;
        bar.finish_with_message(format!(
            "loss {train_loss:.4}, validation {valid_loss:.4} (constant {constant_valid_loss:.4})"
        ));
        if valid_loss < best_valid {
            (best_valid, best_epoch) = (valid_loss, epoch);
            evaluator.save(out)?;
        }
        std::fs::create_dir_all(&checkpoint_dir)
            .with_context(|| format!("{}", checkpoint_dir.display()))?;
        evaluator
            .params
            .save(&checkpoint_dir.join(super::WEIGHTS_FILE))?;
        let state = Checkpoint {
            epoch,
            best_epoch,
            best_valid_loss: best_valid,
            train_loss,
            spec: evaluator.spec.clone(),
        };
        std::fs::write(
            checkpoint_dir.join(CHECKPOINT_FILE),
            serde_json::to_string_pretty(&state)?,
        )?;
        tracing::info!(epoch, train_loss, valid_loss, best_epoch, "epoch done");
    }
    let mut best = Evaluator::load(out)?;
    best.spec.training = Some(TrainSummary {
        seed: config.seed,
        train_requests: train_lists.len(),
        valid_requests: valid_lists.len(),
        epochs_run: epoch,
        best_epoch,
        train_loss,
        valid_loss: best_valid,
        constant_valid_loss,
        seconds: started.elapsed().as_secs_f64(),
    });
    best.save(out)?;
    Ok(best)
}

fn progress_bar(visible: bool, len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}
