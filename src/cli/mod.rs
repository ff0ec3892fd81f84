//! The `degre` command line. Always: `serve`, the `rerank` and `health` clients, `export`
//! and `publish` of versions. With the `offline` feature: `simulate`, `check-logs`,
//! `train-evaluator`, `mine`, `distill`, `pipeline` and `eval`.

mod export;
mod health;
#[cfg(feature = "offline")]
mod offline;
#[cfg(feature = "offline")]
mod pipeline;
pub mod rerank;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, ServeArgs};
use crate::server::{termination_signal, BoundServer};

#[derive(Debug, Parser)]
#[command(
    name = "degre",
    version,
    about = "DeGRe reranking: serve, query and publish generators",
    after_help = "\
Examples:
  degre serve --models models                       serve the bundled model on :50051
  degre rerank --request docs/examples/rerank_request.json
  degre model-info                                  what the server serves, in proto3 JSON
  degre pipeline --logs logs.parquet --out runs/mine --publish models
  degre serve --help                                every setting, its DEGRE_* variable and default"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Rerank gRPC API from a model repository, hot-reloading new versions.
    Serve(ServeArgs),
    /// Send a request file in proto3 JSON to a running server and print the response in
    /// proto3 JSON. Exits 0 on OK, 20 + the gRPC code on any other answer (23
    /// INVALID_ARGUMENT, 34 UNAVAILABLE, …), 1 if it could not ask.
    Rerank(rerank::RerankArgs),
    /// Print what a running server serves (GetModelInfo) in proto3 JSON: loaded versions, the
    /// feature schema a request must follow, limits, objective. Exit codes as `rerank`.
    ModelInfo(rerank::ModelInfoArgs),
    /// Exit 0 if a server reports SERVING on grpc.health.v1 (for container health checks).
    Health(health::HealthArgs),
    /// Write an UNTRAINED generator (random weights; ONNX graphs + manifest) into a
    /// directory, for tests and load tests. Trained generators come from `degre pipeline`
    /// or `degre distill`. Published, it hot-swaps into a live server like any version.
    Export(export::ExportArgs),
    /// Publish a version directory atomically as the next version of a model.
    Publish(export::PublishArgs),
    #[cfg(feature = "offline")]
    /// Generate a ground-truth world and logged requests from it (Parquet).
    Simulate(offline::SimulateArgs),
    #[cfg(feature = "offline")]
    /// Validate a log file, print its shape, optionally convert it (Parquet <-> JSON Lines).
    CheckLogs(offline::CheckLogsArgs),
    #[cfg(feature = "offline")]
    /// Train the Lookahead Evaluator on logged requests.
    TrainEvaluator(offline::TrainEvaluatorArgs),
    #[cfg(feature = "offline")]
    /// Beam-search the evaluator for every logged request: best lists and lookahead values.
    Mine(pipeline::MineArgs),
    #[cfg(feature = "offline")]
    /// Train the generator on mined lists (dense soft targets) and export it (ONNX + manifest).
    Distill(pipeline::DistillArgs),
    #[cfg(feature = "offline")]
    /// Everything: simulate (or read logs), evaluator, mining, distillation, baselines,
    /// evaluation, report, export, publish.
    Pipeline(pipeline::PipelineArgs),
    #[cfg(feature = "offline")]
    /// Compare reranking policies: true utility, % of oracle, NDCG/MAP, evaluator quality.
    Eval(offline::EvalArgs),
}

impl Command {
    /// Offline commands run data-parallel work on rayon and want single-threaded kernels.
    pub fn is_offline(&self) -> bool {
        !matches!(
            self,
            Command::Serve(_)
                | Command::Rerank(_)
                | Command::ModelInfo(_)
                | Command::Health(_)
                | Command::Export(_)
                | Command::Publish(_)
        )
    }
}

/// Runs one command. A [`crate::config::ConfigError`] in the result means bad settings.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Rerank(args) => rerank::run(args).await,
        Command::ModelInfo(args) => rerank::model_info(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Export(args) => export::export(args),
        Command::Publish(args) => export::publish(args),
        #[cfg(feature = "offline")]
        Command::Simulate(args) => offline::simulate(args),
        #[cfg(feature = "offline")]
        Command::CheckLogs(args) => offline::check_logs(args),
        #[cfg(feature = "offline")]
        Command::TrainEvaluator(args) => offline::train_evaluator(args),
        #[cfg(feature = "offline")]
        Command::Eval(args) => offline::eval(args),
        #[cfg(feature = "offline")]
        Command::Mine(args) => pipeline::mine(args),
        #[cfg(feature = "offline")]
        Command::Distill(args) => pipeline::distill(args),
        #[cfg(feature = "offline")]
        Command::Pipeline(args) => pipeline::pipeline(args),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let json = config.log_format == LogFormat::Json;
    let otlp = config
        .otlp
        .as_ref()
        .map(|o| (o.endpoint.as_str(), o.sample_ratio));
    let _exporting =
        crate::telemetry::init_tracing(json, otlp).map_err(crate::config::ConfigError)?;
    let server = BoundServer::bind(config).await?;
    server.run(termination_signal()).await
}
