//! An evaluator that sees the items above a slot, blended with a pointwise one (blind to
//! them) by the weight under which held-out logged clicks are most likely: list effects
//! count as far as the logs show them. A list-aware evaluator can credit a list with
//! effects between its items that the logs never showed, and search seeks exactly those;
//! where the logs show no such effects the pointwise evaluator predicts as well and the
//! blend leans on it. The gate's judges and the mining teacher both use it
//! (docs/offline.md, "The publish gate" and "Mining").

use rayon::prelude::*;

use super::Evaluator;
use crate::offline::logs::LoggedRequest;
use crate::offline::search::ListModel;

/// The list-aware evaluator's weight in the blend that best predicts the clicks logged on
/// `requests` (which neither evaluator trained on).
pub fn fit_list_weight(
    requests: &[LoggedRequest],
    list: &Evaluator,
    pointwise: &Evaluator,
) -> anyhow::Result<f64> {
    Ok(best_weight(&logged_slots(requests, list, Some(pointwise))?))
}

/// Per logged slot of every request: (clicked, the list-aware evaluator's click
/// probability, the pointwise one's; without a pointwise one, the list-aware one's again).
pub fn logged_slots(
    requests: &[LoggedRequest],
    list: &Evaluator,
    pointwise: Option<&Evaluator>,
) -> anyhow::Result<Vec<(bool, f64, f64)>> {
    let probabilities = |evaluator: &Evaluator, request: &LoggedRequest| {
        let scorer = evaluator.scorer(request)?;
        let mut prefix = scorer.initial();
        let mut p = Vec::with_capacity(request.exposed.len());
        for &a in &request.exposed {
            p.push(f64::from(scorer.click_probability(&prefix, a)));
            scorer.push(&mut prefix, a);
        }
        anyhow::Ok(p)
    };
    let per_request: Vec<Vec<(bool, f64, f64)>> = requests
        .par_iter()
        .map(|request| {
            let list = probabilities(list, request)?;
            let point = match pointwise {
                Some(pointwise) => probabilities(pointwise, request)?,
                None => list.clone(),
            };
            Ok(request
                .clicks
                .iter()
                .zip(list.into_iter().zip(point))
                .map(|(&c, (l, p))| (c, l, p))
                .collect())
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(per_request.concat())
}

/// Mean log loss of the logged clicks under `w·list + (1 − w)·pointwise`.
pub fn mixture_loss(slots: &[(bool, f64, f64)], w: f64) -> f64 {
    let loss: f64 = slots
        .iter()
        .map(|&(click, l, p)| {
            let q = (w * l + (1.0 - w) * p).clamp(1e-6, 1.0 - 1e-6);
            -if click { q.ln() } else { (1.0 - q).ln() }
        })
        .sum();
    loss / slots.len().max(1) as f64
}

/// The list-aware evaluator's weight, in steps of 0.01, whose mixture best predicts the
/// held-out logged clicks.
pub fn best_weight(slots: &[(bool, f64, f64)]) -> f64 {
    (0..=100)
        .map(|k| f64::from(k) / 100.0)
        .min_by(|&a, &b| mixture_loss(slots, a).total_cmp(&mixture_loss(slots, b)))
        .unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Slots whose clicks follow `truth`; the list-aware family predicts `list`, the
    /// pointwise one `pointwise`.
    fn slots(
        truth: impl Fn(usize) -> f64,
        list: impl Fn(usize) -> f64,
        pointwise: impl Fn(usize) -> f64,
    ) -> Vec<(bool, f64, f64)> {
        let mut rng = StdRng::seed_from_u64(3);
        (0..20_000)
            .map(|i| (rng.random_bool(truth(i)), list(i), pointwise(i)))
            .collect()
    }

    #[test]
    fn the_blend_weighs_the_evaluators_by_how_well_they_predict_clicks() {
        // Clicks depend on something only the list-aware evaluator sees: it gets the weight.
        let effect = |i: usize| if i.is_multiple_of(2) { 0.6 } else { 0.2 };
        let s = slots(effect, effect, |_| 0.4);
        assert!(best_weight(&s) > 0.9, "{}", best_weight(&s));
        // They invent an effect the clicks do not show: the pointwise one gets it.
        let s = slots(|_| 0.4, effect, |_| 0.4);
        assert!(best_weight(&s) < 0.1, "{}", best_weight(&s));
        // Each half right: a mixture beats both.
        let half = |i: usize| if i % 4 < 2 { 0.6 } else { 0.2 };
        let s = slots(|i| 0.5 * effect(i) + 0.5 * half(i), effect, half);
        let w = best_weight(&s);
        assert!((0.3..0.7).contains(&w), "{w}");
        assert!(mixture_loss(&s, w) < mixture_loss(&s, 0.0).min(mixture_loss(&s, 1.0)));
    }
}
