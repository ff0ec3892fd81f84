//! `degre export` and `degre publish`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::contract::manifest::{FeatureSchema, Limits, Manifest};
use crate::network::export::{default_schema, version_files};
use crate::network::{Dims, Mixer, Weights};
use crate::repository::publish::{publish_files, write_version_dir};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Directory to write encoder.onnx, decoder.onnx, golden.json and manifest.json into.
    #[arg(long)]
    pub out: PathBuf,
    /// Feature schema as JSON (the manifest's "schema" object); default: the bundled schema.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Model name written into the manifest (the repository folder it is served from).
    #[arg(long, default_value = "degre")]
    pub model_name: String,
    /// Seed of the weight initialisation.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Width of the generator (the served model's hidden size).
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Width of each categorical feature's embedding.
    #[arg(long, default_value_t = 8)]
    pub embed: usize,
    /// How the encoder mixes the candidates: self-attention, attention through a few
    /// learned inducing points, or their mean (the last two with no N² term).
    #[arg(long, value_enum, default_value_t = Mixer::default())]
    pub mixer: Mixer,
    /// Candidate limit written into the manifest (`limits.max_candidates`).
    #[arg(long, default_value_t = 256)]
    pub max_candidates: usize,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// A version directory written by `degre export` (or any producer of the contract).
    #[arg(long)]
    pub from: PathBuf,
    /// Model repository root.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let schema: FeatureSchema = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a feature schema", path.display()))?
        }
        None => default_schema(),
    };
    let dims = Dims {
        hidden: args.hidden,
        embed: args.embed,
        mixer: args.mixer,
    };
    anyhow::ensure!(
        dims.hidden > 0 && dims.embed > 0,
        "--hidden and --embed must be > 0"
    );
    // No training checkpoint yet: the generator is the seeded initialisation.
    let weights = Weights::init(&schema, dims, args.seed);
    let provenance = serde_json::json!({
        "producer": "degre export",
        "trained": false,
        "seed": args.seed,
        "mixer": args.mixer,
        "hidden": dims.hidden,
        "embed": dims.embed,
    });
    let limits = Limits {
        max_candidates: args.max_candidates,
    };
    let files = version_files(&weights, &schema, &args.model_name, limits, provenance);
    write_version_dir(&args.out, &files).with_context(|| args.out.display().to_string())?;
    println!("wrote {}", args.out.display());
    Ok(())
}

pub fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load_verified(&args.from)
        .with_context(|| format!("{} is not a valid model version", args.from.display()))?;
    let mut files = Vec::new();
    for file in manifest
        .files
        .keys()
        .map(String::as_str)
        .chain([crate::contract::manifest::MANIFEST_FILE])
    {
        let path = args.from.join(file);
        files.push((
            file.to_string(),
            std::fs::read(&path).with_context(|| path.display().to_string())?,
        ));
    }
    let version = publish_files(&args.models, &manifest.model_name, &files)?;
    println!("published {} version {version}", manifest.model_name);
    Ok(())
}
