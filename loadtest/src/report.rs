//! Latency histograms (HDR, microsecond resolution), status counts, a per-second timeline,
//! the progress line, and the report printed and written as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{Mode, RunArgs};

/// One request's fate: when it was due (since start), how long it took, and its status.
pub enum Outcome {
    Done {
        due: Duration,
        latency: Duration,
        code: tonic::Code,
    },
    /// Open loop only: not sent because `max_outstanding` requests were already in flight.
    ClientOverloaded,
}

/// Latencies from 1 µs to 60 s at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub struct Stats {
    overall: Histogram<u64>,
    codes: BTreeMap<String, u64>,
    client_overloaded: u64,
    seconds: Vec<(Histogram<u64>, u64)>,
}

pub struct Collector {
    start: Instant,
    stats: Stats,
}

impl Collector {
    pub fn new(start: Instant) -> Collector {
        Collector {
            start,
            stats: Stats {
                overall: histogram(),
                codes: BTreeMap::new(),
                client_overloaded: 0,
                seconds: Vec::new(),
            },
        }
    }

    /// Records outcomes until every sender is gone; prints a progress line each second.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Outcome>) -> Stats {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                outcome = rx.recv() => match outcome {
                    Some(outcome) => self.record(outcome),
                    None => break,
                },
                _ = tick.tick() => self.progress(),
            }
        }
        eprintln!();
        self.stats
    }

    fn record(&mut self, outcome: Outcome) {
        let s = &mut self.stats;
        match outcome {
            Outcome::ClientOverloaded => s.client_overloaded += 1,
            Outcome::Done { due, latency, code } => {
                let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
                *s.codes.entry(format!("{code:?}")).or_default() += 1;
                let second = due.as_secs() as usize;
                while s.seconds.len() <= second {
                    s.seconds.push((histogram(), 0));
                }
                let (hist, errors) = &mut s.seconds[second];
                if code == tonic::Code::Ok {
                    s.overall.saturating_record(micros);
                    hist.saturating_record(micros);
                } else {
                    *errors += 1;
                }
            }
        }
    }

    fn progress(&self) {
        let s = &self.stats;
        let done: u64 = s.codes.values().sum();
        let ok = s.codes.get("Ok").copied().unwrap_or(0);
        let elapsed = self.start.elapsed().as_secs_f64();
        eprint!(
            "\r[{elapsed:6.1}s] done {done} ok {ok} errors {} rate {:.0}/s p99 {:.3} ms   ",
            done - ok,
            done as f64 / elapsed,
            ms(s.overall.value_at_quantile(0.99)),
        );
        let _ = std::io::stderr().flush();
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Second {
    pub second: usize,
    pub ok: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// What a run measured. `sent = ok + errors`; `client_overloaded` were never sent.
#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub addr: String,
    pub mode: Mode,
    pub target_rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub connections: usize,
    /// Candidates per generated request; absent when replaying a log.
    pub candidates: Option<usize>,
    /// The log replayed instead of generated requests.
    pub replay: Option<std::path::PathBuf>,
    /// Slots requested (0: each replayed row's exposed length).
    pub top_k: u32,
    pub duration_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub client_overloaded: u64,
    pub achieved_rate: f64,
    pub codes: BTreeMap<String, u64>,
    /// Latency of successful requests (open loop: from each request's due time).
    pub latency: Latency,
    pub timeline: Vec<Second>,
}

impl Report {
    pub fn new(args: &RunArgs, elapsed: Duration, stats: Stats) -> Report {
        let sent: u64 = stats.codes.values().sum();
        let ok = stats.codes.get("Ok").copied().unwrap_or(0);
        let duration_s = elapsed.as_secs_f64();
        Report {
            label: args.label.clone(),
            addr: args.addr.clone(),
            mode: args.mode,
            target_rate: (args.mode == Mode::Open).then_some(args.rate),
            concurrency: (args.mode == Mode::Closed).then_some(args.concurrency),
            connections: args.connections,
            candidates: args.replay.is_none().then_some(args.candidates),
            replay: args.replay.clone(),
            top_k: args.top_k,
            duration_s,
            sent,
            ok,
            errors: sent - ok,
            client_overloaded: stats.client_overloaded,
            achieved_rate: ok as f64 / duration_s,
            latency: Latency::of(&stats.overall),
            timeline: stats
                .seconds
                .iter()
                .enumerate()
                .map(|(second, (h, errors))| Second {
                    second,
                    ok: h.len(),
                    errors: *errors,
                    p99_ms: ms(h.value_at_quantile(0.99)),
                })
                .collect(),
            codes: stats.codes,
        }
    }

    pub fn print(&self) {
        let l = &self.latency;
        println!(
            "{} {:?} N={} K={} conns={} {}",
            self.label,
            self.mode,
            match (&self.candidates, &self.replay) {
                (Some(n), _) => n.to_string(),
                (None, Some(log)) => format!("as logged in {}", log.display()),
                (None, None) => "?".into(),
            },
            self.top_k,
            self.connections,
            match (self.target_rate, self.concurrency) {
                (Some(r), _) => format!("target {r:.0}/s"),
                (_, Some(c)) => format!("concurrency {c}"),
                _ => String::new(),
            }
        );
        println!(
            "  sent {} ok {} errors {} client_overloaded {} in {:.1} s: {:.0} ok/s",
            self.sent,
            self.ok,
            self.errors,
            self.client_overloaded,
            self.duration_s,
            self.achieved_rate
        );
        println!(
            "  latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        println!("  codes: {:?}", self.codes);
    }
}
