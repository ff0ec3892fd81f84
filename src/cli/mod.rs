//! The `degre` command line: `serve`, the `rerank` client, `export`/`publish` of models, and
//! the offline commands (`simulate`, `train-evaluator`, `eval`).

mod export;
mod health;
mod offline;
mod pipeline;
mod rerank;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, ServeArgs};
use crate::server::{termination_signal, BoundServer};

#[derive(Debug, Parser)]
#[command(
    name = "degre",
    version,
    about = "DeGRe reranking: serve, query and publish generators"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Rerank gRPC API from a model repository, hot-reloading new versions.
    Serve(ServeArgs),
    /// Send a JSON request file to a running server and print the response as JSON.
    Rerank(rerank::RerankArgs),
    /// Exit 0 if a server reports SERVING on grpc.health.v1 (for container health checks).
    Health(health::HealthArgs),
    /// Write a generator (ONNX graphs + manifest) into a directory.
    Export(export::ExportArgs),
    /// Publish a version directory atomically as the next version of a model.
    Publish(export::PublishArgs),
    /// Generate a ground-truth world and logged requests from it (Parquet).
    Simulate(offline::SimulateArgs),
    /// Validate a log file, print its shape, optionally convert it (Parquet <-> JSON Lines).
    CheckLogs(offline::CheckLogsArgs),
    /// Train the Lookahead Evaluator on logged requests.
    TrainEvaluator(offline::TrainEvaluatorArgs),
    /// Beam-search the evaluator for every logged request: best lists and lookahead values.
    Mine(pipeline::MineArgs),
    /// Train the generator on mined lists (dense soft targets) and export it (ONNX + manifest).
    Distill(pipeline::DistillArgs),
    /// Everything: simulate (or read logs), evaluator, mining, distillation, baselines,
    /// evaluation, report, export, publish.
    Pipeline(pipeline::PipelineArgs),
    /// Compare reranking policies: true utility, % of oracle, NDCG/MAP, evaluator quality.
    Eval(offline::EvalArgs),
}

/// Runs one command. A [`crate::config::ConfigError`] in the result means bad settings.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Rerank(args) => rerank::run(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Export(args) => export::export(args),
        Command::Publish(args) => export::publish(args),
        Command::Simulate(args) => offline::simulate(args),
        Command::CheckLogs(args) => offline::check_logs(args),
        Command::TrainEvaluator(args) => offline::train_evaluator(args),
        Command::Eval(args) => offline::eval(args),
        Command::Mine(args) => pipeline::mine(args),
        Command::Distill(args) => pipeline::distill(args),
        Command::Pipeline(args) => pipeline::pipeline(args),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    crate::telemetry::init_tracing(config.log_format == LogFormat::Json);
    let server = BoundServer::bind(config).await?;
    server.run(termination_signal()).await
}
