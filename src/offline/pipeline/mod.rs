//! `degre pipeline`: simulate → train evaluator → mine → distill → baselines → evaluate →
//! export → publish, from one config file, for one or more seeds; writes a report.
//! With `--logs`, the same on a user's own logs: no simulator, so the report gives held-out
//! log metrics and the evaluator's estimate `V` instead of true utility.

mod config;
mod stages;

pub use config::{ExportSettings, MiningSettings, PipelineConfig, Source};

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::contract::manifest::Limits;
use crate::offline::compare::EvalReport;
use crate::offline::distill::{DistillConfig, TrainedGenerator};
use crate::offline::evaluator;
use crate::offline::logs::{read_logs, LoggedRequest};

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
    pub generator: TrainedGenerator,
}

struct Stopwatch(Vec<(String, f64)>, Instant);

impl Stopwatch {
    fn lap(&mut self, stage: &str) {
        self.0.push((stage.into(), self.1.elapsed().as_secs_f64()));
        self.1 = Instant::now();
        tracing::info!(stage, seconds = self.0.last().map(|l| l.1), "stage done");
    }
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
) -> anyhow::Result<(SeedRun, TrainedGenerator)> {
    let mut clock = Stopwatch(Vec::new(), Instant::now());
    let data = stages::data(config, user_logs, seed, dir)?;
    clock.lap(if data.world.is_some() {
        "simulate"
    } else {
        "split-logs"
    });

    let evaluator = stages::train_evaluator(config, &data.train, seed, dir, progress)?;
    clock.lap("train-evaluator");

    // Simulated lists have the world's length; logged ones keep each request's own.
    let mine_slots = data.world.as_ref().map_or(0, |w| w.config.slots);
    let requests: Vec<&LoggedRequest> = match config.mining.max_requests {
        0 => data.train.iter().collect(),
        m => data.train.iter().take(m).collect(),
    };
    let mine = |width: usize, file: &str| {
        stages::mine(
            &requests,
            &evaluator,
            width,
            mine_slots,
            &dir.join(file),
            progress,
        )
    };
    let (mined, mining_rate) = mine(config.mining.beam_width, "mined.jsonl")?;
    clock.lap("mine");
    let (mined_b1, _) = mine(1, "mined-b1.jsonl")?;
    clock.lap("mine-b1");

    let distill = DistillConfig {
        seed,
        progress,
        ..config.distill.clone()
    };
    let generators = stages::train_generators(
        &distill,
        &requests,
        &mined,
        &mined_b1,
        &evaluator,
        data.slots(),
        progress,
    )?;
    clock.lap("distill-and-baselines");

    let eval = stages::compare(config, &data, &evaluator, &generators, seed)?;
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
    Ok((run, generators.degre))
}

/// The generator as a model version (ONNX graphs + manifest), ready to publish.
pub fn export_files(
    generator: &TrainedGenerator,
    config: &PipelineConfig,
    provenance: serde_json::Value,
) -> Vec<(String, Vec<u8>)> {
    generator.version_files(
        &config.export.model_name,
        Limits {
            max_candidates: config.export.max_candidates,
        },
        provenance,
    )
}
