//! The Lookahead Evaluator `V_φ(c, C, s_t)`: a causal model over list prefixes, trained by
//! cumulative regression on every prefix of the logged lists (docs/offline.md, "The algorithm").
//!
//! Saved as two files in a directory: `evaluator.json` (sizes, feature map, training
//! summary) and `evaluator.safetensors` (weights).

mod batch;
pub mod blend;
mod ensemble;
mod model;
mod scorer;
mod train;

pub use batch::{is_hashed, Batch, FeatureMap, Labels, ListRef, MAX_VOCABULARY};
pub use ensemble::{Ensemble, EnsemblePrefix, EnsembleScorer, PointwiseBlend};
pub use model::{
    click_loss, purchase_losses, slot_outputs, value_error, value_loss, value_outputs, Dims,
    Params, SlotOutputs, ValueOutputs,
};
pub use scorer::{Prefix, RequestScorer};
pub use train::{train, train_split, TrainConfig, TrainSummary};

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::offline::logs::LoggedRequest;
use crate::offline::objective::Objective;

pub const SPEC_FILE: &str = "evaluator.json";
pub const WEIGHTS_FILE: &str = "evaluator.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub dims: Dims,
    pub features: FeatureMap,
    /// The reward `V` sums, per slot.
    pub objective: Objective,
    /// Mean logged value per click in the training data: the unit of the value network.
    pub value_per_click: f64,
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
        Ok(self
            .slot_predictions(lists)?
            .into_iter()
            .map(|slots| slots.into_iter().map(|(p, _)| p).collect())
            .collect())
    }

    /// Per slot of each list: the click probability (examination included) and the
    /// reward of a click under the objective (`[lists][slot]`), so the slot's expected
    /// reward is their product.
    pub fn slot_predictions(&self, lists: &[ListRef<'_>]) -> anyhow::Result<Vec<Vec<(f32, f32)>>> {
        let mut out = Vec::with_capacity(lists.len());
        for chunk in lists.chunks(256) {
            let batch = Batch::new(&self.spec.features, chunk)?;
            let o = slot_outputs(&self.params, &self.spec.dims, &batch)?;
            let mut probs = candle_nn::ops::sigmoid(&o.click_logits)?;
            if self.spec.dims.examination {
                probs = (probs * model::examined(&self.params, &o.click_logits, None)?)?;
            }
            let probs = probs.to_vec2::<f32>()?;
            let values = o.value.click_values.to_vec2::<f32>()?;
            for ((p, v), l) in probs.into_iter().zip(values).zip(chunk) {
                let slots = l.list.len();
                let reward = |v: f32| self.reward_of_click(f64::from(v)) as f32;
                out.push(
                    p[..slots]
                        .iter()
                        .zip(&v[..slots])
                        .map(|(&p, &v)| (p, reward(v)))
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// The cascade's probabilities of reading on after a click and after a skip; `None`
    /// without examination (`Dims::examination`).
    pub fn continuation(&self) -> anyhow::Result<Option<[f64; 2]>> {
        if !self.spec.dims.examination {
            return Ok(None);
        }
        let read_on = |name| -> anyhow::Result<f64> {
            Ok(model::continuation(&self.params, name)?.to_vec1::<f32>()?[0].into())
        };
        Ok(Some([
            read_on(model::CONTINUE_AFTER_CLICK)?,
            read_on(model::CONTINUE_AFTER_SKIP)?,
        ]))
    }

    /// The objective's reward of a click whose value network reads `value` (in units of the
    /// mean value per click).
    pub fn reward_of_click(&self, value: f64) -> f64 {
        let spec = &self.spec;
        spec.objective.reward_of_click(value * spec.value_per_click)
    }

    /// The reward of an average click: the unit in which soft-target temperatures and the
    /// sparse reward are expressed, so they mean the same for clicks and for GMV.
    pub fn reward_unit(&self) -> f64 {
        self.reward_of_click(1.0)
    }

    /// This evaluator scoring another objective: its click model alone scores clicks, and
    /// with a value network (trained for an objective with value) any weighted sum.
    pub fn with_objective(mut self, objective: Objective) -> anyhow::Result<Evaluator> {
        let trained = self.spec.objective;
        anyhow::ensure!(
            !objective.uses_value() || self.spec.dims.purchases,
            "the evaluator was trained for {trained}: it has no value network to score {objective}"
        );
        self.spec.objective = objective;
        Ok(self)
    }

    /// The incremental scorer of one request, for search.
    pub fn scorer(&self, request: &LoggedRequest) -> anyhow::Result<RequestScorer> {
        RequestScorer::new(self, request)
    }
}
