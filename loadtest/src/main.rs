//! `degre-loadtest`: drives the Rerank RPC over real tonic connections, open-loop at a fixed
//! rate (latency measured from each request's intended send time, so a stalled server
//! cannot hide its queue: no coordinated omission) or closed-loop at a fixed concurrency,
//! and reports HDR percentiles and counts per gRPC status. `echo-server` serves the same
//! API without a model: the transport floor.
#![forbid(unsafe_code)]

mod drive;
mod echo;
mod report;
mod requests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "degre-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send load and report latency percentiles and status counts.
    Run(RunArgs),
    /// Serve the Rerank API with no model (answers the first top_k candidates).
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:50052")]
        addr: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed request rate, whatever the server does (SLO measurements).
    Open,
    /// A fixed number of requests outstanding (saturation throughput).
    Closed,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    #[arg(long, value_enum, default_value = "open")]
    pub mode: Mode,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Requests outstanding (closed loop).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to send load.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Stop after this many requests, if sooner.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Candidates per request.
    #[arg(long, default_value_t = 100)]
    pub candidates: usize,
    /// Slots per request (`top_k`).
    #[arg(long, default_value_t = 20)]
    pub top_k: u32,
    /// A model manifest, for feature sizes [default: the server's, by GetModelInfo; for a
    /// server without it (the echo server), the newest version under models/]
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Replay the requests of a log in degre's format (.parquet or .jsonl, docs/data.md)
    /// instead of generating them; each row's candidates and features are sent as logged.
    /// `--top-k 0` asks for as many slots as the row exposed.
    #[arg(long, conflicts_with_all = ["manifest", "candidates"])]
    pub replay: Option<PathBuf>,
    /// Deadline sent with each request.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Open loop: most requests in flight in the client before it counts new ones as
    /// `client_overloaded` instead of sending them (bounds the client's memory).
    #[arg(long, default_value_t = 10_000)]
    pub max_outstanding: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label stored in the report.
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RunArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }
}

/// mimalloc rather than the system allocator: the request path allocates many small,
/// short-lived blocks (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            anyhow::ensure!(
                args.duration_s > 0.0 && args.duration_s <= 3600.0,
                "--duration-s must be in (0, 3600]"
            );
            anyhow::ensure!(
                args.connections > 0 && args.concurrency > 0,
                "--connections and --concurrency must be > 0"
            );
            anyhow::ensure!(
                args.mode == Mode::Closed || args.rate > 0.0,
                "--rate must be > 0"
            );
            let pool = requests::pool(&args).await?;
            let report = drive::run(&args, pool).await?;
            report.print();
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
            }
            Ok(())
        }
        Command::EchoServer { addr } => echo::serve(addr).await,
    }
}
