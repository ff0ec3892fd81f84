//! Greedy decoding: the hot path, pure and free of I/O. One pass, one decoder step per slot;
//! chosen candidates are masked out of every later step.

/// A model that scores every candidate for the next slot, one slot at a time.
pub trait StepModel {
    type Error;
    /// Logits of all N candidates for the next slot. `prev` is the candidate chosen at the
    /// previous slot (`None` at the first slot). Called once per slot, in order.
    fn next_logits(&mut self, prev: Option<usize>) -> Result<&[f32], Self::Error>;
}

/// A candidate placed in a slot, with the model's log-probability of it at that step
/// (softmax over the candidates allowed there), and, when asked for, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub index: usize,
    pub score: f32,
    pub why: Option<Box<Why>>,
}

/// What the decoder saw at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Why {
    /// The most probable other candidates allowed at this step (index, probability), best
    /// first, at most [`ALTERNATIVES`].
    pub alternatives: Vec<(usize, f32)>,
    /// The constraints that masked candidates at this step: `pin`, `exclusion`,
    /// `group_caps[i]`.
    pub masked_by: Vec<String>,
}

/// Alternatives an explained step lists.
pub const ALTERNATIVES: usize = 3;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError<E> {
    #[error(transparent)]
    Model(E),
    #[error("model returned {got} logits for {expected} candidates")]
    LogitCount { expected: usize, got: usize },
    #[error("model returned a non-finite logit for candidate {index} at slot {slot}")]
    NonFinite { slot: usize, index: usize },
}

impl<E> DecodeError<E> {
    /// The same error, the model's own converted by `f`.
    pub fn map_model<F>(self, f: impl FnOnce(E) -> F) -> DecodeError<F> {
        match self {
            DecodeError::Model(e) => DecodeError::Model(f(e)),
            DecodeError::LogitCount { expected, got } => DecodeError::LogitCount { expected, got },
            DecodeError::NonFinite { slot, index } => DecodeError::NonFinite { slot, index },
        }
    }
}

use super::math;
use super::rules::Rules;
use super::RerankInput;

/// Pointer scores of all candidates: `out[i] = keys[i] · query`, `keys` row-major `[N, H]`.
pub fn pointer_logits(keys: &[f32], query: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        keys.chunks_exact(query.len())
            .map(|key| math::dot(key, query)),
    );
}

/// Fills `min(k, n)` slots greedily. Ties go to the lower candidate index, so the same
/// request always yields the same list.
pub fn greedy<M: StepModel>(
    model: &mut M,
    n: usize,
    k: usize,
) -> Result<Vec<Pick>, DecodeError<M::Error>> {
    greedy_with(model, n, k, &Rules::default(), false)
}

/// [`greedy`] under `rules`: a pinned slot takes its item (score 0: the only choice
/// allowed), any other slot chooses among the items the rules allow, the softmax taken
/// over them. If no item is allowed at some slot, the list stops there: the answer is
/// shorter than `k`. With `explain`, each pick says [`Why`] (at a cost only then).
pub fn greedy_with<M: StepModel>(
    model: &mut M,
    n: usize,
    k: usize,
    rules: &Rules,
    explain: bool,
) -> Result<Vec<Pick>, DecodeError<M::Error>> {
    let slots = k.min(n);
    let constrained = !rules.is_empty();
    // 1.0 for a candidate still free, 0.0 once chosen: a mask the exp-sum multiplies by.
    let mut free = vec![1.0f32; n];
    // With rules: what they allow at this slot, and what is placed (chosen, and pins).
    let mut allow = if constrained {
        vec![0.0f32; n]
    } else {
        Vec::new()
    };
    let mut placed = if constrained {
        rules.placed(slots)
    } else {
        Vec::new()
    };
    let mut picks = Vec::with_capacity(slots);
    let mut prev = None;
    for slot in 0..slots {
        let logits = model.next_logits(prev).map_err(DecodeError::Model)?;
        if logits.len() != n {
            return Err(DecodeError::LogitCount {
                expected: n,
                got: logits.len(),
            });
        }
        let (mut pick, why) = match rules.pinned(slot) {
            Some(index) => {
                let pick = Pick {
                    index,
                    score: 0.0,
                    why: None,
                };
                let why = explain.then(|| Why {
                    alternatives: Vec::new(),
                    masked_by: vec!["pin".to_string()],
                });
                (pick, why)
            }
            None => {
                let mut caps = Vec::new();
                let mask = if constrained {
                    for (index, (a, &f)) in allow.iter_mut().zip(&free).enumerate() {
                        *a = if f != 0.0 && !rules.barred(index) {
                            1.0
                        } else {
                            0.0
                        };
                    }
                    caps = rules.mask_caps(slot, &placed, &mut allow);
                    &allow
                } else {
                    &free
                };
                let Some(pick) = best(logits, mask, slot)? else {
                    break; // nothing allowed: the feasible prefix is the answer
                };
                let why = explain.then(|| Why {
                    alternatives: alternatives(logits, mask, pick.index, pick.score),
                    masked_by: rules.masked_by(slot, &free, &caps),
                });
                (pick, why)
            }
        };
        pick.why = why.map(Box::new);
        free[pick.index] = 0.0;
        if constrained {
            placed[slot] = Some(pick.index);
        }
        prev = Some(pick.index);
        picks.push(pick);
    }
    Ok(picks)
}

/// Decodes `input` as it asks: its slots, under its rules, explained if asked.
pub fn decode_request<M: StepModel>(
    model: &mut M,
    input: &RerankInput,
) -> Result<Vec<Pick>, DecodeError<M::Error>> {
    greedy_with(
        model,
        input.candidates(),
        input.slots,
        &input.rules,
        input.explain,
    )
}

/// The logits of every step when decoding is forced along `prefix` (teacher forcing).
pub fn forced<M: StepModel>(model: &mut M, prefix: &[usize]) -> Result<Vec<Vec<f32>>, M::Error> {
    let mut prev = None;
    let mut out = Vec::with_capacity(prefix.len());
    for &next in prefix {
        out.push(model.next_logits(prev)?.to_vec());
        prev = Some(next);
    }
    Ok(out)
}

/// The allowed candidate with the highest logit (ties to the lower index) and its
/// log-probability among the allowed ones; `None` if none is allowed.
fn best<E>(logits: &[f32], allowed: &[f32], slot: usize) -> Result<Option<Pick>, DecodeError<E>> {
    let Some(max) = math::allowed_max(logits, allowed) else {
        // A non-finite logit among the allowed ones: name the first.
        let index = (logits.iter().zip(allowed))
            .position(|(l, &a)| a != 0.0 && !l.is_finite())
            .unwrap_or_default();
        return Err(DecodeError::NonFinite { slot, index });
    };
    if max == f32::NEG_INFINITY {
        return Ok(None); // nothing allowed
    }
    let index = (logits.iter().zip(allowed))
        .position(|(&l, &a)| a != 0.0 && l == max)
        .unwrap_or_default();
    Ok(Some(Pick {
        index,
        score: -math::free_exp_sum(logits, allowed, max).ln(),
        why: None,
    }))
}

/// The [`ALTERNATIVES`] most probable allowed candidates other than `chosen`, whose
/// log-probability `score` fixes the softmax: `p(c) = e^(logit(c) − logit(chosen) + score)`.
fn alternatives(logits: &[f32], allowed: &[f32], chosen: usize, score: f32) -> Vec<(usize, f32)> {
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(ALTERNATIVES + 1);
    for (index, (&logit, &allowed)) in logits.iter().zip(allowed).enumerate() {
        if allowed == 0.0 || index == chosen {
            continue;
        }
        let at = top.partition_point(|&(i, l)| l > logit || (l == logit && i < index));
        if at < ALTERNATIVES {
            top.insert(at, (index, logit));
            top.truncate(ALTERNATIVES);
        }
    }
    let base = logits[chosen] - score; // log of the softmax's normaliser
    top.into_iter()
        .map(|(i, l)| (i, (l - base).exp()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores candidates from a fixed table per slot, ignoring `prev`.
    struct Table(Vec<Vec<f32>>, usize);

    impl StepModel for Table {
        type Error = ();
        fn next_logits(&mut self, _: Option<usize>) -> Result<&[f32], ()> {
            self.1 += 1;
            Ok(&self.0[self.1 - 1])
        }
    }

    #[test]
    fn masks_chosen_and_breaks_ties_low() {
        let mut m = Table(vec![vec![1.0, 3.0, 3.0], vec![0.0, 9.0, 2.0]], 0);
        let picks = greedy(&mut m, 3, 2).unwrap();
        assert_eq!(picks.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2]);
        // Slot 2 chooses between candidates 0 and 2 only: log(e²/(e⁰+e²)).
        let expected = 2.0 - (1.0f32 + 2.0f32.exp()).ln();
        assert!((picks[1].score - expected).abs() < 1e-6);
    }

    #[test]
    fn k_beyond_n_fills_n_slots() {
        let mut m = Table(vec![vec![0.5, 0.1]; 2], 0);
        assert_eq!(greedy(&mut m, 2, 10).unwrap().len(), 2);
    }

    #[test]
    fn non_finite_logit_is_an_error() {
        let mut m = Table(vec![vec![0.5, f32::NAN]], 0);
        assert_eq!(
            greedy(&mut m, 2, 1),
            Err(DecodeError::NonFinite { slot: 0, index: 1 })
        );
    }

    #[test]
    fn wrong_logit_count_is_an_error() {
        let mut m = Table(vec![vec![0.5]], 0);
        assert_eq!(
            greedy(&mut m, 2, 1),
            Err(DecodeError::LogitCount {
                expected: 2,
                got: 1
            })
        );
    }
}
