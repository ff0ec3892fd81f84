//! Search over lists for any model whose list value is a sum of per-slot gains, each gain
//! depending on the prefix above it: the simulator's true utility and the Lookahead
//! Evaluator are both such models. Exhaustive search, beam search and greedy share it.

use std::cmp::Ordering;

/// A list-value model for one request: `value(π) = Σ_t gain(π_{<t}, π_t)`.
pub trait ListModel {
    /// What the model remembers of a prefix.
    type State: Clone;
    fn candidates(&self) -> usize;
    fn initial(&self) -> Self::State;
    /// The value candidate `a` adds in the next slot after the prefix `state` describes.
    fn gain(&self, state: &Self::State, a: usize) -> f64;
    fn push(&self, state: &mut Self::State, a: usize);

    /// How surely `list` beats `incumbent`: the difference of their values, or, for a
    /// model that knows its uncertainty, a lower bound on it.
    fn advantage(&self, list: &[usize], incumbent: &[usize]) -> f64 {
        value(self, list) - value(self, incumbent)
    }
}

/// A list and its value under the model that found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub list: Vec<usize>,
    pub value: f64,
}

/// The value of a given list.
pub fn value<M: ListModel + ?Sized>(model: &M, list: &[usize]) -> f64 {
    let mut state = model.initial();
    let mut total = 0.0;
    for &a in list {
        total += model.gain(&state, a);
        model.push(&mut state, a);
    }
    total
}

/// Number of ordered lists of `k` out of `n`, saturating.
pub fn permutations(n: usize, k: usize) -> u128 {
    (0..k.min(n)).fold(1u128, |acc, i| acc.saturating_mul((n - i) as u128))
}

/// The best list of `min(k, n)` slots, by enumerating every one.
pub fn exhaustive<M: ListModel>(model: &M, k: usize) -> Scored {
    fn visit<M: ListModel>(
        model: &M,
        state: &M::State,
        prefix: &mut Vec<usize>,
        used: &mut [bool],
        value: f64,
        k: usize,
        best: &mut Scored,
    ) {
        if prefix.len() == k {
            if value > best.value {
                *best = Scored {
                    list: prefix.clone(),
                    value,
                };
            }
            return;
        }
        for a in 0..used.len() {
            if used[a] {
                continue;
            }
            let gain = model.gain(state, a);
            let mut next = state.clone();
            model.push(&mut next, a);
            used[a] = true;
            prefix.push(a);
            visit(model, &next, prefix, used, value + gain, k, best);
            prefix.pop();
            used[a] = false;
        }
    }
    let k = k.min(model.candidates());
    let mut best = Scored {
        list: Vec::new(),
        value: f64::NEG_INFINITY,
    };
    let mut used = vec![false; model.candidates()];
    visit(
        model,
        &model.initial(),
        &mut Vec::new(),
        &mut used,
        0.0,
        k,
        &mut best,
    );
    best
}

/// Beam search of width `width` over lists of `min(k, n)` slots; the final beam, best first.
pub fn beam<M: ListModel>(model: &M, k: usize, width: usize) -> Vec<Scored> {
    let n = model.candidates();
    let k = k.min(n);
    let width = width.max(1);
    let mut beam = vec![(Vec::<usize>::new(), model.initial(), 0.0f64)];
    for _ in 0..k {
        // Score every expansion cheaply; materialise states only for the survivors.
        let mut expansions: Vec<(usize, usize, f64)> = Vec::with_capacity(beam.len() * n);
        for (b, (prefix, state, value)) in beam.iter().enumerate() {
            for a in (0..n).filter(|a| !prefix.contains(a)) {
                expansions.push((b, a, value + model.gain(state, a)));
            }
        }
        if expansions.len() > width {
            expansions.select_nth_unstable_by(width - 1, by_value_desc);
            expansions.truncate(width);
        }
        expansions.sort_by(by_value_desc);
        beam = expansions
            .into_iter()
            .map(|(b, a, value)| {
                let (prefix, state, _) = &beam[b];
                let mut state = state.clone();
                model.push(&mut state, a);
                let mut prefix = prefix.clone();
                prefix.push(a);
                (prefix, state, value)
            })
            .collect();
    }
    beam.into_iter()
        .map(|(list, _, value)| Scored { list, value })
        .collect()
}

/// Step-wise greedy: at each slot, the candidate with the largest immediate gain.
pub fn greedy<M: ListModel>(model: &M, k: usize) -> Scored {
    beam(model, k, 1).swap_remove(0)
}

fn by_value_desc(a: &(usize, usize, f64), b: &(usize, usize, f64)) -> Ordering {
    // Ties broken by beam rank then candidate index, so results are deterministic.
    b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
}

/// Sorts candidates by a score, descending (ties by index), and keeps the first `k`.
pub fn sort_by_score(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Completes `prefix` to `min(k, n)` slots greedily; the whole list and its value.
pub fn greedy_from<M: ListModel>(model: &M, prefix: &[usize], k: usize) -> Scored {
    let all: Vec<usize> = (0..model.candidates()).collect();
    greedy_from_pool(model, prefix, k, &all)
}

/// [`greedy_from`] choosing among `pool` only (ascending indices): the completion costs
/// `O(k·|pool|)` gains rather than `O(k·n)`. The list stops short if the pool runs out.
pub fn greedy_from_pool<M: ListModel>(
    model: &M,
    prefix: &[usize],
    k: usize,
    pool: &[usize],
) -> Scored {
    let n = model.candidates();
    let mut state = model.initial();
    let mut used = vec![false; n];
    let mut list = Vec::with_capacity(k);
    let mut value = 0.0;
    for &a in prefix {
        value += model.gain(&state, a);
        model.push(&mut state, a);
        used[a] = true;
        list.push(a);
    }
    while list.len() < k.min(n) {
        let (a, gain) = (pool.iter().copied())
            .filter(|&a| !used[a])
            .map(|a| (a, model.gain(&state, a)))
            .fold((usize::MAX, f64::NEG_INFINITY), |best, c| {
                if c.1 > best.1 {
                    c
                } else {
                    best
                }
            });
        if a == usize::MAX {
            break; // the pool is used up (or every gain is NaN)
        }
        value += gain;
        model.push(&mut state, a);
        used[a] = true;
        list.push(a);
    }
    Scored { list, value }
}

/// The best completion of `prefix` to `min(k, n)` slots, by enumerating every one.
pub fn exhaustive_from<M: ListModel>(model: &M, prefix: &[usize], k: usize) -> Scored {
    let fixed = Prefixed { model, prefix };
    let rest = exhaustive(&fixed, k.saturating_sub(prefix.len()));
    let mut list = prefix.to_vec();
    list.extend(rest.list.iter().map(|&i| fixed.candidate(i)));
    Scored {
        value: value(model, &list),
        list,
    }
}

/// A model restricted to the candidates outside `prefix`, starting after it.
struct Prefixed<'a, M> {
    model: &'a M,
    prefix: &'a [usize],
}

impl<M: ListModel> Prefixed<'_, M> {
    /// The underlying candidate of this model's `i`-th candidate.
    fn candidate(&self, i: usize) -> usize {
        (0..self.model.candidates())
            .filter(|a| !self.prefix.contains(a))
            .nth(i)
            .expect("index within the remaining candidates")
    }
}

impl<M: ListModel> ListModel for Prefixed<'_, M> {
    type State = M::State;

    fn candidates(&self) -> usize {
        self.model.candidates() - self.prefix.len()
    }

    fn initial(&self) -> M::State {
        let mut state = self.model.initial();
        for &a in self.prefix {
            self.model.push(&mut state, a);
        }
        state
    }

    fn gain(&self, state: &M::State, i: usize) -> f64 {
        self.model.gain(state, self.candidate(i))
    }

    fn push(&self, state: &mut M::State, i: usize) {
        self.model.push(state, self.candidate(i));
    }
}
