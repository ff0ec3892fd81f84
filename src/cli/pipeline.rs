//! `degre mine`, `degre distill` and `degre pipeline`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::contract::Limits;
use crate::network::Mixer;
use crate::offline::distill::{self, DistillConfig, Forced};
use crate::offline::evaluator::{Ensemble, Evaluator};
use crate::offline::logs::read_logs;
use crate::offline::mine::{self, MineConfig, Shard};
use crate::offline::objective::Objective;
use crate::offline::pipeline::{self, PipelineConfig, Source};
use crate::offline::report::Report;
use crate::repository::publish::{publish_files, write_version_dir};

#[derive(Debug, Args)]
pub struct MineArgs {
    /// Logged requests (.parquet, .jsonl, .jsonl.gz or a directory of them).
    #[arg(long)]
    pub logs: PathBuf,
    /// A trained evaluator's directory; repeat it to search an ensemble on
    /// `mean − pessimism·sd` (members trained with different seeds).
    #[arg(long, required = true, num_args = 1..)]
    pub evaluator: Vec<PathBuf>,
    /// How far below the members' mean a list's value is taken, in standard deviations.
    #[arg(long, default_value_t = 1.0)]
    pub pessimism: f64,
    /// A pointwise evaluator (`train-evaluator --pointwise`) blended into every member ...
    #[arg(long, requires = "list_weight")]
    pub pointwise: Option<PathBuf>,
    /// ... as `w·member + (1 − w)·pointwise`: the `w` under which held-out clicks are most
    /// likely (the pipeline fits it on the first member's validation split).
    #[arg(long, requires = "pointwise")]
    pub list_weight: Option<f64>,
    /// Output, JSON Lines: one mined request per line (its folder is created).
    #[arg(long)]
    pub out: PathBuf,
    /// Beam width B.
    #[arg(long, default_value_t = 16)]
    pub beam_width: usize,
    /// Keep the `ranking_score` order unless the evaluators agree a list beats it ...
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub trust_region: bool,
    /// ... by more than this share of its value.
    #[arg(long, default_value_t = 0.01)]
    pub trust_margin: f64,
    /// Slots per list; 0: each request's logged list length.
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Mine only the requests whose id hashes to i of n (e.g. a Kubernetes Indexed Job).
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// Keep what --out already holds and mine only the rest.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars (for logs and CI); stage lines still print.
    #[arg(long)]
    pub quiet: bool,
}

pub fn mine(args: MineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.beam_width > 0, "--beam-width must be > 0");
    let logs = read_logs(&args.logs)?;
    let members = args
        .evaluator
        .iter()
        .map(|dir| Evaluator::load(dir))
        .collect::<anyhow::Result<_>>()?;
    let mut evaluators = Ensemble::new(members, args.pessimism)?;
    if let (Some(dir), Some(weight)) = (&args.pointwise, args.list_weight) {
        evaluators = evaluators.blended(Evaluator::load(dir)?, weight)?;
    }
    let summary = mine::mine(
        &logs,
        &evaluators,
        &MineConfig {
            width: args.beam_width,
            trust_margin: args.trust_region.then_some(args.trust_margin),
            slots: args.slots,
            shard: args.shard,
            resume: args.resume,
            progress: !args.quiet,
        },
        &args.out,
    )?;
    println!(
        "mined {} requests ({} already done; {} kept the ranking_score order) into {} in \
         {:.1} s: {:.1} requests/s",
        summary.mined,
        summary.skipped_as_done,
        summary.kept_incumbent,
        args.out.display(),
        summary.seconds,
        summary.requests_per_second
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The logged requests that were mined.
    #[arg(long)]
    pub logs: PathBuf,
    /// Mined lists (JSON Lines from `degre mine`; one file per shard is fine).
    #[arg(long, required = true, num_args = 1..)]
    pub mined: Vec<PathBuf>,
    /// The evaluator the lists were mined with (its feature map standardises the inputs).
    #[arg(long)]
    pub evaluator: PathBuf,
    /// Directory for the exported version: encoder.onnx, decoder.onnx, golden.json, manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// One-hot targets on the mined list instead of soft targets (an ablation).
    #[arg(long)]
    pub hard_labels: bool,
    /// Softmax temperature of the soft targets, in units of an average click's reward
    /// (lower: closer to one-hot on the best item).
    #[arg(long, default_value_t = DistillConfig::default().temperature)]
    pub temperature: f64,
    /// Weight of the cross-entropy on the teacher's own item, added to the soft targets.
    #[arg(long, default_value_t = DistillConfig::default().ce_weight)]
    pub ce_weight: f64,
    /// Most training epochs (early stopping on held-out requests may end sooner).
    #[arg(long, default_value_t = DistillConfig::default().epochs)]
    pub epochs: usize,
    /// Width of the generator (the served model's hidden size).
    #[arg(long, default_value_t = DistillConfig::default().hidden)]
    pub hidden: usize,
    /// How the encoder mixes the candidates: self-attention, attention through a few
    /// learned inducing points, or their mean (the last two with no N² term).
    #[arg(long, value_enum, default_value_t = Mixer::default())]
    pub mixer: Mixer,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model name written into the manifest (the repository folder it is served from).
    #[arg(long, default_value = "degre")]
    pub model_name: String,
    /// Candidate limit written into the manifest (`limits.max_candidates`).
    #[arg(long, default_value_t = 256)]
    pub max_candidates: usize,
    /// No progress bars (for logs and CI); stage lines still print.
    #[arg(long)]
    pub quiet: bool,
}

pub fn distill(args: DistillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = DistillConfig {
        hidden: args.hidden,
        mixer: args.mixer,
        epochs: args.epochs,
        temperature: args.temperature,
        ce_weight: if args.hard_labels {
            0.0
        } else {
            args.ce_weight
        },
        seed: args.seed,
        progress: !args.quiet,
        ..DistillConfig::default()
    };
    config.check().map_err(anyhow::Error::msg)?;
    let logs = read_logs(&args.logs)?;
    let evaluator = Evaluator::load(&args.evaluator)?;
    let mined = mine::read_mined(&args.mined)?;
    let requests = mine::join_logs(&mined, &logs)
        .with_context(|| format!("joining the mined lists to {}", args.logs.display()))?;
    let targets: Vec<Forced> = mined
        .iter()
        .map(|m| match args.hard_labels {
            true => Forced::hard(&m.list),
            false => Forced::soft(m, config.temperature * evaluator.reward_unit()),
        })
        .collect();
    let (generator, summary) = distill::distill(
        &requests,
        &targets,
        &evaluator.spec.features,
        &config,
        "distill",
    )?;
    let files = generator.version_files(
        &args.model_name,
        Limits {
            max_candidates: args.max_candidates,
        },
        serde_json::json!({ "trainer": "degre distill", "config": config, "summary": summary }),
    );
    write_version_dir(&args.out, &files).with_context(|| args.out.display().to_string())?;
    println!(
        "distilled {} requests (best epoch {} of {}, validation loss {:.4}); exported to {} in {:.1} s",
        summary.train_requests,
        summary.best_epoch,
        summary.epochs_run,
        summary.valid_loss,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// TOML config (sections simulator, evaluator, mining, distill, export; see docs/offline.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run on these logs instead of the simulator (.parquet, .jsonl, .jsonl.gz or a
    /// directory of them).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Overrides the config's seeds with this one seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory: data, evaluator, mined lists, report, exported model.
    #[arg(long)]
    pub out: PathBuf,
    /// Publish the DeGRe generator into this model repository (next version), if the
    /// publish gate finds it ahead of the ranking stage's order.
    #[arg(long)]
    pub publish: Option<PathBuf>,
    /// Publish even when the gate does not find DeGRe ahead of the ranking stage's order.
    #[arg(long, requires = "publish")]
    pub force_publish: bool,
    /// What a slot earns: `clicks`, `value` or `A*clicks+B*value` (overrides the config's
    /// `objective`). Default: value when every logged row carries `values`, some not 0, else clicks.
    #[arg(long)]
    pub objective: Option<Objective>,
    /// Train the ablation and baseline generators too (default: on with the simulator,
    /// off on user logs).
    #[arg(long, value_name = "BOOL")]
    pub baselines: Option<bool>,
    /// No progress bars (for logs and CI); stage lines still print.
    #[arg(long)]
    pub quiet: bool,
}

pub fn pipeline(args: PipelineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut config = match &args.config {
        Some(path) => PipelineConfig::load(path)?,
        None => PipelineConfig::default(),
    };
    if let Some(seed) = args.seed {
        config.seeds = vec![seed];
    }
    config.objective = args.objective.or(config.objective);
    config.baselines = args.baselines.or(config.baselines);
    let source = match &args.logs {
        Some(path) => Source::Logs(path.clone()),
        None => Source::Simulator,
    };
    let output = pipeline::run(&config, &source, &args.out, !args.quiet)?;
    let gate = output.gate().clone();
    // A run on user logs records its data and not the simulator it never used.
    let mut settings = serde_json::to_value(&config)?;
    if let (Some(_), Some(map)) = (&args.logs, settings.as_object_mut()) {
        map.remove("simulator");
    }
    let provenance = serde_json::json!({
        "trainer": "degre pipeline",
        "objective": gate.objective,
        "seed": config.seeds[0],
        "gate": {
            "degre_minus_upstream": gate.degre_vs_incumbent.0,
            "half_width_95": gate.degre_vs_incumbent.1,
            "requests": gate.requests,
            "passed": gate.passed,
        },
        "data": args.logs.as_ref().map_or_else(|| "simulator".to_string(), |p| p.display().to_string()),
        "config": settings,
    });
    let files = output.export_files(&config, provenance);
    let report = Report::new(output.runs, config.mining.beam_width);
    report.write(&args.out)?;
    let model_dir = args.out.join("model");
    write_version_dir(&model_dir, &files).with_context(|| model_dir.display().to_string())?;
    print!("{}", report.markdown());
    println!("{}", gate.verdict());
    if let Some(root) = &args.publish {
        if let (Some(why), false) = (&gate.refusal, args.force_publish) {
            anyhow::bail!(
                "not published: {why} (see {}/report.md, \"Publish gate\"); the model is in \
                 {}; pass --force-publish to publish it anyway",
                args.out.display(),
                model_dir.display()
            );
        }
        let version = publish_files(root, &config.export.model_name, &files)
            .with_context(|| format!("publishing into {}", root.display()))?;
        println!(
            "published {}/{}/{version}",
            root.display(),
            config.export.model_name
        );
    }
    println!(
        "pipeline wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
