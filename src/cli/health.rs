//! `degre health`: asks a server's `grpc.health.v1` service and exits 0 only if SERVING,
//! for container HEALTHCHECKs and scripts (Kubernetes probes use gRPC natively).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "degre.v1.Reranker")]
    pub service: String,
    /// Deadline of the health check; past it, the command exits non-zero.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let status = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{:?} is {}",
        args.service,
        status.as_str_name()
    );
    Ok(())
}
