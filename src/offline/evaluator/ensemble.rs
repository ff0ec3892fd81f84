//! Evaluators trained with different seeds, searched on a pessimistic value. Beam search
//! finds the lists one evaluator over-values; where the members disagree, their spread
//! says the estimate is not to be trusted. A list's value is the members' mean minus
//! `pessimism` times their standard deviation, so search prefers lists the evaluators
//! agree are good, and the soft targets mined from it inherit the caution. A slot's gain
//! is what it adds to that value (the prefix remembers each member's value so far), so the
//! gains still sum to the list's value and search works unchanged.
//!
//! Members that see the items above a slot agree on what they share: list effects the logs
//! never showed. So each member can be blended with one pointwise evaluator
//! (`blend.rs`), weighed by how well the blend predicts held-out logged clicks.

use super::{Evaluator, Prefix, RequestScorer};
use crate::offline::logs::LoggedRequest;
use crate::offline::search::{self, ListModel};

pub struct Ensemble {
    pub members: Vec<Evaluator>,
    /// `c` of `mean − c·sd`; 0 searches the mean.
    pub pessimism: f64,
    /// Blended into every member; none: the members as they are.
    pub pointwise: Option<PointwiseBlend>,
}

/// A pointwise evaluator and the members' weight `w` in `w·member + (1 − w)·pointwise`.
pub struct PointwiseBlend {
    pub evaluator: Evaluator,
    pub list_weight: f64,
}

impl Ensemble {
    pub fn new(members: Vec<Evaluator>, pessimism: f64) -> anyhow::Result<Ensemble> {
        let first = members
            .first()
            .ok_or_else(|| anyhow::anyhow!("an empty ensemble"))?;
        let objective = first.spec.objective;
        anyhow::ensure!(
            members.iter().all(|m| m.spec.objective == objective),
            "the ensemble's evaluators were trained for different objectives"
        );
        anyhow::ensure!(
            pessimism.is_finite() && pessimism >= 0.0,
            "pessimism must be finite and >= 0, not {pessimism}"
        );
        Ok(Ensemble {
            members,
            pessimism,
            pointwise: None,
        })
    }

    /// Blends every member with `pointwise`: `list_weight·member + (1 − list_weight)·it`.
    pub fn blended(mut self, pointwise: Evaluator, list_weight: f64) -> anyhow::Result<Ensemble> {
        anyhow::ensure!(
            pointwise.spec.objective == self.first().spec.objective,
            "the pointwise evaluator was trained for another objective than the ensemble"
        );
        anyhow::ensure!(
            !pointwise.spec.dims.interactions,
            "the evaluator to blend in sees the items above a slot: train it with \
             `train-evaluator --pointwise`"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&list_weight),
            "the list weight must lie in [0, 1], not {list_weight}"
        );
        self.pointwise = Some(PointwiseBlend {
            evaluator: pointwise,
            list_weight,
        });
        Ok(self)
    }

    /// One evaluator, searched as it is.
    pub fn single(evaluator: Evaluator) -> Ensemble {
        Ensemble {
            members: vec![evaluator],
            pessimism: 0.0,
            pointwise: None,
        }
    }

    /// The first member: the one whose feature map and diagnostics stand for all.
    pub fn first(&self) -> &Evaluator {
        &self.members[0]
    }

    pub fn scorer(&self, request: &LoggedRequest) -> anyhow::Result<EnsembleScorer> {
        let pointwise = match &self.pointwise {
            None => None,
            Some(p) => Some(PointwiseTable {
                gains: p
                    .evaluator
                    .scorer(request)?
                    .pointwise_gains()
                    .ok_or_else(|| {
                        anyhow::anyhow!("the blended evaluator sees the items above a slot")
                    })?,
                weight: p.list_weight,
            }),
        };
        Ok(EnsembleScorer {
            members: self
                .members
                .iter()
                .map(|m| m.scorer(request))
                .collect::<anyhow::Result<_>>()?,
            pessimism: self.pessimism,
            pointwise,
        })
    }
}

/// One request under every member.
pub struct EnsembleScorer {
    members: Vec<RequestScorer>,
    pessimism: f64,
    pointwise: Option<PointwiseTable>,
}

/// The pointwise evaluator on one request: nothing above a slot changes its gains, so they
/// are computed once per (slot, candidate), not per prefix. With the members' weight.
struct PointwiseTable {
    gains: Vec<Vec<f64>>,
    weight: f64,
}

impl PointwiseTable {
    /// Slots past the longest logged list reuse the last position, as the scorer does.
    fn gain(&self, slot: usize, a: usize) -> f64 {
        self.gains[slot.min(self.gains.len() - 1)][a]
    }

    /// Summed in list order, as `search::value` sums a scorer's gains.
    fn value(&self, list: &[usize]) -> f64 {
        list.iter()
            .enumerate()
            .fold(0.0, |total, (t, &a)| total + self.gain(t, a))
    }
}

impl EnsembleScorer {
    /// Each member's (blended) gain of `a` after `state`.
    pub fn member_gains(&self, state: &EnsemblePrefix, a: usize) -> Vec<f64> {
        self.blended_gains(state, a).collect()
    }

    fn blended_gains<'a>(
        &'a self,
        state: &'a EnsemblePrefix,
        a: usize,
    ) -> impl Iterator<Item = f64> + 'a {
        let slot = state.slot();
        let own = self
            .members
            .iter()
            .zip(&state.members)
            .map(move |(m, s)| m.gain(s, a));
        self.blended(own, move |p| p.gain(slot, a))
    }

    /// Each of `own` (one per member) blended with the pointwise evaluator's figure:
    /// `w·own + (1 − w)·pointwise`, or `own` alone.
    fn blended<'a>(
        &self,
        own: impl Iterator<Item = f64> + 'a,
        pointwise: impl FnOnce(&PointwiseTable) -> f64,
    ) -> impl Iterator<Item = f64> + 'a {
        let rest = (self.pointwise.as_ref()).map(|p| (p.weight, (1.0 - p.weight) * pointwise(p)));
        own.map(move |g| rest.map_or(g, |(w, rest)| w * g + rest))
    }
}

/// `mean − c·sd` of `x`, with the population spread. In one pass (Welford's update): a
/// list's values may be large beside their spread (GMV in cents), where `E[x²] − E[x]²`
/// cancels to noise.
fn pessimistic(x: impl IntoIterator<Item = f64>, c: f64) -> f64 {
    let (mut n, mut mean, mut squares) = (0.0, 0.0, 0.0);
    for x in x {
        n += 1.0;
        let delta = x - mean;
        mean += delta / n;
        squares += delta * (x - mean);
    }
    mean - c * (squares / n).max(0.0).sqrt()
}

/// What the ensemble remembers of a prefix: each member's state and (blended) value.
#[derive(Clone)]
pub struct EnsemblePrefix {
    members: Vec<Prefix>,
    values: Vec<f64>,
    /// `pessimistic(values)`: what the prefix is worth.
    value: f64,
}

impl EnsemblePrefix {
    /// The slot the next item goes into.
    fn slot(&self) -> usize {
        self.members.first().map_or(0, |s| s.items.len())
    }
}

impl ListModel for EnsembleScorer {
    type State = EnsemblePrefix;

    fn candidates(&self) -> usize {
        self.members[0].candidates()
    }

    fn initial(&self) -> EnsemblePrefix {
        EnsemblePrefix {
            members: vec![Prefix::default(); self.members.len()],
            values: vec![0.0; self.members.len()],
            value: 0.0,
        }
    }

    /// What `a` adds to the prefix's pessimistic value: `mean − pessimism·sd` of the
    /// members' (blended) values of the longer prefix, less that of the prefix. Not the
    /// slot's own spread: the spread of a sum is at most the sum of the spreads, and a
    /// per-slot penalty counts a member that over-values every slot K times over.
    /// Called for every candidate of every prefix while mining: one pass, no allocation.
    fn gain(&self, state: &EnsemblePrefix, a: usize) -> f64 {
        let gains = self.blended_gains(state, a);
        if self.pessimism == 0.0 {
            return pessimistic(gains, 0.0); // the mean gain, exactly
        }
        let values = state.values.iter().zip(gains).map(|(v, g)| v + g);
        pessimistic(values, self.pessimism) - state.value
    }

    /// Each member's value grows by its (blended) gain of `a`, which its push computes.
    fn push(&self, state: &mut EnsemblePrefix, a: usize) {
        let slot = state.slot();
        let own = (self.members.iter())
            .zip(&mut state.members)
            .map(|(member, prefix)| member.push_scored(prefix, a));
        let gains = self.blended(own, |p| p.gain(slot, a));
        for (value, gain) in state.values.iter_mut().zip(gains) {
            *value += gain;
        }
        state.value = pessimistic(state.values.iter().copied(), self.pessimism);
    }

    /// The members' (blended) mean difference minus `pessimism` times its spread:
    /// departing from the incumbent needs evaluators that agree it pays, not one that
    /// over-values a list.
    fn advantage(&self, list: &[usize], incumbent: &[usize]) -> f64 {
        let own =
            (self.members.iter()).map(|m| search::value(m, list) - search::value(m, incumbent));
        let d = self.blended(own, |p| p.value(list) - p.value(incumbent));
        pessimistic(d, self.pessimism)
    }
}

#[cfg(test)]
mod tests {
    use super::pessimistic;

    #[test]
    fn the_spread_of_large_values_is_not_cancelled_away() {
        // Two lists' values in cents: mean 1e9 + 2, population sd 1.
        let p = pessimistic([1e9 + 1.0, 1e9 + 3.0], 1.0);
        assert!((p - (1e9 + 1.0)).abs() < 1e-6, "{p}");
        assert_eq!(pessimistic([2.5], 3.0), 2.5);
    }
}
