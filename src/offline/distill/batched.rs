//! Teacher forcing for many requests at once. The generator's forward pass is a chain of
//! tiny matrix ops; run one request at a time, candle spends its time on per-op overhead
//! (issue 11: ~290 s a seed). Here a batch's requests are padded to the longest and every
//! op runs once for the batch: the same network code ([`Weights::encode`]/[`Weights::step`])
//! over `[B, rows, cols]` tensors, with the padding masked where the network mixes rows
//! (attention, the set's mean). `tests/distill.rs` holds its loss equal to the sum of the
//! per-request losses.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::{CandleOps, Forced, Inputs};
use crate::network::{EncoderInputs, Ops, Param, Weights};

/// Logit of a padded or already placed candidate.
const MASKED: f32 = -1e9;

/// Categorical ids of `batch × rows` rows, `cols` features each.
pub struct BatchIds {
    batch: usize,
    rows: usize,
    cols: usize,
    data: Vec<u32>,
}

/// [`Ops`] over `[B, rows, cols]` tensors. `softmax_rows` (the set's attention) ignores
/// padded candidates and `mean_rows` (the set's summary) averages the real ones only.
struct BatchOps<'a> {
    vars: &'a HashMap<&'static str, Var>,
    /// `[B, 1, N]`: 0 for a real candidate, [`MASKED`] for padding.
    key_mask: Tensor,
    /// `[B, N, 1]`: 1/n for each of a request's n real candidates, 0 for padding.
    row_weights: Tensor,
}

fn ok(result: candle_core::Result<Tensor>) -> Tensor {
    result.expect("batched generator ops on consistent shapes")
}

impl Ops for BatchOps<'_> {
    type Mat = Tensor;
    type Ids = BatchIds;

    fn param(&mut self, p: &Param) -> Tensor {
        self.vars[p.name].as_tensor().clone()
    }
    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        if b.rank() != 2 {
            return ok(a.matmul(b));
        }
        // A weight: one 2-D product over every row of the batch.
        let product = || {
            let (batch, rows, cols) = a.dims3()?;
            a.reshape((batch * rows, cols))?
                .matmul(b)?
                .reshape((batch, rows, b.dim(1)?))
        };
        ok(product())
    }
    fn matmul_t(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        ok(b.transpose(1, 2).and_then(|bt| a.matmul(&bt)))
    }
    fn transpose(&mut self, a: &Tensor) -> Tensor {
        ok(a.transpose(1, 2))
    }
    fn add(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        ok(a.broadcast_add(b))
    }
    fn scale(&mut self, a: &Tensor, factor: f32) -> Tensor {
        ok(a * f64::from(factor))
    }
    fn relu(&mut self, a: &Tensor) -> Tensor {
        ok(a.relu())
    }
    fn tanh(&mut self, a: &Tensor) -> Tensor {
        ok(a.tanh())
    }
    fn softmax_rows(&mut self, a: &Tensor) -> Tensor {
        ok(a.broadcast_add(&self.key_mask)
            .and_then(|masked| candle_nn::ops::softmax(&masked, 2)))
    }
    fn softmax_rows_unmasked(&mut self, a: &Tensor) -> Tensor {
        ok(candle_nn::ops::softmax(a, 2))
    }
    fn mean_rows(&mut self, a: &Tensor) -> Tensor {
        ok(a.broadcast_mul(&self.row_weights)
            .and_then(|w| w.sum_keepdim(1)))
    }
    fn concat_cols(&mut self, parts: &[Tensor]) -> Tensor {
        ok(Tensor::cat(parts, 2))
    }
    fn embed(&mut self, ids: &BatchIds, table: &Param, offsets: &[i64]) -> Tensor {
        let rows: Vec<u32> = ids
            .data
            .iter()
            .enumerate()
            .map(|(i, &id)| (i64::from(id) + offsets[i % ids.cols]) as u32)
            .collect();
        let width = ids.cols * table.cols;
        let table = self.param(table);
        ok(Tensor::from_vec(rows, ids.data.len(), &Device::Cpu)
            .and_then(|index| table.index_select(&index, 0))
            .and_then(|e| e.reshape((ids.batch, ids.rows, width))))
    }
}

/// Requests padded to the longest, as `[B, rows, cols]` inputs.
struct Padded {
    batch: usize,
    n: usize,
    ctx_dense: Option<Tensor>,
    ctx_ids: Option<BatchIds>,
    cand_dense: Option<Tensor>,
    upstream: Option<Tensor>,
    cand_ids: Option<BatchIds>,
    key_mask: Tensor,
    row_weights: Tensor,
}

impl Padded {
    fn new(requests: &[&Inputs]) -> candle_core::Result<Padded> {
        let batch = requests.len();
        let n = requests.iter().map(|r| r.candidates).max().unwrap_or(1);
        let per_row = |len: usize, rows: usize| len / rows.max(1);
        let first = requests[0];
        let (dc, fc) = (first.ctx_dense.len(), first.ctx_ids.len());
        let d = per_row(first.cand_dense.len(), first.candidates);
        let u = per_row(first.upstream.len(), first.candidates);
        let f = per_row(first.cand_ids.len(), first.candidates);
        let dense = |get: fn(&Inputs) -> &[f32], rows: usize, cols: usize| {
            (cols > 0)
                .then(|| {
                    let data = padded(requests, get, rows, cols);
                    Tensor::from_vec(data, (batch, rows, cols), &Device::Cpu)
                })
                .transpose()
        };
        let ids = |get: fn(&Inputs) -> &[u32], rows: usize, cols: usize| {
            (cols > 0).then(|| BatchIds {
                batch,
                rows,
                cols,
                data: padded(requests, get, rows, cols),
            })
        };
        let mut key_mask = Vec::with_capacity(batch * n);
        let mut row_weights = Vec::with_capacity(batch * n);
        for r in requests {
            let real = r.candidates;
            key_mask.extend((0..n).map(|i| if i < real { 0.0 } else { MASKED }));
            row_weights.extend((0..n).map(|i| if i < real { 1.0 / real as f32 } else { 0.0 }));
        }
        Ok(Padded {
            batch,
            n,
            ctx_dense: dense(|r| &r.ctx_dense, 1, dc)?,
            ctx_ids: ids(|r| &r.ctx_ids, 1, fc),
            cand_dense: dense(|r| &r.cand_dense, n, d)?,
            upstream: dense(|r| &r.upstream, n, u)?,
            cand_ids: ids(|r| &r.cand_ids, n, f),
            key_mask: Tensor::from_vec(key_mask, (batch, 1, n), &Device::Cpu)?,
            row_weights: Tensor::from_vec(row_weights, (batch, n, 1), &Device::Cpu)?,
        })
    }
}

/// Each request's rows (`cols` values each) followed by zero rows up to `rows`.
fn padded<T: Copy + Default>(
    requests: &[&Inputs],
    get: fn(&Inputs) -> &[T],
    rows: usize,
    cols: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(requests.len() * rows * cols);
    for r in requests {
        let start = out.len();
        out.extend_from_slice(get(r));
        out.resize(start + rows * cols, T::default());
    }
    out
}

/// The decoder stepped over a padded batch: `choose(t, r, log_probs)` gives request `r`'s
/// item for slot `t` (`log_probs`: its row of log-probabilities when `sampled`, else
/// empty), or `None` once its list has ended. Returns every step's log-probabilities,
/// `[steps, B, N]` (padding and placed candidates at about -1e9), and each request's list.
fn decode(
    ops: &CandleOps,
    weights: &Weights,
    requests: &[&Inputs],
    steps: usize,
    sampled: bool,
    mut choose: impl FnMut(usize, usize, &[f32]) -> Option<usize>,
) -> candle_core::Result<(Tensor, Vec<Vec<usize>>)> {
    let p = Padded::new(requests)?;
    let (b, n, h) = (p.batch, p.n, weights.dims.hidden);
    let mut o = BatchOps {
        vars: &ops.vars,
        key_mask: p.key_mask.clone(),
        row_weights: p.row_weights.clone(),
    };
    let encoded = weights.encode(
        &mut o,
        EncoderInputs {
            ctx_dense: p.ctx_dense.as_ref(),
            ctx_ids: p.ctx_ids.as_ref(),
            cand_dense: p.cand_dense.as_ref(),
            upstream: p.upstream.as_ref(),
            cand_ids: p.cand_ids.as_ref(),
        },
    );
    let values = encoded.values.reshape((b * n, h))?;
    // Padding is never chosen; placed candidates are masked as they are placed.
    let mut mask: Vec<f32> = p.key_mask.flatten_all()?.to_vec1()?;
    let mut state = encoded.state;
    let mut prev = Tensor::zeros((b, 1, h), DType::F32, &Device::Cpu)?;
    let mut lists = vec![Vec::with_capacity(steps); b];
    let mut log_probs = Vec::with_capacity(steps);
    for t in 0..steps {
        let (query, next) = weights.step(&mut o, &state, &prev);
        let logits = encoded
            .keys
            .matmul(&query.transpose(1, 2)?)?
            .reshape((b, n))?;
        let logits = (logits + Tensor::from_slice(&mask, (b, n), &Device::Cpu)?)?;
        let lp = candle_nn::ops::log_softmax(&logits, 1)?;
        let rows: Vec<f32> = if sampled {
            lp.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        let mut chosen = Vec::with_capacity(b);
        for (r, list) in lists.iter_mut().enumerate() {
            let row = rows.get(r * n..(r + 1) * n).unwrap_or(&[]);
            // A request whose list has ended feeds any row on; its steps weigh nothing.
            let a = choose(t, r, row).map_or(0, |a| {
                mask[r * n + a] = MASKED;
                list.push(a);
                a
            });
            chosen.push((r * n + a) as u32);
        }
        log_probs.push(lp);
        let chosen = Tensor::from_vec(chosen, b, &Device::Cpu)?;
        prev = values.index_select(&chosen, 0)?.reshape((b, 1, h))?;
        state = next;
    }
    Ok((Tensor::stack(&log_probs, 0)?, lists))
}

/// `−Σ log_probs · weight` over every step, request and candidate.
fn weighted_nll(log_probs: &Tensor, weight: Vec<f32>) -> candle_core::Result<Tensor> {
    let weight = Tensor::from_vec(weight, log_probs.dims3()?, &Device::Cpu)?;
    (log_probs * weight)?.sum_all()?.neg()
}

/// Σ over the requests of their [`super::forced_loss`]: teacher forcing along each
/// request's target list, the target's cross-entropy averaged over its steps.
pub fn forced_loss_sum(
    ops: &CandleOps,
    weights: &Weights,
    requests: &[&Inputs],
    targets: &[&Forced],
    ce_weight: f64,
) -> candle_core::Result<Tensor> {
    let steps = targets.iter().map(|f| f.list.len()).max().unwrap_or(0);
    if steps == 0 {
        return Tensor::new(0f32, &Device::Cpu);
    }
    let (log_probs, _) = decode(ops, weights, requests, steps, false, |t, r, _| {
        targets[r].list.get(t).copied()
    })?;
    let (_, b, n) = log_probs.dims3()?;
    let mut weight = vec![0f32; steps * b * n];
    for (r, forced) in targets.iter().enumerate() {
        let per_step = 1.0 / forced.list.len() as f32;
        for (t, (&a, step)) in forced.list.iter().zip(&forced.targets).enumerate() {
            let row = &mut weight[(t * b + r) * n..(t * b + r + 1) * n];
            for &(c, q) in step {
                row[c] += q * per_step;
            }
            row[a] += ce_weight as f32 * per_step;
        }
    }
    weighted_nll(&log_probs, weight)
}

/// Lists sampled from the generator for a padded batch, with what their loss needs.
pub struct Sampled {
    pub lists: Vec<Vec<usize>>,
    log_probs: Tensor,
}

impl Sampled {
    /// Samples `slots` items per request (fewer where a request has fewer candidates),
    /// `draw` picking each from a row of log-probabilities.
    pub fn new(
        ops: &CandleOps,
        weights: &Weights,
        requests: &[&Inputs],
        slots: usize,
        mut draw: impl FnMut(&[f32]) -> usize,
    ) -> candle_core::Result<Sampled> {
        let steps = requests
            .iter()
            .map(|r| r.candidates.min(slots))
            .max()
            .unwrap_or(0);
        let (log_probs, lists) = decode(ops, weights, requests, steps, true, |t, r, row| {
            (t < requests[r].candidates.min(slots)).then(|| draw(row))
        })?;
        Ok(Sampled { lists, log_probs })
    }

    /// `−Σ_r weight_r · log π(list_r)`.
    pub fn loss(&self, list_weights: &[f32]) -> candle_core::Result<Tensor> {
        let (steps, b, n) = self.log_probs.dims3()?;
        let mut weight = vec![0f32; steps * b * n];
        for (r, list) in self.lists.iter().enumerate() {
            for (t, &a) in list.iter().enumerate() {
                weight[(t * b + r) * n + a] = list_weights[r];
            }
        }
        weighted_nll(&self.log_probs, weight)
    }
}
