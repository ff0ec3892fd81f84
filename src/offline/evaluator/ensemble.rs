//! Evaluators trained with different seeds, searched on a pessimistic value. Beam search
//! finds the lists one evaluator over-values; where the members disagree, their spread
//! says the estimate is not to be trusted. A slot's reward is the members' mean minus
//! `pessimism` times their standard deviation, so search prefers lists the evaluators
//! agree are good, and the soft targets mined from it inherit the caution.

use super::{Evaluator, Prefix, RequestScorer};
use crate::offline::logs::LoggedRequest;
use crate::offline::search::{self, ListModel};

pub struct Ensemble {
    pub members: Vec<Evaluator>,
    /// `c` of `mean − c·sd`; 0 searches the mean.
    pub pessimism: f64,
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
        Ok(Ensemble { members, pessimism })
    }

    /// One evaluator, searched as it is.
    pub fn single(evaluator: Evaluator) -> Ensemble {
        Ensemble {
            members: vec![evaluator],
            pessimism: 0.0,
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
        })
    }
}

/// One request under every member.
pub struct EnsembleScorer {
    members: Vec<RequestScorer>,
    pessimism: f64,
}

impl EnsembleScorer {
    /// Each member's gain of `a` after `state`.
    pub fn member_gains(&self, state: &[Prefix], a: usize) -> Vec<f64> {
        self.members
            .iter()
            .zip(state)
            .map(|(m, s)| m.gain(s, a))
            .collect()
    }
}

impl ListModel for EnsembleScorer {
    /// Each member's prefix state.
    type State = Vec<Prefix>;

    fn candidates(&self) -> usize {
        self.members[0].candidates()
    }

    fn initial(&self) -> Vec<Prefix> {
        vec![Prefix::default(); self.members.len()]
    }

    /// The members' mean gain minus `pessimism` times their (population) spread. Called
    /// for every candidate of every prefix while mining: one pass, no allocation.
    fn gain(&self, state: &Vec<Prefix>, a: usize) -> f64 {
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for (member, state) in self.members.iter().zip(state) {
            let g = member.gain(state, a);
            sum += g;
            sum_sq += g * g;
        }
        let n = self.members.len() as f64;
        let mean = sum / n;
        let variance = (sum_sq / n - mean * mean).max(0.0);
        mean - self.pessimism * variance.sqrt()
    }

    fn push(&self, state: &mut Vec<Prefix>, a: usize) {
        for (member, state) in self.members.iter().zip(state) {
            member.push(state, a);
        }
    }

    /// The members' mean difference minus `pessimism` times its spread: departing from
    /// the incumbent needs evaluators that agree it pays, not one that over-values a list.
    fn advantage(&self, list: &[usize], incumbent: &[usize]) -> f64 {
        let d: Vec<f64> = self
            .members
            .iter()
            .map(|m| search::value(m, list) - search::value(m, incumbent))
            .collect();
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let variance = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        mean - self.pessimism * variance.sqrt()
    }
}
