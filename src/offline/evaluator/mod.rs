//! The Lookahead Evaluator `V_φ(c, C, s_t)`: a causal model over list prefixes, trained by
//! cumulative regression on every prefix of the logged lists (DESIGN.md §2).
//!
//! Saved as two files in a directory: `evaluator.json` (sizes, feature map, training
//! summary) and `evaluator.safetensors` (weights).

mod batch;
mod model;
mod scorer;
mod train;

pub use batch::{Batch, FeatureMap, ListRef};
pub use model::{click_loss, slot_logits, Dims, Params};
pub use scorer::{Prefix, RequestScorer};
pub use train::{train, TrainConfig, TrainSummary};

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::offline::logs::LoggedRequest;

pub const SPEC_FILE: &str = "evaluator.json";
pub const WEIGHTS_FILE: &str = "evaluator.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub dims: Dims,
    pub features: FeatureMap,
    pub training: Option<TrainSummary>,
}

/// A trained evaluator, ready to score lists.
pub struct Evaluator {
    pub spec: Spec,
    pub params: Params,
}

impl Evaluator {
    pub fn new(spec: Spec, output_bias: f32, seed: u64) -> anyhow::Result<Evaluator> {
        let params = Params::init(
            &spec.dims,
            &spec.features.context_vocab,
            &spec.features.candidate_vocab,
            output_bias,
            seed,
        )?;
        Ok(Evaluator { spec, params })
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        self.params.save(&dir.join(WEIGHTS_FILE))?;
        let spec = serde_json::to_string_pretty(&self.spec)?;
        std::fs::write(dir.join(SPEC_FILE), spec + "\n")
            .with_context(|| format!("{}", dir.join(SPEC_FILE).display()))
    }

    pub fn load(dir: &Path) -> anyhow::Result<Evaluator> {
        let spec_path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&spec_path)
            .with_context(|| format!("{}", spec_path.display()))?;
        let spec: Spec =
            serde_json::from_str(&text).with_context(|| format!("{}", spec_path.display()))?;
        let evaluator = Evaluator::new(spec, 0.0, 0)?;
        evaluator.params.load_into(&dir.join(WEIGHTS_FILE))?;
        Ok(evaluator)
    }

    /// Predicted click probability of every slot of each list (`[lists][slot]`).
    pub fn slot_probabilities(&self, lists: &[ListRef<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(lists.len());
        for chunk in lists.chunks(256) {
            let batch = Batch::new(&self.spec.features, chunk)?;
            let logits = slot_logits(&self.params, &self.spec.dims, &batch)?;
            let probs = candle_nn::ops::sigmoid(&logits)?.to_vec2::<f32>()?;
            out.extend(
                probs
                    .into_iter()
                    .zip(chunk)
                    .map(|(p, l)| p[..l.list.len()].to_vec()),
            );
        }
        Ok(out)
    }

    /// `V(list)`: the expected cumulative reward of the whole list.
    pub fn list_value(&self, request: &LoggedRequest, list: &[usize]) -> anyhow::Result<f64> {
        let lists = [ListRef {
            request,
            list,
            rewards: None,
        }];
        let probs = self.slot_probabilities(&lists)?;
        Ok(probs[0].iter().map(|&p| f64::from(p)).sum())
    }

    /// The incremental scorer of one request, for search.
    pub fn scorer(&self, request: &LoggedRequest) -> anyhow::Result<RequestScorer> {
        RequestScorer::new(self, request)
    }
}
