//! [`Ops`] on candle tensors: the generator's one forward definition, differentiable. The
//! same code emits the ONNX graph (`network::onnx`), so what is trained is what is
//! served.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use crate::network::{Ops, Param, Weights};

/// The generator's weights as trainable variables, by parameter name.
pub struct CandleOps {
    pub vars: HashMap<&'static str, Var>,
}

/// Categorical ids of `rows` rows, `cols` features each, already mapped into the vocabulary.
pub struct Ids {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u32>,
}

fn params(weights: &Weights) -> Vec<&Param> {
    let w = weights;
    let mut all = vec![
        &w.b_ctx,
        &w.w_item,
        &w.b_item,
        &w.w_v,
        &w.w_o,
        &w.w_ff1,
        &w.b_ff1,
        &w.w_ff2,
        &w.w_key,
        &w.w_value,
        &w.w_state,
        &w.b_state,
        &w.w_dec_state,
        &w.w_dec_prev,
        &w.b_dec,
        &w.w_dec_query,
    ];
    all.extend(w.mixer.params());
    all.extend(w.w_ctx.as_ref());
    all.extend(w.ctx_embedding.as_ref().map(|e| &e.table));
    all.extend(w.cand_embedding.as_ref().map(|e| &e.table));
    all
}

fn params_mut(weights: &mut Weights) -> Vec<&mut Param> {
    let w = weights;
    let mut all = vec![
        &mut w.b_ctx,
        &mut w.w_item,
        &mut w.b_item,
        &mut w.w_v,
        &mut w.w_o,
        &mut w.w_ff1,
        &mut w.b_ff1,
        &mut w.w_ff2,
        &mut w.w_key,
        &mut w.w_value,
        &mut w.w_state,
        &mut w.b_state,
        &mut w.w_dec_state,
        &mut w.w_dec_prev,
        &mut w.b_dec,
        &mut w.w_dec_query,
    ];
    all.extend(w.mixer.params_mut());
    all.extend(w.w_ctx.as_mut());
    all.extend(w.ctx_embedding.as_mut().map(|e| &mut e.table));
    all.extend(w.cand_embedding.as_mut().map(|e| &mut e.table));
    all
}

impl CandleOps {
    pub fn new(weights: &Weights) -> candle_core::Result<CandleOps> {
        let vars = params(weights)
            .into_iter()
            .map(|p| {
                let var = Var::from_vec(p.data.clone(), (p.rows, p.cols), &Device::Cpu)?;
                Ok((p.name, var))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CandleOps { vars })
    }

    pub fn all(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }

    /// Copies the trained values back into `weights`.
    pub fn store(&self, weights: &mut Weights) -> candle_core::Result<()> {
        for p in params_mut(weights) {
            p.data = self.vars[p.name].as_tensor().flatten_all()?.to_vec1()?;
        }
        Ok(())
    }

    fn var(&self, p: &Param) -> Tensor {
        self.vars[p.name].as_tensor().clone()
    }
}

/// Ops cannot fail in the trait's signature; a shape error here is a bug in the network
/// definition, which the parity tests catch.
fn ok(result: candle_core::Result<Tensor>) -> Tensor {
    result.expect("generator ops on consistent shapes")
}

impl Ops for CandleOps {
    type Mat = Tensor;
    type Ids = Ids;

    fn param(&mut self, p: &Param) -> Tensor {
        self.var(p)
    }
    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        ok(a.matmul(b))
    }
    fn matmul_t(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        ok(b.t().and_then(|bt| a.matmul(&bt)))
    }
    fn transpose(&mut self, a: &Tensor) -> Tensor {
        ok(a.t())
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
        // Not softmax_last_dim: that fused op has no backward pass.
        ok(candle_nn::ops::softmax(a, 1))
    }
    fn mean_rows(&mut self, a: &Tensor) -> Tensor {
        ok(a.mean_keepdim(0))
    }
    fn concat_cols(&mut self, parts: &[Tensor]) -> Tensor {
        ok(Tensor::cat(parts, 1))
    }
    fn embed(&mut self, ids: &Ids, table: &Param, offsets: &[i64]) -> Tensor {
        let rows: Vec<u32> = ids
            .data
            .iter()
            .enumerate()
            .map(|(i, &id)| (i64::from(id) + offsets[i % ids.cols]) as u32)
            .collect();
        let width = table.cols;
        ok(Tensor::from_vec(rows, ids.rows * ids.cols, &Device::Cpu)
            .and_then(|index| self.var(table).index_select(&index, 0))
            .and_then(|e| e.reshape((ids.rows, ids.cols * width))))
    }
}
