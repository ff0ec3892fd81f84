//! The DeGRe generator network, written once against [`Ops`] so that the same code is the
//! reference forward pass (plain Rust matrices) and the ONNX graph the server runs.
//!
//! Encoder (once per request):
//!   c      = tanh([ctx_dense, emb(ctx_ids)] Wc + bc)                        [1, H]
//!   x      = relu([cand_dense, upstream, emb(cand_ids)] Wx + bx) + c        [N, H]
//!            (`upstream`: the incumbent's order, when the schema reads `ranking_score`)
//!   h      = x + softmax((x Wq)(x Wk)ᵀ / √H) (x Wv) Wo                      (set attention)
//!     or   = x + softmax((x Wq)(S Wk)ᵀ / √H) (S Wv) Wo,                    (`Mixer::Induced`)
//!            S = softmax((x I)ᵀ / √H) x: M summaries, pooled by I's M learned columns
//!     or   = x + mean_rows(x) Wv Wo                                (`Mixer::Mean`: no N² term)
//!   h      = h + relu(h W1 + b1) W2
//!   keys   = h Wkey,  values = h Wval,  state = tanh(mean_rows(h) Ws + bs)
//! Decoder step (once per slot, O(H²)), then pointer scores (O(N·H), by the server):
//!   next   = μ·state + (1 − μ)·tanh(state Wss + prev_value Wsp + bd)    (μ = [`MEMORY`])
//!   query  = (next Wqd) / √H
//!   logits = keys · query                                                   [N]
//!
//! Training sees every projection; the exported graphs are [`Folded`]: products of
//! consecutive projections precomputed, the same function with a quarter fewer
//! multiply-adds per candidate.

pub mod export;
pub mod onnx;
mod ops;
pub mod reference;

pub use ops::Ops;

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::contract::{Categorical, FeatureSchema};

/// A named weight matrix, row-major `[rows, cols]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Sizes of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub hidden: usize,
    pub embed: usize,
    pub mixer: Mixer,
}

/// How the encoder lets each candidate see the others.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Mixer {
    /// One self-attention layer over the set: O(N²·H) multiply-adds and N² `exp` a request.
    Attention,
    /// The set's mean, projected and added to every candidate: O(N·H), about a third of
    /// the attention encoder's arithmetic at N = 100 (docs/performance.md).
    Mean,
    /// Induced set attention (Set Transformer's ISAB): 8 learned columns (`INDUCING_POINTS`)
    /// pool the set into as many summaries, which every candidate then attends to:
    /// O(N·M·H) multiply-adds and 2·N·M `exp`, no N² term. The default: 0.13 points of
    /// the oracle below attention on the simulator, within what retraining moves, at a
    /// fraction of its cost from N ≈ 50 on (docs/offline.md, docs/performance.md).
    #[default]
    Induced,
}

/// The summaries of [`Mixer::Induced`]: enough for a few clusters of a list's candidates
/// (docs/offline.md has the quality measured against full attention).
pub const INDUCING_POINTS: usize = 8;

/// The share of the decoder's state a step keeps: each placed item adds to a running sum
/// of the prefix that fades by this much a slot (a memory of about ten items), rather than
/// the whole prefix being squeezed through one `tanh` every step. The state stays a convex
/// combination of `tanh` outputs, inside [−1, 1] at any list length, so the served graphs
/// keep their parity with the reference however many slots are asked for (an unbounded
/// sum, `state + tanh(…)`, did not: docs/offline.md).
pub const MEMORY: f32 = 0.9;

/// The mixer's own weights, one variant per [`Mixer`]: a weight set cannot hold a
/// combination that no mixer reads. `Wv` and `Wo`, which every mixer uses, are in
/// [`Weights`].
#[derive(Debug, Clone, PartialEq)]
pub enum MixerWeights {
    Mean,
    /// Query and key projections.
    Attention {
        w_q: Param,
        w_k: Param,
    },
    /// The same, and the inducing points, `[H, INDUCING_POINTS]`.
    Induced {
        w_q: Param,
        w_k: Param,
        inducing: Param,
    },
}

impl MixerWeights {
    pub fn params(&self) -> Vec<&Param> {
        match self {
            MixerWeights::Mean => vec![],
            MixerWeights::Attention { w_q, w_k } => vec![w_q, w_k],
            MixerWeights::Induced { w_q, w_k, inducing } => vec![w_q, w_k, inducing],
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        match self {
            MixerWeights::Mean => vec![],
            MixerWeights::Attention { w_q, w_k } => vec![w_q, w_k],
            MixerWeights::Induced { w_q, w_k, inducing } => vec![w_q, w_k, inducing],
        }
    }
}

/// One categorical side (context or candidate): a flat table holding every feature's rows,
/// and each feature's first row in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub table: Param,
    pub offsets: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub dims: Dims,
    pub ctx_embedding: Option<Embedding>,
    pub cand_embedding: Option<Embedding>,
    pub w_ctx: Option<Param>,
    pub b_ctx: Param,
    pub w_item: Param,
    pub b_item: Param,
    pub mixer: MixerWeights,
    pub w_v: Param,
    pub w_o: Param,
    pub w_ff1: Param,
    pub b_ff1: Param,
    pub w_ff2: Param,
    pub w_key: Param,
    pub w_value: Param,
    pub w_state: Param,
    pub b_state: Param,
    pub w_dec_state: Param,
    pub w_dec_prev: Param,
    pub b_dec: Param,
    pub w_dec_query: Param,
}

/// Encoder inputs; `None` for a feature group the schema leaves empty.
pub struct EncoderInputs<'a, O: Ops> {
    pub ctx_dense: Option<&'a O::Mat>,
    pub ctx_ids: Option<&'a O::Ids>,
    pub cand_dense: Option<&'a O::Mat>,
    /// `[N, upstream::WIDTH]`: see `contract::upstream`.
    pub upstream: Option<&'a O::Mat>,
    pub cand_ids: Option<&'a O::Ids>,
}

pub struct Encoded<M> {
    pub keys: M,
    pub values: M,
    pub state: M,
}

impl Weights {
    /// Xavier-uniform initialisation from a seed: the untrained generator.
    pub fn init(schema: &FeatureSchema, dims: Dims, seed: u64) -> Weights {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = |name, rows, cols| xavier(&mut rng, name, rows, cols);
        let Dims {
            hidden: h,
            embed: e,
            mixer,
        } = dims;
        let ctx_in = schema.context_dense.len() + schema.context_categorical.len() * e;
        let upstream = if schema.ranking_score {
            crate::contract::upstream::WIDTH
        } else {
            0
        };
        let cand_in =
            schema.candidate_dense.len() + upstream + schema.candidate_categorical.len() * e;
        // Drawn in the same order whatever the mixer (the query and key projections even
        // for the mean, the inducing points last), so a seed gives the shared weights the
        // same start with every mixer. Fields initialise in the order written.
        let ctx_embedding = embedding(&mut p, "ctx_table", &schema.context_categorical, e);
        let cand_embedding = embedding(&mut p, "cand_table", &schema.candidate_categorical, e);
        let w_ctx = (ctx_in > 0).then(|| p("w_ctx", ctx_in, h));
        let w_item = p("w_item", cand_in, h);
        let (w_q, w_k) = (p("w_q", h, h), p("w_k", h, h));
        Weights {
            dims,
            ctx_embedding,
            cand_embedding,
            w_ctx,
            b_ctx: zeros("b_ctx", h),
            w_item,
            b_item: zeros("b_item", h),
            w_v: p("w_v", h, h),
            w_o: p("w_o", h, h),
            w_ff1: p("w_ff1", h, 2 * h),
            b_ff1: zeros("b_ff1", 2 * h),
            w_ff2: p("w_ff2", 2 * h, h),
            w_key: p("w_key", h, h),
            w_value: p("w_value", h, h),
            w_state: p("w_state", h, h),
            b_state: zeros("b_state", h),
            w_dec_state: p("w_dec_state", h, h),
            w_dec_prev: p("w_dec_prev", h, h),
            b_dec: zeros("b_dec", h),
            w_dec_query: p("w_dec_query", h, h),
            // Last: the inducing points are drawn after every other weight.
            mixer: match mixer {
                Mixer::Mean => MixerWeights::Mean,
                Mixer::Attention => MixerWeights::Attention { w_q, w_k },
                Mixer::Induced => MixerWeights::Induced {
                    w_q,
                    w_k,
                    inducing: p("inducing", h, INDUCING_POINTS),
                },
            },
        }
    }

    /// Runs the encoder once over the request's candidates.
    pub fn encode<O: Ops>(&self, o: &mut O, inputs: EncoderInputs<'_, O>) -> Encoded<O::Mat> {
        self.encode_as(o, inputs, None)
    }

    /// The encoder with `fold`'s products in place of the projections they replace.
    pub fn encode_as<O: Ops>(
        &self,
        o: &mut O,
        inputs: EncoderInputs<'_, O>,
        fold: Option<&Folded>,
    ) -> Encoded<O::Mat> {
        let ctx = features(o, &[inputs.ctx_dense], inputs.ctx_ids, &self.ctx_embedding);
        let b_ctx = o.param(&self.b_ctx);
        let c = match (ctx, &self.w_ctx) {
            (Some(ctx), Some(w)) => linear(o, &ctx, w, &self.b_ctx),
            _ => b_ctx,
        };
        let c = o.tanh(&c);
        let dense = [inputs.cand_dense, inputs.upstream];
        let items = features(o, &dense, inputs.cand_ids, &self.cand_embedding)
            .expect("the manifest guarantees candidate features");
        let x = linear(o, &items, &self.w_item, &self.b_item);
        let x = o.relu(&x);
        let x = o.add(&x, &c);

        let mixed = self.mix(o, &x, fold);
        let h = o.add(&x, &mixed);
        let ff = linear(o, &h, &self.w_ff1, &self.b_ff1);
        let ff = o.relu(&ff);
        let ff = matmul_param(o, &ff, &self.w_ff2);
        let h = o.add(&h, &ff);

        let pooled = o.mean_rows(&h);
        let state = linear(o, &pooled, &self.w_state, &self.b_state);
        let state = o.tanh(&state);
        let (keys, values) = match fold {
            None => (
                matmul_param(o, &h, &self.w_key),
                matmul_param(o, &h, &self.w_value),
            ),
            // Wkey is folded into the step's query, Wval into its prev_value projection.
            Some(_) => (h.clone(), h),
        };
        Encoded {
            keys,
            values,
            state,
        }
    }

    /// One decoder step: the query that scores every candidate (`keys · query`) and the
    /// next state, both `[1, H]`.
    pub fn step<O: Ops>(&self, o: &mut O, state: &O::Mat, prev_value: &O::Mat) -> (O::Mat, O::Mat) {
        self.step_as(o, state, prev_value, None)
    }

    /// The step over [`Folded`] keys and values (`prev_value` a row of the encoder's `h`).
    pub fn step_as<O: Ops>(
        &self,
        o: &mut O,
        state: &O::Mat,
        prev_value: &O::Mat,
        fold: Option<&Folded>,
    ) -> (O::Mat, O::Mat) {
        let a = matmul_param(o, state, &self.w_dec_state);
        let w_prev = fold.map_or(&self.w_dec_prev, |f| &f.w_dec_prev);
        let b = linear(o, prev_value, w_prev, &self.b_dec);
        let step = o.add(&a, &b);
        let step = o.tanh(&step);
        let step = o.scale(&step, 1.0 - MEMORY);
        let kept = o.scale(state, MEMORY);
        let next = o.add(&kept, &step);
        let query = match fold {
            None => {
                let query = matmul_param(o, &next, &self.w_dec_query);
                o.scale(&query, self.inv_sqrt_h())
            }
            Some(f) => matmul_param(o, &next, &f.w_dec_query),
        };
        (query, next)
    }

    /// What each candidate gets from the others (`Mixer`): `h = x + mix(x)`.
    fn mix<O: Ops>(&self, o: &mut O, x: &O::Mat, fold: Option<&Folded>) -> O::Mat {
        if let Some(f) = fold {
            return f.mix(o, x);
        }
        match &self.mixer {
            MixerWeights::Mean => {
                let mean = o.mean_rows(x);
                let mean = matmul_param(o, &mean, &self.w_v);
                matmul_param(o, &mean, &self.w_o)
            }
            MixerWeights::Attention { w_q, w_k } => {
                let q = matmul_param(o, x, w_q);
                let k = matmul_param(o, x, w_k);
                self.attend(o, &q, &k, x, true)
            }
            MixerWeights::Induced { w_q, w_k, inducing } => {
                let scores = matmul_param(o, x, inducing);
                let scores = o.scale(&scores, self.inv_sqrt_h());
                let summaries = induced_summaries(o, x, &scores);
                let q = matmul_param(o, x, w_q);
                let k = matmul_param(o, &summaries, w_k);
                self.attend(o, &q, &k, &summaries, false)
            }
        }
    }

    /// `softmax(q kᵀ/√H) (rows Wv) Wo`, the keys being candidates (masked where padded in
    /// training) or summaries (never padded).
    fn attend<O: Ops>(
        &self,
        o: &mut O,
        q: &O::Mat,
        k: &O::Mat,
        rows: &O::Mat,
        over_candidates: bool,
    ) -> O::Mat {
        let scores = o.matmul_t(q, k);
        let scores = o.scale(&scores, self.inv_sqrt_h());
        let attention = if over_candidates {
            o.softmax_rows(&scores)
        } else {
            o.softmax_rows_unmasked(&scores)
        };
        let v = matmul_param(o, rows, &self.w_v);
        let mixed = o.matmul(&attention, &v);
        matmul_param(o, &mixed, &self.w_o)
    }

    fn inv_sqrt_h(&self) -> f32 {
        1.0 / (self.dims.hidden as f32).sqrt()
    }
}

/// Products of projections that follow each other with nothing in between, precomputed:
/// `(x Wq)(x Wk)ᵀ/√H = x (Wq Wkᵀ/√H) xᵀ`, `A (x Wv) Wo = A x (Wv Wo)`, and the keys and
/// values projections moved into the decoder (`(h Wkey)·q = h·(q Wkeyᵀ)`,
/// `(h Wval) Wsp = h (Wval Wsp)`), where they cost O(H²) per slot instead of O(N·H²) per
/// request. Four H×H products per candidate fewer; the served logits equal the trained
/// network's up to rounding, which the reference and golden tests hold them to.
pub struct Folded {
    mixer: FoldedMixer,
    w_vo: Param,
    w_dec_query: Param,
    w_dec_prev: Param,
}

enum FoldedMixer {
    Mean,
    /// `Wq Wkᵀ/√H`, applied to the candidates.
    Attention {
        w_qk: Param,
    },
    /// `Wk Wqᵀ/√H`, applied to the summaries, and `I/√H`.
    Induced {
        w_kq: Param,
        inducing: Param,
    },
}

impl Folded {
    pub fn new(w: &Weights) -> Folded {
        let inv = w.inv_sqrt_h();
        Folded {
            mixer: match &w.mixer {
                MixerWeights::Mean => FoldedMixer::Mean,
                MixerWeights::Attention { w_q, w_k } => FoldedMixer::Attention {
                    w_qk: product("w_qk", w_q, &transposed(w_k), inv),
                },
                MixerWeights::Induced { w_q, w_k, inducing } => FoldedMixer::Induced {
                    w_kq: product("w_kq", w_k, &transposed(w_q), inv),
                    inducing: Param {
                        name: "inducing_scaled",
                        data: inducing.data.iter().map(|v| v * inv).collect(),
                        ..*inducing
                    },
                },
            },
            w_vo: product("w_vo", &w.w_v, &w.w_o, 1.0),
            w_dec_query: product(
                "w_dec_query_keys",
                &w.w_dec_query,
                &transposed(&w.w_key),
                inv,
            ),
            w_dec_prev: product("w_dec_prev_values", &w.w_value, &w.w_dec_prev, 1.0),
        }
    }

    /// [`Weights::mix`] over the folded products.
    fn mix<O: Ops>(&self, o: &mut O, x: &O::Mat) -> O::Mat {
        match &self.mixer {
            FoldedMixer::Mean => {
                let mean = o.mean_rows(x);
                matmul_param(o, &mean, &self.w_vo)
            }
            FoldedMixer::Attention { w_qk } => {
                let q = matmul_param(o, x, w_qk);
                let scores = o.matmul_t(&q, x);
                let attention = o.softmax_rows(&scores);
                let v = matmul_param(o, x, &self.w_vo);
                o.matmul(&attention, &v)
            }
            // (x Wq)(S Wk)ᵀ/√H = x (S · Wk Wqᵀ/√H)ᵀ: the projection on M rows, not N.
            FoldedMixer::Induced { w_kq, inducing } => {
                let scores = matmul_param(o, x, inducing);
                let summaries = induced_summaries(o, x, &scores);
                let k = matmul_param(o, &summaries, w_kq);
                let scores = o.matmul_t(x, &k);
                let attention = o.softmax_rows_unmasked(&scores);
                let v = matmul_param(o, &summaries, &self.w_vo);
                o.matmul(&attention, &v)
            }
        }
    }
}

/// The induced mixer's summaries `S = softmax((x I)ᵀ/√H) x` from the scaled scores
/// `x I/√H`, `[N, M]`: each inducing point's softmax over the candidates (padding masked
/// in training). The scores are transposed, `[M, N]`, rather than `x`, `[N, H]`.
fn induced_summaries<O: Ops>(o: &mut O, x: &O::Mat, scores: &O::Mat) -> O::Mat {
    let scores = o.transpose(scores);
    let pooling = o.softmax_rows(&scores);
    o.matmul(&pooling, x)
}

/// `scale · a b`, accumulated in f64 so folding adds no rounding of its own.
fn product(name: &'static str, a: &Param, b: &Param, scale: f32) -> Param {
    assert_eq!(a.cols, b.rows, "{name}: inner dimensions");
    let mut data = Vec::with_capacity(a.rows * b.cols);
    for i in 0..a.rows {
        for j in 0..b.cols {
            let dot: f64 = (0..a.cols)
                .map(|t| a.data[i * a.cols + t] as f64 * b.data[t * b.cols + j] as f64)
                .sum();
            data.push((dot * scale as f64) as f32);
        }
    }
    Param {
        name,
        rows: a.rows,
        cols: b.cols,
        data,
    }
}

fn transposed(p: &Param) -> Param {
    let mut data = Vec::with_capacity(p.data.len());
    for j in 0..p.cols {
        data.extend((0..p.rows).map(|i| p.data[i * p.cols + j]));
    }
    Param {
        name: p.name,
        rows: p.cols,
        cols: p.rows,
        data,
    }
}

/// The dense parts present, then the embeddings, side by side.
fn features<O: Ops>(
    o: &mut O,
    dense: &[Option<&O::Mat>],
    ids: Option<&O::Ids>,
    embedding: &Option<Embedding>,
) -> Option<O::Mat> {
    let mut parts: Vec<O::Mat> = dense.iter().flatten().map(|&m| m.clone()).collect();
    if let (Some(ids), Some(embedding)) = (ids, embedding) {
        parts.push(o.embed(ids, &embedding.table, &embedding.offsets));
    }
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(o.concat_cols(&parts)),
    }
}

fn linear<O: Ops>(o: &mut O, x: &O::Mat, w: &Param, b: &Param) -> O::Mat {
    let y = matmul_param(o, x, w);
    let b = o.param(b);
    o.add(&y, &b)
}

fn matmul_param<O: Ops>(o: &mut O, x: &O::Mat, w: &Param) -> O::Mat {
    let w = o.param(w);
    o.matmul(x, &w)
}

fn embedding(
    p: &mut impl FnMut(&'static str, usize, usize) -> Param,
    name: &'static str,
    features: &[Categorical],
    width: usize,
) -> Option<Embedding> {
    if features.is_empty() {
        return None;
    }
    let mut offsets = Vec::with_capacity(features.len());
    let mut rows = 0i64;
    for feature in features {
        offsets.push(rows);
        // One extra row per feature: the unknown bucket.
        rows += feature.vocab_size as i64 + 1;
    }
    Some(Embedding {
        table: p(name, rows as usize, width),
        offsets,
    })
}

fn xavier(rng: &mut StdRng, name: &'static str, rows: usize, cols: usize) -> Param {
    let bound = (6.0 / (rows + cols) as f32).sqrt();
    let data = (0..rows * cols)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Param {
        name,
        rows,
        cols,
        data,
    }
}

fn zeros(name: &'static str, cols: usize) -> Param {
    Param {
        name,
        rows: 1,
        cols,
        data: vec![0.0; cols],
    }
}
