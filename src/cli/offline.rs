//! Offline commands: `simulate`, `train-evaluator`, `eval`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::offline::compare::{self, EvalInputs, EvalReport};
use crate::offline::evaluator::{self, Ensemble, Evaluator, TrainConfig};
use crate::offline::logs::{self, read_logs, read_training_logs, LogShape, LoggedRequest};
use crate::offline::objective::Objective;
use crate::offline::policy::{self, Policy};
use crate::offline::sim::{self, SimConfig, World};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Directory for world.json, train.parquet and test.parquet.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of everything random in this command.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// TOML file overriding any simulator setting (keys and defaults: docs/offline.md, "The benchmark environment").
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = match &args.config {
        Some(path) => SimConfig::load(path)?,
        None => SimConfig::default(),
    };
    let world = sim::simulate(config, args.seed, &args.out)?;
    println!(
        "wrote {} ({} train and {} test requests, {} candidates, {} slots) in {:.1} s",
        args.out.display(),
        world.config.train_requests,
        world.config.test_requests,
        world.config.candidates,
        world.config.slots,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct TrainEvaluatorArgs {
    /// Logged requests (.parquet, .jsonl, .jsonl.gz or a directory of them); a validation
    /// split is held out of them.
    #[arg(long)]
    pub logs: PathBuf,
    /// Directory for evaluator.json, evaluator.safetensors and checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of everything random in this command.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most training epochs (early stopping on the validation split may end sooner).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Logged requests per gradient step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Width of the evaluator.
    #[arg(long, default_value_t = TrainConfig::default().hidden)]
    pub hidden: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    pub learning_rate: f64,
    /// Epochs without a better validation loss before training stops.
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    pub patience: usize,
    /// Share of logged requests held out for validation and early stopping.
    #[arg(long, default_value_t = TrainConfig::default().valid_fraction)]
    pub valid_fraction: f64,
    /// What a slot earns: `clicks`, `value` (the logs' `values`, e.g. GMV) or
    /// `A*clicks+B*value`. Default: value when every row logs values, some not 0, else clicks.
    #[arg(long)]
    pub objective: Option<Objective>,
    /// A pointwise model: a slot does not see the items above it (no list effects).
    #[arg(long)]
    pub pointwise: bool,
    /// Every slot is read: no cascade, where the user stops reading (docs/offline.md).
    #[arg(long)]
    pub no_examination: bool,
    /// No id pairs: a slot knows of the ids above it only how many equal its own.
    #[arg(long)]
    pub no_pairs: bool,
    /// The user-item affinity through a rectified context (`c ⊙ x` after the ReLU), as
    /// evaluators before the bilinear form (docs/offline.md).
    #[arg(long)]
    pub no_bilinear: bool,
    /// Continue from `OUT/checkpoint` if present.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

pub fn train_evaluator(args: TrainEvaluatorArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        args.valid_fraction > 0.0 && args.valid_fraction < 1.0,
        "--valid-fraction must be within (0, 1)"
    );
    anyhow::ensure!(
        args.batch_size > 0 && args.hidden > 0,
        "--batch-size and --hidden must be > 0"
    );
    let rows = read_training_logs(&args.logs)?;
    let config = TrainConfig {
        hidden: args.hidden,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        patience: args.patience,
        valid_fraction: args.valid_fraction,
        objective: args.objective,
        interactions: !args.pointwise,
        examination: !args.no_examination,
        pairs: !args.no_pairs,
        bilinear: !args.no_bilinear,
        seed: args.seed,
        progress: !args.quiet,
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &config, &args.out, args.resume)?;
    let summary = evaluator
        .spec
        .training
        .as_ref()
        .context("training summary")?;
    let cascade = summary.continuation.map_or(String::new(), |[click, skip]| {
        format!(", reads on after a click {click:.3} / a skip {skip:.3}")
    });
    let value = (summary.value_epochs.zip(summary.valid_value_loss)).map_or(
        String::new(),
        |([run, best], error)| {
            format!(
                ", value network {run} more epochs alone (best {best}), validation error {error:.4}"
            )
        },
    );
    println!(
        "evaluator ({}): best epoch {} of {}, validation BCE {:.4} (constant {:.4}){cascade}{value}; wrote {} in {:.1} s",
        evaluator.spec.objective,
        summary.best_epoch,
        summary.epochs_run,
        summary.valid_loss,
        summary.constant_valid_loss,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Held-out logged requests (.parquet, .jsonl, .jsonl.gz or a directory of them).
    #[arg(long)]
    pub logs: PathBuf,
    /// The simulator's world (its directory or world.json): enables true utility and the oracle.
    #[arg(long)]
    pub world: Option<PathBuf>,
    /// A trained evaluator's directory.
    #[arg(long)]
    pub evaluator: Option<PathBuf>,
    /// Policies by name (repeatable); default: every one the inputs allow.
    #[arg(long = "policy", value_name = "NAME", help = format!("Policies by name (repeatable): {}", policy::NAMES))]
    pub policies: Vec<String>,
    /// JSON Lines of {"request_id", "list"} to evaluate as a policy (repeatable).
    #[arg(long = "lists", value_name = "FILE")]
    pub lists: Vec<PathBuf>,
    /// An exported model version directory, run by the server's runtime (repeatable).
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    /// What utility and `V` measure (see train-evaluator). Default: the evaluator's, else
    /// value when every row logs values, some not 0, else clicks. An evaluator trained
    /// for value also scores clicks alone (its click model) or any weighted sum.
    #[arg(long)]
    pub objective: Option<Objective>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write each policy's lists into this directory, as `--lists` reads them
    /// (`POLICY.jsonl`: `{"request_id", "list"}` per line), to inspect them or to score
    /// them elsewhere.
    #[arg(long, value_name = "DIR")]
    pub write_lists: Option<PathBuf>,
    /// Seed of everything random in this command.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Random lists per request, and requests, for the evaluator's rank correlation.
    #[arg(long, default_value_t = 50)]
    pub correlation_lists: usize,
    /// Requests for the evaluator's rank correlation (see --correlation-lists).
    #[arg(long, default_value_t = 200)]
    pub correlation_requests: usize,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let logs = read_logs(&args.logs)?;
    let world = args.world.as_deref().map(World::load).transpose()?;
    let evaluator = args.evaluator.as_deref().map(Evaluator::load).transpose()?;
    let mut policies: Vec<Policy> =
        if args.policies.is_empty() && args.lists.is_empty() && args.models.is_empty() {
            default_policies(world.is_some(), evaluator.is_some())
        } else {
            args.policies
                .iter()
                .map(|name| name.parse().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?
        };
    for path in &args.lists {
        policies.push(Policy::from_lists_file(path)?);
    }
    for dir in &args.models {
        policies.push(Policy::from_model_dir(dir)?);
    }
    let objective = match (args.objective, &evaluator) {
        (Some(objective), _) => objective,
        (None, Some(e)) => e.spec.objective,
        (None, None) => (LogShape::of(&logs).context("no logged requests")?).default_objective(),
    };
    // A value evaluator also reads as clicks alone: which part of a judged gain is clicks.
    let evaluator = (evaluator.map(|e| e.with_objective(objective)))
        .transpose()?
        .map(Ensemble::single);
    let report = compare::evaluate(&EvalInputs {
        objective,
        logs: &logs,
        world: world.as_ref(),
        evaluator: evaluator.as_ref(),
        policies: &policies,
        seed: args.seed,
        correlation_requests: args.correlation_requests,
        correlation_lists: args.correlation_lists,
    })?;
    print!("{}", compare::table(&report));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("{}", out.display()))?;
        println!("wrote {}", out.display());
    }
    if let Some(dir) = &args.write_lists {
        write_lists(dir, &logs, &report)?;
        println!(
            "wrote {} policies' lists into {}",
            report.policies.len(),
            dir.display()
        );
    }
    println!("eval took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One JSON Lines file per policy, named after it (characters a file name should not
/// hold become `_`), in the format [`Policy::from_lists_file`] reads.
fn write_lists(dir: &Path, logs: &[LoggedRequest], report: &EvalReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    for policy in &report.policies {
        let name: String = (policy.name.chars())
            .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
                true => c,
                false => '_',
            })
            .collect();
        let path = dir.join(format!("{name}.jsonl"));
        let mut text = String::new();
        for (request, list) in logs.iter().zip(&policy.lists) {
            let line = serde_json::json!({"request_id": request.request_id, "list": list});
            text += &format!("{line}\n");
        }
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn default_policies(simulator: bool, evaluator: bool) -> Vec<Policy> {
    let mut policies = vec![Policy::Logged, Policy::Upstream, Policy::Random];
    if simulator {
        policies.extend([Policy::TruePointwise, Policy::Oracle]);
    }
    if evaluator {
        policies.extend([
            Policy::EvaluatorPointwise,
            Policy::EvaluatorGreedy,
            Policy::EvaluatorBeam(16),
        ]);
    }
    policies
}

#[derive(Debug, Args)]
pub struct CheckLogsArgs {
    /// A log (.parquet, .jsonl, .jsonl.gz or a directory of them); every row is validated.
    pub logs: PathBuf,
    /// Also write the validated rows here, in the encoding its extension names.
    #[arg(long)]
    pub convert_to: Option<PathBuf>,
}

pub fn check_logs(args: CheckLogsArgs) -> anyhow::Result<()> {
    let rows = read_logs(&args.logs)?;
    let shape = LogShape::of(&rows).context("no rows")?;
    let slots: usize = rows.iter().map(|r| r.exposed.len()).sum();
    let clicks = rows.iter().flat_map(|r| &r.clicks).filter(|&&c| c).count();
    println!(
        "{}: {} requests, {} shown slots, click rate {:.4}",
        args.logs.display(),
        rows.len(),
        slots,
        clicks as f64 / slots as f64
    );
    println!("{}", serde_json::to_string_pretty(&shape)?);
    for note in logs::notes(&rows) {
        eprintln!("{note}");
    }
    if let Some(out) = &args.convert_to {
        logs::write_logs(out, &rows)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
