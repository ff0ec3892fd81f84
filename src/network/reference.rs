//! The reference forward pass: plain matrices, no graph. Tests hold the exported ONNX graph
//! (run by tract) to this within 1e-5.

use tract_onnx::prelude::tract_ndarray::{concatenate, Array2, Axis};

use super::{EncoderInputs, Folded, Ops, Param, Weights};
use crate::contract::FeatureSchema;
use crate::rerank::decode::{pointer_logits, StepModel};
use crate::rerank::RerankInput;

/// Evaluates [`Ops`] eagerly on `Array2<f32>`.
#[derive(Debug, Default)]
pub struct Eager;

impl Ops for Eager {
    type Mat = Array2<f32>;
    type Ids = Array2<i64>;

    fn param(&mut self, p: &Param) -> Array2<f32> {
        Array2::from_shape_vec((p.rows, p.cols), p.data.clone()).expect("param shape")
    }
    fn matmul(&mut self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        a.dot(b)
    }
    fn matmul_t(&mut self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        a.dot(&b.t())
    }
    fn transpose(&mut self, a: &Array2<f32>) -> Array2<f32> {
        a.t().to_owned()
    }
    fn add(&mut self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        a + b
    }
    fn scale(&mut self, a: &Array2<f32>, factor: f32) -> Array2<f32> {
        a * factor
    }
    fn relu(&mut self, a: &Array2<f32>) -> Array2<f32> {
        a.mapv(|v| v.max(0.0))
    }
    fn tanh(&mut self, a: &Array2<f32>) -> Array2<f32> {
        a.mapv(f32::tanh)
    }
    fn softmax_rows(&mut self, a: &Array2<f32>) -> Array2<f32> {
        let mut out = a.clone();
        for mut row in out.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        out
    }
    fn mean_rows(&mut self, a: &Array2<f32>) -> Array2<f32> {
        a.mean_axis(Axis(0))
            .expect("non-empty")
            .insert_axis(Axis(0))
    }
    fn concat_cols(&mut self, parts: &[Array2<f32>]) -> Array2<f32> {
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(1), &views).expect("same row count")
    }
    fn embed(&mut self, ids: &Array2<i64>, table: &Param, offsets: &[i64]) -> Array2<f32> {
        let width = table.cols;
        let mut out = Array2::zeros((ids.nrows(), ids.ncols() * width));
        for ((r, j), &id) in ids.indexed_iter() {
            let row = (id + offsets[j]) as usize;
            let src = &table.data[row * width..(row + 1) * width];
            for (e, &v) in src.iter().enumerate() {
                out[[r, j * width + e]] = v;
            }
        }
        out
    }
}

/// The reference network over one request, stepped like the served model.
pub struct ReferenceSteps<'w> {
    weights: &'w Weights,
    fold: Option<&'w Folded>,
    keys: Array2<f32>,
    values: Array2<f32>,
    state: Array2<f32>,
    logits: Vec<f32>,
}

impl<'w> ReferenceSteps<'w> {
    /// Encodes the request's candidates.
    pub fn new(weights: &'w Weights, schema: &FeatureSchema, input: &RerankInput) -> Self {
        Self::with_fold(weights, None, schema, input)
    }

    /// The same network laid out as the exported graphs are ([`Folded`]) when `fold` is set.
    pub fn with_fold(
        weights: &'w Weights,
        fold: Option<&'w Folded>,
        schema: &FeatureSchema,
        input: &RerankInput,
    ) -> Self {
        let n = input.candidates();
        let mat = |rows, cols, data: &[f32]| {
            Array2::from_shape_vec((rows, cols), data.to_vec()).expect("validated input")
        };
        let ids = |rows, cols, data: &[i64]| {
            Array2::from_shape_vec((rows, cols), data.to_vec()).expect("validated input")
        };
        let ctx_dense = mat(1, schema.context_dense.len(), &input.context_dense);
        let ctx_ids = ids(1, schema.context_categorical.len(), &input.context_ids);
        let cand_dense = mat(n, schema.candidate_dense.len(), &input.candidate_dense);
        let cand_ids = ids(n, schema.candidate_categorical.len(), &input.candidate_ids);
        let upstream = mat(n, input.upstream.len() / n, &input.upstream);
        let present = |width: usize| width > 0;
        let encoded = weights.encode_as(
            &mut Eager,
            EncoderInputs {
                ctx_dense: present(ctx_dense.ncols()).then_some(&ctx_dense),
                ctx_ids: present(ctx_ids.ncols()).then_some(&ctx_ids),
                cand_dense: present(cand_dense.ncols()).then_some(&cand_dense),
                upstream: present(upstream.ncols()).then_some(&upstream),
                cand_ids: present(cand_ids.ncols()).then_some(&cand_ids),
            },
            fold,
        );
        ReferenceSteps {
            weights,
            fold,
            keys: encoded.keys,
            values: encoded.values,
            state: encoded.state,
            logits: Vec::with_capacity(n),
        }
    }
}

impl StepModel for ReferenceSteps<'_> {
    type Error = std::convert::Infallible;

    fn next_logits(&mut self, prev: Option<usize>) -> Result<&[f32], Self::Error> {
        let prev_value = match prev {
            Some(i) => self.values.row(i).to_owned().insert_axis(Axis(0)),
            None => Array2::zeros((1, self.weights.dims.hidden)),
        };
        let (query, next) = self
            .weights
            .step_as(&mut Eager, &self.state, &prev_value, self.fold);
        self.state = next;
        let keys = self.keys.as_slice().expect("standard layout");
        let query = query.as_slice().expect("standard layout");
        pointer_logits(keys, query, &mut self.logits);
        Ok(&self.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::export::default_schema;
    use crate::network::{Dims, Mixer};
    use crate::rerank::decode::StepModel;
    use crate::rerank::synthetic;

    #[test]
    fn the_folded_layout_computes_the_trained_networks_logits() {
        let schema = default_schema();
        let mixers = [Mixer::Attention, Mixer::Mean, Mixer::Induced];
        for (seed, mixer) in (0..6).zip(mixers.into_iter().cycle()) {
            let dims = Dims {
                hidden: 16,
                embed: 4,
                mixer,
            };
            let weights = Weights::init(&schema, dims, seed);
            let fold = Folded::new(&weights);
            for input in synthetic::requests(&schema, 40) {
                let mut trained = ReferenceSteps::new(&weights, &schema, &input);
                let mut folded = ReferenceSteps::with_fold(&weights, Some(&fold), &schema, &input);
                // Any prefix will do: walk the candidates in order.
                let n = input.candidates();
                for prev in std::iter::once(None).chain((0..n.min(8)).map(Some)) {
                    let want = trained.next_logits(prev).unwrap().to_vec();
                    let got = folded.next_logits(prev).unwrap();
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
                    }
                }
            }
        }
    }
}
