//! `degre rerank`: a client that sends a request file in proto3 JSON to a server and prints
//! the response in proto3 JSON; `degre model-info` prints what a server serves.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::api::v1;
use crate::api::v1::reranker_client::RerankerClient;

/// The server answered a gRPC status other than OK; `degre rerank` exits with
/// [`RerankFailed::exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: {1}")]
pub struct RerankFailed(pub tonic::Code, pub String);

impl RerankFailed {
    /// 20 + the gRPC code: 23 INVALID_ARGUMENT, 24 DEADLINE_EXCEEDED, 28 RESOURCE_EXHAUSTED,
    /// 34 UNAVAILABLE, … (1 stays "could not ask": a bad file, no connection).
    pub fn exit_code(&self) -> i32 {
        20 + self.0 as i32
    }
}

/// Where the server is and how long to wait for it, for every client command.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Server address; `https://` with --tls-ca for a server that serves TLS.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Deadline sent with the request.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// PEM CA certificate(s) to verify the server's certificate with (turns TLS on).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the address's host].
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServerArgs {
    async fn client(&self) -> anyhow::Result<RerankerClient<Channel>> {
        let mut endpoint = Channel::from_shared(self.addr.clone())
            .with_context(|| format!("--addr {}: not a URI", self.addr))?;
        if let Some(ca) = &self.tls_ca {
            endpoint = endpoint.tls_config(self.tls(ca)?)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        Ok(RerankerClient::new(channel))
    }

    fn tls(&self, ca: &std::path::Path) -> anyhow::Result<ClientTlsConfig> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_millis(self.timeout_ms));
        request
    }
}

#[derive(Debug, Args)]
pub struct RerankArgs {
    /// Request file in proto3 JSON (either field-name style); `-` reads standard input.
    #[arg(long)]
    pub request: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ModelInfoArgs {
    /// The loaded version to describe [default: the serving one].
    #[arg(long)]
    pub model_version: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `degre model-info`: what a running server serves (GetModelInfo), as JSON.
pub async fn model_info(args: ModelInfoArgs) -> anyhow::Result<()> {
    let request = args.server.request(v1::GetModelInfoRequest {
        model_version: args.model_version,
    });
    let info = args
        .server
        .client()
        .await?
        .get_model_info(request)
        .await
        .map_err(|s| RerankFailed(s.code(), s.message().to_string()))?
        .into_inner();
    print_json(&info)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    // A reader that stops early (`| head`) is not an error worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub async fn run(args: RerankArgs) -> anyhow::Result<()> {
    let name = args.request.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.request).with_context(|| name.clone())?
    };
    // Canonical proto3 JSON (what grpcurl and protobuf's JSON printers write), parsed by
    // the code generated from the proto: unknown fields are refused, either name is read.
    let request: v1::RerankRequest = serde_json::from_str(&text)
        .with_context(|| format!("{name}: not a rerank request in proto3 JSON"))?;
    let request = args.server.request(request);
    let response = args
        .server
        .client()
        .await?
        .rerank(request)
        .await
        .map_err(|s| RerankFailed(s.code(), s.message().to_string()))?
        .into_inner();
    print_json(&response)
}
