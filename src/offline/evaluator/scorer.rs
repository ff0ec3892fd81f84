//! The evaluator's network evaluated incrementally in plain Rust, for search: everything
//! that does not depend on the prefix is computed once per request, and what the prefix
//! adds to each candidate's output layer (its interaction sum, same-id counts, id pairs) is
//! accumulated as items are placed, so the value of appending a candidate costs one
//! hidden-layer row and a dot product.
//! `tests/evaluator.rs` holds it equal to the training forward (`model::slot_outputs`).

use std::sync::OnceLock;

use super::model::{self, AMOUNT_BIAS, AMOUNT_LOG_VARIANCE, BUY_BIAS, BUY_NETWORK, BUY_WEIGHTS};
use super::{Evaluator, Params};
use crate::offline::logs::LoggedRequest;
use crate::offline::search::ListModel;
use crate::offline::sim::sigmoid;

/// A weight matrix `[rows, cols]`, row-major.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    fn of(params: &Params, name: &str) -> anyhow::Result<Matrix> {
        let t = params.get(name)?;
        let (rows, cols) = match t.dims() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            other => anyhow::bail!("weight `{name}` has shape {other:?}"),
        };
        Ok(Matrix {
            rows,
            cols,
            data: t.flatten_all()?.to_vec1()?,
        })
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// `out += x · self[offset .. offset + x.len()]`.
    fn add_product(&self, x: &[f32], offset: usize, out: &mut [f32]) {
        for (i, &xi) in x.iter().enumerate() {
            if xi != 0.0 {
                for (o, w) in out.iter_mut().zip(self.row(offset + i)) {
                    *o += xi * w;
                }
            }
        }
    }

    fn apply(&self, x: &[f32], bias: Option<&Matrix>) -> Vec<f32> {
        let mut out = bias.map_or_else(|| vec![0.0; self.cols], |b| b.data.clone());
        self.add_product(x, 0, &mut out);
        out
    }
}

fn relu(mut x: Vec<f32>) -> Vec<f32> {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
    x
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `Σ_i relu(a_i + b_i + c_i)·w_i`, the output layer of a slot: summed in eight lanes so
/// that it compiles to vector instructions (the hot loop of mining; it differs from a
/// sequential sum by rounding only).
fn relu_dot(a: &[f32], b: &[f32], c: &[f32], w: &[f32]) -> f32 {
    const LANES: usize = 8;
    let relu = |x: f32| if x > 0.0 { x } else { 0.0 };
    let split = a.len() / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for (((a, b), c), w) in (a[..split].chunks_exact(LANES))
        .zip(b[..split].chunks_exact(LANES))
        .zip(c[..split].chunks_exact(LANES))
        .zip(w[..split].chunks_exact(LANES))
    {
        for k in 0..LANES {
            lanes[k] += relu(a[k] + b[k] + c[k]) * w[k];
        }
    }
    let tail = (split..a.len()).map(|i| relu(a[i] + b[i] + c[i]) * w[i]);
    lanes.iter().sum::<f32>() + tail.sum::<f32>()
}

/// One request under the evaluator: a [`ListModel`] whose value is `V(list)`.
pub struct RequestScorer {
    /// Per candidate: the prefix-independent part of the output layer's pre-activation.
    base: Vec<Vec<f32>>,
    keys: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    /// Per candidate j, once j is first placed: what it adds to every candidate's output
    /// pre-activation below it (`N × H`). A search places the same few items in many
    /// prefixes, so each is computed once per request rather than once per push.
    below: Vec<OnceLock<Vec<f32>>>,
    /// Per slot: the position's contribution to the output pre-activation.
    positions: Vec<Vec<f32>>,
    /// Per candidate j: what `v_j` adds to the output pre-activation through the
    /// interaction sum, `Σ_i v_j[i]·W_m[i]` (the sum is linear in the values).
    interaction_rows: Vec<Vec<f32>>,
    /// Per categorical feature: the output layer's row reading its same-id count.
    same_above: Matrix,
    /// Per candidate, its id pairs' query and key rows, one `embed`-wide block per
    /// categorical feature (`Dims::pairs`; empty without), and the output layer's rows
    /// reading each feature's affinity `query_a·key_j`.
    pair_queries: Vec<Vec<f32>>,
    pair_keys: Vec<Vec<f32>>,
    pair_rows: Matrix,
    /// Width of an id's embedding, and of each block of `pair_queries`, `pair_keys`.
    embed: usize,
    /// What an empty prefix adds to a candidate's output layer: `H` zeros.
    nothing_above: Vec<f32>,
    /// Off: nothing placed above a slot changes it (`Dims::interactions`).
    interactions: bool,
    /// The cascade's probabilities of reading on after a click and after a skip
    /// (`Dims::examination`); `None`: every slot is examined.
    continuation: Option<(f32, f32)>,
    hidden: usize,
    /// Each candidate's categorical ids, for the same-id counts.
    ids: Vec<Vec<i64>>,
    out_w2: Vec<f32>,
    out_b2: f32,
    scale: f32,
    /// Per candidate: the objective's reward of a click on it (the value network included).
    reward_of_click: Vec<f32>,
}

/// A prefix: the candidates placed so far, in order, for every candidate what they add
/// to its output layer's pre-activation (`N × H`, empty before the first item), and the
/// probability that the user reads the next slot.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub items: Vec<usize>,
    above: Vec<f32>,
    examine: f32,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix {
            items: Vec::new(),
            above: Vec::new(),
            examine: 1.0,
        }
    }
}

impl RequestScorer {
    pub fn new(evaluator: &Evaluator, request: &LoggedRequest) -> anyhow::Result<RequestScorer> {
        let p = &evaluator.params;
        let dims = &evaluator.spec.dims;
        let map = &evaluator.spec.features;
        let (h, a) = (dims.hidden, dims.attention);
        let m = |name: &str| Matrix::of(p, name);
        // A row of dense features followed by each id's embedding in `table.{j}` (each
        // table read once per call, not once per row).
        let embedded = |rows: Vec<(Vec<f32>, Vec<u32>)>, table: &str| {
            let fields = rows.first().map_or(0, |(_, ids)| ids.len());
            let tables = (0..fields)
                .map(|j| m(&format!("{table}.{j}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok(
                (rows.into_iter())
                    .map(|(mut x, ids)| {
                        for (t, &id) in tables.iter().zip(&ids) {
                            x.extend_from_slice(t.row(id as usize));
                        }
                        x
                    })
                    .collect::<Vec<_>>(),
            )
        };
        // The context's and every candidate's input rows, for the click model's and the
        // value network's embeddings alike.
        let (mut dense, mut ids) = (Vec::new(), Vec::new());
        map.context_dense(&request.context.dense, &mut dense);
        map.context_ids(&request.context.categorical, &mut ids);
        let context_row = (dense, ids);
        let mut all_dense = Vec::new();
        map.candidates_dense(request, &mut all_dense);
        let width = map.candidate_width();
        let candidate_rows: Vec<(Vec<f32>, Vec<u32>)> = (request.candidates.iter().enumerate())
            .map(|(i, c)| {
                let mut ids = Vec::new();
                map.candidate_ids(&c.features.categorical, &mut ids);
                (all_dense[i * width..(i + 1) * width].to_vec(), ids)
            })
            .collect();
        let context_input = |table: &str| {
            let mut rows = embedded(vec![context_row.clone()], table)?;
            anyhow::Ok(rows.pop().unwrap_or_default())
        };
        let candidate_inputs = |table: &str| embedded(candidate_rows.clone(), table);
        let context_linear =
            m("context.w1")?.apply(&context_input("emb.context")?, Some(&m("context.b1")?));
        let context = relu(context_linear.clone());
        // The context's side of c ⊙ x (model.rs, `Dims::bilinear`).
        let affinity_side = if dims.bilinear {
            &context_linear
        } else {
            &context
        };
        let (w1, b1, w2, b2) = (m("item.w1")?, m("item.b1")?, m("item.w2")?, m("item.b2")?);
        let items: Vec<Vec<f32>> = (candidate_inputs("emb.candidate")?.iter())
            .map(|x| w2.apply(&relu(w1.apply(x, Some(&b1))), Some(&b2)))
            .collect();
        let mut pool = vec![0.0; h];
        for item in &items {
            pool.iter_mut().zip(item).for_each(|(p, x)| *p += x);
        }
        pool.iter_mut().for_each(|p| *p /= items.len() as f32);

        let out_w1 = m("out.w1")?;
        // Row blocks of out.w1, in the order model.rs concatenates: x, m, c, pool, pos, c⊙x.
        let (x_rows, m_rows, c_rows, pool_rows, pos_rows, cx_rows) =
            (0, h, h + a, 2 * h + a, 3 * h + a, 4 * h + a);
        let mut shared = m("out.b1")?.data;
        out_w1.add_product(&context, c_rows, &mut shared);
        out_w1.add_product(&pool, pool_rows, &mut shared);
        let base = items
            .iter()
            .map(|x| {
                let mut out = shared.clone();
                out_w1.add_product(x, x_rows, &mut out);
                let cx: Vec<f32> = affinity_side.iter().zip(x).map(|(c, x)| c * x).collect();
                out_w1.add_product(&cx, cx_rows, &mut out);
                out
            })
            .collect();
        let position = m("position")?;
        let positions = (0..position.rows)
            .map(|t| {
                let mut out = vec![0.0; h];
                out_w1.add_product(position.row(t), pos_rows, &mut out);
                out
            })
            .collect();
        let project = |name: &str| -> anyhow::Result<Vec<Vec<f32>>> {
            let w = m(name)?;
            Ok(items.iter().map(|x| w.apply(x, None)).collect())
        };
        let rows = |from: usize, count: usize| Matrix {
            rows: count,
            cols: h,
            data: out_w1.data[from * h..(from + count) * h].to_vec(),
        };
        // The value network, as model.rs's `value_network`: the amount (softplus, or with
        // `value_parts` log-normal: exp(μ + σ²/2)), times the purchase probability with
        // `purchases` (with `value_parts`, from the buy network's own hidden layer).
        let hidden_layer = |trunk: &str| -> anyhow::Result<Vec<Vec<f32>>> {
            let context = m(&format!("{trunk}.context.w1"))?.apply(
                &context_input(&format!("{trunk}.emb.context"))?,
                Some(&m(&format!("{trunk}.b1"))?),
            );
            let item = m(&format!("{trunk}.item.w1"))?;
            let inputs = candidate_inputs(&format!("{trunk}.emb.candidate"))?;
            Ok((inputs.iter())
                .map(|x| {
                    let mut hidden = context.clone();
                    item.add_product(x, 0, &mut hidden);
                    relu(hidden)
                })
                .collect())
        };
        let amount_hidden = hidden_layer("value")?;
        let (value_w2, value_b2) = (m("value.w2")?, m(AMOUNT_BIAS)?);
        let half_variance = (dims.parts())
            .then(|| anyhow::Ok(0.5 * f64::from(m(AMOUNT_LOG_VARIANCE)?.data[0]).exp()))
            .transpose()?;
        let buy = (dims.purchases)
            .then(|| {
                let hidden = if dims.parts() {
                    hidden_layer(BUY_NETWORK)?
                } else {
                    amount_hidden.clone()
                };
                anyhow::Ok((hidden, m(BUY_WEIGHTS)?, m(BUY_BIAS)?))
            })
            .transpose()?;
        let reward_of_click = (amount_hidden.iter().enumerate())
            .map(|(i, hidden)| {
                let z = f64::from(dot(hidden, &value_w2.data) + value_b2.data[0]);
                let mut value = match half_variance {
                    Some(half_variance) => (z + half_variance).exp(),
                    None => z.max(0.0) + (-z.abs()).exp().ln_1p(),
                };
                if let Some((hidden, w, b)) = &buy {
                    value *= sigmoid(f64::from(dot(&hidden[i], &w.data) + b.data[0]));
                }
                evaluator.reward_of_click(value) as f32
            })
            .collect();
        let fields = map.candidate_vocab.len();
        let (interaction, same_above) = (rows(m_rows, a), rows(5 * h + a, fields));
        let pair_width = model::pair_width(dims, fields);
        let pair_rows = rows(5 * h + a + fields, pair_width);
        // Each candidate's ids alone, embedded: its pairs' rows, one block per feature.
        let pair_side = |side: &str| {
            if pair_width == 0 {
                return anyhow::Ok(vec![Vec::new(); candidate_rows.len()]);
            }
            let ids = (candidate_rows.iter()).map(|(_, ids)| (Vec::new(), ids.clone()));
            embedded(ids.collect(), &format!("pair.{side}"))
        };
        let values = project("att.v")?;
        let interaction_rows = values
            .iter()
            .map(|v| {
                let mut out = vec![0.0; h];
                interaction.add_product(v, 0, &mut out);
                out
            })
            .collect();
        Ok(RequestScorer {
            below: (0..items.len()).map(|_| OnceLock::new()).collect(),
            pair_queries: pair_side("query")?,
            pair_keys: pair_side("key")?,
            pair_rows,
            embed: dims.embed,
            base,
            keys: project("att.k")?,
            queries: project("att.q")?,
            positions,
            interaction_rows,
            same_above,
            hidden: h,
            nothing_above: vec![0.0; h],
            interactions: dims.interactions,
            continuation: evaluator
                .continuation()?
                .map(|[click, skip]| (click as f32, skip as f32)),
            ids: request
                .candidates
                .iter()
                .map(|c| c.features.categorical.clone())
                .collect(),
            out_w2: m("out.w2")?.data,
            out_b2: m("out.b2")?.data[0],
            scale: 1.0 / (a as f32).sqrt(),
            reward_of_click,
        })
    }

    /// Click probability of candidate `a` in the slot after `prefix`: the probability
    /// that the user reads the slot times `a`'s attraction there.
    pub fn click_probability(&self, prefix: &Prefix, a: usize) -> f32 {
        prefix.examine * self.attraction(prefix, a)
    }

    /// The expected reward of `a` in the slot after `prefix`, given its `attraction`.
    fn expected_reward(&self, prefix: &Prefix, attraction: f32, a: usize) -> f64 {
        f64::from(prefix.examine * attraction * self.reward_of_click[a])
    }

    /// Click probability of candidate `a` in the slot after `prefix` if the user reads it.
    /// Slots past the longest logged list reuse the last position.
    fn attraction(&self, prefix: &Prefix, a: usize) -> f32 {
        let h = self.hidden;
        let above = prefix.above.get(a * h..(a + 1) * h);
        self.click_probability_at(prefix.items.len(), above, a)
    }

    /// A pointwise scorer's gains (`Dims::interactions` off: nothing above a slot changes
    /// them), `[slot][candidate]` for every position it knows; `None` for a list-aware one.
    pub fn pointwise_gains(&self) -> Option<Vec<Vec<f64>>> {
        let n = self.base.len();
        (!self.interactions).then(|| {
            (0..self.positions.len())
                .map(|t| {
                    (0..n)
                        .map(|a| {
                            let p = self.click_probability_at(t, None, a);
                            f64::from(p * self.reward_of_click[a])
                        })
                        .collect()
                })
                .collect()
        })
    }

    fn click_probability_at(&self, slot: usize, above: Option<&[f32]>, a: usize) -> f32 {
        let t = slot.min(self.positions.len() - 1);
        let above = above.unwrap_or(&self.nothing_above);
        let logit = self.out_b2 + relu_dot(&self.base[a], &self.positions[t], above, &self.out_w2);
        sigmoid(f64::from(logit)) as f32
    }
}

impl ListModel for RequestScorer {
    type State = Prefix;

    fn candidates(&self) -> usize {
        self.base.len()
    }

    fn initial(&self) -> Prefix {
        Prefix::default()
    }

    /// The slot's expected reward: P(click) times the reward of a click on `a`.
    fn gain(&self, state: &Prefix, a: usize) -> f64 {
        self.expected_reward(state, self.attraction(state, a), a)
    }

    fn push(&self, state: &mut Prefix, j: usize) {
        self.push_scored(state, j);
    }
}

impl RequestScorer {
    /// Places `j` next: adds what it contributes to every candidate below it
    /// (`added_below`) and its chance of stopping the user. Returns its gain in the slot
    /// ([`ListModel::gain`] before the push, to the bit), which the push computes anyway:
    /// the ensemble keeps each member's value of the prefix from it.
    pub fn push_scored(&self, state: &mut Prefix, j: usize) -> f64 {
        let q = self.attraction(state, j);
        let gain = self.expected_reward(state, q, j);
        if let Some((after_click, after_skip)) = self.continuation {
            state.examine *= q * after_click + (1.0 - q) * after_skip;
        }
        state.items.push(j);
        if !self.interactions {
            return gain;
        }
        let (n, h) = (self.base.len(), self.hidden);
        state.above.resize(n * h, 0.0);
        let below = self.below[j].get_or_init(|| self.added_below(j));
        for (above, add) in state.above.iter_mut().zip(below) {
            *above += add;
        }
        gain
    }

    /// What `j` placed above adds to each candidate's output pre-activation, `N × H`: its
    /// value through the causal interaction sum (weight `σ(q_a·k_j/√A)`), the same-id
    /// row of each categorical feature whose id it shares, and its id pairs' term.
    fn added_below(&self, j: usize) -> Vec<f32> {
        let h = self.hidden;
        let mut out = vec![0.0; self.base.len() * h];
        for (a, row) in out.chunks_exact_mut(h).enumerate() {
            let weight = sigmoid(f64::from(dot(&self.queries[a], &self.keys[j]) * self.scale));
            row.iter_mut()
                .zip(&self.interaction_rows[j])
                .for_each(|(x, v)| *x += weight as f32 * v);
            for (f, (id_a, id_j)) in self.ids[a].iter().zip(&self.ids[j]).enumerate() {
                if id_a == id_j {
                    row.iter_mut()
                        .zip(self.same_above.row(f))
                        .for_each(|(x, w)| *x += w);
                }
            }
            let pairs = (self.pair_queries[a].chunks_exact(self.embed))
                .zip(self.pair_keys[j].chunks_exact(self.embed));
            for (f, (query, key)) in pairs.enumerate() {
                let affinity = dot(query, key);
                row.iter_mut()
                    .zip(self.pair_rows.row(f))
                    .for_each(|(x, w)| *x += affinity * w);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::relu_dot;

    /// The eight-lane sum equals the sequential one to rounding, on lengths with and
    /// without a tail, and takes the pre-activations' ReLU.
    #[test]
    fn relu_dot_is_the_output_layers_sum() {
        for len in [0, 3, 8, 13, 64] {
            let row = |k: f32| -> Vec<f32> { (0..len).map(|i| ((i as f32) * k).sin()).collect() };
            let (a, b, c, w) = (row(1.3), row(0.7), row(-2.1), row(0.4));
            let sequential: f32 = (0..len).map(|i| (a[i] + b[i] + c[i]).max(0.0) * w[i]).sum();
            let lanes = relu_dot(&a, &b, &c, &w);
            assert!(
                (lanes - sequential).abs() <= 1e-5,
                "{len}: {lanes} vs {sequential}"
            );
        }
        let negative = vec![-1.0; 9];
        assert_eq!(relu_dot(&negative, &negative, &negative, &[1.0; 9]), 0.0);
    }
}
