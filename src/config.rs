//! Server configuration, layered defaults → TOML file → `DEGRE_*` env → flags, and fully
//! validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// `degre serve` settings. Every field is optional here so that layers can be merged; the
/// defaults live in [`ServeArgs::resolve`]. The TOML file uses the same names (snake_case).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "DEGRE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model repository root: <models>/<model_name>/<version>/ [default: models]
    #[arg(long, env = "DEGRE_MODELS")]
    pub models: Option<PathBuf>,
    /// Model to serve; may be omitted when the repository holds exactly one.
    #[arg(long, env = "DEGRE_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Serve exactly this version instead of the newest (rollback).
    #[arg(long, env = "DEGRE_MODEL_VERSION")]
    pub model_version: Option<u64>,
    /// gRPC listen address, IP:port or host:port [default: 0.0.0.0:50051]
    #[arg(long, env = "DEGRE_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Prometheus /metrics listen address, IP:port or host:port [default: 0.0.0.0:9095]
    #[arg(long, env = "DEGRE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// How often the repository is polled for new versions [default: 1000]
    #[arg(long, env = "DEGRE_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Most candidates per request, further capped by the model's own limit [default: 1000]
    #[arg(long, env = "DEGRE_MAX_CANDIDATES")]
    pub max_candidates: Option<usize>,
    /// Largest request or response message [default: 4194304]
    #[arg(long, env = "DEGRE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Request bytes the whole server may hold before they are decoded (bodies still
    /// arriving, across every connection); beyond it a request gets RESOURCE_EXHAUSTED
    /// [default: 67108864]
    #[arg(long, env = "DEGRE_MAX_BUFFERED_REQUEST_BYTES")]
    pub max_buffered_request_bytes: Option<usize>,
    /// Requests admitted at once, counted before their bodies are read; one more is
    /// answered RESOURCE_EXHAUSTED at once [default: 16 per compute thread]
    #[arg(long, env = "DEGRE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// HTTP/2 streams (requests) a client may open at once on one connection [default: 32]
    #[arg(long, env = "DEGRE_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Seconds after which a connection is asked to close (GOAWAY) and reopened by the
    /// client, so long-lived channels spread over new replicas [default: 600]
    #[arg(long, env = "DEGRE_MAX_CONNECTION_AGE_S")]
    pub max_connection_age_s: Option<u64>,
    /// Connections open at once; one more is closed on accept [default: half the process's
    /// open-files limit, at most 10000]
    #[arg(long, env = "DEGRE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a connection may send nothing (not even the HTTP/2 preface or a ping's
    /// acknowledgement) before it is closed [default: 300]
    #[arg(long, env = "DEGRE_IDLE_TIMEOUT_S")]
    pub idle_timeout_s: Option<u64>,
    /// Requests that run model compute at once [default: number of CPUs]
    #[arg(long, env = "DEGRE_COMPUTE_THREADS")]
    pub compute_threads: Option<usize>,
    /// Longest a request may wait for compute; one expected to wait longer is refused at
    /// once with RESOURCE_EXHAUSTED [default: 10]
    #[arg(long, env = "DEGRE_MAX_QUEUE_MS")]
    pub max_queue_ms: Option<u64>,
    /// Deadline of a request whose client sets none, and the cap of any client deadline [default: 1000]
    #[arg(long, env = "DEGRE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT [default: 10000]
    #[arg(long, env = "DEGRE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Longest a version may take to load, check and warm up; a slower one is refused
    /// (reason `timeout`) and the serving version stays [default: 60000]
    #[arg(long, env = "DEGRE_MODEL_LOAD_TIMEOUT_MS")]
    pub model_load_timeout_ms: Option<u64>,
    /// Versions kept loaded after being replaced, for requests that pin them [default: 1]
    #[arg(long, env = "DEGRE_KEEP_PREVIOUS_VERSIONS")]
    pub keep_previous_versions: Option<usize>,
    /// Serve gRPC reflection (v1 and v1alpha), which lets any client list the API [default: true]
    #[arg(long, env = "DEGRE_REFLECTION")]
    pub reflection: Option<bool>,
    /// Share of requests (by routing key) the newest version answers; the version it
    /// replaced answers the rest. Below 1, every newly published version starts as a
    /// canary [default: 1]
    #[arg(long, env = "DEGRE_CANARY_SHARE")]
    pub canary_share: Option<f64>,
    /// Share of requests also decoded by the other of the two newest versions, off the
    /// request's path, to export how their lists differ [default: 0]
    #[arg(long, env = "DEGRE_SHADOW_SHARE")]
    pub shadow_share: Option<f64>,
    /// PEM certificate chain the gRPC listener presents; with --tls-key, gRPC is served over
    /// TLS only. Re-read when the file changes.
    #[arg(long, env = "DEGRE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DEGRE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of them signed (mutual
    /// TLS). Needs --tls-cert.
    #[arg(long, env = "DEGRE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Log one line per Rerank answer (target `degre::access`: peer, code, latency,
    /// version, candidates, items) [default: false]
    #[arg(long, env = "DEGRE_ACCESS_LOG")]
    pub access_log: Option<bool>,
    /// OTLP/gRPC endpoint to export Rerank spans to, e.g. http://otel-collector:4317
    /// [default: none, no spans exported]
    #[arg(long, env = "DEGRE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces started here that are exported; a caller's `traceparent` sampling
    /// decision is followed [default: 1]
    #[arg(long, env = "DEGRE_OTLP_SAMPLE_RATIO")]
    pub otlp_sample_ratio: Option<f64>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "DEGRE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub models: PathBuf,
    pub model_name: Option<String>,
    pub model_version: Option<u64>,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub poll_interval: Duration,
    pub max_candidates: usize,
    pub max_message_bytes: usize,
    pub max_buffered_request_bytes: usize,
    pub max_in_flight: usize,
    pub max_streams_per_connection: u32,
    pub max_connection_age: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub compute_threads: usize,
    pub max_queue: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub keep_previous_versions: usize,
    pub model_load_timeout: Duration,
    pub reflection: bool,
    pub canary_share: f64,
    pub shadow_share: f64,
    pub log_format: LogFormat,
    pub access_log: bool,
    pub tls: Option<TlsFiles>,
    pub otlp: Option<OtlpConfig>,
}

/// Where Rerank spans are exported (OTLP/gRPC) and which share of traces is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    pub endpoint: String,
    /// Share of traces started here that are exported; a caller's sampling decision in
    /// `traceparent` is followed.
    pub sample_ratio: f64,
}

/// The PEM files the gRPC listener's TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate this CA signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Half the open-files limit (the rest for model files, the metrics listener and
/// headroom), at most 10,000; 512 where the limit cannot be read.
fn default_max_connections() -> usize {
    open_files_limit().map_or(512, |n| (n / 2).clamp(16, 10_000))
}

/// The process's soft limit of open files (Linux `/proc/self/limits`), if known.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ServeArgs {
    /// Merges flags/env (self) over the optional file, over defaults, and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            }
            None => ServeArgs::default(),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ms = Duration::from_millis;
        let compute_threads = self
            .compute_threads
            .or(file.compute_threads)
            .unwrap_or(cpus);
        let config = Config {
            models: self
                .models
                .or(file.models)
                .unwrap_or_else(|| "models".into()),
            model_name: self.model_name.or(file.model_name),
            model_version: self.model_version.or(file.model_version),
            grpc_addr: listen_addr("grpc_addr", self.grpc_addr.or(file.grpc_addr), 50051)?,
            metrics_addr: listen_addr(
                "metrics_addr",
                self.metrics_addr.or(file.metrics_addr),
                9095,
            )?,
            poll_interval: ms(self
                .poll_interval_ms
                .or(file.poll_interval_ms)
                .unwrap_or(1000)),
            max_candidates: self.max_candidates.or(file.max_candidates).unwrap_or(1000),
            max_message_bytes: self
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(4 << 20),
            max_buffered_request_bytes: self
                .max_buffered_request_bytes
                .or(file.max_buffered_request_bytes)
                .unwrap_or(64 << 20),
            // Enough to keep every compute thread busy while others' bodies arrive; more
            // only queues: at 2× saturation on one core, 16 kept 94% goodput with a server
            // p99 under 5 ms, 256 left requests waiting ~100 ms (docs/performance.md).
            max_in_flight: self
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(16 * compute_threads),
            max_streams_per_connection: self
                .max_streams_per_connection
                .or(file.max_streams_per_connection)
                .unwrap_or(32),
            max_connection_age: Duration::from_secs(
                self.max_connection_age_s
                    .or(file.max_connection_age_s)
                    .unwrap_or(600),
            ),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or_else(default_max_connections),
            idle_timeout: Duration::from_secs(
                self.idle_timeout_s.or(file.idle_timeout_s).unwrap_or(300),
            ),
            compute_threads,
            max_queue: ms(self.max_queue_ms.or(file.max_queue_ms).unwrap_or(10)),
            request_timeout: ms(self
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(1000)),
            shutdown_grace: ms(self
                .shutdown_grace_ms
                .or(file.shutdown_grace_ms)
                .unwrap_or(10_000)),
            keep_previous_versions: self
                .keep_previous_versions
                .or(file.keep_previous_versions)
                .unwrap_or(1),
            model_load_timeout: ms(self
                .model_load_timeout_ms
                .or(file.model_load_timeout_ms)
                .unwrap_or(60_000)),
            reflection: self.reflection.or(file.reflection).unwrap_or(true),
            canary_share: self.canary_share.or(file.canary_share).unwrap_or(1.0),
            shadow_share: self.shadow_share.or(file.shadow_share).unwrap_or(0.0),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            access_log: self.access_log.or(file.access_log).unwrap_or(false),
            tls: tls_files(
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
                self.tls_client_ca.or(file.tls_client_ca),
            )?,
            otlp: self
                .otlp_endpoint
                .or(file.otlp_endpoint)
                .map(|endpoint| OtlpConfig {
                    endpoint,
                    sample_ratio: self
                        .otlp_sample_ratio
                        .or(file.otlp_sample_ratio)
                        .unwrap_or(1.0),
                }),
        };
        config.validate()?;
        Ok(config)
    }
}

/// `addr` (IP:port, or host:port resolved now: `localhost:50051`), else all interfaces.
fn listen_addr(name: &str, addr: Option<String>, port: u16) -> Result<SocketAddr, ConfigError> {
    let Some(addr) = addr else {
        return Ok(([0, 0, 0, 0], port).into());
    };
    if let Ok(ip) = addr.parse() {
        return Ok(ip);
    }
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
        .map_err(|e| {
            ConfigError(format!(
                "{name} {addr:?}: {e} (expected IP:port or host:port)"
            ))
        })?
        .collect::<Vec<_>>();
    // `localhost` may give ::1 and 127.0.0.1: IPv4 first, which every client reaches.
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| ConfigError(format!("{name} {addr:?}: resolves to no address")))
}

/// TLS is on with a certificate and its key; a client CA alone means nothing.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        _ => Err(ConfigError(
            "tls_cert and tls_key go together, and tls_client_ca needs both".into(),
        )),
    }
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("poll_interval_ms", self.poll_interval.as_millis() as usize),
            ("max_candidates", self.max_candidates),
            ("max_message_bytes", self.max_message_bytes),
            (
                "max_buffered_request_bytes",
                self.max_buffered_request_bytes,
            ),
            ("max_in_flight", self.max_in_flight),
            ("compute_threads", self.compute_threads),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
            (
                "max_connection_age_s",
                self.max_connection_age.as_secs() as usize,
            ),
            ("max_queue_ms", self.max_queue.as_millis() as usize),
            ("max_connections", self.max_connections),
            ("idle_timeout_s", self.idle_timeout.as_secs() as usize),
            (
                "request_timeout_ms",
                self.request_timeout.as_millis() as usize,
            ),
            (
                "model_load_timeout_ms",
                self.model_load_timeout.as_millis() as usize,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{name} must be > 0")));
        }
        for (name, share) in [
            ("canary_share", self.canary_share),
            ("shadow_share", self.shadow_share),
            (
                "otlp_sample_ratio",
                self.otlp.as_ref().map_or(1.0, |o| o.sample_ratio),
            ),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(ConfigError(format!(
                    "{name} must be within [0, 1], not {share}"
                )));
            }
        }
        if (self.canary_share < 1.0 || self.shadow_share > 0.0) && self.keep_previous_versions == 0
        {
            return Err(ConfigError(
                "canary_share below 1 or shadow_share above 0 need keep_previous_versions >= 1"
                    .into(),
            ));
        }
        if self.compute_threads > self.max_in_flight {
            return Err(ConfigError(format!(
                "compute_threads ({}) must not exceed max_in_flight ({})",
                self.compute_threads, self.max_in_flight
            )));
        }
        if !self.models.is_dir() {
            return Err(ConfigError(format!(
                "models: {} is not a directory",
                self.models.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("degre.toml");
        let models = dir.path().display();
        std::fs::write(
            &file,
            format!("models = \"{models}\"\nmax_in_flight = 8\npoll_interval_ms = 50\n"),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            max_in_flight: Some(16),
            ..ServeArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.max_in_flight, 16);
        assert_eq!(config.poll_interval, Duration::from_millis(50));
        assert_eq!(config.max_message_bytes, 4 << 20);
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            models: Some(dir.path().into()),
            max_in_flight: Some(0),
            ..ServeArgs::default()
        };
        assert!(args
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("max_in_flight"));
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "max_inflight = 3\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        assert!(args
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("max_inflight"));
    }
}
