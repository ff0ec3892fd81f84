//! The sparse-reward baseline (GRN/EG-Rerank style): the generator samples whole lists, the
//! evaluator scores each list once (`V(list)`, one number per list), and REINFORCE pushes up
//! the log-probability of lists that beat the other samples of the same request
//! (leave-one-out baseline). No per-step signal: that is the contrast with DeGRe.

use anyhow::Context;
use candle_core::Tensor;
use candle_nn::Optimizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    decode_steps, schema_of, DistillConfig, DistillSummary, Inputs, Trainable, TrainedGenerator,
};
use crate::offline::evaluator::{Evaluator, FeatureMap, RequestScorer};
use crate::offline::logs::LoggedRequest;
use crate::offline::search;
use crate::offline::training::{self, Schedule};

/// Lists sampled per request and update.
const SAMPLES: usize = 4;

/// Draws an index from log-probabilities.
fn sample(log_probs: &Tensor, rng: &mut StdRng) -> candle_core::Result<usize> {
    let p: Vec<f32> = log_probs.exp()?.to_vec1()?;
    let mut u = rng.random::<f32>() * p.iter().sum::<f32>();
    for (i, &pi) in p.iter().enumerate() {
        if u < pi {
            return Ok(i);
        }
        u -= pi;
    }
    // Rounding left u past the end: the most likely item.
    Ok(p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i))
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

impl SparseTrainee<'_> {
    /// Sampled lists of request `i`, each with its reward and summed log-probability.
    fn samples(&mut self, i: usize) -> anyhow::Result<Vec<(f64, Tensor)>> {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let (net, rng) = (&mut self.net, &mut self.rng);
            let (list, log_probs) = decode_steps(
                &mut net.ops,
                &net.weights,
                &self.inputs[i],
                self.slots,
                |_, lp| sample(lp, rng),
            )?;
            // In units of an average click's reward: one learning rate fits any objective.
            let reward = search::value(&self.scorers[i], &list) / self.reward_unit;
            let mut log_prob: Option<Tensor> = None;
            for (lp, &a) in log_probs.iter().zip(&list) {
                let term = lp.narrow(0, a, 1)?;
                log_prob = Some(match log_prob {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
            samples.push((reward, log_prob.context("no slot to sample")?));
        }
        Ok(samples)
    }
}

impl training::Trainee for SparseTrainee<'_> {
    fn step(&mut self, batch: &[usize]) -> anyhow::Result<f64> {
        let mut total: Option<Tensor> = None;
        let mut reward_sum = 0.0;
        for &i in batch {
            let samples = self.samples(i)?;
            let sum: f64 = samples.iter().map(|s| s.0).sum();
            reward_sum += sum / SAMPLES as f64;
            for (reward, log_prob) in samples {
                let baseline = (sum - reward) / (SAMPLES - 1) as f64;
                let term = (log_prob * -(reward - baseline))?;
                total = Some(match total {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
        }
        let loss = (total.context("empty batch")?.sum_all()? / (batch.len() * SAMPLES) as f64)?;
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
