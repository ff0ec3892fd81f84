//! Requests and lists as padded tensors for the evaluator's network.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::contract::upstream;
use crate::offline::logs::{LogShape, LoggedRequest};
use crate::rerank::vocab_id;

/// How raw features enter the network: dense ones standardised with the training data's
/// mean and spread, categorical ids above the vocabulary sent to the unknown row, or, for a
/// hashed feature, folded into its rows (`rerank::vocab_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMap {
    pub context_mean: Vec<f32>,
    pub context_scale: Vec<f32>,
    pub candidate_mean: Vec<f32>,
    pub candidate_scale: Vec<f32>,
    pub context_vocab: Vec<u64>,
    pub candidate_vocab: Vec<u64>,
    /// Per categorical feature: its ids are hashed (absent: none is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_hashed: Vec<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidate_hashed: Vec<bool>,
    /// Each candidate's dense row ends with the incumbent's order (`contract::upstream`),
    /// derived from the request's `ranking_score`s; the generator reads it too.
    #[serde(default)]
    pub ranking_score: bool,
}

fn standardiser<'a>(width: usize, rows: impl Iterator<Item = &'a [f32]>) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0f64; width];
    let mut sum_sq = vec![0f64; width];
    let mut n = 0f64;
    for row in rows {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += f64::from(v);
            sum_sq[j] += f64::from(v) * f64::from(v);
        }
        n += 1.0;
    }
    let n = n.max(1.0);
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let scale = sum_sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| {
            let std = (s / n - m * m).max(0.0).sqrt();
            // A constant feature carries nothing; keep it finite.
            if std > 1e-6 {
                1.0 / std as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), scale)
}

impl FeatureMap {
    pub fn fit(rows: &[&LoggedRequest], shape: &LogShape, ranking_score: bool) -> FeatureMap {
        let (context_mean, context_scale) = standardiser(
            shape.context_dense,
            rows.iter().map(|r| &r.context.dense[..]),
        );
        let (candidate_mean, candidate_scale) = standardiser(
            shape.candidate_dense,
            rows.iter()
                .flat_map(|r| r.candidates.iter().map(|c| &c.features.dense[..])),
        );
        let (context_vocab, context_hashed) = vocabulary(&shape.context_vocab, |j| {
            rows.iter().map(move |r| r.context.categorical[j])
        });
        let (candidate_vocab, candidate_hashed) = vocabulary(&shape.candidate_vocab, |j| {
            (rows.iter())
                .flat_map(move |r| r.candidates.iter().map(move |c| c.features.categorical[j]))
        });
        FeatureMap {
            context_mean,
            context_scale,
            candidate_mean,
            candidate_scale,
            context_vocab,
            candidate_vocab,
            context_hashed,
            candidate_hashed,
            ranking_score,
        }
    }

    /// Width of a candidate's dense row as the evaluator sees it.
    pub fn candidate_width(&self) -> usize {
        self.candidate_mean.len() + self.upstream_width()
    }

    pub fn upstream_width(&self) -> usize {
        if self.ranking_score {
            upstream::WIDTH
        } else {
            0
        }
    }

    /// Every candidate's standardised dense features, then its `upstream` row.
    pub fn candidates_dense(&self, request: &LoggedRequest, out: &mut Vec<f32>) {
        let mut upstream = Vec::new();
        self.upstream(request, &mut upstream);
        let w = self.upstream_width();
        for (i, c) in request.candidates.iter().enumerate() {
            self.candidate_dense(&c.features.dense, out);
            out.extend_from_slice(&upstream[i * w..(i + 1) * w]);
        }
    }

    /// The request's `upstream` input (`N × WIDTH`), or nothing without `ranking_score`.
    pub fn upstream(&self, request: &LoggedRequest, out: &mut Vec<f32>) {
        if self.ranking_score {
            let scores: Vec<f32> = request.candidates.iter().map(|c| c.ranking_score).collect();
            upstream::features(&scores, out);
        }
    }

    pub fn context_dense(&self, raw: &[f32], out: &mut Vec<f32>) {
        standardise(raw, &self.context_mean, &self.context_scale, out);
    }

    pub fn candidate_dense(&self, raw: &[f32], out: &mut Vec<f32>) {
        standardise(raw, &self.candidate_mean, &self.candidate_scale, out);
    }

    pub fn context_ids(&self, raw: &[i64], out: &mut Vec<u32>) {
        map_ids(raw, &self.context_vocab, &self.context_hashed, out);
    }

    pub fn candidate_ids(&self, raw: &[i64], out: &mut Vec<u32>) {
        map_ids(raw, &self.candidate_vocab, &self.candidate_hashed, out);
    }

    /// Checks that a log's widths are the ones this map was fitted on.
    pub fn check(&self, shape: &LogShape) -> Result<(), String> {
        let want = (
            self.context_mean.len(),
            self.context_vocab.len(),
            self.candidate_mean.len(),
            self.candidate_vocab.len(),
        );
        let got = (
            shape.context_dense,
            shape.context_vocab.len(),
            shape.candidate_dense,
            shape.candidate_vocab.len(),
        );
        if want == got {
            Ok(())
        } else {
            Err(format!(
                "the log has (context dense, context categorical, candidate dense, candidate \
                 categorical) = {got:?} features, the evaluator was trained on {want:?}"
            ))
        }
    }
}

fn standardise(raw: &[f32], mean: &[f32], scale: &[f32], out: &mut Vec<f32>) {
    out.extend(
        raw.iter()
            .zip(mean)
            .zip(scale)
            .map(|((v, m), s)| (v - m) * s),
    );
}

fn map_ids(raw: &[i64], vocab: &[u64], hashed: &[bool], out: &mut Vec<u32>) {
    out.extend(
        (raw.iter().zip(vocab).enumerate())
            .map(|(j, (&id, &size))| vocab_id(id, size, is_hashed(hashed, j)) as u32),
    );
}

/// Whether feature `j` is hashed, in a map that may predate hashing (no flags: none is).
pub fn is_hashed(hashed: &[bool], j: usize) -> bool {
    hashed.get(j).copied().unwrap_or(false)
}

/// Most rows of one feature's embedding table. Ids beyond it (hashes, 64-bit keys: a table
/// of their largest id would not fit in memory) are hashed into
/// `4 × distinct ids` rows, rounded up to a power of two and at most this, so that few
/// of the ids the logs hold share a row.
pub const MAX_VOCABULARY: u64 = 1 << 16;

/// Each feature's table size and whether it is hashed, from the largest id plus one
/// (`LogShape`) and, for a feature beyond [`MAX_VOCABULARY`], the ids themselves.
fn vocabulary<I: Iterator<Item = i64>>(
    largest: &[u64],
    ids: impl Fn(usize) -> I,
) -> (Vec<u64>, Vec<bool>) {
    (largest.iter().enumerate())
        .map(|(j, &size)| {
            if size <= MAX_VOCABULARY {
                return (size, false);
            }
            let distinct = ids(j).collect::<std::collections::HashSet<_>>().len() as u64;
            ((4 * distinct).next_power_of_two().min(MAX_VOCABULARY), true)
        })
        .unzip()
}

/// A padded batch: `requests × candidates` items, `requests × slots` list positions.
pub struct Batch {
    pub requests: usize,
    pub candidates: usize,
    pub slots: usize,
    pub context_fields: usize,
    pub candidate_fields: usize,
    pub context_dense: Tensor,
    pub context_ids: Tensor,
    pub candidate_dense: Tensor,
    pub candidate_ids: Tensor,
    pub candidate_mask: Tensor,
    /// Flat indices into the `[B·N]` item rows, slot by slot.
    pub list: Tensor,
    pub slot_mask: Tensor,
    /// Logged clicks (training only; 0 elsewhere).
    pub clicks: Tensor,
    /// Logged values in units of the mean value per click, and where they count: clicked
    /// slots of lists that carry values.
    pub values: Tensor,
    pub value_mask: Tensor,
    /// `[B, T, F]`: per candidate categorical feature, how many items above the slot share
    /// the slot item's id (redundancy, made explicit rather than left to be learned).
    pub same_above: Tensor,
}

/// Per categorical feature, how many of `above` share `item`'s id.
pub fn same_above(request: &LoggedRequest, above: &[usize], item: usize, out: &mut Vec<f32>) {
    let ids = &request.candidates[item].features.categorical;
    for (j, id) in ids.iter().enumerate() {
        let count = above
            .iter()
            .filter(|&&k| request.candidates[k].features.categorical[j] == *id)
            .count();
        out.push(count as f32);
    }
}

/// One list to score: its request, the candidate indices and (for training) its labels.
#[derive(Clone, Copy)]
pub struct ListRef<'a> {
    pub request: &'a LoggedRequest,
    pub list: &'a [usize],
    pub labels: Option<Labels<'a>>,
}

impl<'a> ListRef<'a> {
    /// The list the request logged, without labels (for scoring).
    pub fn logged(request: &'a LoggedRequest) -> ListRef<'a> {
        ListRef {
            request,
            list: &request.exposed,
            labels: None,
        }
    }
}

/// Per slot of a logged list: click (0/1) and, if logged, the value in units of the mean
/// value per click.
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    pub clicks: &'a [f32],
    pub values: Option<&'a [f32]>,
}

impl Batch {
    pub fn new(map: &FeatureMap, lists: &[ListRef<'_>]) -> candle_core::Result<Batch> {
        let b = lists.len();
        let n = lists
            .iter()
            .map(|l| l.request.candidates.len())
            .max()
            .unwrap_or(1);
        let t = lists.iter().map(|l| l.list.len()).max().unwrap_or(1).max(1);
        let (cf, kf) = (map.context_vocab.len(), map.candidate_vocab.len());
        let (cd, kd) = (map.context_mean.len(), map.candidate_width());
        let mut context_dense = Vec::with_capacity(b * cd);
        let mut context_ids = Vec::with_capacity(b * cf);
        let mut candidate_dense = Vec::with_capacity(b * n * kd);
        let mut candidate_ids = Vec::with_capacity(b * n * kf);
        let mut candidate_mask = Vec::with_capacity(b * n);
        let mut list = Vec::with_capacity(b * t);
        let mut slot_mask = Vec::with_capacity(b * t);
        let mut clicks = Vec::with_capacity(b * t);
        let mut values = Vec::with_capacity(b * t);
        let mut value_mask = Vec::with_capacity(b * t);
        let mut same = Vec::with_capacity(b * t * kf);
        for (r, item) in lists.iter().enumerate() {
            let request = item.request;
            map.context_dense(&request.context.dense, &mut context_dense);
            map.context_ids(&request.context.categorical, &mut context_ids);
            map.candidates_dense(request, &mut candidate_dense);
            for c in &request.candidates {
                map.candidate_ids(&c.features.categorical, &mut candidate_ids);
            }
            let padding = n - request.candidates.len();
            candidate_dense.extend(std::iter::repeat_n(0.0, padding * kd));
            candidate_ids.extend(std::iter::repeat_n(0, padding * kf));
            candidate_mask
                .extend((0..n).map(|i| f32::from(u8::from(i < request.candidates.len()))));
            for s in 0..t {
                let present = s < item.list.len();
                let a = if present { item.list[s] } else { 0 };
                list.push((r * n + a) as u32);
                slot_mask.push(f32::from(u8::from(present)));
                let click = item.labels.and_then(|l| l.clicks.get(s).copied());
                let value = item.labels.and_then(|l| l.values?.get(s).copied());
                clicks.push(click.unwrap_or(0.0));
                values.push(value.unwrap_or(0.0));
                value_mask.push(if value.is_some() {
                    click.unwrap_or(0.0)
                } else {
                    0.0
                });
                if present {
                    same_above(request, &item.list[..s], a, &mut same);
                } else {
                    same.extend(std::iter::repeat_n(0.0, kf));
                }
            }
        }
        let dev = &Device::Cpu;
        Ok(Batch {
            requests: b,
            candidates: n,
            slots: t,
            context_fields: cf,
            candidate_fields: kf,
            context_dense: Tensor::from_vec(context_dense, (b, cd), dev)?,
            context_ids: Tensor::from_vec(context_ids, (b, cf), dev)?,
            candidate_dense: Tensor::from_vec(candidate_dense, (b * n, kd), dev)?,
            candidate_ids: Tensor::from_vec(candidate_ids, (b * n, kf), dev)?,
            candidate_mask: Tensor::from_vec(candidate_mask, (b, n), dev)?,
            list: Tensor::from_vec(list, b * t, dev)?,
            slot_mask: Tensor::from_vec(slot_mask, (b, t), dev)?,
            clicks: Tensor::from_vec(clicks, (b, t), dev)?,
            values: Tensor::from_vec(values, (b, t), dev)?,
            value_mask: Tensor::from_vec(value_mask, (b, t), dev)?,
            same_above: Tensor::from_vec(same, (b, t, kf), dev)?,
        })
    }
}
