//! The training loop every trainer shares (the evaluator, distillation, the sparse-reward
//! baseline): a seeded train/validation split, a seeded shuffle per epoch, batches,
//! progress, early stopping on the validation loss, and optional per-epoch checkpoints that
//! a resumed run continues from. A trainer says only how to take a step, how to score the
//! validation split and what to keep.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::offline::progress::Progress;

/// How long and in what order to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub epochs: usize,
    pub batch_size: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub seed: u64,
    /// Shown as [`Progress`]; nothing when false.
    pub progress: bool,
}

/// Disjoint example indices: training and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
}

/// The one split rule: a seeded shuffle of `0..len`; the validation share is `fraction` of
/// `len` rounded, at least 1 and at most half (so both sides are non-empty from 2 on).
pub fn split(len: usize, fraction: f64, seed: u64) -> Split {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let valid = ((len as f64 * fraction).round() as usize).clamp(usize::from(len > 1), len / 2);
    let train = order.split_off(valid);
    Split {
        train,
        valid: order,
    }
}

/// Range checks the config sections share. `key` names the setting as a user writes it
/// (`distill.temperature`), so a bad value is refused with its name rather than trained
/// into NaN weights or a model that never learns.
pub fn ensure_positive(key: &str, x: f64) -> Result<(), String> {
    match x > 0.0 && x.is_finite() {
        true => Ok(()),
        false => Err(format!("`{key}` must be finite and > 0, not {x}")),
    }
}

/// See [`ensure_positive`].
pub fn ensure_non_negative(key: &str, x: f64) -> Result<(), String> {
    match x >= 0.0 && x.is_finite() {
        true => Ok(()),
        false => Err(format!("`{key}` must be finite and >= 0, not {x}")),
    }
}

/// A share strictly between 0 and 1; see [`ensure_positive`].
pub fn ensure_fraction(key: &str, x: f64) -> Result<(), String> {
    match x > 0.0 && x < 1.0 {
        true => Ok(()),
        false => Err(format!("`{key}` must be within (0, 1), not {x}")),
    }
}

/// A size or count of at least 1; see [`ensure_positive`].
pub fn ensure_nonzero(key: &str, n: usize) -> Result<(), String> {
    match n > 0 {
        true => Ok(()),
        false => Err(format!("`{key}` must be at least 1")),
    }
}

/// What a trainer supplies to [`run`].
pub trait Trainee {
    /// One optimiser step on these training examples; returns the batch's loss.
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64>;
    /// The validation loss of the current parameters (lower is better).
    fn validate(&mut self) -> anyhow::Result<f64>;
    /// The current parameters are the best so far: keep them.
    fn keep_best(&mut self) -> anyhow::Result<()>;
    /// How the progress line states the latest validation, [`Trainee::validate`]'s `loss`.
    fn describe_validation(&self, loss: f64) -> String {
        format!("validation {loss:.4}")
    }
    /// Writes the current parameters into a checkpoint directory.
    fn save_checkpoint(&self, _dir: &Path) -> anyhow::Result<()> {
        Ok(())
    }
    /// Restores the parameters [`Trainee::save_checkpoint`] wrote.
    fn load_checkpoint(&mut self, _dir: &Path) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where checkpoints go, and whether to continue from one.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub dir: PathBuf,
    pub resume: bool,
    /// What the run trains (sizes, feature map): a checkpoint of anything else is refused.
    pub identity: serde_json::Value,
}

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub epochs_run: usize,
    /// 0: the initial parameters were never beaten.
    pub best_epoch: usize,
    pub best_valid_loss: f64,
    /// Mean batch loss of the last epoch.
    pub train_loss: f64,
    pub seconds: f64,
}

/// Resume point written after every epoch.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    epoch: usize,
    best_epoch: usize,
    best_valid_loss: f64,
    train_loss: f64,
    identity: serde_json::Value,
}

const STATE_FILE: &str = "state.json";

/// Small data gets smaller batches rather than a handful of optimiser steps: an epoch has
/// at least this many batches (when there are as many examples).
const MIN_BATCHES_PER_EPOCH: usize = 8;

/// The batch size used on `examples`: the schedule's, made smaller on small data.
pub fn batch_size(schedule: &Schedule, examples: usize) -> usize {
    schedule
        .batch_size
        .min(examples / MIN_BATCHES_PER_EPOCH)
        .max(1)
}

/// Optimiser steps in one epoch over `examples`.
pub fn steps_per_epoch(schedule: &Schedule, examples: usize) -> usize {
    examples.div_ceil(batch_size(schedule, examples))
}

/// `d` of a moving average of the weights over optimiser steps, `avg ← d·avg + (1 − d)·w`,
/// whose horizon `1 / (1 − d)` is `epochs` epochs of steps on `examples` (0 when off): in
/// epochs, not steps, so small data averages as recent a stretch as large.
pub fn average_decay(schedule: &Schedule, epochs: f64, examples: usize) -> f64 {
    let horizon = epochs * steps_per_epoch(schedule, examples) as f64;
    if horizon > 0.0 {
        1.0 - 1.0 / horizon.max(1.0)
    } else {
        0.0
    }
}

/// Trains on `train` for up to `schedule.epochs` epochs and keeps the parameters with the
/// lowest validation loss, the initial ones included.
pub fn run(
    schedule: &Schedule,
    train: &[usize],
    trainee: &mut impl Trainee,
    label: &str,
    checkpoints: Option<&Checkpoints>,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!train.is_empty(), "{label}: no training examples");
    let started = Instant::now();
    let (mut epoch, mut best_epoch, mut best_valid, mut train_loss);
    match checkpoints.filter(|c| c.resume && c.dir.join(STATE_FILE).exists()) {
        Some(c) => {
            let path = c.dir.join(STATE_FILE);
            let text =
                std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let state: State =
                serde_json::from_str(&text).with_context(|| path.display().to_string())?;
            anyhow::ensure!(
                state.identity == c.identity,
                "{}: the checkpoint was trained with other sizes or data; remove it to start over",
                path.display()
            );
            trainee.load_checkpoint(&c.dir)?;
            (epoch, best_epoch, best_valid, train_loss) = (
                state.epoch,
                state.best_epoch,
                state.best_valid_loss,
                state.train_loss,
            );
            tracing::info!(epoch, "{label}: resuming from checkpoint");
        }
        None => {
            (epoch, best_epoch, train_loss) = (0, 0, f64::NAN);
            best_valid = trainee.validate()?;
            trainee.keep_best()?;
        }
    }
    let batch_size = batch_size(schedule, train.len());
    let batches = steps_per_epoch(schedule, train.len());
    let mut order = train.to_vec();
    while epoch < schedule.epochs && epoch - best_epoch < schedule.patience.max(1) {
        epoch += 1;
        // Seeded per epoch, so a resumed run sees the same batches as an uninterrupted one.
        order.copy_from_slice(train);
        order.shuffle(&mut StdRng::seed_from_u64(
            schedule.seed ^ ((epoch as u64) << 32),
        ));
        let bar = Progress::new(
            schedule.progress,
            batches,
            format!("{label} epoch {epoch}/{}", schedule.epochs),
        );
        let mut sum = 0.0;
        for (b, batch) in order.chunks(batch_size).enumerate() {
            sum += trainee.step(batch)?;
            bar.advance(1, || format!("loss {:.4}", sum / (b + 1) as f64));
        }
        train_loss = sum / batches as f64;
        let valid = trainee.validate()?;
        let better = valid < best_valid;
        if better {
            (best_valid, best_epoch) = (valid, epoch);
            trainee.keep_best()?;
        }
        let best = if better { " (best)" } else { "" };
        let validation = trainee.describe_validation(valid);
        bar.finish(format!("loss {train_loss:.4}, {validation}{best}"));
        if let Some(c) = checkpoints {
            std::fs::create_dir_all(&c.dir).with_context(|| c.dir.display().to_string())?;
            trainee.save_checkpoint(&c.dir)?;
            let state = State {
                epoch,
                best_epoch,
                best_valid_loss: best_valid,
                train_loss,
                identity: c.identity.clone(),
            };
            let path = c.dir.join(STATE_FILE);
            std::fs::write(&path, serde_json::to_string_pretty(&state)?)
                .with_context(|| path.display().to_string())?;
        }
        tracing::debug!(epoch, train_loss, valid, best_epoch, "{label}: epoch done");
    }
    Ok(Outcome {
        epochs_run: epoch,
        best_epoch,
        best_valid_loss: best_valid,
        train_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_disjoint_seeded_and_bounded() {
        for len in [2, 3, 10, 101] {
            let s = split(len, 0.1, 7);
            assert_eq!(s, split(len, 0.1, 7));
            assert!(!s.train.is_empty() && !s.valid.is_empty());
            assert!(s.valid.len() <= len / 2);
            let mut all: Vec<usize> = s.train.iter().chain(&s.valid).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..len).collect::<Vec<_>>());
        }
        assert_eq!(split(1, 0.5, 0).valid, Vec::<usize>::new());
        assert_eq!(split(100, 0.25, 0).valid.len(), 25);
    }

    /// Fits `w` to 3.0 by gradient steps; validation is `(w − 3)²` plus a bump that makes
    /// epochs after the third worse, so early stopping must keep epoch 3.
    struct Quadratic {
        w: f64,
        epoch: usize,
        kept: Option<f64>,
    }

    impl Trainee for Quadratic {
        fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
            self.w += 0.5 * (3.0 - self.w) * batch.len() as f64 / 2.0;
            Ok((self.w - 3.0).powi(2))
        }
        fn validate(&mut self) -> anyhow::Result<f64> {
            self.epoch += 1;
            let drift = if self.epoch > 4 {
                self.epoch as f64
            } else {
                0.0
            };
            Ok((self.w - 3.0).powi(2) + drift)
        }
        fn keep_best(&mut self) -> anyhow::Result<()> {
            self.kept = Some(self.w);
            Ok(())
        }
    }

    #[test]
    fn stops_early_and_keeps_the_best_epoch() {
        let schedule = Schedule {
            epochs: 20,
            batch_size: 2,
            patience: 2,
            seed: 1,
            progress: false,
        };
        let mut q = Quadratic {
            w: 0.0,
            epoch: 0,
            kept: None,
        };
        let outcome = run(&schedule, &[0, 1, 2, 3], &mut q, "test", None).unwrap();
        // Validation calls: initial (1), epochs 1..=3 improve, epochs 4 and 5 do not.
        assert_eq!(outcome.best_epoch, 3);
        assert_eq!(outcome.epochs_run, 5);
        assert!(q.kept.unwrap() < q.w);
        assert!(outcome.best_valid_loss < 0.01);
    }

    #[test]
    fn refuses_an_empty_training_set() {
        let schedule = Schedule {
            epochs: 1,
            batch_size: 1,
            patience: 1,
            seed: 0,
            progress: false,
        };
        let mut q = Quadratic {
            w: 0.0,
            epoch: 0,
            kept: None,
        };
        assert!(run(&schedule, &[], &mut q, "test", None).is_err());
    }
}
