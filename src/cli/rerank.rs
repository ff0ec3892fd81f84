//! `degre rerank`: a client that sends a JSON request file (the proto's field names) to a
//! server and prints the response as JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
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
    /// JSON request file; `-` reads standard input.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    context: FeaturesJson,
    candidates: Vec<CandidateJson>,
    #[serde(default)]
    top_k: u32,
    #[serde(default)]
    model_version: Option<u64>,
    #[serde(default)]
    constraints: Option<ConstraintsJson>,
    #[serde(default)]
    explain: bool,
    #[serde(default)]
    routing_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstraintsJson {
    #[serde(default)]
    pins: Vec<PinJson>,
    #[serde(default)]
    group_caps: Vec<GroupCapJson>,
    #[serde(default)]
    exclude_item_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinJson {
    item_id: String,
    slot: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCapJson {
    categorical_feature: u32,
    max_count: u32,
    #[serde(default)]
    window: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesJson {
    #[serde(default)]
    dense: Vec<f32>,
    #[serde(default)]
    categorical: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateJson {
    item_id: String,
    #[serde(default)]
    features: FeaturesJson,
    #[serde(default)]
    ranking_score: Option<f32>,
}

#[derive(Debug, Serialize)]
struct ResponseJson {
    model_name: String,
    model_version: u64,
    items: Vec<ItemJson>,
    #[serde(skip_serializing_if = "String::is_empty")]
    unfilled: String,
}

#[derive(Debug, Serialize)]
struct ItemJson {
    item_id: String,
    candidate_index: u32,
    score: f32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    alternatives: Vec<AlternativeJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    masked_by: Vec<String>,
}

#[derive(Debug, Serialize)]
struct AlternativeJson {
    item_id: String,
    candidate_index: u32,
    probability: f32,
}

impl From<FeaturesJson> for v1::Features {
    fn from(f: FeaturesJson) -> Self {
        v1::Features {
            dense: f.dense,
            categorical: f.categorical,
        }
    }
}

pub async fn run(args: RerankArgs) -> anyhow::Result<()> {
    let name = args.request.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.request).with_context(|| name.clone())?
    };
    let json: RequestJson =
        serde_json::from_str(&text).with_context(|| format!("{name}: not a rerank request"))?;
    let request = v1::RerankRequest {
        request_id: json.request_id,
        context: Some(json.context.into()),
        candidates: json
            .candidates
            .into_iter()
            .map(|c| v1::Candidate {
                item_id: c.item_id,
                features: Some(c.features.into()),
                ranking_score: c.ranking_score,
            })
            .collect(),
        top_k: json.top_k,
        model_version: json.model_version,
        constraints: json.constraints.map(|c| v1::Constraints {
            pins: c
                .pins
                .into_iter()
                .map(|p| v1::Pin {
                    item_id: p.item_id,
                    slot: p.slot,
                })
                .collect(),
            group_caps: c
                .group_caps
                .into_iter()
                .map(|g| v1::GroupCap {
                    categorical_feature: g.categorical_feature,
                    max_count: g.max_count,
                    window: g.window,
                })
                .collect(),
            exclude_item_ids: c.exclude_item_ids,
        }),
        explain: json.explain,
        routing_key: json.routing_key,
    };
    let request = args.server.request(request);
    let response = args
        .server
        .client()
        .await?
        .rerank(request)
        .await
        .map_err(|s| RerankFailed(s.code(), s.message().to_string()))?
        .into_inner();
    let out = ResponseJson {
        model_name: response.model_name,
        model_version: response.model_version,
        items: response
            .items
            .into_iter()
            .map(|i| ItemJson {
                item_id: i.item_id,
                candidate_index: i.candidate_index,
                score: i.score,
                alternatives: i
                    .alternatives
                    .into_iter()
                    .map(|a| AlternativeJson {
                        item_id: a.item_id,
                        candidate_index: a.candidate_index,
                        probability: a.probability,
                    })
                    .collect(),
                masked_by: i.masked_by,
            })
            .collect(),
        unfilled: response.unfilled,
    };
    print_json(&out)
}
