//! The stages of one seed's run, in order: data, evaluators (the miner's and the gate's
//! judge), mining, generators, comparison, gate. Each takes what the previous ones produced
//! and writes its artefacts under the seed's directory.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::config::PipelineConfig;
use crate::offline::compare::{evaluate, EvalInputs, EvalReport};
use crate::offline::distill::{self, DistillConfig, DistillSummary, Forced, TrainedGenerator};
use crate::offline::evaluator::{self, Ensemble, Evaluator};
use crate::offline::gate::{self, GateReport, Panel};
use crate::offline::logs::{write_logs, LoggedRequest};
use crate::offline::mine::{self, MineConfig, Mined, Shard};
use crate::offline::objective::Objective;
use crate::offline::policy::Policy;
use crate::offline::rules;
use crate::offline::sim::{sample_split, World};
use crate::offline::training;

/// Training requests (for the mining evaluator and the generators), the judge's requests
/// (disjoint from them), test requests, and the world they came from when simulated.
pub struct Data {
    pub world: Option<World>,
    pub train: Vec<LoggedRequest>,
    pub judge: Vec<LoggedRequest>,
    pub test: Vec<LoggedRequest>,
}

impl Data {
    /// Slots per list: the world's, or the longest logged list.
    pub fn slots(&self) -> usize {
        match &self.world {
            Some(world) => world.config.slots,
            None => self
                .train
                .iter()
                .map(|r| r.exposed.len())
                .max()
                .unwrap_or(1),
        }
    }
}

/// Simulates a world and its logs, or splits the user's logs into train and test.
pub fn data(
    config: &PipelineConfig,
    user_logs: Option<&[LoggedRequest]>,
    seed: u64,
    dir: &Path,
) -> anyhow::Result<Data> {
    let (world, train, test) = match user_logs {
        None => {
            let world = World::generate(config.simulator.clone(), seed);
            let train = sample_split(&world, "train", config.simulator.train_requests);
            let test = sample_split(&world, "test", config.simulator.test_requests);
            (Some(world), train, test)
        }
        Some(logs) => {
            let split = training::split(logs.len(), config.test_fraction, seed);
            let pick = |idx: &[usize]| idx.iter().map(|&i| logs[i].clone()).collect();
            (None, pick(&split.train), pick(&split.valid))
        }
    };
    // Its own seed ("judge" in ASCII): not the same shuffle as the test split's.
    let split = training::split(train.len(), config.judge_fraction, seed ^ 0x006a_7564_6765);
    let pick = |idx: &[usize]| idx.iter().map(|&i| train[i].clone()).collect::<Vec<_>>();
    let data = Data {
        world,
        judge: pick(&split.valid),
        train: pick(&split.train),
        test,
    };
    write_logs(&dir.join("train.parquet"), &data.train)?;
    write_logs(&dir.join("judge.parquet"), &data.judge)?;
    write_logs(&dir.join("test.parquet"), &data.test)?;
    if let Some(world) = &data.world {
        std::fs::write(dir.join("world.json"), serde_json::to_string(world)?)?;
    }
    Ok(data)
}

fn settings(config: &PipelineConfig, seed: u64, progress: bool) -> evaluator::TrainConfig {
    evaluator::TrainConfig {
        objective: config.objective,
        seed,
        progress,
        ..config.evaluator.clone()
    }
}

/// The mining ensemble: `mining.evaluators` evaluators on the training requests, each
/// with its own seed (member 0 has the run's seed), under `dir/evaluator[-m]`, and (with
/// `mining.pointwise_blend`) a pointwise one with member 0's seed, so the same validation
/// split, under `dir/evaluator-pointwise`, blended into every member by the weight that
/// best predicts that split's clicks. Each trains on one thread, side by side on rayon's
/// pool; only member 0 shows progress (one bar, not several fighting over the terminal).
pub fn train_ensemble(
    config: &PipelineConfig,
    rows: &[LoggedRequest],
    seed: u64,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<Ensemble> {
    let blend = config.mining.pointwise_blend && config.evaluator.interactions;
    let members = config.mining.evaluators;
    // Member 0 and the pointwise one validate on the split the blend is fitted on.
    let split = training::split(rows.len(), config.evaluator.valid_fraction, seed);
    let mut trained = (0..members + usize::from(blend))
        .into_par_iter()
        .map(|m| {
            let (member_seed, out) = match m {
                0 => (seed, dir.join("evaluator")),
                m if m == members => (seed, dir.join("evaluator-pointwise")),
                m => (
                    seed.wrapping_add(7_919 * m as u64),
                    dir.join(format!("evaluator-{m}")),
                ),
            };
            let settings = evaluator::TrainConfig {
                interactions: config.evaluator.interactions && m < members,
                ..settings(config, member_seed, progress && m == 0)
            };
            if m == 0 || m == members {
                evaluator::train_split(rows, split.clone(), &settings, &out, false)
            } else {
                evaluator::train(rows, &settings, &out, false)
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pointwise = blend.then(|| trained.pop()).flatten();
    let ensemble = Ensemble::new(trained, config.mining.pessimism)?;
    let Some(pointwise) = pointwise else {
        return Ok(ensemble);
    };
    let valid: Vec<LoggedRequest> = split.valid.iter().map(|&i| rows[i].clone()).collect();
    let weight = evaluator::blend::fit_list_weight(&valid, ensemble.first(), &pointwise)?;
    ensemble.blended(pointwise, weight)
}

/// The gate's judges: evaluators on bootstrap samples of the judge split, each with its
/// own seed, under `dir/judge-<j>`, and a pointwise one on the same sample under
/// `dir/judge-<j>-pointwise`. Each validates on requests its sample does not hold. All
/// train side by side on rayon's pool, without progress bars (the stage line says when
/// they are done).
pub fn train_judges(
    config: &PipelineConfig,
    rows: &[LoggedRequest],
    seed: u64,
    dir: &Path,
) -> anyhow::Result<Panel> {
    let pairs = (0..config.judges)
        .into_par_iter()
        .map(|j| {
            let seed = seed.wrapping_add(1_000_003 * (j as u64 + 1));
            let (sample, split) = bootstrap(rows, seed);
            let train = |interactions: bool, name: String| {
                let settings = evaluator::TrainConfig {
                    interactions,
                    ..settings(config, seed, false)
                };
                evaluator::train_split(&sample, split.clone(), &settings, &dir.join(name), false)
            };
            let (judge, pointwise) = rayon::join(
                || train(true, format!("judge-{j}")),
                || {
                    (config.pointwise_judges)
                        .then(|| train(false, format!("judge-{j}-pointwise")))
                        .transpose()
                },
            );
            Ok((judge?, pointwise?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (judges, pointwise): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    Ok(Panel {
        judges,
        pointwise: pointwise.into_iter().flatten().collect(),
    })
}

/// A bootstrap sample of `rows` (as many draws as rows) to train on, and the rows it
/// never drew (about 37%) to validate on: no request on both sides, and an early stop
/// read on several times the usual validation split (small judge splits made it noisy).
/// Returns the rows and their split.
fn bootstrap(rows: &[LoggedRequest], seed: u64) -> (Vec<LoggedRequest>, training::Split) {
    let n = rows.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let draws: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
    let mut drawn = vec![false; n];
    for &i in &draws {
        drawn[i] = true;
    }
    if n > 1 && drawn.iter().all(|&d| d) {
        // Tiny logs can draw every row: keep one out to validate on.
        drawn[draws[0]] = false;
    }
    let train: Vec<usize> = draws.into_iter().filter(|&i| drawn[i]).collect();
    let valid = (0..n).filter(|&i| !drawn[i]);
    let sample: Vec<LoggedRequest> = train
        .iter()
        .copied()
        .chain(valid)
        .map(|i| rows[i].clone())
        .collect();
    let split = training::Split {
        train: (0..train.len()).collect(),
        valid: (train.len()..sample.len()).collect(),
    };
    (sample, split)
}

/// What `[mining] max_requests = 0` mines at most, in units of [`mine::lookahead_cost`]
/// summed over the requests: 13,500 requests of 50 candidates and 10 slots, about 3
/// minutes on 2 cores (measured: 13 million units a second at N = 150, K = 20, three
/// members), so logs like the simulator's (N = 20) are mined whole.
const MINING_BUDGET: f64 = 13_500.0 * mine::lookahead_cost(50, 10);
/// ... but never fewer lists' steps than this (when the logs have them): 2,000 requests of 10
/// slots. The generator learns a soft target at every step, and needs examples more than
/// the budget needs keeping; counted in steps, long lists (whose lookahead costs `K²`) do
/// not multiply the floor's cost.
const MIN_AUTO_MINED_STEPS: usize = 20_000;

/// The training requests to mine: the first `max_requests`, or with 0 the first that fit
/// [`MINING_BUDGET`] (at least [`MIN_AUTO_MINED_STEPS`]); and whether the budget left some
/// out.
pub fn mining_requests(
    train: &[LoggedRequest],
    max_requests: usize,
) -> (Vec<&LoggedRequest>, bool) {
    let sizes = train.iter().map(|r| (r.candidates.len(), r.exposed.len()));
    let count = mining_count(sizes, max_requests);
    let budget_cut = max_requests == 0 && count < train.len();
    (train.iter().take(count).collect(), budget_cut)
}

/// How many of the requests with these (candidates, slots) [`mining_requests`] keeps.
fn mining_count(sizes: impl Iterator<Item = (usize, usize)>, max_requests: usize) -> usize {
    if max_requests > 0 {
        return sizes.take(max_requests).count();
    }
    let (mut spent, mut steps) = (0.0, 0);
    sizes
        .take_while(|&(n, k)| {
            let floor = steps < MIN_AUTO_MINED_STEPS;
            spent += mine::lookahead_cost(n, k);
            steps += k.min(n);
            floor || spent <= MINING_BUDGET
        })
        .count()
}

/// Beam-searches `requests` at width `width` into `dir/file`; returns the mined lists and
/// the mining rate (requests per second).
pub fn mine(
    requests: &[&LoggedRequest],
    evaluator: &Ensemble,
    width: usize,
    trust_margin: Option<f64>,
    slots: usize,
    path: &Path,
    progress: bool,
) -> anyhow::Result<(Vec<Mined>, f64)> {
    let summary = mine::mine(
        requests.iter().copied(),
        evaluator,
        &MineConfig {
            width,
            trust_margin,
            slots,
            shard: Shard::ALL,
            resume: false,
            progress,
        },
        path,
    )?;
    Ok((
        mine::read_mined(&[path.to_path_buf()])?,
        summary.requests_per_second,
    ))
}

/// DeGRe and, when asked for, the generators it is compared with, all trained on the same
/// requests.
pub struct Generators {
    pub degre: TrainedGenerator,
    /// How DeGRe's distillation went (epochs, best epoch, validation loss).
    pub degre_training: DistillSummary,
    pub baselines: Option<Baselines>,
    /// DeGRe distilled from lists mined under the simulator's true utility instead of the
    /// evaluator: the generator's ceiling, apart from the evaluator's error.
    pub oracle_teacher: Option<TrainedGenerator>,
}

pub struct Baselines {
    pub hard_labels: TrainedGenerator,
    pub b1: TrainedGenerator,
    pub heuristic_labels: TrainedGenerator,
    pub sparse_reward: TrainedGenerator,
}

impl Generators {
    /// Every generator with its method name, DeGRe last.
    pub fn named(&self) -> Vec<(&'static str, &TrainedGenerator)> {
        let mut all = Vec::new();
        if let Some(b) = &self.baselines {
            all.extend([
                ("generator-heuristic-labels", &b.heuristic_labels),
                ("generator-sparse-reward", &b.sparse_reward),
                ("degre-hard-labels", &b.hard_labels),
                ("degre-b1", &b.b1),
            ]);
        }
        if let Some(g) = &self.oracle_teacher {
            all.push(("degre-oracle-teacher", g));
        }
        all.push((gate::CANDIDATE, &self.degre));
        all
    }
}

/// Lists mined under the simulator's true utility (the oracle teacher), with the same beam.
pub fn mine_truth(
    world: &World,
    objective: Objective,
    requests: &[&LoggedRequest],
    width: usize,
) -> anyhow::Result<Vec<Mined>> {
    requests
        .par_iter()
        .map(|r| {
            let truth = world.truth(r, objective).map_err(anyhow::Error::msg)?;
            Ok(mine::mine_request(
                &truth,
                &r.request_id,
                world.config.slots,
                width,
                None,
            ))
        })
        .collect()
}

/// What the generators learn from: the teacher's mined lists, and for the comparisons
/// (when asked for) the B = 1 lists and the oracle teacher's.
pub struct Teachers<'a> {
    pub mined: &'a [Mined],
    pub b1: Option<&'a [Mined]>,
    pub oracle: Option<&'a [Mined]>,
}

/// DeGRe alone, or with its comparisons: single-threaded trainings side by side on
/// rayon's pool.
pub fn train_generators(
    config: &DistillConfig,
    requests: &[&LoggedRequest],
    teachers: &Teachers<'_>,
    evaluator: &Evaluator,
    slots: usize,
    progress: bool,
) -> anyhow::Result<Generators> {
    let mined = teachers.mined;
    let map = &evaluator.spec.features;
    let quiet = DistillConfig {
        progress: false,
        ..config.clone()
    };
    let train = |label: &str, targets: Vec<Forced>, ce_weight: f64| {
        let config = DistillConfig {
            ce_weight,
            ..quiet.clone()
        };
        let (generator, summary) = distill::distill(requests, &targets, map, &config, label)?;
        if progress {
            eprintln!(
                "{label}: best epoch {} of {}, validation loss {:.4}, {:.1} s",
                summary.best_epoch, summary.epochs_run, summary.valid_loss, summary.seconds
            );
        }
        anyhow::Ok((generator, summary))
    };
    let train_on =
        |label: &str, targets, ce_weight| train(label, targets, ce_weight).map(|(g, _)| g);
    // τ is in units of an average click's reward, so it means the same for clicks and GMV.
    let temperature = config.temperature * evaluator.reward_unit();
    let soft = |m: &[Mined]| m.iter().map(|m| Forced::soft(m, temperature)).collect();
    let hard = |m: &[Mined]| m.iter().map(|m| Forced::hard(&m.list)).collect();
    let clicked = || {
        requests
            .iter()
            .map(|r| Forced::hard(&clicked_first(r)))
            .collect()
    };
    let degre = || train(gate::CANDIDATE, soft(mined), config.ce_weight);
    let oracle_teacher = || {
        teachers
            .oracle
            .map(|m| train_on("degre-oracle-teacher", soft(m), config.ce_weight))
            .transpose()
    };
    let Some(mined_b1) = teachers.b1 else {
        let (degre, oracle_teacher) = rayon::join(degre, oracle_teacher);
        let (degre, degre_training) = degre?;
        return Ok(Generators {
            degre,
            degre_training,
            baselines: None,
            oracle_teacher: oracle_teacher?,
        });
    };
    let ((degre, (hard_labels, oracle_teacher)), (b1, (heuristic_labels, sparse_reward))) =
        rayon::join(
            || {
                rayon::join(degre, || {
                    rayon::join(
                        || train_on("degre-hard-labels", hard(mined), 0.0),
                        oracle_teacher,
                    )
                })
            },
            || {
                rayon::join(
                    || train_on("degre-b1", soft(mined_b1), config.ce_weight),
                    || {
                        rayon::join(
                            || train_on("generator-heuristic-labels", clicked(), 0.0),
                            || {
                                distill::reinforce(requests, evaluator, slots, &quiet)
                                    .map(|(g, _)| g)
                            },
                        )
                    },
                )
            },
        );
    let (degre, degre_training) = degre?;
    Ok(Generators {
        degre,
        degre_training,
        oracle_teacher: oracle_teacher?,
        baselines: Some(Baselines {
            hard_labels: hard_labels?,
            b1: b1?,
            heuristic_labels: heuristic_labels?,
            sparse_reward: sparse_reward?,
        }),
    })
}

fn generator_policies(generators: &Generators) -> impl Iterator<Item = Policy> + '_ {
    generators
        .named()
        .into_iter()
        .map(|(name, g)| Policy::Generator {
            name: name.into(),
            generator: Arc::new(g.clone()),
        })
}

/// The publish gate: every generator, the logged lists and the ranking stage's order on
/// the held-out requests, judged by the evaluator the generators never fit.
pub fn gate(
    panel: &Panel,
    data: &Data,
    generators: &Generators,
    min_gain: f64,
) -> anyhow::Result<GateReport> {
    let mut policies = vec![Policy::Logged, Policy::Upstream];
    policies.extend(generator_policies(generators));
    let slots = data.world.as_ref().map(|w| w.config.slots);
    gate::judge(panel, &data.test, &policies, slots, min_gain)
}

/// Seq2Slate-style labels: clicked items first, each group in its logged order.
fn clicked_first(request: &LoggedRequest) -> Vec<usize> {
    let mut list: Vec<(bool, usize)> = request
        .exposed
        .iter()
        .zip(&request.clicks)
        .map(|(&a, &c)| (c, a))
        .collect();
    list.sort_by_key(|&(clicked, _)| !clicked);
    list.into_iter().map(|(_, a)| a).collect()
}

/// Every method on the held-out requests.
pub fn compare(
    config: &PipelineConfig,
    data: &Data,
    evaluator: &Ensemble,
    generators: &Generators,
    seed: u64,
) -> anyhow::Result<EvalReport> {
    let mut policies = vec![Policy::Logged, Policy::Upstream, Policy::Random];
    if data.world.is_some() {
        policies.extend([Policy::TruePointwise, Policy::Oracle]);
    }
    let beam = config.mining.beam_width;
    policies.extend([
        Policy::EvaluatorPointwise,
        Policy::EvaluatorGreedy,
        Policy::EvaluatorBeam(beam),
    ]);
    policies.extend(generator_policies(generators));
    if data.world.is_some() {
        // Business rules inside the pass, and applied after it (docs/constraints.md).
        for after in [false, true] {
            policies.push(Policy::Ruled {
                name: if after { rules::AFTER } else { rules::INSIDE }.into(),
                generator: Arc::new(generators.degre.clone()),
                after,
            });
        }
    }
    let sweep = config.mining.sweep.iter().filter(|&&w| w != beam);
    policies.extend(sweep.map(|&w| Policy::EvaluatorBeam(w)));
    evaluate(&EvalInputs {
        objective: evaluator.first().spec.objective,
        logs: &data.test,
        world: data.world.as_ref(),
        evaluator: Some(evaluator),
        policies: &policies,
        seed,
        correlation_requests: 200,
        correlation_lists: 50,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::offline::sim::SimConfig;

    #[test]
    fn a_judge_never_validates_on_a_request_it_trained_on() {
        let world = World::generate(SimConfig::default(), 5);
        let rows = sample_split(&world, "judge", 200);
        let (sample, split) = bootstrap(&rows, 9);
        let ids = |side: &[usize]| -> HashSet<&str> {
            side.iter()
                .map(|&i| sample[i].request_id.as_str())
                .collect()
        };
        let (train, valid) = (ids(&split.train), ids(&split.valid));
        assert!(train.is_disjoint(&valid));
        // A bootstrap: as many draws as requests, some drawn twice; the rest validate.
        assert_eq!(split.train.len(), 200);
        // Tiny logs that draw every row still keep one out.
        let few = &rows[..2];
        for seed in 0..20 {
            let (sample, split) = bootstrap(few, seed);
            assert_eq!(split.valid.len(), 1, "seed {seed}");
            let held = &sample[split.valid[0]].request_id;
            assert!(split.train.iter().all(|&i| &sample[i].request_id != held));
        }
        assert_eq!(train.len() + valid.len(), 200);
        assert_eq!(valid.len(), split.valid.len());
        assert!((50..100).contains(&valid.len()), "{}", valid.len());
    }

    #[test]
    fn user_logs_are_mined_whole_unless_their_requests_are_large() {
        let logs = |count: usize, n: usize| std::iter::repeat_n((n, 10), count);
        // The simulator's size (N = 20, K = 10): 20,000 requests fit the budget.
        assert_eq!(mining_count(logs(20_000, 20), 0), 20_000);
        // N = 100: the budget's share; the lookahead pool is 32 at either size, so
        // 13,500 · 50 / 100.
        assert_eq!(mining_count(logs(20_000, 100), 0), 6_750);
        // N = 400: the budget would allow 1,687; the floor keeps 20,000 steps, 2,000 lists.
        assert_eq!(mining_count(logs(20_000, 400), 0), 2_000);
        assert_eq!(mining_count(logs(500, 400), 0), 500);
        // 50 slots of 60 candidates: the budget allows 240, the floor 400 (20,000 steps).
        let long = std::iter::repeat_n((60, 50), 20_000);
        assert_eq!(mining_count(long, 0), 400);
        // A cap the user sets wins, either way.
        assert_eq!(mining_count(logs(20_000, 20), 7), 7);
        assert_eq!(mining_count(logs(20_000, 400), 5_000), 5_000);
    }
}
