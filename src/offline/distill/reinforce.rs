//! The sparse-reward baseline (GRN/EG-Rerank style): the generator samples whole lists, the
//! evaluator scores each list once (`V(list)`, one number per list), and REINFORCE pushes up
//! the log-probability of lists that beat the other samples of the same request
//! (leave-one-out baseline). No per-step signal: that is the contrast with DeGRe.

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{
    decode_steps, progress_bar, schema_of, split, CandleOps, DistillConfig, DistillSummary, Inputs,
    ServingGenerator,
};
use crate::model::generator::{Dims, Weights};
use crate::offline::evaluator::{Evaluator, RequestScorer};
use crate::offline::logs::LoggedRequest;
use crate::offline::search;

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

/// Trains a generator on the evaluator's list-level reward; keeps the epoch whose greedy
/// lists have the best mean `V` on the validation split.
pub fn reinforce(
    requests: &[&LoggedRequest],
    evaluator: &Evaluator,
    slots: usize,
    config: &DistillConfig,
) -> anyhow::Result<(ServingGenerator, DistillSummary)> {
    let started = std::time::Instant::now();
    let map = &evaluator.spec.features;
    let schema = schema_of(map);
    let dims = Dims {
        hidden: config.hidden,
        embed: config.embed,
    };
    let mut weights = Weights::init(&schema, dims, config.seed);
    let mut ops = CandleOps::new(&weights)?;
    let mut optimizer = AdamW::new(
        ops.all(),
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let inputs: Vec<Inputs> = requests
        .iter()
        .map(|r| Inputs::new(map, r))
        .collect::<candle_core::Result<_>>()?;
    let scorers: Vec<RequestScorer> = requests
        .iter()
        .map(|r| evaluator.scorer(r))
        .collect::<anyhow::Result<_>>()?;
    let (train, valid) = split(requests.len(), config.valid_fraction, config.seed);
    let valid_value = |weights: &Weights| -> anyhow::Result<f64> {
        let generator = ServingGenerator::fold(weights.clone(), map);
        let mut sum = 0.0;
        for &i in &valid {
            let list = generator
                .rerank(requests[i], slots)
                .map_err(anyhow::Error::msg)?;
            sum += search::value(&scorers[i], &list);
        }
        Ok(sum / valid.len().max(1) as f64)
    };
    let mut rng = StdRng::seed_from_u64(config.seed);
    let (mut best, mut best_epoch, mut best_value) = (weights.clone(), 0, valid_value(&weights)?);
    let mut epoch = 0;
    while epoch < config.epochs && epoch - best_epoch < config.patience.max(1) {
        epoch += 1;
        let mut order = train.clone();
        order.shuffle(&mut rng);
        let bar = progress_bar(
            config.progress,
            order.len().div_ceil(config.batch_size) as u64,
            format!("reinforce epoch {epoch}/{}", config.epochs),
        );
        let mut mean_reward = 0.0;
        for (b, chunk) in order.chunks(config.batch_size).enumerate() {
            let mut total: Option<Tensor> = None;
            let mut rewards_seen = 0.0;
            for &i in chunk {
                let mut samples = Vec::with_capacity(SAMPLES);
                for _ in 0..SAMPLES {
                    let (list, log_probs) =
                        decode_steps(&mut ops, &weights, &inputs[i], slots, |_, lp| {
                            sample(lp, &mut rng)
                        })?;
                    let reward = search::value(&scorers[i], &list);
                    let mut log_prob: Option<Tensor> = None;
                    for (lp, &a) in log_probs.iter().zip(&list) {
                        let term = lp.narrow(0, a, 1)?;
                        log_prob = Some(match log_prob {
                            Some(s) => (s + term)?,
                            None => term,
                        });
                    }
                    samples.push((reward, log_prob.expect("at least one slot")));
                }
                let sum: f64 = samples.iter().map(|s| s.0).sum();
                rewards_seen += sum / SAMPLES as f64;
                for (reward, log_prob) in samples {
                    let baseline = (sum - reward) / (SAMPLES - 1) as f64;
                    let term = (log_prob * -(reward - baseline))?;
                    total = Some(match total {
                        Some(s) => (s + term)?,
                        None => term,
                    });
                }
            }
            let loss =
                (total.expect("non-empty chunk").sum_all()? / (chunk.len() * SAMPLES) as f64)?;
            optimizer.backward_step(&loss)?;
            mean_reward += rewards_seen / chunk.len() as f64;
            bar.set_message(format!("sampled V {:.4}", mean_reward / (b + 1) as f64));
            bar.inc(1);
        }
        ops.store(&mut weights)?;
        let value = valid_value(&weights)?;
        bar.finish_with_message(format!("validation greedy V {value:.4}"));
        if value > best_value {
            (best, best_epoch, best_value) = (weights.clone(), epoch, value);
        }
    }
    let summary = DistillSummary {
        train_requests: train.len(),
        valid_requests: valid.len(),
        epochs_run: epoch,
        best_epoch,
        valid_loss: -best_value,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((ServingGenerator::fold(best, map), summary))
}
