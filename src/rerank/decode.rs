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
/// (softmax over the candidates still unchosen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub index: usize,
    pub score: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError<E> {
    #[error(transparent)]
    Model(E),
    #[error("model returned {got} logits for {expected} candidates")]
    LogitCount { expected: usize, got: usize },
    #[error("model returned a non-finite logit for candidate {index} at slot {slot}")]
    NonFinite { slot: usize, index: usize },
}

/// Pointer scores of all candidates: `out[i] = keys[i] · query`, `keys` row-major `[N, H]`.
pub fn pointer_logits(keys: &[f32], query: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(keys.chunks_exact(query.len()).map(|key| dot(key, query)));
}

/// A dot product in 8 independent lanes, so the compiler can vectorise it (a plain
/// sequential sum cannot be reordered and runs at one add per FP latency).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += x[lane] * y[lane];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Fills `min(k, n)` slots greedily. Ties go to the lower candidate index, so the same
/// request always yields the same list.
pub fn greedy<M: StepModel>(
    model: &mut M,
    n: usize,
    k: usize,
) -> Result<Vec<Pick>, DecodeError<M::Error>> {
    let slots = k.min(n);
    let mut chosen = vec![false; n];
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
        let mut best = usize::MAX;
        let mut max = f32::NEG_INFINITY;
        for (index, (&logit, &taken)) in logits.iter().zip(&chosen).enumerate() {
            if taken {
                continue;
            }
            if !logit.is_finite() {
                return Err(DecodeError::NonFinite { slot, index });
            }
            if best == usize::MAX || logit > max {
                best = index;
                max = logit;
            }
        }
        // Terms below e^-80 cannot move an f32 sum that holds e^0 = 1; skipping them also
        // avoids subnormal results, which are two orders of magnitude slower to compute.
        let sum: f32 = logits
            .iter()
            .zip(&chosen)
            .filter(|&(&logit, &taken)| !taken && logit - max > -80.0)
            .map(|(&logit, _)| (logit - max).exp())
            .sum();
        picks.push(Pick {
            index: best,
            score: -sum.ln(),
        });
        chosen[best] = true;
        prev = Some(best);
    }
    Ok(picks)
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
