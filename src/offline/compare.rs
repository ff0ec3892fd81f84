//! The evaluation harness behind `degre eval`: every policy's true utility under the
//! objective (with the simulator) and its true expected clicks and value, % of the
//! objective's oracle, NDCG@K/MAP@K against held-out clicks, and how good the evaluator is
//! (per-slot AUC, calibration, rank correlation of `V` with the true `U`).

use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::offline::evaluator::{Ensemble, EnsembleScorer, ListRef};
use crate::offline::logs::LoggedRequest;
use crate::offline::metrics::{self, Calibration};
use crate::offline::objective::Objective;
use crate::offline::policy::{Policy, RequestContext};
use crate::offline::search;
use crate::offline::sim::{self, Truth, World};

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// What "utility" and `V` measure.
    pub objective: Objective,
    pub requests: usize,
    /// Slots per list: the simulator's K, else each request's logged list length.
    pub slots: Option<usize>,
    pub oracle: Option<OracleSummary>,
    pub policies: Vec<PolicyReport>,
    pub evaluator: Option<EvaluatorReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OracleSummary {
    pub method: String,
    pub mean_utility: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub name: String,
    /// Mean true expected reward per request under the objective, and its standard error
    /// (simulator only).
    pub true_utility: Option<f64>,
    pub true_utility_stderr: Option<f64>,
    /// Mean true expected clicks and value (clicks × price) per request, whatever the
    /// objective (simulator only).
    pub true_clicks: Option<f64>,
    pub true_value: Option<f64>,
    pub percent_of_oracle: Option<f64>,
    /// Mean evaluator value `V(list)` (with an evaluator).
    pub evaluator_value: Option<f64>,
    /// Against the logged clicks: unclicked and unshown candidates count as irrelevant.
    pub ndcg_at_k: Option<f64>,
    pub map_at_k: Option<f64>,
    /// How far the list moves from the ranking stage's (`ranking_score` order, K slots):
    /// the share of its slots holding upstream's item for that slot, and the share of its
    /// items upstream's list also shows.
    pub same_slot_as_upstream: f64,
    pub overlap_with_upstream: f64,
    /// Mean wall time to produce one list, in microseconds (single thread).
    pub micros_per_request: f64,
    /// The list it made for each request, in the order of the logs (`degre eval
    /// --write-lists`; not in the JSON report).
    #[serde(skip)]
    pub lists: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluatorReport {
    /// Per-slot click prediction on the held-out logged lists.
    pub auc: Option<f64>,
    pub held_out_loss: f64,
    pub constant_loss: f64,
    pub calibration: Calibration,
    /// Spearman correlation of `V(list)` with `U(list)` over random lists (simulator only).
    pub rank_correlation: Option<RankCorrelation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RankCorrelation {
    pub requests: usize,
    pub lists_per_request: usize,
    /// All (request, list) pairs together: mixes "which request" with "which list".
    pub pooled: Option<f64>,
    /// Mean over requests of the correlation among one request's lists: what search needs.
    pub within_request: Option<f64>,
}

pub struct EvalInputs<'a> {
    pub objective: Objective,
    pub logs: &'a [LoggedRequest],
    pub world: Option<&'a World>,
    /// The evaluator(s) behind `V` and the evaluator policies (searched as the teacher is).
    pub evaluator: Option<&'a Ensemble>,
    pub policies: &'a [Policy],
    pub seed: u64,
    /// Requests and random lists per request for the rank correlation.
    pub correlation_requests: usize,
    pub correlation_lists: usize,
}

/// What one request contributes to each policy's row.
struct PerRequest {
    utilities: Vec<Option<f64>>,
    clicks: Vec<Option<f64>>,
    true_values: Vec<Option<f64>>,
    values: Vec<Option<f64>>,
    ndcg: Vec<Option<f64>>,
    map: Vec<Option<f64>>,
    same_slot: Vec<f64>,
    overlap: Vec<f64>,
    micros: Vec<f64>,
    lists: Vec<Vec<usize>>,
    oracle: Option<f64>,
}

pub fn evaluate(inputs: &EvalInputs<'_>) -> anyhow::Result<EvalReport> {
    for policy in inputs.policies {
        anyhow::ensure!(
            !policy.needs_simulator() || inputs.world.is_some(),
            "policy {} needs the simulator's world (--world)",
            policy.name()
        );
        anyhow::ensure!(
            !policy.needs_evaluator() || inputs.evaluator.is_some(),
            "policy {} needs an evaluator (--evaluator)",
            policy.name()
        );
    }
    let slots = inputs.world.map(|w| w.config.slots);
    let per_request: Vec<PerRequest> = inputs
        .logs
        .par_iter()
        .enumerate()
        .map(|(i, request)| evaluate_request(inputs, i, request))
        .collect::<anyhow::Result<_>>()?;
    let mean_of = |values: Vec<Option<f64>>| -> (Option<f64>, Option<f64>) {
        let present: Vec<f64> = values.into_iter().flatten().collect();
        if present.is_empty() {
            return (None, None);
        }
        let (mean, std) = metrics::mean_std(&present);
        (Some(mean), Some(std / (present.len() as f64).sqrt()))
    };
    let oracle_mean = mean_of(per_request.iter().map(|r| r.oracle).collect()).0;
    let policies = inputs
        .policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let column = |f: fn(&PerRequest) -> &Vec<Option<f64>>| {
                mean_of(per_request.iter().map(|r| f(r)[p]).collect())
            };
            let (true_utility, true_utility_stderr) = column(|r| &r.utilities);
            let mean = |f: fn(&PerRequest) -> &Vec<f64>| {
                per_request.iter().map(|r| f(r)[p]).sum::<f64>() / per_request.len().max(1) as f64
            };
            PolicyReport {
                name: policy.name(),
                true_utility,
                true_utility_stderr,
                true_clicks: column(|r| &r.clicks).0,
                true_value: column(|r| &r.true_values).0,
                percent_of_oracle: true_utility.zip(oracle_mean).map(|(u, o)| 100.0 * u / o),
                evaluator_value: column(|r| &r.values).0,
                ndcg_at_k: column(|r| &r.ndcg).0,
                map_at_k: column(|r| &r.map).0,
                same_slot_as_upstream: mean(|r| &r.same_slot),
                overlap_with_upstream: mean(|r| &r.overlap),
                micros_per_request: mean(|r| &r.micros),
                lists: per_request.iter().map(|r| r.lists[p].clone()).collect(),
            }
        })
        .collect();
    let oracle = inputs.world.zip(oracle_mean).map(|(world, mean)| {
        let n = inputs.logs.first().map_or(0, |r| r.candidates.len());
        let method = if search::permutations(n, world.config.slots)
            <= u128::from(world.config.oracle_exhaustive_limit)
        {
            sim::OracleMethod::Exhaustive
        } else {
            sim::OracleMethod::Beam(world.config.oracle_beam_width)
        };
        OracleSummary {
            method: method.to_string(),
            mean_utility: mean,
        }
    });
    let evaluator = match inputs.evaluator {
        Some(e) => Some(evaluator_report(inputs, e)?),
        None => None,
    };
    Ok(EvalReport {
        objective: inputs.objective,
        requests: inputs.logs.len(),
        slots,
        oracle,
        policies,
        evaluator,
    })
}

fn evaluate_request(
    inputs: &EvalInputs<'_>,
    i: usize,
    request: &LoggedRequest,
) -> anyhow::Result<PerRequest> {
    let truth = inputs
        .world
        .map(|w| w.truth(request, inputs.objective))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let by_clicks = truth.as_ref().map(|t| t.with_objective(Objective::CLICKS));
    let by_value = truth.as_ref().map(|t| t.with_objective(Objective::VALUE));
    let scorer = inputs.evaluator.map(|e| e.scorer(request)).transpose()?;
    let k = inputs
        .world
        .map_or(request.exposed.len(), |w| w.config.slots);
    let oracle = truth
        .as_ref()
        .map(|t| sim::oracle(t, &inputs.world.expect("truth implies a world").config).0);
    let cx = RequestContext {
        request,
        k,
        truth: truth.as_ref(),
        scorer: scorer.as_ref(),
        seed: inputs.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    let clicked = clicked_candidates(request);
    let relevance: Vec<f64> = clicked.iter().map(|&c| f64::from(u8::from(c))).collect();
    let mut out = PerRequest {
        utilities: Vec::new(),
        clicks: Vec::new(),
        true_values: Vec::new(),
        values: Vec::new(),
        ndcg: Vec::new(),
        map: Vec::new(),
        same_slot: Vec::new(),
        overlap: Vec::new(),
        micros: Vec::new(),
        lists: Vec::new(),
        oracle: oracle.as_ref().map(|o| o.value),
    };
    let upstream = request.upstream_list(k);
    for policy in inputs.policies {
        let started = std::time::Instant::now();
        let list = match (policy, &oracle) {
            (Policy::Oracle, Some(o)) => o.list.clone(),
            _ => policy.rank(&cx).map_err(anyhow::Error::msg)?,
        };
        out.micros.push(started.elapsed().as_secs_f64() * 1e6);
        let true_value = |t: &Option<Truth<'_>>| t.as_ref().map(|t| search::value(t, &list));
        out.utilities.push(true_value(&truth));
        out.clicks.push(true_value(&by_clicks));
        out.true_values.push(true_value(&by_value));
        out.values.push(
            scorer
                .as_ref()
                .map(|s: &EnsembleScorer| search::value(s, &list)),
        );
        let depth = request.exposed.len();
        out.ndcg.push(metrics::ndcg_at(&list, &relevance, depth));
        out.map
            .push(metrics::average_precision_at(&list, &clicked, depth));
        let slots = list.len().max(1) as f64;
        let same = list.iter().zip(&upstream).filter(|(a, b)| a == b).count();
        let shared = list.iter().filter(|a| upstream.contains(a)).count();
        out.same_slot.push(same as f64 / slots);
        out.overlap.push(shared as f64 / slots);
        out.lists.push(list);
    }
    Ok(out)
}

/// Per candidate: was it shown and clicked in the log.
fn clicked_candidates(request: &LoggedRequest) -> Vec<bool> {
    let mut clicked = vec![false; request.candidates.len()];
    for (&a, &c) in request.exposed.iter().zip(&request.clicks) {
        clicked[a] |= c;
    }
    clicked
}

/// Per-slot diagnostics of the first member; the rank correlation of the searched value.
fn evaluator_report(
    inputs: &EvalInputs<'_>,
    ensemble: &Ensemble,
) -> anyhow::Result<EvaluatorReport> {
    let evaluator = ensemble.first();
    let lists: Vec<ListRef<'_>> = inputs.logs.iter().map(ListRef::logged).collect();
    let predicted: Vec<f64> = evaluator
        .slot_probabilities(&lists)?
        .into_iter()
        .flatten()
        .map(f64::from)
        .collect();
    let labels: Vec<bool> = inputs
        .logs
        .iter()
        .flat_map(|r| r.clicks.iter().copied())
        .collect();
    // The best constant in hindsight: the held-out click rate itself.
    let base = labels.iter().filter(|&&l| l).count() as f64 / labels.len().max(1) as f64;
    let bce = |p: f64, y: bool| {
        let p = p.clamp(1e-7, 1.0 - 1e-7);
        -(if y { p.ln() } else { (1.0 - p).ln() })
    };
    let n = labels.len().max(1) as f64;
    let held_out_loss = predicted
        .iter()
        .zip(&labels)
        .map(|(&p, &y)| bce(p, y))
        .sum::<f64>()
        / n;
    let constant_loss = labels.iter().map(|&y| bce(base, y)).sum::<f64>() / n;
    let rank_correlation = inputs
        .world
        .map(|world| rank_correlation(inputs, world, ensemble))
        .transpose()?;
    Ok(EvaluatorReport {
        auc: metrics::auc(&predicted, &labels),
        held_out_loss,
        constant_loss,
        calibration: metrics::calibration(&predicted, &labels, 10),
        rank_correlation,
    })
}

fn rank_correlation(
    inputs: &EvalInputs<'_>,
    world: &World,
    evaluator: &Ensemble,
) -> anyhow::Result<RankCorrelation> {
    let requests = &inputs.logs[..inputs.correlation_requests.min(inputs.logs.len())];
    let pairs: Vec<Vec<(f64, f64)>> = requests
        .par_iter()
        .enumerate()
        .map(|(i, request)| {
            let truth = world
                .truth(request, inputs.objective)
                .map_err(anyhow::Error::msg)?;
            let scorer = evaluator.scorer(request)?;
            let mut rng = StdRng::seed_from_u64(inputs.seed.wrapping_add(i as u64));
            let n = request.candidates.len();
            let k = world.config.slots.min(n);
            Ok((0..inputs.correlation_lists)
                .map(|_| {
                    let list = index::sample(&mut rng, n, k).into_vec();
                    (search::value(&scorer, &list), search::value(&truth, &list))
                })
                .collect())
        })
        .collect::<anyhow::Result<_>>()?;
    let within: Vec<f64> = pairs
        .iter()
        .filter_map(|p| {
            let (v, u): (Vec<f64>, Vec<f64>) = p.iter().copied().unzip();
            metrics::spearman(&v, &u)
        })
        .collect();
    let (v, u): (Vec<f64>, Vec<f64>) = pairs.into_iter().flatten().unzip();
    Ok(RankCorrelation {
        requests: requests.len(),
        lists_per_request: inputs.correlation_lists,
        pooled: metrics::spearman(&v, &u),
        within_request: (!within.is_empty()).then(|| metrics::mean_std(&within).0),
    })
}

/// The report as a fixed-width table for people.
pub fn table(report: &EvalReport) -> String {
    let fmt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    let mut out = format!(
        "{} held-out requests; objective {}",
        report.requests, report.objective
    );
    if let Some(o) = &report.oracle {
        out += &format!("; oracle ({}) mean utility {:.4}", o.method, o.mean_utility);
    }
    out += "\n\n";
    out += &format!(
        "{:<26} {:>16} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10}\n",
        "policy",
        "true utility",
        "% oracle",
        "clicks",
        "value",
        "V(list)",
        "NDCG@K",
        "MAP@K",
        "µs/req"
    );
    for p in &report.policies {
        let utility = match (p.true_utility, p.true_utility_stderr) {
            (Some(u), Some(e)) => format!("{u:.4} ± {e:.4}"),
            _ => "-".into(),
        };
        out += &format!(
            "{:<26} {:>16} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10.1}\n",
            p.name,
            utility,
            fmt(p.percent_of_oracle, 1),
            fmt(p.true_clicks, 3),
            fmt(p.true_value, 2),
            fmt(p.evaluator_value, 4),
            fmt(p.ndcg_at_k, 4),
            fmt(p.map_at_k, 4),
            p.micros_per_request
        );
    }
    if let Some(e) = &report.evaluator {
        out += &format!(
            "\nevaluator: per-slot click AUC {}, held-out BCE {:.4} (constant {:.4}), \
             ECE {:.4} (mean predicted {:.4}, observed {:.4})\n",
            fmt(e.auc, 4),
            e.held_out_loss,
            e.constant_loss,
            e.calibration.ece,
            e.calibration.mean_predicted,
            e.calibration.observed_rate
        );
        if let Some(r) = &e.rank_correlation {
            out += &format!(
                "evaluator: Spearman(V, U) over {} random lists for each of {} requests: \
                 within a request {}, pooled {}\n",
                r.lists_per_request,
                r.requests,
                fmt(r.within_request, 3),
                fmt(r.pooled, 3)
            );
        }
    }
    out
}
