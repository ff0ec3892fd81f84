//! The Lookahead Evaluator's network, written once for training (candle, with autodiff).
//! `scorer.rs` evaluates the same weights incrementally in plain Rust for search.
//!
//! Per request: candidates are embedded (`h`), the context too (`c`), and the candidate set
//! is summarised by a masked mean (`pool`). Along a list, slot t sees its item `x_t`, a
//! strictly causal interaction sum `m_t = Σ_{k<t} σ(q_t·k_k/√A)·v_k` (a sum, not an average,
//! so it can count repeated categories above), its position, `c`, `pool`, `c ⊙ x_t`, and
//! for each categorical feature the number of items above with the same id and (id pairs)
//! its id's learned affinity to the ids above.
//! The slot's click logit comes from a one-hidden-layer MLP over those. A separate network
//! (the `value.` weights: its own embeddings, one hidden layer over the item's and the
//! context's features; a softplus for a purchase's amount, a logit for whether the click
//! buys) predicts the value of a click on the item, in units of the training data's mean
//! value per click; sharing no weight with the click model, it
//! can stop at its own best epoch (`train.rs`). A slot's expected reward is
//! `p_t · (clicks + value·v_t)` under the objective, and `V(s_t)` sums it over the prefix
//! (docs/offline.md, "The Lookahead Evaluator": the per-step form).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::batch::Batch;

/// Layer sizes; stored with the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    pub context_dense: usize,
    pub candidate_dense: usize,
    pub embed: usize,
    pub hidden: usize,
    pub attention: usize,
    pub max_slots: usize,
    /// A slot sees the items above it (the interaction sum and the same-id counts). Off:
    /// a position-aware pointwise model, which cannot credit a list with effects between
    /// its items (the gate's pointwise judges).
    #[serde(default = "interactions_default")]
    pub interactions: bool,
    /// The user reads the list top-down and may stop (a cascade): a slot's click needs it
    /// examined, and whether the user reads on depends on a click there (`exam.click`,
    /// `exam.skip`: the continuation probabilities). Off in evaluators saved before it.
    #[serde(default)]
    pub examination: bool,
    /// A click's value is a purchase's amount times whether it buys (`value.buy.`: a
    /// logit): two parts, fitted by the purchase's likelihood and by the amount's squared
    /// error where something was bought. Off in evaluators saved before it: one softplus
    /// fitted to every click's value.
    #[serde(default)]
    pub purchases: bool,
    /// For each categorical feature, a slot also sees `Σ_{k above} P[id_t]·Q[id_k]`
    /// (`pair.query.j`, `pair.key.j`: `embed`-wide tables), a learned affinity between its
    /// id and each id above: which ids lift or damp which ids below them (complements,
    /// substitutes), where the same-id count knows only equal ids. Off in evaluators
    /// saved before it.
    #[serde(default)]
    pub pairs: bool,
    /// The context's side of `c ⊙ x_t` is its layer *before* the ReLU: a linear map of the
    /// context, so the product is a bilinear form of user and item, the shape of a
    /// user-item affinity `uᵀWx`, which a rectified side learns only from pairs of units
    /// (docs/offline.md). Off in evaluators saved before it.
    #[serde(default)]
    pub bilinear: bool,
    /// With `purchases`, the two parts are two networks, each stopped at its own best
    /// epoch (`train.rs`): whether a click buys (`value.buy.`: its own embeddings and
    /// hidden layer) and a purchase's amount, log-normal (`value.w2` gives the mean of its
    /// log, `value.amount.log_var` the variance: `E = exp(μ + σ²/2)`), so that a few
    /// purchases spread over a price range fit the amount by its logarithm and a buy
    /// network that finds nothing to learn stays at the logs' purchase share
    /// (docs/offline.md, "The objective"). Off in evaluators saved before it: one hidden
    /// layer under both parts and a softplus amount fitted by its squared error.
    #[serde(default)]
    pub value_parts: bool,
}

impl Dims {
    /// The value network is two, buy and log-normal amount (`value_parts`, with purchases).
    pub fn parts(&self) -> bool {
        self.purchases && self.value_parts
    }
}

/// Evaluators saved before the flag existed saw the items above.
fn interactions_default() -> bool {
    true
}

/// Named weights. Matrices are `[in, out]`, so a layer is `x · W + b`.
pub struct Params {
    pub vars: Vec<(String, Var)>,
}

impl Params {
    /// Xavier-uniform matrices, small normal embeddings, zero biases; `output_bias` starts
    /// the click logit at the base rate.
    pub fn init(
        dims: &Dims,
        context_vocab: &[u64],
        candidate_vocab: &[u64],
        output_bias: f32,
        seed: u64,
    ) -> candle_core::Result<Params> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vars = Vec::new();
        let mut matrix = |name: String, rows: usize, cols: usize, rng: &mut StdRng| {
            let bound = (6.0 / (rows + cols) as f32).sqrt();
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            Var::from_vec(data, (rows, cols), &Device::Cpu).map(|v| vars.push((name, v)))
        };
        let h = dims.hidden;
        let e = dims.embed;
        let item_in = dims.candidate_dense + e * candidate_vocab.len();
        let context_in = dims.context_dense + e * context_vocab.len();
        // One table per categorical feature (its ids and the unknown row): name and rows.
        let embeddings = |prefix: &str| -> Vec<(String, usize)> {
            let sides = [("context", context_vocab), ("candidate", candidate_vocab)];
            (sides.into_iter())
                .flat_map(|(side, vocabs)| {
                    (vocabs.iter().enumerate()).map(move |(j, &vocab)| {
                        (format!("{prefix}.{side}.{j}"), vocab as usize + 1)
                    })
                })
                .collect()
        };
        for (name, rows) in embeddings("emb") {
            matrix(name, rows, e, &mut rng)?;
        }
        matrix("item.w1".into(), item_in, h, &mut rng)?;
        matrix("item.w2".into(), h, h, &mut rng)?;
        matrix("context.w1".into(), context_in, h, &mut rng)?;
        for name in ["att.q", "att.k", "att.v"] {
            matrix(name.into(), h, dims.attention, &mut rng)?;
        }
        matrix("position".into(), dims.max_slots, h, &mut rng)?;
        let same_above = candidate_vocab.len();
        matrix(
            "out.w1".into(),
            5 * h + dims.attention + same_above + pair_width(dims, candidate_vocab.len()),
            h,
            &mut rng,
        )?;
        if dims.pairs {
            for (j, &vocab) in candidate_vocab.iter().enumerate() {
                matrix(format!("pair.key.{j}"), vocab as usize + 1, e, &mut rng)?;
            }
        }
        matrix("out.w2".into(), h, 1, &mut rng)?;
        for (name, rows) in embeddings("value.emb") {
            matrix(name, rows, e, &mut rng)?;
        }
        let parts = dims.parts();
        for trunk in std::iter::once("value").chain(parts.then_some(BUY_NETWORK)) {
            if trunk != "value" {
                for (name, rows) in embeddings(&format!("{trunk}.emb")) {
                    matrix(name, rows, e, &mut rng)?;
                }
            }
            matrix(format!("{trunk}.item.w1"), item_in, h, &mut rng)?;
            matrix(format!("{trunk}.context.w1"), context_in, h, &mut rng)?;
        }
        matrix("value.w2".into(), h, 1, &mut rng)?;
        if dims.purchases && !parts {
            matrix(BUY_WEIGHTS.into(), h, 1, &mut rng)?;
        }
        let mut params = Params { vars };
        if parts {
            // The buy network starts as the logs' purchase share (its bias, `train.rs`) and
            // departs from it only as far as the held-out purchases support.
            let cpu = &Device::Cpu;
            params
                .vars
                .push((BUY_WEIGHTS.into(), Var::zeros((h, 1), DType::F32, cpu)?));
            let bias = Var::zeros(h, DType::F32, cpu)?;
            params.vars.push((format!("{BUY_NETWORK}.b1"), bias));
            // Set from the logged amounts (`train.rs`), then by each validation.
            let log_var = Var::zeros(1, DType::F32, cpu)?;
            params.vars.push((AMOUNT_LOG_VARIANCE.into(), log_var));
        }
        for (name, size, value) in [
            ("item.b1", h, 0.0),
            ("item.b2", h, 0.0),
            ("context.b1", h, 0.0),
            ("out.b1", h, 0.0),
            ("out.b2", 1, output_bias),
            ("value.b1", h, 0.0),
            // softplus(ln(e − 1)) = 1: a click starts worth the mean value per click.
            (AMOUNT_BIAS, 1, (std::f32::consts::E - 1.0).ln()),
        ] {
            let bias = Var::from_vec(vec![value; size], size, &Device::Cpu)?;
            params.vars.push((name.into(), bias));
        }
        if dims.pairs {
            // Zero queries: the pairs' term starts at nothing (the model is the one without
            // it) and grows only where the clicks ask for it.
            for (j, &vocab) in candidate_vocab.iter().enumerate() {
                let query = Var::zeros((vocab as usize + 1, e), DType::F32, &Device::Cpu)?;
                params.vars.push((format!("pair.query.{j}"), query));
            }
        }
        if dims.purchases {
            // Training starts it at the logs' purchase share (`train.rs`).
            let bias = Var::from_vec(vec![0.0f32], 1, &Device::Cpu)?;
            params.vars.push((BUY_BIAS.into(), bias));
        }
        if dims.examination {
            // σ(3) ≈ 0.95: the cascade starts close to a user who reads everything.
            for name in [CONTINUE_AFTER_CLICK, CONTINUE_AFTER_SKIP] {
                let logit = Var::from_vec(vec![3.0 / CONTINUATION_RATE], 1, &Device::Cpu)?;
                params.vars.push((name.into(), logit));
            }
        }
        Ok(params)
    }

    pub fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("missing weight `{name}`")))
    }

    pub fn set(&self, name: &str, value: &Tensor) -> candle_core::Result<()> {
        let var = (self.vars.iter().find(|(n, _)| n == name))
            .ok_or_else(|| candle_core::Error::Msg(format!("missing weight `{name}`")))?;
        var.1.set(value)
    }

    /// Weights of their own, equal to these now (an average or a snapshot to hold).
    pub fn copy(&self) -> candle_core::Result<Params> {
        let vars = (self.vars.iter())
            .map(|(name, v)| Ok((name.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Params { vars })
    }

    /// Sets every weight to `other`'s, which has the same names in the same order (a
    /// [`Params::copy`] of these).
    pub fn assign(&self, other: &Params) -> candle_core::Result<()> {
        for ((_, target), (_, source)) in self.vars.iter().zip(&other.vars) {
            target.set(source.as_tensor())?;
        }
        Ok(())
    }

    pub fn all(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn save(&self, path: &std::path::Path) -> candle_core::Result<()> {
        let map: HashMap<&str, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&map, path)
    }

    /// Loads weights saved by [`Params::save`] into freshly initialised parameters, checking
    /// that every name and shape matches.
    pub fn load_into(&self, path: &std::path::Path) -> candle_core::Result<()> {
        let saved = candle_core::safetensors::load(path, &Device::Cpu)?;
        for (name, var) in &self.vars {
            let tensor = saved.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: missing weight `{name}`", path.display()))
            })?;
            if tensor.dims() != var.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "{}: weight `{name}` has shape {:?}, expected {:?}",
                    path.display(),
                    tensor.dims(),
                    var.dims()
                )));
            }
            var.set(&tensor.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// Inputs of the output layer that the id pairs take (`Dims::pairs`), after the same-id
/// counts: one per categorical feature. None in a pointwise model, which sees nothing above
/// a slot (the trainer never sets `pairs` without `interactions`).
pub fn pair_width(dims: &Dims, candidate_fields: usize) -> usize {
    if dims.pairs && dims.interactions {
        candidate_fields
    } else {
        0
    }
}

/// Every weight of the value network starts with this (and no other weight does).
pub const VALUE_NETWORK: &str = "value.";
/// The purchase logit's output layer, inside the value network.
pub const BUY_WEIGHTS: &str = "value.buy.w2";
pub const BUY_BIAS: &str = "value.buy.b2";
/// The amount's output bias: `softplus` of it is a purchase's amount before training (with
/// `value_parts`: the mean of its log).
pub const AMOUNT_BIAS: &str = "value.b2";
/// With `value_parts`: the buy network's own weights, and the log-variance of a purchase's
/// log-amount.
pub const BUY_NETWORK: &str = "value.buy";
pub const AMOUNT_LOG_VARIANCE: &str = "value.amount.log_var";
/// Logits of the probability that the user reads on after a click / after a skip.
pub const CONTINUE_AFTER_CLICK: &str = "exam.click";
pub const CONTINUE_AFTER_SKIP: &str = "exam.skip";
/// The continuation logits are stored divided by this: an Adam step moves a weight by about
/// the learning rate, and these two must travel several units of logit in a few hundred
/// steps (a judge trained on a quarter of the logs takes ~40 steps an epoch).
pub const CONTINUATION_RATE: f32 = 10.0;

/// The probability that the user reads on after a click, or after a skip: `σ(rate·θ)`.
pub fn continuation(params: &Params, name: &str) -> candle_core::Result<Tensor> {
    candle_nn::ops::sigmoid(&(params.get(name)? * f64::from(CONTINUATION_RATE))?)
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(w)?.broadcast_add(b)
}

/// Embeds categorical columns (`ids`: `[rows, fields]`, already mapped into the tables) and
/// appends them to the dense features.
fn with_embeddings(
    params: &Params,
    table: &str,
    dense: &Tensor,
    ids: &Tensor,
    fields: usize,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(fields + 1);
    if dense.dim(1)? > 0 {
        parts.push(dense.clone());
    }
    for j in 0..fields {
        let column = ids.narrow(1, j, 1)?.squeeze(1)?;
        parts.push(
            params
                .get(&format!("{table}.{j}"))?
                .index_select(&column, 0)?,
        );
    }
    Tensor::cat(&parts, 1)
}

/// What the evaluator predicts for every slot of every list in the batch, `[B, T]` each.
pub struct SlotOutputs {
    pub click_logits: Tensor,
    pub value: ValueOutputs,
}

/// The value network's part of [`SlotOutputs`].
pub struct ValueOutputs {
    /// Value of a click on the slot's item, in units of the mean value per click.
    pub click_values: Tensor,
    /// With `purchases`: the purchase logit and the amount of a purchase, whose product
    /// (`σ(logit)·amount`) is `click_values`; the value loss fits them.
    pub purchase: Option<(Tensor, Tensor)>,
    /// With `value_parts`: the mean of the amount's log and its log-variance, which the
    /// log-normal likelihood fits instead of the amount.
    pub log_amount: Option<(Tensor, Tensor)>,
}

pub fn slot_outputs(
    params: &Params,
    dims: &Dims,
    batch: &Batch,
) -> candle_core::Result<SlotOutputs> {
    let (b, n, t) = (batch.requests, batch.candidates, batch.slots);
    let relu = |x: Tensor| x.relu();
    let items = with_embeddings(
        params,
        "emb.candidate",
        &batch.candidate_dense,
        &batch.candidate_ids,
        batch.candidate_fields,
    )?;
    let h = relu(linear(
        &items,
        params.get("item.w1")?,
        params.get("item.b1")?,
    )?)?;
    let h = linear(&h, params.get("item.w2")?, params.get("item.b2")?)?; // [B*N, H]
    let hidden = dims.hidden;
    let mask = batch.candidate_mask.unsqueeze(2)?; // [B, N, 1]
    let pool = h
        .reshape((b, n, hidden))?
        .broadcast_mul(&mask)?
        .sum(1)?
        .broadcast_div(&mask.sum(1)?)?; // [B, H]
    let context = with_embeddings(
        params,
        "emb.context",
        &batch.context_dense,
        &batch.context_ids,
        batch.context_fields,
    )?;
    let c_linear = linear(
        &context,
        params.get("context.w1")?,
        params.get("context.b1")?,
    )?;
    let c = relu(c_linear.clone())?;
    let x = h.index_select(&batch.list, 0)?.reshape((b, t, hidden))?;
    let q = x.broadcast_matmul(params.get("att.q")?)?;
    let k = x.broadcast_matmul(params.get("att.k")?)?;
    let v = x.broadcast_matmul(params.get("att.v")?)?;
    let scale = 1.0 / (dims.attention as f64).sqrt();
    let strictly_above =
        (Tensor::tril2(t, DType::F32, &Device::Cpu)? - Tensor::eye(t, DType::F32, &Device::Cpu)?)?;
    let weights = candle_nn::ops::sigmoid(&(q.matmul(&k.t()?.contiguous()?)? * scale)?)?
        .broadcast_mul(&strictly_above)?;
    let m = if dims.interactions {
        weights.matmul(&v)? // [B, T, A]
    } else {
        Tensor::zeros((b, t, dims.attention), DType::F32, &Device::Cpu)?
    };
    let per_slot = |x: &Tensor| x.unsqueeze(1)?.broadcast_as((b, t, hidden))?.contiguous();
    let c_t = per_slot(&c)?;
    let affinity = if dims.bilinear {
        (per_slot(&c_linear)? * &x)?
    } else {
        (&c_t * &x)?
    };
    let position = params
        .get("position")?
        .narrow(0, 0, t)?
        .unsqueeze(0)?
        .broadcast_as((b, t, hidden))?
        .contiguous()?;
    let mut parts = vec![
        x.clone(),
        m,
        c_t.clone(),
        per_slot(&pool)?,
        position,
        affinity,
    ];
    if batch.candidate_fields > 0 {
        parts.push(if dims.interactions {
            batch.same_above.clone()
        } else {
            batch.same_above.zeros_like()?
        });
    }
    if pair_width(dims, batch.candidate_fields) > 0 {
        parts.push(id_pairs(params, dims, batch, &strictly_above)?);
    }
    let z = Tensor::cat(&parts, D::Minus1)?;
    let o = relu(linear(&z, params.get("out.w1")?, params.get("out.b1")?)?)?;
    Ok(SlotOutputs {
        click_logits: linear(&o, params.get("out.w2")?, params.get("out.b2")?)?.squeeze(2)?,
        value: value_outputs(params, dims, batch)?,
    })
}

/// The value network's predictions along the batch's lists, alone (it shares no weight
/// with the click model, so it trains apart from it: `train.rs`).
pub fn value_outputs(
    params: &Params,
    dims: &Dims,
    batch: &Batch,
) -> candle_core::Result<ValueOutputs> {
    let (amounts, purchase) = value_network(params, dims, batch)?;
    let log_amount = if dims.parts() {
        Some((amounts.clone(), params.get(AMOUNT_LOG_VARIANCE)?.clone()))
    } else {
        None
    };
    let amounts = match &log_amount {
        Some((mu, log_var)) => mu.broadcast_add(&(log_var.exp()? * 0.5)?)?.exp()?,
        None => amounts,
    };
    Ok(ValueOutputs {
        click_values: match &purchase {
            Some(logits) => (candle_nn::ops::sigmoid(logits)? * &amounts)?,
            None => amounts.clone(),
        },
        purchase: purchase.map(|logits| (logits, amounts)),
        log_amount,
    })
}

/// `[B, T, F]`: for each categorical feature, `Σ_{k<t} P[id_t]·Q[id_k]` at every slot.
fn id_pairs(
    params: &Params,
    dims: &Dims,
    batch: &Batch,
    strictly_above: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, t, e) = (batch.requests, batch.slots, dims.embed);
    let mut fields = Vec::with_capacity(batch.candidate_fields);
    for j in 0..batch.candidate_fields {
        let column = batch
            .candidate_ids
            .narrow(1, j, 1)?
            .squeeze(1)?
            .contiguous()?;
        let ids = column.index_select(&batch.list, 0)?;
        let side = |name: &str| {
            params
                .get(&format!("pair.{name}.{j}"))?
                .index_select(&ids, 0)?
                .reshape((b, t, e))
        };
        let keys_above = strictly_above.broadcast_matmul(&side("key")?)?;
        fields.push((side("query")? * keys_above)?.sum_keepdim(D::Minus1)?);
    }
    Tensor::cat(&fields, D::Minus1)
}

/// The value network along the lists, `[B, T]` each: the value of a click on each slot's
/// item (with `purchases`: a purchase's amount; with `value_parts`, the mean of its log)
/// and, with `purchases`, the logit that a click buys.
fn value_network(
    params: &Params,
    dims: &Dims,
    batch: &Batch,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let hidden = value_hidden(params, "value", batch)?;
    let out = linear(&hidden, params.get("value.w2")?, params.get(AMOUNT_BIAS)?)?.squeeze(2)?;
    let buy = dims.purchases.then(|| {
        let hidden = if dims.parts() {
            value_hidden(params, BUY_NETWORK, batch)?
        } else {
            hidden.clone()
        };
        linear(&hidden, params.get(BUY_WEIGHTS)?, params.get(BUY_BIAS)?)?.squeeze(2)
    });
    let amount = if dims.parts() { out } else { softplus(&out)? };
    Ok((amount, buy.transpose()?))
}

/// `[B, T, H]`: a hidden layer over each slot's item's and the context's features, with
/// the embeddings and weights named `{trunk}.…` (the amount's `value`, the buy network's).
/// Only the listed items, selected before they are embedded: a value is fitted on the
/// clicked slots, and a request lists a few of its candidates (20 of 150 costs 1/7).
fn value_hidden(params: &Params, trunk: &str, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, t) = (batch.requests, batch.slots);
    let items = with_embeddings(
        params,
        &format!("{trunk}.emb.candidate"),
        &batch.candidate_dense.index_select(&batch.list, 0)?,
        &batch.candidate_ids.index_select(&batch.list, 0)?,
        batch.candidate_fields,
    )?;
    let context = with_embeddings(
        params,
        &format!("{trunk}.emb.context"),
        &batch.context_dense,
        &batch.context_ids,
        batch.context_fields,
    )?;
    let item_part = items.broadcast_matmul(params.get(&format!("{trunk}.item.w1"))?)?;
    let context_part = linear(
        &context,
        params.get(&format!("{trunk}.context.w1"))?,
        params.get(&format!("{trunk}.b1"))?,
    )?;
    item_part
        .reshape((b, t, ()))?
        .broadcast_add(&context_part.unsqueeze(1)?)?
        .relu()
}

/// `log(1 + e^x)`, stable for any x: `max(x, 0) + log(1 + e^{−|x|})`.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean binary cross-entropy of the logged slots (`slot_mask` 1). Without examination a
/// slot's click probability is its attraction `σ(logit)`; with it, the attraction times
/// the probability that the user examined the slot given the clicks logged above it
/// ([`examined`]): the likelihood of the logged click sequence, which is what separates
/// a user who stopped reading from items that hurt each other.
pub fn click_loss(
    params: &Params,
    dims: &Dims,
    logits: &Tensor,
    batch: &Batch,
) -> candle_core::Result<Tensor> {
    let per_slot = if dims.examination {
        let p =
            (examined(params, logits, Some(&batch.clicks))? * candle_nn::ops::sigmoid(logits)?)?;
        let (y, eps) = (&batch.clicks, 1e-6);
        let hit = (y * (&p + eps)?.log()?)?;
        let miss = ((1.0 - y)? * (1.0 + eps - &p)?.log()?)?;
        (hit + miss)?.neg()?
    } else {
        // softplus(l) − y·l is the BCE of a logit.
        (softplus(logits)? - (logits * &batch.clicks)?)?
    };
    let masked = (per_slot * &batch.slot_mask)?.sum_all()?;
    masked / batch.slot_mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
}

/// The probability that the user examines each slot, `[B, T]`, under the cascade: the
/// first slot is read; after slot t the user reads on with probability `γ_click` after a
/// click and `γ_skip` after a skip. With `clicks` logged, it is conditioned on them
/// (a click proves the slot was examined; a skip leaves examined-and-skipped or never
/// examined, by Bayes); without, it is the expectation over the user's clicks, the
/// marginal that `V` sums.
pub fn examined(
    params: &Params,
    logits: &Tensor,
    clicks: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let attraction = candle_nn::ops::sigmoid(logits)?;
    let (b, t) = attraction.dims2()?;
    let after_click = continuation(params, CONTINUE_AFTER_CLICK)?;
    let after_skip = continuation(params, CONTINUE_AFTER_SKIP)?;
    let mut examine = Tensor::ones(b, DType::F32, &Device::Cpu)?;
    let mut columns = Vec::with_capacity(t);
    for slot in 0..t {
        columns.push(examine.clone());
        if slot + 1 == t {
            break;
        }
        let q = attraction.narrow(1, slot, 1)?.squeeze(1)?;
        examine = match clicks {
            Some(clicks) => {
                let y = clicks.narrow(1, slot, 1)?.squeeze(1)?;
                let seen = (&examine * &q)?;
                let skipped = ((&examine - &seen)? / (1.0 - &seen)?.clamp(1e-6, 1.0)?)?;
                (y.broadcast_mul(&after_click)?
                    + (1.0 - &y)?.broadcast_mul(&after_skip)?.mul(&skipped)?)?
            }
            None => {
                let reads_on =
                    (q.broadcast_mul(&after_click)? + (1.0 - &q)?.broadcast_mul(&after_skip)?)?;
                (&examine * reads_on)?
            }
        };
    }
    Tensor::stack(&columns, 1)
}

/// The value network's loss on the clicked slots that logged a value (`value_mask` 1).
/// Without `purchases`: the squared error of the click's value, minimised by its
/// expectation. With: the purchase logit's BCE (a value above zero is a purchase) plus the
/// amount's squared error on the purchases (with `value_parts`, its log's, scaled by the
/// held-out variance); their product estimates the same expectation with far less variance
/// when most clicks buy nothing, as with GMV (docs/offline.md).
pub fn value_loss(outputs: &ValueOutputs, batch: &Batch) -> candle_core::Result<Tensor> {
    match purchase_losses(outputs, batch)? {
        Some(parts) => parts.buy + parts.amount,
        None => value_error(outputs, batch),
    }
}

/// With `purchases`, the two parts of [`value_loss`]: each a mean, over the clicked slots
/// (`clicks`) and over the purchases (`purchases`, how many). With `value_parts` the
/// amount's is the negative log-likelihood of a log-normal amount (up to a constant).
pub struct PurchaseLosses {
    pub buy: Tensor,
    pub amount: Tensor,
    pub clicks: f64,
    pub purchases: f64,
}

pub fn purchase_losses(
    outputs: &ValueOutputs,
    batch: &Batch,
) -> candle_core::Result<Option<PurchaseLosses>> {
    let Some((logits, amounts)) = &outputs.purchase else {
        return Ok(None);
    };
    let bought = batch.values.gt(0.0)?.to_dtype(DType::F32)?;
    // softplus(l) − y·l is the BCE of a logit.
    let buy = masked_mean(
        (softplus(logits)? - (logits * &bought)?)?,
        &batch.value_mask,
    )?;
    let purchases = (&bought * &batch.value_mask)?;
    let amount = match &outputs.log_amount {
        Some((mu, log_var)) => {
            // Slots that bought nothing are masked out; the clamp keeps their log finite.
            let residual = (batch.values.clamp(1e-12, f64::MAX)?.log()? - mu)?;
            let nll = residual
                .sqr()?
                .broadcast_mul(&log_var.neg()?.exp()?)?
                .broadcast_add(log_var)?;
            masked_mean((nll * 0.5)?, &purchases)?
        }
        None => masked_mean((amounts - &batch.values)?.sqr()?, &purchases)?,
    };
    let count = |mask: &Tensor| -> candle_core::Result<f64> {
        Ok(f64::from(mask.sum_all()?.to_scalar::<f32>()?))
    };
    Ok(Some(PurchaseLosses {
        buy,
        amount,
        clicks: count(&batch.value_mask)?,
        purchases: count(&purchases)?,
    }))
}

/// The squared error of the predicted value of a click against the logged one, over the
/// clicked slots: what the objective uses, scored as the objective sees it. Minimised by
/// `E[value | click]` (the noise of a purchase adds only a constant), so it judges the
/// value network's epochs whether a click's value is one regression or two parts.
pub fn value_error(outputs: &ValueOutputs, batch: &Batch) -> candle_core::Result<Tensor> {
    let error = (&outputs.click_values - &batch.values)?.sqr()?;
    masked_mean(error, &batch.value_mask)
}

fn masked_mean(x: Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    (x * mask)?.sum_all()? / mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two continuation logits (stored over `CONTINUATION_RATE`) and nothing else.
    fn cascade(after_click: f64, after_skip: f64) -> Params {
        let stored = |p: f64| (((p / (1.0 - p)).ln()) as f32) / CONTINUATION_RATE;
        let var = |p| Var::from_vec(vec![stored(p)], 1, &Device::Cpu).unwrap();
        Params {
            vars: vec![
                (CONTINUE_AFTER_CLICK.into(), var(after_click)),
                (CONTINUE_AFTER_SKIP.into(), var(after_skip)),
            ],
        }
    }

    /// By hand, attraction 0.5 at every slot, reading on 0.7 after a click and 0.9 after a
    /// skip. Unconditioned: 1, 0.5·0.7 + 0.5·0.9 = 0.8, 0.8². After a logged click at slot
    /// 1, slot 2 is read with 0.7; after a skip there, by Bayes, 0.9 · 0.7·0.5 / (1 − 0.35).
    #[test]
    fn examination_is_the_cascade_with_and_without_the_logged_clicks() {
        let params = cascade(0.7, 0.9);
        let logits = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        let rows = |clicks: Option<&Tensor>| -> Vec<f32> {
            let e = examined(&params, &logits, clicks).unwrap();
            e.to_vec2::<f32>().unwrap().remove(0)
        };
        let clicks = Tensor::new(&[[1.0f32, 0.0, 0.0]], &Device::Cpu).unwrap();
        let expected: [(Vec<f32>, [f32; 3]); 2] = [
            (rows(None), [1.0, 0.8, 0.64]),
            (rows(Some(&clicks)), [1.0, 0.7, 0.9 * 0.35 / 0.65]),
        ];
        for (got, want) in expected {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{got:?} against {want:?}");
            }
        }
    }
}
