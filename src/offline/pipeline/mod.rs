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
use crate::offline::distill::{DistillConfig, DistillSummary, TrainedGenerator};
use crate::offline::evaluator;
use crate::offline::gate::GateReport;
use crate::offline::logs::{self, read_training_logs, LoggedRequest};

/// Everything one seed produced.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    pub eval: EvalReport,
    pub gate: GateReport,
    /// Wall time of each stage, seconds.
    pub stage_seconds: Vec<(String, f64)>,
    pub mining_requests_per_second: f64,
    /// Share of mined requests whose teacher list is the `ranking_score` order (trust region).
    pub kept_incumbent: f64,
    /// The mining evaluators' weight against their pointwise blend (`mining.pointwise_blend`).
    pub teacher_list_weight: Option<f64>,
    pub evaluator_training: Option<evaluator::TrainSummary>,
    /// DeGRe's distillation: epochs run, best epoch, validation loss, seconds.
    pub distill_training: DistillSummary,
}

pub struct PipelineOutput {
    pub runs: Vec<SeedRun>,
    /// The DeGRe generator of the first seed: the one exported and published, and judged
    /// by the first run's gate.
    pub generator: TrainedGenerator,
    /// The most candidates any request carried: the exported limit is at least this.
    pub max_candidates_seen: usize,
}

/// Wall time per stage, and a line on stderr as each ends (also with `--quiet`, which
/// silences only the progress bars), so a redirected run is never silent for long.
struct Stopwatch {
    laps: Vec<(String, f64)>,
    since: Instant,
    seed: u64,
}

impl Stopwatch {
    fn new(seed: u64) -> Stopwatch {
        Stopwatch {
            laps: Vec::new(),
            since: Instant::now(),
            seed,
        }
    }

    fn lap(&mut self, stage: &str) {
        let seconds = self.since.elapsed().as_secs_f64();
        self.laps.push((stage.into(), seconds));
        self.since = Instant::now();
        eprintln!("seed {}: stage {stage} done in {seconds:.1} s", self.seed);
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
        Source::Logs(path) => {
            let logs = read_training_logs(path)?;
            for note in logs::notes(&logs) {
                eprintln!("{note}");
            }
            Some(logs)
        }
        Source::Simulator => None,
    };
    let max_candidates_seen = match &user_logs {
        Some(logs) => logs.iter().map(|r| r.candidates.len()).max().unwrap_or(0),
        None => config.simulator.candidates,
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
        max_candidates_seen,
    })
}

fn run_seed(
    config: &PipelineConfig,
    user_logs: Option<&[LoggedRequest]>,
    seed: u64,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<(SeedRun, TrainedGenerator)> {
    let mut clock = Stopwatch::new(seed);
    let data = stages::data(config, user_logs, seed, dir)?;
    clock.lap(if data.world.is_some() {
        "simulate"
    } else {
        "split-logs"
    });

    // Single-threaded trainings, all side by side: the mining ensemble and the judges.
    let (ensemble, judges) = rayon::join(
        || stages::train_ensemble(config, &data.train, seed, dir, progress),
        || stages::train_judges(config, &data.judge, seed, dir),
    );
    let (ensemble, judges) = (ensemble?, judges?);
    clock.lap("train-evaluators");

    // Simulated lists have the world's length; logged ones keep each request's own.
    let mine_slots = data.world.as_ref().map_or(0, |w| w.config.slots);
    let (requests, budget_cut) = stages::mining_requests(&data.train, config.mining.max_requests);
    if budget_cut {
        // Always said: a run that mines a share of the logs must not do it silently.
        eprintln!(
            "seed {seed}: mining the first {} of {} training requests, the work budget for \
             lists this large (`[mining] max_requests` sets the number)",
            requests.len(),
            data.train.len()
        );
    }
    let mine = |width: usize, file: &str| {
        stages::mine(
            &requests,
            &ensemble,
            width,
            config
                .mining
                .trust_region
                .then_some(config.mining.trust_margin),
            mine_slots,
            &dir.join(file),
            progress,
        )
    };
    let (mined, mining_rate) = mine(config.mining.beam_width, "mined.jsonl")?;
    clock.lap("mine");
    let baselines = config.baselines.unwrap_or(data.world.is_some());
    let (mut mined_b1, mut mined_oracle) = (None, None);
    if baselines {
        mined_b1 = Some(mine(1, "mined-b1.jsonl")?.0);
        clock.lap("mine-b1");
        if let Some(world) = &data.world {
            let objective = ensemble.first().spec.objective;
            let width = config.mining.beam_width;
            mined_oracle = Some(stages::mine_truth(world, objective, &requests, width)?);
            clock.lap("mine-oracle-teacher");
        }
    }

    let distill = DistillConfig {
        seed,
        progress,
        ..config.distill.clone()
    };
    let generators = stages::train_generators(
        &distill,
        &requests,
        &stages::Teachers {
            mined: &mined,
            b1: mined_b1.as_deref(),
            oracle: mined_oracle.as_deref(),
        },
        ensemble.first(),
        data.slots(),
        progress,
    )?;
    clock.lap(if baselines {
        "distill-and-baselines"
    } else {
        "distill"
    });

    let eval = stages::compare(config, &data, &ensemble, &generators, seed)?;
    clock.lap("eval");
    let gate = stages::gate(&judges, &data, &generators, config.gate_min_gain)?;
    clock.lap("gate");
    if progress {
        eprintln!("seed {seed}: {}", gate.verdict());
    }
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&eval)? + "\n",
    )?;
    std::fs::write(
        dir.join("gate.json"),
        serde_json::to_string_pretty(&gate)? + "\n",
    )?;
    let run = SeedRun {
        seed,
        eval,
        gate,
        stage_seconds: clock.laps,
        mining_requests_per_second: mining_rate,
        kept_incumbent: mined.iter().filter(|m| m.kept_incumbent).count() as f64
            / mined.len().max(1) as f64,
        teacher_list_weight: ensemble.pointwise.as_ref().map(|p| p.list_weight),
        evaluator_training: ensemble.first().spec.training.clone(),
        distill_training: generators.degre_training.clone(),
    };
    Ok((run, generators.degre))
}

impl PipelineOutput {
    /// The first seed's DeGRe as a model version (ONNX graphs + manifest), ready to
    /// publish. It accepts at least as many candidates as any logged request carried.
    pub fn export_files(
        &self,
        config: &PipelineConfig,
        provenance: serde_json::Value,
    ) -> Vec<(String, Vec<u8>)> {
        let max_candidates = config.export.max_candidates.max(self.max_candidates_seen);
        self.generator.version_files(
            &config.export.model_name,
            Limits { max_candidates },
            provenance,
        )
    }

    /// The gate's verdict on the generator `export_files` exports.
    pub fn gate(&self) -> &GateReport {
        &self.runs[0].gate
    }
}
