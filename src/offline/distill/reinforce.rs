//! The sparse-reward baseline (GRN/EG-Rerank style): the generator samples whole lists, the
//! evaluator scores each list once (`V(list)`, one number per list), and REINFORCE pushes up
//! the log-probability of lists that beat the other samples of the same request
//! (leave-one-out baseline). No per-step signal: that is the contrast with DeGRe.

use candle_nn::Optimizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    batched, schema_of, DistillConfig, DistillSummary, Inputs, Trainable, TrainedGenerator,
};
use crate::offline::evaluator::{Evaluator, FeatureMap, RequestScorer};
use crate::offline::logs::LoggedRequest;
use crate::offline::search;
use crate::offline::training::{self, Schedule};

/// Lists sampled per request and update.
const SAMPLES: usize = 4;

/// Draws an index from a row of log-probabilities.
fn draw(log_probs: &[f32], rng: &mut StdRng) -> usize {
    let p: Vec<f32> = log_probs.iter().map(|lp| lp.exp()).collect();
    let mut u = rng.random::<f32>() * p.iter().sum::<f32>();
    for (i, &pi) in p.iter().enumerate() {
        if u < pi {
            return i;
        }
        u -= pi;
    }
    // Rounding left u past the end: the most likely item.
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// REINFORCE with a leave-one-out baseline, as the training loop sees it. Validation loss
/// is minus the mean `V` of the greedy lists on the validation split.
struct SparseTrainee<'a> {
    net: Trainable,
    requests: &'a [&'a LoggedRequest],
    inputs: &'a [Inputs],
    scorers: &'a [RequestScorer],
    map: &'a FeatureMap,
    valid: &'a [usize],
    slots: usize,
    reward_unit: f64,
    rng: StdRng,
}

impl training::Trainee for SparseTrainee<'_> {
    /// Every request of the batch sampled `SAMPLES` times, all in one padded batch.
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
        anyhow::ensure!(!batch.is_empty(), "empty batch");
        let copies: Vec<usize> = batch
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i, SAMPLES))
            .collect();
        let inputs: Vec<&Inputs> = copies.iter().map(|&i| &self.inputs[i]).collect();
        let rng = &mut self.rng;
        let sampled = batched::Sampled::new(
            &self.net.ops,
            &self.net.weights,
            &inputs,
            self.slots,
            |row| draw(row, rng),
        )?;
        // In units of an average click's reward: one learning rate fits any objective.
        let rewards: Vec<f64> = copies
            .iter()
            .zip(&sampled.lists)
            .map(|(&i, list)| search::value(&self.scorers[i], list) / self.reward_unit)
            .collect();
        let mut list_weights = Vec::with_capacity(rewards.len());
        let mut reward_sum = 0.0;
        let lists_in_batch = rewards.len() as f64;
        for group in rewards.chunks(SAMPLES) {
            let sum: f64 = group.iter().sum();
            reward_sum += sum / SAMPLES as f64;
            for &reward in group {
                // Leave-one-out: the other samples of the same request are the baseline.
                let baseline = (sum - reward) / (SAMPLES - 1) as f64;
                list_weights.push(((reward - baseline) / lists_in_batch) as f32);
            }
        }
        let loss = sampled.loss(&list_weights)?;
        self.net.optimizer.backward_step(&loss)?;
        // Reported as a loss: minus the mean sampled V.
        Ok(-reward_sum / batch.len() as f64)
    }

    fn validate(&mut self) -> anyhow::Result<f64> {
        self.net.sync()?;
        let generator = TrainedGenerator::fold(self.net.weights.clone(), self.map);
        let mut sum = 0.0;
        for &i in self.valid {
            let list = generator
                .rerank(self.requests[i], self.slots)
                .map_err(anyhow::Error::msg)?;
            sum += search::value(&self.scorers[i], &list);
        }
        Ok(-sum / self.valid.len().max(1) as f64)
    }

    fn keep_best(&mut self) -> anyhow::Result<()> {
        self.net.best = self.net.weights.clone();
        Ok(())
    }
}

/// Trains a generator on the evaluator's list-level reward; keeps the epoch whose greedy
/// lists have the best mean `V` on the validation split.
pub fn reinforce(
    requests: &[&LoggedRequest],
    evaluator: &Evaluator,
    slots: usize,
    config: &DistillConfig,
) -> anyhow::Result<(TrainedGenerator, DistillSummary)> {
    anyhow::ensure!(requests.len() >= 2, "reinforce: need at least 2 requests");
    let map = &evaluator.spec.features;
    let inputs: Vec<Inputs> = requests.iter().map(|r| Inputs::new(map, r)).collect();
    let scorers: Vec<RequestScorer> = requests
        .iter()
        .map(|r| evaluator.scorer(r))
        .collect::<anyhow::Result<_>>()?;
    let split = training::split(requests.len(), config.valid_fraction, config.seed);
    let mut trainee = SparseTrainee {
        net: Trainable::new(&schema_of(map), config)?,
        requests,
        inputs: &inputs,
        scorers: &scorers,
        map,
        valid: &split.valid,
        slots,
        reward_unit: evaluator.reward_unit(),
        rng: StdRng::seed_from_u64(config.seed),
    };
    let schedule = Schedule {
        epochs: config.reinforce_epochs,
        ..config.schedule()
    };
    let outcome = training::run(&schedule, &split.train, &mut trainee, "reinforce", None)?;
    let summary = DistillSummary::new(&split, &outcome);
    Ok((TrainedGenerator::fold(trainee.net.best, map), summary))
}
