//! The publish gate: is DeGRe ahead of what the user runs today? On user logs there is no
//! true utility, and the evaluator the generator was distilled from is the worst judge of
//! it (search exploited its errors). So *judges* — evaluators trained on bootstrap samples
//! of requests disjoint from the ones mined, which the generator never fit — score every
//! method's lists on the held-out requests, and DeGRe is compared with the `ranking_score`
//! order request by request (paired). The 95% interval counts both the spread over
//! requests and the disagreement between judges (a judge's own error). `--publish` refuses
//! unless the interval lies above zero, every judge agrees, and the judges reproduce what
//! the logged lists actually earned (a judge that cannot value lists it has seen cannot
//! value new ones).
//!
//! Judges that see the items above a slot can credit a list with effects between its items
//! that the logs never showed, and a generator distilled from evaluators of the same kind
//! seeks exactly those: on a world without list effects they put DeGRe ahead of an optimal
//! ranking stage. So the panel pairs every such judge with a *pointwise* one (trained on
//! the same sample, blind to the items above), and values lists with `w·list +
//! (1 − w)·pointwise`, where `w` is the mixture of the pair's click probabilities under
//! which the held-out logged clicks are most likely. List effects count as far as the logs
//! show them (docs/offline.md, "The publish gate").

use rayon::prelude::*;
use serde::Serialize;

use crate::offline::evaluator::blend::{best_weight, logged_slots, mixture_loss};
use crate::offline::evaluator::Evaluator;
use crate::offline::logs::LoggedRequest;
use crate::offline::metrics::mean_std;
use crate::offline::objective::Objective;
use crate::offline::policy::{Policy, RequestContext};
use crate::offline::search;

/// The method every other is compared with, the incumbent the gate requires it to beat,
/// and the logged policy whose actual reward checks the judges.
pub const CANDIDATE: &str = "degre";
pub const INCUMBENT: &str = "upstream";
pub const LOGGED: &str = "logged";

/// Two-sided 95% normal quantile.
const Z95: f64 = 1.959_964;

/// The judges' estimate of the logged lists' reward must be within this factor of what
/// they earned.
const CALIBRATION_TOLERANCE: f64 = 1.25;

#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub objective: Objective,
    pub requests: usize,
    /// Mean reward the logged lists actually earned, and the judge's estimate of them: how
    /// well the judge knows lists like the logged ones.
    pub logged_reward: f64,
    pub judged_logged: f64,
    pub methods: Vec<JudgedMethod>,
    /// `degre − upstream` under the judge: mean and the half-width of its 95% interval.
    pub degre_vs_incumbent: (f64, f64),
    /// `degre − upstream` under each judge alone.
    pub per_judge: Vec<f64>,
    /// How the list-aware and the pointwise judges were mixed.
    pub fit: PanelFit,
    /// The interval lies above zero, every judge agrees and the judges are calibrated.
    pub passed: bool,
    /// Why not, when it did not pass.
    pub refusal: Option<String>,
}

/// The panel's mixtures and how well they predict the held-out logged clicks (mean log
/// loss per logged slot, averaged over judge pairs).
#[derive(Debug, Clone, Serialize)]
pub struct PanelFit {
    /// Per judge pair: the list-aware judge's weight; the rest is the pointwise judge's
    /// (1 without pointwise judges).
    pub list_weights: Vec<f64>,
    pub list_log_loss: f64,
    pub pointwise_log_loss: Option<f64>,
    pub log_loss: f64,
}

/// One method under the judge.
#[derive(Debug, Clone, Serialize)]
pub struct JudgedMethod {
    pub name: String,
    /// Mean judged value of its lists per request.
    pub judged_value: f64,
    /// `degre − method`, paired by request: mean and 95% half-width (None for DeGRe).
    pub degre_minus: Option<(f64, f64)>,
}

/// The gate's judges: evaluators that see the items above a slot and, paired with them by
/// index, pointwise ones (or none).
pub struct Panel {
    pub judges: Vec<Evaluator>,
    pub pointwise: Vec<Evaluator>,
}

/// Scores `policies` (which must include `degre`, `upstream` and `logged`) on `test` with
/// the panel: each judge mixed with its pointwise judge (without them: the judges alone).
/// `slots`: list length, or each request's logged length when `None`.
/// `min_gain`: the share of upstream's judged value DeGRe must be ahead by.
pub fn judge(
    panel: &Panel,
    test: &[LoggedRequest],
    policies: &[Policy],
    slots: Option<usize>,
    min_gain: f64,
) -> anyhow::Result<GateReport> {
    let (judges, pointwise) = (&panel.judges, &panel.pointwise);
    anyhow::ensure!(!judges.is_empty(), "the gate needs a judge");
    let names: Vec<String> = policies.iter().map(Policy::name).collect();
    let position = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| anyhow::anyhow!("the gate needs the {name:?} method"))
    };
    let (candidate, incumbent, logged) = (
        position(CANDIDATE)?,
        position(INCUMBENT)?,
        position(LOGGED)?,
    );
    anyhow::ensure!(
        test.len() >= 2,
        "the gate needs at least 2 held-out requests"
    );
    let objective = judges[0].spec.objective;
    anyhow::ensure!(
        judges
            .iter()
            .chain(pointwise)
            .all(|j| j.spec.objective == objective),
        "the judges were trained for different objectives"
    );
    anyhow::ensure!(
        pointwise.is_empty() || pointwise.len() == judges.len(),
        "{} pointwise judges for {} judges",
        pointwise.len(),
        judges.len()
    );
    // Each judge pair picks its own weight: the choice is part of the estimate, so it is
    // bootstrapped with the rest of it.
    let pairs = (0..judges.len())
        .map(|j| {
            let clicks = logged_slots(test, &judges[j], pointwise.get(j))?;
            let weight = if pointwise.is_empty() {
                1.0
            } else {
                best_weight(&clicks)
            };
            Ok((weight, clicks))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mean_loss = |w: Option<f64>| {
        pairs
            .iter()
            .map(|(weight, clicks)| mixture_loss(clicks, w.unwrap_or(*weight)))
            .sum::<f64>()
            / pairs.len() as f64
    };
    let fit = PanelFit {
        list_weights: pairs.iter().map(|(w, _)| *w).collect(),
        list_log_loss: mean_loss(Some(1.0)),
        pointwise_log_loss: (!pointwise.is_empty()).then(|| mean_loss(Some(0.0))),
        log_loss: mean_loss(None),
    };
    // values[i][j][p]: request i, judge j, method p.
    let values: Vec<Vec<Vec<f64>>> = test
        .par_iter()
        .enumerate()
        .map(|(i, request)| {
            let cx = RequestContext {
                request,
                k: slots.unwrap_or(request.exposed.len()),
                truth: None,
                scorer: None,
                seed: i as u64,
            };
            let lists = policies
                .iter()
                .map(|p| p.rank(&cx).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let values_of = |judge: &Evaluator| -> anyhow::Result<Vec<f64>> {
                let scorer = judge.scorer(request)?;
                Ok(lists.iter().map(|l| search::value(&scorer, l)).collect())
            };
            judges
                .iter()
                .enumerate()
                .map(|(j, judge)| {
                    let list = values_of(judge)?;
                    match pointwise.get(j) {
                        None => Ok(list),
                        Some(p) => Ok(list
                            .iter()
                            .zip(values_of(p)?)
                            .map(|(l, p)| {
                                let w = fit.list_weights[j];
                                w * l + (1.0 - w) * p
                            })
                            .collect()),
                    }
                })
                .collect()
        })
        .collect::<anyhow::Result<_>>()?;
    let mean_over_judges =
        |v: &[Vec<f64>], p: usize| v.iter().map(|judge| judge[p]).sum::<f64>() / v.len() as f64;
    let paired = |p: usize| -> (f64, f64) {
        // Spread over requests of the judges' mean difference, plus the judges' own
        // disagreement on the mean.
        let d: Vec<f64> = values
            .iter()
            .map(|v| mean_over_judges(v, candidate) - mean_over_judges(v, p))
            .collect();
        let (mean, sd_requests) = mean_std(&d);
        let per_judge = judge_means(&values, candidate, p);
        let sd_judges = if per_judge.len() > 1 {
            mean_std(&per_judge).1
        } else {
            0.0
        };
        let variance =
            sd_requests.powi(2) / d.len() as f64 + sd_judges.powi(2) / per_judge.len() as f64;
        (mean, Z95 * variance.sqrt())
    };
    let n = test.len() as f64;
    let methods = names
        .iter()
        .enumerate()
        .map(|(p, name)| JudgedMethod {
            name: name.clone(),
            judged_value: values.iter().map(|v| mean_over_judges(v, p)).sum::<f64>() / n,
            degre_minus: (p != candidate).then(|| paired(p)),
        })
        .collect();
    let degre_vs_incumbent = paired(incumbent);
    let per_judge = judge_means(&values, candidate, incumbent);
    let logged_reward = test
        .iter()
        .map(|r| r.logged_reward(&objective))
        .sum::<f64>()
        / n;
    let judged_logged = values
        .iter()
        .map(|v| mean_over_judges(v, logged))
        .sum::<f64>()
        / n;
    let ratio = judged_logged / logged_reward;
    let judged_upstream = values
        .iter()
        .map(|v| mean_over_judges(v, incumbent))
        .sum::<f64>()
        / n;
    let required = min_gain * judged_upstream.abs();
    let refusal = if !(1.0 / CALIBRATION_TOLERANCE..=CALIBRATION_TOLERANCE).contains(&ratio) {
        Some(format!(
            "the judges value the logged lists at {judged_logged:.4} but they earned \
             {logged_reward:.4}: too far off to trust on new lists (more or cleaner logs, or \
             a larger evaluator, would help)"
        ))
    } else if per_judge.iter().any(|&d| d <= 0.0) {
        Some(format!(
            "the judges disagree: degre − upstream per judge {per_judge:.4?}"
        ))
    } else if degre_vs_incumbent.0 - degre_vs_incumbent.1 <= required {
        Some(format!(
            "the 95% interval of degre − upstream does not lie above {required:.4} \
             ({:.1}% of upstream's judged value, `gate_min_gain`)",
            100.0 * min_gain
        ))
    } else {
        None
    };
    Ok(GateReport {
        objective,
        requests: test.len(),
        logged_reward,
        judged_logged,
        methods,
        degre_vs_incumbent,
        per_judge,
        fit,
        passed: refusal.is_none(),
        refusal,
    })
}

/// Per judge: the mean over requests of method `a` minus method `b`.
fn judge_means(values: &[Vec<Vec<f64>>], a: usize, b: usize) -> Vec<f64> {
    let judges = values.first().map_or(0, Vec::len);
    (0..judges)
        .map(|j| values.iter().map(|v| v[j][a] - v[j][b]).sum::<f64>() / values.len() as f64)
        .collect()
}

impl GateReport {
    /// The judged value of one method's lists, if the gate scored it.
    pub fn judged_value(&self, name: &str) -> Option<f64> {
        self.methods
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.judged_value)
    }

    /// One line for people: the verdict and its figures.
    pub fn verdict(&self) -> String {
        let (mean, half) = self.degre_vs_incumbent;
        format!(
            "publish gate: degre − upstream = {mean:+.4} ± {half:.4} ({}, 95% interval over \
             {} held-out requests and {} judges the generator never fit): {}",
            self.objective,
            self.requests,
            self.per_judge.len(),
            match &self.refusal {
                None => "ahead".to_string(),
                Some(why) => format!("NOT shown ahead of the ranking stage's order: {why}"),
            }
        )
    }
}
