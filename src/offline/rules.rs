//! Business rules on simulated requests, for the evidence that enforcing them inside the
//! decoding pass beats fixing the model's list up afterwards, as a separate rule engine
//! does (docs/constraints.md, "Offline evidence"). Every request gets the same kind of
//! rules: the ranking stage's last candidate is a sponsored item pinned at slot [`PIN_SLOT`],
//! and [`CATEGORY_CAP`] limits items of one category in any window of slots.

use crate::offline::logs::LoggedRequest;
use crate::rerank::decode::{self, StepModel};
use crate::rerank::{Constraints, GroupCap, Rules};

/// DeGRe's method names in reports: the rules inside its decoding pass, and after it.
pub const INSIDE: &str = "degre-rules-inside";
pub const AFTER: &str = "degre-rules-after";

/// The sponsored item's slot (0-based).
pub const PIN_SLOT: u32 = 2;
/// At most 2 items of one category (candidate categorical feature 0) in any 4 slots.
pub const CATEGORY_CAP: GroupCap = GroupCap {
    feature: 0,
    max_count: 2,
    window: 4,
};

/// The request's rules and the slots they leave to fill, out of `slots`.
pub fn of(request: &LoggedRequest, slots: usize) -> Result<(Rules, usize), String> {
    let item_ids: Vec<String> = request
        .candidates
        .iter()
        .map(|c| c.item_id.clone())
        .collect();
    let by_score = request.upstream_list(item_ids.len());
    let pins = match by_score.last() {
        Some(&sponsored) if (PIN_SLOT as usize) < slots => {
            vec![(item_ids[sponsored].clone(), PIN_SLOT)]
        }
        _ => Vec::new(),
    };
    let constraints = Constraints {
        pins,
        group_caps: vec![CATEGORY_CAP],
        exclude_item_ids: Vec::new(),
    };
    let groups = |f: usize| {
        request
            .candidates
            .iter()
            .map(|c| c.features.categorical.get(f).copied())
            .collect()
    };
    Rules::new(&constraints, &item_ids, slots, groups).map_err(|e| e.to_string())
}

/// What a rule engine does with a model's list: walk the model's full unconstrained
/// ranking and, slot by slot, place the pinned item or the first one the rules allow.
pub fn applied_after(ranking: &[usize], rules: &Rules, slots: usize) -> Vec<usize> {
    let mut frozen = Frozen(vec![0.0; ranking.len()]);
    for (place, &c) in ranking.iter().enumerate() {
        frozen.0[c] = -(place as f32);
    }
    let picks = decode::greedy_with(&mut frozen, ranking.len(), slots, rules, false)
        .expect("fixed scores cannot fail");
    picks.iter().map(|p| p.index).collect()
}

/// Scores that never change: the order of a list ranked once.
struct Frozen(Vec<f32>);

impl StepModel for Frozen {
    type Error = std::convert::Infallible;

    fn next_logits(&mut self, _: Option<usize>) -> Result<&[f32], Self::Error> {
        Ok(&self.0)
    }
}
