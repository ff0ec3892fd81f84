//! Evaluators trained with different seeds, searched on a pessimistic value. Beam search
//! finds the lists one evaluator over-values; where the members disagree, their spread
//! says the estimate is not to be trusted. A slot's reward is the members' mean minus
//! `pessimism` times their standard deviation, so search prefers lists the evaluators
//! agree are good, and the soft targets mined from it inherit the caution.
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
        Ok(EnsembleScorer {
            members: self
                .members
                .iter()
                .map(|m| m.scorer(request))
                .collect::<anyhow::Result<_>>()?,
            pessimism: self.pessimism,
            pointwise: self
                .pointwise
                .as_ref()
                .map(|p| anyhow::Ok((p.evaluator.scorer(request)?, p.list_weight)))
                .transpose()?,
        })
    }
}

/// One request under every member.
pub struct EnsembleScorer {
    members: Vec<RequestScorer>,
    pessimism: f64,
    /// The pointwise scorer and the members' weight.
    pointwise: Option<(RequestScorer, f64)>,
}

impl EnsembleScorer {
    /// Each member's (blended) gain of `a` after `state`.
    pub fn member_gains(&self, state: &[Prefix], a: usize) -> Vec<f64> {
        self.blended(|m, s| m.gain(s, a), state).collect()
    }

    /// `f` of every member, blended with `f` of the pointwise scorer:
    /// `w·f(member) + (1 − w)·f(pointwise)`. Its state is the last of `state`.
    fn blended<'a>(
        &'a self,
        f: impl Fn(&RequestScorer, &Prefix) -> f64 + 'a,
        state: &'a [Prefix],
    ) -> impl Iterator<Item = f64> + 'a {
        let rest = self
            .pointwise
            .as_ref()
            .map(|(p, w)| (*w, (1.0 - w) * f(p, &state[self.members.len()])));
        self.members.iter().zip(state).map(move |(m, s)| {
            let own = f(m, s);
            rest.map_or(own, |(w, rest)| w * own + rest)
        })
    }
}

/// `mean − c·sd` of `x`, with the population spread.
fn pessimistic(x: impl IntoIterator<Item = f64>, c: f64) -> f64 {
    let (mut n, mut sum, mut sum_sq) = (0.0, 0.0, 0.0);
    for x in x {
        n += 1.0;
        sum += x;
        sum_sq += x * x;
    }
    let mean = sum / n;
    let variance = (sum_sq / n - mean * mean).max(0.0);
    mean - c * variance.sqrt()
}

impl ListModel for EnsembleScorer {
    /// Each member's prefix state.
    type State = Vec<Prefix>;

    fn candidates(&self) -> usize {
        self.members[0].candidates()
    }

    fn initial(&self) -> Vec<Prefix> {
        let pointwise = usize::from(self.pointwise.is_some());
        vec![Prefix::default(); self.members.len() + pointwise]
    }

    /// The members' (blended) mean gain minus `pessimism` times their (population) spread.
    /// Called for every candidate of every prefix while mining: one pass, no allocation.
    fn gain(&self, state: &Vec<Prefix>, a: usize) -> f64 {
        pessimistic(self.blended(|m, s| m.gain(s, a), state), self.pessimism)
    }

    fn push(&self, state: &mut Vec<Prefix>, a: usize) {
        let scorers = self
            .members
            .iter()
            .chain(self.pointwise.as_ref().map(|p| &p.0));
        for (scorer, state) in scorers.zip(state) {
            scorer.push(state, a);
        }
    }

    /// The members' (blended) mean difference minus `pessimism` times its spread:
    /// departing from the incumbent needs evaluators that agree it pays, not one that
    /// over-values a list.
    fn advantage(&self, list: &[usize], incumbent: &[usize]) -> f64 {
        let unused = self.initial();
        let d = self.blended(
            |m, _| search::value(m, list) - search::value(m, incumbent),
            &unused,
        );
        pessimistic(d, self.pessimism)
    }
}
