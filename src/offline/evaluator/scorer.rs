//! The evaluator's network evaluated incrementally in plain Rust, for search: everything
//! that does not depend on the prefix is computed once per request, so the value of
//! appending a candidate costs one pass over the prefix plus one small MLP.
//! `tests/evaluator.rs` holds it equal to the training forward (`model::slot_outputs`).

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

/// One request under the evaluator: a [`ListModel`] whose value is `V(list)`.
pub struct RequestScorer {
    /// Per candidate: the prefix-independent part of the output layer's pre-activation.
    base: Vec<Vec<f32>>,
    keys: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per slot: the position's contribution to the output pre-activation.
    positions: Vec<Vec<f32>>,
    /// Rows of the output layer that read the interaction sum `m`, and the same-id counts.
    interaction: Matrix,
    same_above: Matrix,
    /// Each candidate's categorical ids, for the same-id counts.
    ids: Vec<Vec<i64>>,
    out_w2: Vec<f32>,
    out_b2: f32,
    scale: f32,
    /// Per candidate: the objective's reward of a click on it (value head included).
    reward_of_click: Vec<f32>,
}

/// A prefix: the candidates placed so far, in order.
#[derive(Debug, Clone, Default)]
pub struct Prefix {
    pub items: Vec<usize>,
}

impl RequestScorer {
    pub fn new(evaluator: &Evaluator, request: &LoggedRequest) -> anyhow::Result<RequestScorer> {
        let p = &evaluator.params;
        let dims = &evaluator.spec.dims;
        let map = &evaluator.spec.features;
        let (h, a) = (dims.hidden, dims.attention);
        let m = |name: &str| Matrix::of(p, name);
        let embedded = |dense: Vec<f32>, ids: Vec<u32>, table: &str| -> anyhow::Result<Vec<f32>> {
            let mut x = dense;
            for (j, &id) in ids.iter().enumerate() {
                x.extend_from_slice(m(&format!("{table}.{j}"))?.row(id as usize));
            }
            Ok(x)
        };
        let (mut dense, mut ids) = (Vec::new(), Vec::new());
        map.context_dense(&request.context.dense, &mut dense);
        map.context_ids(&request.context.categorical, &mut ids);
        let context = relu(m("context.w1")?.apply(
            &embedded(dense, ids, "emb.context")?,
            Some(&m("context.b1")?),
        ));
        let (w1, b1, w2, b2) = (m("item.w1")?, m("item.b1")?, m("item.w2")?, m("item.b2")?);
        let mut all_dense = Vec::new();
        map.candidates_dense(request, &mut all_dense);
        let width = map.candidate_width();
        let items: Vec<Vec<f32>> = request
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let dense = all_dense[i * width..(i + 1) * width].to_vec();
                let mut ids = Vec::new();
                map.candidate_ids(&c.features.categorical, &mut ids);
                let x = embedded(dense, ids, "emb.candidate")?;
                Ok(w2.apply(&relu(w1.apply(&x, Some(&b1))), Some(&b2)))
            })
            .collect::<anyhow::Result<_>>()?;
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
                let cx: Vec<f32> = context.iter().zip(x).map(|(c, x)| c * x).collect();
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
        let (value_w, value_b) = (m("value.w")?, m("value.b")?);
        let reward_of_click = items
            .iter()
            .map(|x| {
                let cx: Vec<f32> = context.iter().zip(x).map(|(c, x)| c * x).collect();
                let z = dot(x, &value_w.data[..h]) + dot(&cx, &value_w.data[h..]) + value_b.data[0];
                let value = f64::from(z.max(0.0)) + (-f64::from(z.abs())).exp().ln_1p();
                evaluator.reward_of_click(value) as f32
            })
            .collect();
        let fields = map.candidate_vocab.len();
        let (interaction, same_above) = (rows(m_rows, a), rows(5 * h + a, fields));
        Ok(RequestScorer {
            base,
            keys: project("att.k")?,
            queries: project("att.q")?,
            values: project("att.v")?,
            positions,
            interaction,
            same_above,
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

    /// Click probability of candidate `a` in the slot after `prefix`. Slots past the
    /// longest logged list reuse the last position.
    pub fn click_probability(&self, prefix: &[usize], a: usize) -> f32 {
        let mut pre = self.base[a].clone();
        let t = prefix.len().min(self.positions.len() - 1);
        pre.iter_mut()
            .zip(&self.positions[t])
            .for_each(|(p, x)| *p += x);
        if !prefix.is_empty() {
            let mut m = vec![0.0; self.interaction.rows];
            for &j in prefix {
                let weight =
                    sigmoid(f64::from(dot(&self.queries[a], &self.keys[j]) * self.scale)) as f32;
                m.iter_mut()
                    .zip(&self.values[j])
                    .for_each(|(m, v)| *m += weight * v);
            }
            self.interaction.add_product(&m, 0, &mut pre);
            let same: Vec<f32> = (0..self.same_above.rows)
                .map(|j| {
                    prefix
                        .iter()
                        .filter(|&&k| self.ids[k][j] == self.ids[a][j])
                        .count() as f32
                })
                .collect();
            self.same_above.add_product(&same, 0, &mut pre);
        }
        let logit: f32 = pre
            .iter()
            .zip(&self.out_w2)
            .map(|(p, w)| p.max(0.0) * w)
            .sum::<f32>()
            + self.out_b2;
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
        f64::from(self.click_probability(&state.items, a) * self.reward_of_click[a])
    }

    fn push(&self, state: &mut Prefix, a: usize) {
        state.items.push(a);
    }
}
