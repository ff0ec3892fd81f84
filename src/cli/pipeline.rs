//! `degre mine`, `degre distill` and `degre pipeline`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::model::publish::publish_files;
use crate::offline::distill::{self, DistillConfig, Forced};
use crate::offline::evaluator::Evaluator;
use crate::offline::logs::read_logs;
use crate::offline::mine::{self, MineConfig, Shard};
use crate::offline::pipeline::{self, PipelineConfig, Source};
use crate::offline::report::Report;

#[derive(Debug, Args)]
pub struct MineArgs {
    /// Logged requests (.parquet or .jsonl).
    #[arg(long)]
    pub logs: PathBuf,
    /// A trained evaluator's directory.
    #[arg(long)]
    pub evaluator: PathBuf,
    /// Output, JSON Lines: one mined request per line.
    #[arg(long)]
    pub out: PathBuf,
    /// Beam width B.
    #[arg(long, default_value_t = 16)]
    pub beam_width: usize,
    /// Slots per list; 0: each request's logged list length.
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Mine only the requests whose id hashes to i of n (e.g. a Kubernetes Indexed Job).
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// Keep what --out already holds and mine only the rest.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub quiet: bool,
}

pub fn mine(args: MineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.beam_width > 0, "--beam-width must be > 0");
    let logs = read_logs(&args.logs)?;
    let evaluator = Evaluator::load(&args.evaluator)?;
    let summary = mine::mine(
        &logs,
        &evaluator,
        &MineConfig {
            width: args.beam_width,
            slots: args.slots,
            shard: args.shard,
            resume: args.resume,
            progress: !args.quiet,
        },
        &args.out,
    )?;
    println!(
        "mined {} requests ({} already done) into {} in {:.1} s: {:.1} requests/s",
        summary.mined,
        summary.skipped_as_done,
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
    /// Directory for the exported version: encoder.onnx, decoder.onnx, manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// One-hot targets on the mined list instead of soft targets (an ablation).
    #[arg(long)]
    pub hard_labels: bool,
    #[arg(long, default_value_t = DistillConfig::default().temperature)]
    pub temperature: f64,
    #[arg(long, default_value_t = DistillConfig::default().ce_weight)]
    pub ce_weight: f64,
    #[arg(long, default_value_t = DistillConfig::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = DistillConfig::default().hidden)]
    pub hidden: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "degre")]
    pub model_name: String,
    #[arg(long, default_value_t = 256)]
    pub max_candidates: usize,
    #[arg(long)]
    pub quiet: bool,
}

pub fn distill(args: DistillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let logs = read_logs(&args.logs)?;
    let evaluator = Evaluator::load(&args.evaluator)?;
    let mined = mine::read_mined(&args.mined)?;
    let by_id: std::collections::HashMap<&str, &_> =
        logs.iter().map(|r| (r.request_id.as_str(), r)).collect();
    let mut requests = Vec::with_capacity(mined.len());
    let mut targets = Vec::with_capacity(mined.len());
    for m in &mined {
        let request = by_id.get(m.request_id.as_str()).with_context(|| {
            format!(
                "mined request {:?} is not in {}",
                m.request_id,
                args.logs.display()
            )
        })?;
        requests.push(*request);
        targets.push(if args.hard_labels {
            Forced::hard(&m.list)
        } else {
            Forced::soft(m, args.temperature)
        });
    }
    let config = DistillConfig {
        hidden: args.hidden,
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
    let (generator, summary) = distill::distill(
        &requests,
        &targets,
        &evaluator.spec.features,
        &config,
        "distill",
    )?;
    let files = crate::model::export::version_files(
        &generator.weights,
        &generator.schema,
        &args.model_name,
        crate::model::manifest::Limits {
            max_candidates: args.max_candidates,
        },
        serde_json::json!({ "trainer": "degre distill", "config": config, "summary": summary }),
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    for (name, bytes) in &files {
        std::fs::write(args.out.join(name), bytes)
            .with_context(|| format!("{}", args.out.join(name).display()))?;
    }
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
    /// Run on these logs instead of the simulator (.parquet or .jsonl).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Overrides the config's seeds with this one seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory: data, evaluator, mined lists, report, exported model.
    #[arg(long)]
    pub out: PathBuf,
    /// Publish the DeGRe generator into this model repository (next version).
    #[arg(long)]
    pub publish: Option<PathBuf>,
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
    let source = match &args.logs {
        Some(path) => Source::Logs(path.clone()),
        None => Source::Simulator,
    };
    let output = pipeline::run(&config, &source, &args.out, !args.quiet)?;
    let report = Report::new(output.runs, config.mining.beam_width);
    report.write(&args.out)?;
    let provenance = serde_json::json!({
        "trainer": "degre pipeline",
        "data": args.logs.as_ref().map_or_else(|| "simulator".to_string(), |p| p.display().to_string()),
        "seed": config.seeds[0],
        "config": config,
    });
    let files = pipeline::export_files(&output.generator, &config, provenance);
    let model_dir = args.out.join("model");
    std::fs::create_dir_all(&model_dir)?;
    for (name, bytes) in &files {
        std::fs::write(model_dir.join(name), bytes)?;
    }
    print!("{}", report.markdown());
    if let Some(root) = &args.publish {
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
