//! Business rules enforced inside the greedy pass: pinned items at fixed slots, excluded
//! items, and caps on how many items of one group (e.g. one seller or category) any window
//! of consecutive slots may hold. At each slot the decoder only chooses among the items the
//! rules allow, so the model optimises the rest of the list around them (docs/constraints.md).

use super::InvalidField;

/// A request's constraints as sent, before they are checked against its candidates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    pub pins: Vec<(String, u32)>,
    pub group_caps: Vec<GroupCap>,
    pub exclude_item_ids: Vec<String>,
}

/// At most `max_count` items with the same id of candidate categorical feature `feature`
/// in any `window` consecutive slots; `window` 0 is the whole list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCap {
    pub feature: u32,
    pub max_count: u32,
    pub window: u32,
}

/// Checked constraints, by candidate index. The default has none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// The candidate pinned at each slot (empty without pins).
    pinned_at: Vec<Option<usize>>,
    /// Candidates that may not be chosen freely: excluded, or pinned to another slot.
    barred: Vec<bool>,
    caps: Vec<Cap>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cap {
    /// Each candidate's group: its id of the capped feature, as the client sent it.
    groups: Vec<i64>,
    max: usize,
    /// Window length in slots (the whole list for a window of 0).
    window: usize,
}

impl Cap {
    /// How many items of each group the slots of `window` hold.
    fn counts(&self, window: &[Option<usize>]) -> Vec<(i64, usize)> {
        let mut counts: Vec<(i64, usize)> = Vec::new();
        for &c in window.iter().flatten() {
            let g = self.groups[c];
            match counts.iter_mut().find(|(group, _)| *group == g) {
                Some((_, count)) => *count += 1,
                None => counts.push((g, 1)),
            }
        }
        counts
    }
}

impl Rules {
    /// Checks `constraints` against the request's `item_ids`, and returns the rules with
    /// the slots to fill: `requested`, at most the candidates left after the exclusions.
    /// `groups(feature)` gives every candidate's raw id of a candidate categorical feature,
    /// or `None` if the schema has no such feature.
    pub fn new(
        constraints: &Constraints,
        item_ids: &[String],
        requested: usize,
        mut groups: impl FnMut(usize) -> Option<Vec<i64>>,
    ) -> Result<(Rules, usize), InvalidField> {
        let n = item_ids.len();
        let index: std::collections::HashMap<&str, usize> = item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let find = |field: String, id: &str| {
            index.get(id).copied().ok_or_else(|| {
                InvalidField::new(
                    field,
                    format!("unknown item id {:?}", super::input::clip(id)),
                )
            })
        };
        let mut pinned_by = vec![None; n];
        let mut pins = Vec::with_capacity(constraints.pins.len());
        for (i, (item_id, slot)) in constraints.pins.iter().enumerate() {
            let candidate = find(format!("constraints.pins[{i}].item_id"), item_id)?;
            if let Some(other) = pinned_by[candidate] {
                return Err(InvalidField::new(
                    format!("constraints.pins[{i}].item_id"),
                    format!("already pinned by constraints.pins[{other}]"),
                ));
            }
            pinned_by[candidate] = Some(i);
            pins.push((candidate, *slot as usize));
        }
        let mut barred = vec![false; n];
        let mut excluded = 0;
        for (i, item_id) in constraints.exclude_item_ids.iter().enumerate() {
            let field = format!("constraints.exclude_item_ids[{i}]");
            let candidate = find(field.clone(), item_id)?;
            if let Some(pin) = pinned_by[candidate] {
                return Err(InvalidField::new(
                    field,
                    format!("the item is pinned by constraints.pins[{pin}]"),
                ));
            }
            excluded += usize::from(!barred[candidate]);
            barred[candidate] = true;
        }
        let slots = requested.min(n - excluded);
        let mut rules = Rules {
            pinned_at: Vec::new(),
            barred,
            caps: Vec::new(),
        };
        for (i, &(candidate, slot)) in pins.iter().enumerate() {
            if slot >= slots {
                return Err(InvalidField::new(
                    format!("constraints.pins[{i}].slot"),
                    format!("slot {slot} is beyond the {slots} slots to fill"),
                ));
            }
            rules.pinned_at.resize(slots, None);
            if rules.pinned_at[slot].is_some() {
                let other = pins[..i].iter().position(|p| p.1 == slot).unwrap_or(0);
                return Err(InvalidField::new(
                    format!("constraints.pins[{i}].slot"),
                    format!("slot {slot} is already pinned by constraints.pins[{other}]"),
                ));
            }
            rules.pinned_at[slot] = Some(candidate);
            rules.barred[candidate] = true;
        }
        for (i, cap) in constraints.group_caps.iter().enumerate() {
            let field = |name: &str| format!("constraints.group_caps[{i}].{name}");
            if cap.max_count == 0 {
                return Err(InvalidField::new(field("max_count"), "must be > 0"));
            }
            let groups = groups(cap.feature as usize).ok_or_else(|| {
                InvalidField::new(
                    field("categorical_feature"),
                    format!(
                        "the schema has no candidate categorical feature {}",
                        cap.feature
                    ),
                )
            })?;
            let window = match cap.window as usize {
                0 => slots,
                w => w.min(slots),
            };
            rules.caps.push(Cap {
                groups,
                max: cap.max_count as usize,
                window,
            });
        }
        // Pins alone must already respect every cap.
        let placed = rules.placed(slots);
        for (i, cap) in rules.caps.iter().enumerate() {
            for start in 0..=slots.saturating_sub(cap.window) {
                let counts = cap.counts(&placed[start..start + cap.window]);
                if counts.iter().any(|&(_, count)| count > cap.max) {
                    return Err(InvalidField::new(
                        "constraints.pins",
                        format!("the pinned items alone break constraints.group_caps[{i}]"),
                    ));
                }
            }
        }
        Ok((rules, slots))
    }

    pub fn is_empty(&self) -> bool {
        self.pinned_at.is_empty() && self.caps.is_empty() && !self.barred.contains(&true)
    }

    /// The candidate pinned at `slot`, if any.
    pub fn pinned(&self, slot: usize) -> Option<usize> {
        self.pinned_at.get(slot).copied().flatten()
    }

    /// Whether `candidate` may never be chosen freely (excluded, or pinned elsewhere).
    pub fn barred(&self, candidate: usize) -> bool {
        self.barred.get(candidate).copied().unwrap_or(false)
    }

    /// Clears `allow[c]` for every candidate a cap forbids at `slot`, given what is placed
    /// so far (chosen slots and pins; `None` elsewhere). Returns whether each cap masked a
    /// candidate still allowed (empty when none did).
    pub fn mask_caps(&self, slot: usize, placed: &[Option<usize>], allow: &mut [f32]) -> Vec<bool> {
        let slots = placed.len();
        let mut masked = Vec::new();
        for (i, cap) in self.caps.iter().enumerate() {
            // Groups already at their maximum in some window holding `slot`.
            let mut full: Vec<i64> = Vec::new();
            let first = (slot + 1).saturating_sub(cap.window);
            let last = slot.min(slots.saturating_sub(cap.window));
            for start in first..=last {
                let counts = cap.counts(&placed[start..(start + cap.window).min(slots)]);
                full.extend(
                    counts
                        .iter()
                        .filter(|&&(_, n)| n >= cap.max)
                        .map(|&(g, _)| g),
                );
            }
            if full.is_empty() {
                continue;
            }
            for (a, g) in allow.iter_mut().zip(&cap.groups) {
                if *a != 0.0 && full.contains(g) {
                    *a = 0.0;
                    masked.resize(self.caps.len(), false);
                    masked[i] = true;
                }
            }
        }
        masked
    }

    /// Names of the constraints that masked a free candidate at `slot` (for explanations):
    /// pins of later slots, exclusions, and the caps flagged by [`Self::mask_caps`].
    pub fn masked_by(&self, slot: usize, free: &[f32], caps: &[bool]) -> Vec<String> {
        let later_pin = |c: usize| self.pinned_at.iter().skip(slot + 1).any(|&p| p == Some(c));
        let any_free =
            |test: &dyn Fn(usize) -> bool| (0..free.len()).any(|c| free[c] != 0.0 && test(c));
        let mut names = Vec::new();
        if any_free(&later_pin) {
            names.push("pin".to_string());
        }
        if any_free(&|c| self.barred(c) && !later_pin(c)) {
            names.push("exclusion".to_string());
        }
        let capped = caps.iter().enumerate().filter(|&(_, &m)| m);
        names.extend(capped.map(|(i, _)| format!("group_caps[{i}]")));
        names
    }

    /// The pins laid out over `slots` slots: where the greedy pass starts from.
    pub fn placed(&self, slots: usize) -> Vec<Option<usize>> {
        let mut placed = self.pinned_at.clone();
        placed.resize(slots, None);
        placed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rerank::decode::{greedy, greedy_with, StepModel};

    /// Pseudo-random logits that depend on the step and the previous choice.
    struct Noise {
        n: usize,
        seed: u64,
        step: u64,
        logits: Vec<f32>,
    }

    impl StepModel for Noise {
        type Error = ();
        fn next_logits(&mut self, prev: Option<usize>) -> Result<&[f32], ()> {
            self.step += 1;
            let mix = self.seed ^ (self.step << 20) ^ prev.map_or(7, |p| p as u64 + 11);
            self.logits = (0..self.n as u64)
                .map(|c| {
                    let h = (mix ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    (h >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
                })
                .collect();
            Ok(&self.logits)
        }
    }

    fn noise(n: usize, seed: u64) -> Noise {
        Noise {
            n,
            seed,
            step: 0,
            logits: Vec::new(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_list_keeps_every_rule(
            n in 1usize..40,
            k in 1usize..40,
            seed in 0u64..10_000,
            pin_seeds in prop::collection::vec((0usize..40, 0usize..40), 0..4),
            exclude_seeds in prop::collection::vec(0usize..40, 0..6),
            caps in prop::collection::vec((1u32..4, 0u32..6, 1i64..4), 0..3),
        ) {
            let item_ids: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
            // Feature f of candidate c: its group, from a few values.
            let group = |f: usize, c: usize| ((c * 7 + f * 3) % (2 + f)) as i64;
            let constraints = Constraints {
                pins: pin_seeds.iter().map(|&(c, s)| (format!("i{}", c % n), s as u32)).collect(),
                group_caps: caps
                    .iter()
                    .map(|&(max_count, window, f)| GroupCap { feature: f as u32, max_count, window })
                    .collect(),
                exclude_item_ids: exclude_seeds.iter().map(|c| format!("i{}", c % n)).collect(),
            };
            let groups = |f: usize| (f < 4).then(|| (0..n).map(|c| group(f, c)).collect());
            // Contradictory draws are refused; the rest must decode within the rules.
            let Ok((rules, slots)) = Rules::new(&constraints, &item_ids, k.min(n), groups) else {
                return Ok(());
            };
            let picks = greedy_with(&mut noise(n, seed), n, slots, &rules, false).unwrap();
            let list: Vec<usize> = picks.iter().map(|p| p.index).collect();
            let mut seen = std::collections::HashSet::new();
            prop_assert!(list.iter().all(|c| seen.insert(*c)), "distinct: {list:?}");
            for (slot, &c) in list.iter().enumerate() {
                match rules.pinned(slot) {
                    Some(p) => prop_assert_eq!(c, p),
                    None => prop_assert!(!rules.barred(c), "barred {c} at {slot}: {list:?}"),
                }
            }
            for &(max, window, f) in &caps {
                let w = if window == 0 { slots } else { (window as usize).min(slots) };
                for start in 0..list.len() {
                    let end = (start + w).min(list.len());
                    let mut counts = std::collections::HashMap::new();
                    for &c in &list[start..end] {
                        *counts.entry(group(f as usize, c)).or_insert(0u32) += 1;
                    }
                    prop_assert!(counts.values().all(|&v| v <= max), "cap {max}/{w} on f{f}: {list:?}");
                }
            }
            if list.len() == slots {
                for (slot, pinned) in rules.placed(slots).iter().enumerate() {
                    if let Some(p) = pinned {
                        prop_assert_eq!(list[slot], *p);
                    }
                }
            }
        }

        #[test]
        fn no_constraints_is_the_plain_greedy_list(n in 1usize..40, k in 1usize..40, seed in 0u64..10_000) {
            let item_ids: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
            let (rules, slots) = Rules::new(&Constraints::default(), &item_ids, k.min(n), |_| None).unwrap();
            prop_assert!(rules.is_empty());
            let plain = greedy(&mut noise(n, seed), n, k).unwrap();
            prop_assert_eq!(greedy_with(&mut noise(n, seed), n, slots, &rules, false).unwrap(), plain);
        }
    }

    #[test]
    fn explaining_without_rules_lists_alternatives_and_no_mask() {
        let plain = greedy(&mut noise(12, 3), 12, 5).unwrap();
        let explained = greedy_with(&mut noise(12, 3), 12, 5, &Rules::default(), true).unwrap();
        for (p, e) in plain.iter().zip(&explained) {
            assert_eq!((p.index, p.score), (e.index, e.score));
            let why = e.why.as_ref().unwrap();
            assert_eq!(why.alternatives.len(), 3);
            assert!(why.masked_by.is_empty());
        }
    }

    #[test]
    fn caps_that_leave_nothing_stop_the_list() {
        // Four items, all of group 0, at most one per list: one slot can be filled.
        let item_ids: Vec<String> = (0..4).map(|i| format!("i{i}")).collect();
        let constraints = Constraints {
            group_caps: vec![GroupCap {
                feature: 0,
                max_count: 1,
                window: 0,
            }],
            ..Constraints::default()
        };
        let (rules, slots) = Rules::new(&constraints, &item_ids, 3, |_| Some(vec![0; 4])).unwrap();
        assert_eq!(slots, 3);
        let picks = greedy_with(&mut noise(4, 1), 4, slots, &rules, false).unwrap();
        assert_eq!(picks.len(), 1);
    }
}
