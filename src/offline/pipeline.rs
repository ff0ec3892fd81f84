//! `degre pipeline`: simulate → train evaluator → mine → distill → baselines → evaluate →
//! export → publish, from one config file, for one or more seeds; writes a report.
//! With `--logs`, the same on a user's own logs: no simulator, so the report gives held-out
//! log metrics and the evaluator's estimate `V` instead of true utility.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::model::export::version_files;
use crate::model::manifest::Limits;
use crate::offline::distill::{self, DistillConfig, Forced, ServingGenerator};
use crate::offline::eval::{evaluate, EvalInputs, EvalReport};
use crate::offline::evaluator::{self, TrainConfig};
use crate::offline::logs::{read_logs, write_logs, LoggedRequest};
use crate::offline::mine::{self, MineConfig, Mined, Shard};
use crate::offline::policy::Policy;
use crate::offline::sim::{sample_split, SimConfig, World};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// One run per seed; the report gives the mean and spread over them.
    pub seeds: Vec<u64>,
    pub simulator: SimConfig,
    pub evaluator: EvaluatorSettings,
    pub mining: MiningSettings,
    pub distill: DistillSettings,
    pub export: ExportSettings,
    /// With `--logs`: the fraction of requests held out for evaluation.
    pub test_fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorSettings {
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub patience: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiningSettings {
    /// The teacher's beam width B.
    pub beam_width: usize,
    /// Beam widths of the utility-vs-width sweep (evaluation only).
    pub sweep: Vec<usize>,
    /// Mine (and distil from) at most this many training requests; 0: all.
    pub max_requests: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSettings {
    pub hidden: usize,
    pub embed: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub temperature: f64,
    pub ce_weight: f64,
    pub patience: usize,
    /// Epochs of the sparse-reward (REINFORCE) baseline.
    pub reinforce_epochs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    pub model_name: String,
    pub max_candidates: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            seeds: vec![0],
            simulator: SimConfig::default(),
            evaluator: EvaluatorSettings::default(),
            mining: MiningSettings::default(),
            distill: DistillSettings::default(),
            export: ExportSettings::default(),
            test_fraction: 0.1,
        }
    }
}

impl Default for EvaluatorSettings {
    fn default() -> Self {
        let t = TrainConfig::default();
        EvaluatorSettings {
            hidden: t.hidden,
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            patience: t.patience,
        }
    }
}

impl Default for MiningSettings {
    fn default() -> Self {
        MiningSettings {
            beam_width: 16,
            sweep: vec![1, 2, 4, 8, 16, 32],
            max_requests: 0,
        }
    }
}

impl Default for DistillSettings {
    fn default() -> Self {
        let d = DistillConfig::default();
        DistillSettings {
            hidden: d.hidden,
            embed: d.embed,
            epochs: d.epochs,
            batch_size: d.batch_size,
            learning_rate: d.learning_rate,
            temperature: d.temperature,
            ce_weight: d.ce_weight,
            patience: d.patience,
            reinforce_epochs: 6,
        }
    }
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            model_name: "degre".into(),
            max_candidates: 256,
        }
    }
}

impl PipelineConfig {
    pub fn load(path: &Path) -> anyhow::Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let config: PipelineConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .simulator
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [simulator] {e}", path.display()))?;
        anyhow::ensure!(
            !config.seeds.is_empty(),
            "{}: `seeds` is empty",
            path.display()
        );
        anyhow::ensure!(
            config.mining.beam_width > 0,
            "{}: `mining.beam_width` must be > 0",
            path.display()
        );
        Ok(config)
    }
}

/// Where the data comes from.
pub enum Source {
    Simulator,
    Logs(PathBuf),
}

/// Everything one seed produced.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    pub eval: EvalReport,
    /// Wall time of each stage, seconds.
    pub stage_seconds: Vec<(String, f64)>,
    pub mining_requests_per_second: f64,
    pub evaluator_training: Option<evaluator::TrainSummary>,
}

pub struct PipelineOutput {
    pub runs: Vec<SeedRun>,
    /// The DeGRe generator of the first seed: the one exported and published.
    pub generator: ServingGenerator,
}

struct Stopwatch(Vec<(String, f64)>, Instant);

impl Stopwatch {
    fn lap(&mut self, stage: &str) {
        self.0.push((stage.into(), self.1.elapsed().as_secs_f64()));
        self.1 = Instant::now();
        tracing::info!(stage, seconds = self.0.last().map(|l| l.1), "stage done");
    }
}

fn clicked_first(request: &LoggedRequest) -> Vec<usize> {
    let mut list: Vec<(bool, usize)> = request
        .exposed
        .iter()
        .zip(&request.clicks)
        .map(|(&a, &c)| (c, a))
        .collect();
    // Stable: clicked items first, each group in its logged order (Seq2Slate-style labels).
    list.sort_by_key(|&(clicked, _)| !clicked);
    list.into_iter().map(|(_, a)| a).collect()
}

/// Runs every stage for every seed under `run_dir`.
pub fn run(
    config: &PipelineConfig,
    source: &Source,
    run_dir: &Path,
    progress: bool,
) -> anyhow::Result<PipelineOutput> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("{}", run_dir.display()))?;
    let user_logs = match source {
        Source::Logs(path) => Some(read_logs(path)?),
        Source::Simulator => None,
    };
    let mut runs = Vec::new();
    let mut first_generator = None;
    for &seed in &config.seeds {
        let dir = run_dir.join(format!("seed-{seed}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let (run, generator) = run_seed(config, user_logs.as_deref(), seed, &dir, progress)?;
        runs.push(run);
        first_generator.get_or_insert(generator);
    }
    Ok(PipelineOutput {
        runs,
        generator: first_generator.expect("at least one seed"),
    })
}

fn run_seed(
    config: &PipelineConfig,
    user_logs: Option<&[LoggedRequest]>,
    seed: u64,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<(SeedRun, ServingGenerator)> {
    let mut clock = Stopwatch(Vec::new(), Instant::now());
    let (world, train, test) = match user_logs {
        None => {
            let world = World::generate(config.simulator.clone(), seed);
            let train = sample_split(&world, "train", config.simulator.train_requests);
            let test = sample_split(&world, "test", config.simulator.test_requests);
            (Some(world), train, test)
        }
        Some(logs) => {
            let (train_idx, test_idx) = distill::split(logs.len(), config.test_fraction, seed);
            let pick = |idx: Vec<usize>| idx.into_iter().map(|i| logs[i].clone()).collect();
            (None, pick(train_idx), pick(test_idx))
        }
    };
    write_logs(&dir.join("train.parquet"), &train)?;
    write_logs(&dir.join("test.parquet"), &test)?;
    if let Some(world) = &world {
        std::fs::write(dir.join("world.json"), serde_json::to_string(world)?)?;
    }
    clock.lap("simulate");

    let e = &config.evaluator;
    let evaluator = evaluator::train(
        &train,
        &TrainConfig {
            hidden: e.hidden,
            epochs: e.epochs,
            batch_size: e.batch_size,
            learning_rate: e.learning_rate,
            patience: e.patience,
            seed,
            progress,
            ..TrainConfig::default()
        },
        &dir.join("evaluator"),
        false,
    )?;
    clock.lap("train-evaluator");

    let slots = world.as_ref().map_or(0, |w| w.config.slots);
    let mined_requests: Vec<&LoggedRequest> = match config.mining.max_requests {
        0 => train.iter().collect(),
        m => train.iter().take(m).collect(),
    };
    let mine_with = |width: usize, file: &str| -> anyhow::Result<(Vec<Mined>, f64)> {
        let path = dir.join(file);
        let logs: Vec<LoggedRequest> = mined_requests.iter().map(|r| (*r).clone()).collect();
        let summary = mine::mine(
            &logs,
            &evaluator,
            &MineConfig {
                width,
                slots,
                shard: Shard::ALL,
                resume: false,
                progress,
            },
            &path,
        )?;
        Ok((mine::read_mined(&[path])?, summary.requests_per_second))
    };
    let (mined, mining_rate) = mine_with(config.mining.beam_width, "mined.jsonl")?;
    clock.lap("mine");
    let (mined_b1, _) = mine_with(1, "mined-b1.jsonl")?;
    clock.lap("mine-b1");

    let d = &config.distill;
    let distill_config = DistillConfig {
        hidden: d.hidden,
        embed: d.embed,
        epochs: d.epochs,
        batch_size: d.batch_size,
        learning_rate: d.learning_rate,
        temperature: d.temperature,
        ce_weight: d.ce_weight,
        patience: d.patience,
        seed,
        progress,
        ..DistillConfig::default()
    };
    let map = &evaluator.spec.features;
    let train_on = |label: &str, targets: Vec<Forced>, ce: f64| {
        let config = DistillConfig {
            ce_weight: ce,
            progress: false,
            ..distill_config.clone()
        };
        let (generator, summary) =
            distill::distill(&mined_requests, &targets, map, &config, label)?;
        if progress {
            eprintln!(
                "{label}: best epoch {} of {}, validation loss {:.4}, {:.1} s",
                summary.best_epoch, summary.epochs_run, summary.valid_loss, summary.seconds
            );
        }
        anyhow::Ok(generator)
    };
    let soft = |m: &[Mined]| m.iter().map(|m| Forced::soft(m, d.temperature)).collect();
    let k = if slots == 0 {
        train.iter().map(|r| r.exposed.len()).max().unwrap_or(1)
    } else {
        slots
    };
    // Five single-threaded trainings, run side by side on rayon's pool.
    let ((degre, hard), (b1, (heuristic, sparse))) = rayon::join(
        || {
            rayon::join(
                || train_on("degre", soft(&mined), d.ce_weight),
                || {
                    train_on(
                        "degre-hard-labels",
                        mined.iter().map(|m| Forced::hard(&m.list)).collect(),
                        0.0,
                    )
                },
            )
        },
        || {
            rayon::join(
                || train_on("degre-b1", soft(&mined_b1), d.ce_weight),
                || {
                    rayon::join(
                        || {
                            let clicked = mined_requests
                                .iter()
                                .map(|r| Forced::hard(&clicked_first(r)));
                            train_on("generator-heuristic-labels", clicked.collect(), 0.0)
                        },
                        || {
                            let config = DistillConfig {
                                epochs: d.reinforce_epochs,
                                progress: false,
                                ..distill_config.clone()
                            };
                            distill::reinforce(&mined_requests, &evaluator, k, &config)
                                .map(|(g, _)| g)
                        },
                    )
                },
            )
        },
    );
    let (degre, hard, b1, heuristic, sparse) = (degre?, hard?, b1?, heuristic?, sparse?);
    clock.lap("distill-and-baselines");

    let generator = |name: &str, g: &ServingGenerator| Policy::Generator {
        name: name.into(),
        generator: Arc::new(g.clone()),
    };
    let mut policies = vec![Policy::Upstream, Policy::Random];
    if world.is_some() {
        policies.extend([Policy::TruePointwise, Policy::Oracle]);
    }
    policies.extend([
        Policy::EvaluatorPointwise,
        Policy::EvaluatorGreedy,
        Policy::EvaluatorBeam(config.mining.beam_width),
        generator("generator-heuristic-labels", &heuristic),
        generator("generator-sparse-reward", &sparse),
        generator("degre-hard-labels", &hard),
        generator("degre-b1", &b1),
        generator("degre", &degre),
    ]);
    for &width in &config.mining.sweep {
        if width != config.mining.beam_width {
            policies.push(Policy::EvaluatorBeam(width));
        }
    }
    let eval = evaluate(&EvalInputs {
        logs: &test,
        world: world.as_ref(),
        evaluator: Some(&evaluator),
        policies: &policies,
        seed,
        correlation_requests: 200,
        correlation_lists: 50,
    })?;
    clock.lap("eval");
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&eval)? + "\n",
    )?;
    let run = SeedRun {
        seed,
        eval,
        stage_seconds: clock.0,
        mining_requests_per_second: mining_rate,
        evaluator_training: evaluator.spec.training.clone(),
    };
    Ok((run, degre))
}

/// The generator as a model version (ONNX graphs + manifest), ready to publish.
pub fn export_files(
    generator: &ServingGenerator,
    config: &PipelineConfig,
    provenance: serde_json::Value,
) -> Vec<(String, Vec<u8>)> {
    version_files(
        &generator.weights,
        &generator.schema,
        &config.export.model_name,
        Limits {
            max_candidates: config.export.max_candidates,
        },
        provenance,
    )
}
