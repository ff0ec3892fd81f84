//! Every metric the server exports (names, units, buckets) and the tracing setup.
//! Labels come from small fixed sets: gRPC code, model name, load failure reason.
//! A leaf: it imports nothing else of degre, and the rooms that count things call it.

use std::sync::OnceLock;

pub mod otlp;
pub use otlp::Exporting;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "degre_requests_total";
pub const REQUEST_DURATION: &str = "degre_request_duration_seconds";
pub const COMPUTE_DURATION: &str = "degre_model_compute_duration_seconds";
pub const CANDIDATES: &str = "degre_request_candidates";
pub const IN_FLIGHT: &str = "degre_requests_in_flight";
pub const MODEL_LOADS: &str = "degre_model_loads_total";
pub const MODEL_INFO: &str = "degre_model_info";
pub const MODEL_VERSION: &str = "degre_model_version";
pub const QUEUE_WAIT: &str = "degre_queue_wait_seconds";
pub const LOAD_DURATION: &str = "degre_model_load_duration_seconds";
pub const BUILD_INFO: &str = "degre_build_info";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_FDS: &str = "process_open_fds";
pub const CONNECTIONS_REFUSED: &str = "degre_connections_refused_total";
pub const TLS_RELOADS: &str = "degre_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "degre_tls_handshake_failures_total";
pub const SHADOW_OVERLAP: &str = "degre_shadow_overlap";
pub const SHADOW_RANK_CORRELATION: &str = "degre_shadow_rank_correlation";
pub const SHADOW_DURATION: &str = "degre_shadow_compute_duration_seconds";
pub const SHADOW_SKIPPED: &str = "degre_shadow_skipped_total";

/// Every metric name, for checks that a dashboard or alert only queries what exists.
pub const ALL: [&str; 14] = [
    REQUESTS,
    REQUEST_DURATION,
    COMPUTE_DURATION,
    CANDIDATES,
    IN_FLIGHT,
    MODEL_LOADS,
    MODEL_INFO,
    MODEL_VERSION,
    QUEUE_WAIT,
    LOAD_DURATION,
    BUILD_INFO,
    PROCESS_RSS,
    PROCESS_CPU,
    PROCESS_FDS,
];

const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];
/// Shares and correlations, 0 to 1 (-1 to 1 for a correlation).
const AGREEMENT_BUCKETS: [f64; 12] = [
    -0.5, 0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
];
const CANDIDATE_BUCKETS: [f64; 10] = [
    5.0, 10.0, 20.0, 50.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CANDIDATES.into()), &CANDIDATE_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), &LATENCY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SHADOW_OVERLAP.into()), &AGREEMENT_BUCKETS)
            })
            .and_then(|b| {
                let tau = Matcher::Full(SHADOW_RANK_CORRELATION.into());
                b.set_buckets_for_metric(tau, &AGREEMENT_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("the recorder is installed only here, once");
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Rerank requests answered, by gRPC status code.");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Rerank request latency in the server, validation to response."
    );
    describe_histogram!(
        COMPUTE_DURATION,
        Unit::Seconds,
        "Model compute per request: encoder plus all decoder steps."
    );
    describe_histogram!(
        CANDIDATES,
        Unit::Count,
        "Candidates per valid rerank request."
    );
    describe_gauge!(IN_FLIGHT, "Rerank requests admitted and not yet answered.");
    describe_counter!(
        MODEL_LOADS,
        "Model version loads, by result and failure reason."
    );
    describe_gauge!(MODEL_VERSION, "The serving model version.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time an admitted request waited for a compute slot."
    );
    describe_gauge!(
        LOAD_DURATION,
        Unit::Seconds,
        "Time the serving version took to load, check and warm up."
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the degre version serving.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed on accept because --max-connections were open."
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads after the files changed, by result (failure keeps the old ones)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "Connections closed because their TLS handshake failed or timed out."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process.");
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time of the process, user and system."
    );
    describe_gauge!(PROCESS_FDS, "Open file descriptors of the process.");
    describe_histogram!(
        SHADOW_OVERLAP,
        "Shadow-decoded requests: share of the answered list's items the other version's list holds."
    );
    describe_histogram!(
        SHADOW_RANK_CORRELATION,
        "Shadow-decoded requests: Kendall's tau of the two versions' order of their common items."
    );
    describe_histogram!(
        SHADOW_DURATION,
        Unit::Seconds,
        "Compute time of the shadow decode, by the shadow version."
    );
    describe_counter!(
        SHADOW_SKIPPED,
        "Requests sampled for shadowing but not shadowed (busy: one already running)."
    );
}

/// An answer, by gRPC code and the model version that gave it (`none` when no model did:
/// refused or failed before a model answered), so two versions compare during a swap.
pub fn request_done(code: tonic::Code, version: Option<u64>, seconds: f64) {
    let version = version.map_or_else(|| "none".to_string(), |v| v.to_string());
    counter!(REQUESTS, "code" => code_label(code), "version" => version.clone()).increment(1);
    histogram!(REQUEST_DURATION, "version" => version).record(seconds);
}

/// A connection closed on accept: the server already holds `--max-connections`.
pub fn connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

pub fn tls_reloaded(ok: bool) {
    let result = if ok { "success" } else { "failure" };
    counter!(TLS_RELOADS, "result" => result).increment(1);
}

pub fn tls_handshake_failed() {
    counter!(TLS_HANDSHAKE_FAILURES).increment(1);
}

pub fn queue_wait(seconds: f64) {
    histogram!(QUEUE_WAIT).record(seconds);
}

/// Reads the process's resident memory, CPU time and open descriptors (Linux `/proc`;
/// elsewhere they are left as they were), for the scrape about to be rendered.
fn update_process_metrics() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let Some(fields) = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
    else {
        return;
    };
    let fields: Vec<&str> = fields.collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime (fields 14 and 15), in clock ticks: USER_HZ, 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    if let (Some(user), Some(system)) = (number(11), number(12)) {
        counter!(PROCESS_CPU).absolute(((user + system) / TICKS_PER_SECOND) as u64);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    if let Some(kib) = rss_kib {
        gauge!(PROCESS_RSS).set(kib * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_FDS).set(fds.count() as f64);
    }
}

pub fn request_compute(candidates: usize, seconds: f64) {
    histogram!(CANDIDATES).record(candidates as f64);
    histogram!(COMPUTE_DURATION).record(seconds);
}

/// A request decoded by the other version too: how much of the answered list the shadow
/// list shares, how it orders the common items (Kendall's tau), and its compute time.
pub fn shadow_compared(
    version: u64,
    answered_by: u64,
    overlap: f64,
    rank_correlation: Option<f64>,
    seconds: f64,
) {
    let labels = [
        ("version", version.to_string()),
        ("answered_by", answered_by.to_string()),
    ];
    histogram!(SHADOW_OVERLAP, &labels).record(overlap);
    if let Some(tau) = rank_correlation {
        histogram!(SHADOW_RANK_CORRELATION, &labels).record(tau);
    }
    histogram!(SHADOW_DURATION, "version" => version.to_string()).record(seconds);
}

/// A sampled request not shadowed: the one shadow slot was busy.
pub fn shadow_skipped() {
    counter!(SHADOW_SKIPPED, "reason" => "busy").increment(1);
}

pub fn shadow_failed(version: u64) {
    counter!(SHADOW_SKIPPED, "reason" => "failed", "version" => version.to_string()).increment(1);
}

/// Counts a request in flight until the guard drops.
pub struct InFlight;

impl InFlight {
    pub fn enter() -> InFlight {
        gauge!(IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// The serving model and version, for `degre_model_info`.
static SERVING: std::sync::Mutex<Option<(String, u64)>> = std::sync::Mutex::new(None);

/// The text of a scrape: the recorder's metrics, then `degre_model_info` for the serving
/// version only. It is rendered here, not recorded, because the recorder cannot forget a
/// series: a dashboard would list every version ever served.
pub fn render(handle: &PrometheusHandle) -> String {
    update_process_metrics();
    let mut text = handle.render();
    let serving = SERVING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((model, version)) = serving {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let model = model
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        text.push_str(&format!(
            "# HELP {MODEL_INFO} 1 for the serving model name and version.\n\
             # TYPE {MODEL_INFO} gauge\n\
             {MODEL_INFO}{{model=\"{model}\",version=\"{version}\"}} 1\n"
        ));
    }
    text
}

pub fn model_loaded(model: &str, version: u64, load_seconds: f64) {
    gauge!(LOAD_DURATION).set(load_seconds);
    counter!(MODEL_LOADS, "result" => "success", "reason" => "none").increment(1);
    *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = Some((model.to_string(), version));
    gauge!(MODEL_VERSION).set(version as f64);
}

/// Starts a failure counter at 0 for every reason, so `increase()` sees a pod's first failure.
pub fn model_load_reasons(reasons: &[&'static str]) {
    for &reason in reasons {
        counter!(MODEL_LOADS, "result" => "failure", "reason" => reason).absolute(0);
    }
}

pub fn model_load_failed(reason: &'static str) {
    counter!(MODEL_LOADS, "result" => "failure", "reason" => reason).increment(1);
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Logs to stderr, as text or one JSON object per line (`DEGRE_LOG` sets the filter), and,
/// with `otlp` (endpoint, sample ratio), exports spans; keep the returned guard alive until
/// exit, which flushes them.
pub fn init_tracing(json: bool, otlp: Option<(&str, f64)>) -> Result<Option<Exporting>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEGRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        logs.boxed()
    };
    let (spans, exporting) = match otlp {
        // degre's own spans at INFO, whatever the log filter says.
        Some((endpoint, sample_ratio)) => {
            let (layer, exporting) = otlp::layer(endpoint, sample_ratio)?;
            let only_degre = tracing_subscriber::filter::Targets::new()
                .with_target("degre", tracing::Level::INFO);
            (Some(layer.with_filter(only_degre)), Some(exporting))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init();
    Ok(exporting)
}
