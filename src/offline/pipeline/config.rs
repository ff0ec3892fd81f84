//! The pipeline's config file (TOML): every section and key optional, unknown keys refused.
//! `[evaluator]` and `[distill]` are the trainers' own configs, so a new training option
//! is a config key without a copy here.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::offline::distill::DistillConfig;
use crate::offline::evaluator::TrainConfig;
use crate::offline::objective::Objective;
use crate::offline::sim::SimConfig;
use crate::offline::training;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// One run per seed; the report gives the mean and spread over them.
    pub seeds: Vec<u64>,
    /// What a slot earns (`clicks`, `value`, `A*clicks+B*value`); unset: value when every
    /// logged row carries `values`, else clicks.
    pub objective: Option<Objective>,
    pub simulator: SimConfig,
    pub evaluator: TrainConfig,
    pub mining: MiningSettings,
    pub distill: DistillConfig,
    pub export: ExportSettings,
    /// With `--logs`: the fraction of requests held out for evaluation and the gate.
    pub test_fraction: f64,
    /// The fraction of training requests kept from the mining evaluator to train the
    /// publish gate's judge (an evaluator the generator never fits).
    pub judge_fraction: f64,
    /// Judges, each trained on a bootstrap sample of those requests with its own seed: their
    /// disagreement widens the gate's interval.
    pub judges: usize,
    /// Pair every judge with a pointwise one (blind to the items above a slot), mixed by
    /// how well each predicts the held-out logged clicks (docs/offline.md, "The publish
    /// gate").
    pub pointwise_judges: bool,
    /// The publish gate needs DeGRe ahead of the `ranking_score` order by at least this
    /// share of the order's judged value (the lower end of the 95% interval).
    pub gate_min_gain: f64,
    /// Also train the ablations and baseline generators (hard labels, B = 1, heuristic
    /// labels, sparse reward): the benchmark's comparison, ~4× the distillation time.
    /// Unset: on with the simulator, off on user logs.
    pub baselines: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiningSettings {
    /// The teacher's beam width B.
    pub beam_width: usize,
    /// Beam widths of the utility-vs-width sweep (evaluation only).
    pub sweep: Vec<usize>,
    /// Mine (and distil from) at most this many training requests; 0: all, unless their
    /// lists are large (a work budget: `stages::mining_requests`).
    pub max_requests: usize,
    /// Evaluators searched together (different seeds), on `mean − pessimism·sd` of their
    /// values of a list: 1 searches a single evaluator as it is.
    pub evaluators: usize,
    pub pessimism: f64,
    /// Keep the `ranking_score` order wherever the evaluators do not agree that the
    /// searched list beats it (docs/offline.md, "Trust region").
    pub trust_region: bool,
    /// How much more than the `ranking_score` order a list must be worth, as a share of
    /// its value, for the teacher to depart from it.
    pub trust_margin: f64,
    /// Blend each evaluator with a pointwise one, by the weight under which the validation
    /// split's clicks are most likely: list effects count as far as the logs show them.
    pub pointwise_blend: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    pub model_name: String,
    pub max_candidates: usize,
}

/// Where the data comes from.
pub enum Source {
    Simulator,
    Logs(PathBuf),
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            seeds: vec![0],
            objective: None,
            simulator: SimConfig::default(),
            evaluator: TrainConfig::default(),
            mining: MiningSettings::default(),
            distill: DistillConfig::default(),
            export: ExportSettings::default(),
            test_fraction: 0.1,
            judge_fraction: 0.25,
            judges: 3,
            pointwise_judges: true,
            gate_min_gain: 0.0,
            baselines: None,
        }
    }
}

impl Default for MiningSettings {
    fn default() -> Self {
        MiningSettings {
            beam_width: 16,
            sweep: vec![1, 2, 4, 8, 16, 32],
            max_requests: 0,
            evaluators: 3,
            pessimism: 1.0,
            trust_region: true,
            trust_margin: 0.01,
            pointwise_blend: true,
        }
    }
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            model_name: "degre".into(),
            max_candidates: 256,
        }
    }
}

impl PipelineConfig {
    /// Checks what serde cannot: ranges and non-empty lists.
    pub fn check(&self) -> Result<(), String> {
        if self.seeds.is_empty() {
            return Err("`seeds` is empty".into());
        }
        training::ensure_nonzero("judges", self.judges)?;
        training::ensure_nonzero("mining.evaluators", self.mining.evaluators)?;
        training::ensure_nonzero("mining.beam_width", self.mining.beam_width)?;
        if self.mining.sweep.contains(&0) {
            return Err("`mining.sweep`: a beam width must be at least 1".into());
        }
        training::ensure_non_negative("mining.pessimism", self.mining.pessimism)?;
        training::ensure_non_negative("mining.trust_margin", self.mining.trust_margin)?;
        training::ensure_non_negative("gate_min_gain", self.gate_min_gain)?;
        training::ensure_fraction("test_fraction", self.test_fraction)?;
        training::ensure_fraction("judge_fraction", self.judge_fraction)?;
        self.evaluator.check()?;
        self.distill.check()
    }

    pub fn load(path: &Path) -> anyhow::Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let config: PipelineConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .simulator
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [simulator] {e}", path.display()))?;
        config
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Mixer;

    #[test]
    fn the_encoders_mixer_is_read_and_a_wrong_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            PipelineConfig::load(&path)
        };
        assert_eq!(load("").unwrap().distill.mixer, Mixer::Induced);
        let attention = load("[distill]\nmixer = \"attention\"\n").unwrap();
        assert_eq!(attention.distill.mixer, Mixer::Attention);
        let mean = load("[distill]\nmixer = \"mean\"\n").unwrap();
        assert_eq!(mean.distill.mixer, Mixer::Mean);
        let wrong = load("[distill]\nmixer = \"linear\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("run.toml") && wrong.contains("linear"),
            "{wrong}"
        );
    }

    /// A value outside its range is refused with the file and its key, before anything
    /// trains: a zero temperature or a negative learning rate would otherwise train NaN
    /// weights or a model that unlearns, and say nothing.
    #[test]
    fn a_setting_outside_its_range_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let cases = [
            ("[evaluator]\naverage_epochs = 0", None),
            ("[evaluator]\naverage_epochs = 2.5", None),
            (
                "[evaluator]\naverage_epochs = -0.1",
                Some("evaluator.average_epochs"),
            ),
            (
                "[evaluator]\naverage_epochs = inf",
                Some("evaluator.average_epochs"),
            ),
            (
                "[evaluator]\nlearning_rate = -0.001",
                Some("evaluator.learning_rate"),
            ),
            (
                "[evaluator]\nlearning_rate = nan",
                Some("evaluator.learning_rate"),
            ),
            ("[evaluator]\nhidden = 0", Some("evaluator.hidden")),
            (
                "[evaluator]\nvalid_fraction = 1.0",
                Some("evaluator.valid_fraction"),
            ),
            ("[distill]\ntemperature = 0", Some("distill.temperature")),
            ("[distill]\nce_weight = -1", Some("distill.ce_weight")),
            (
                "[distill]\nlearning_rate = 0",
                Some("distill.learning_rate"),
            ),
            ("[distill]\nembed = 0", Some("distill.embed")),
            (
                "[distill]\naverage_epochs = -1",
                Some("distill.average_epochs"),
            ),
            ("[mining]\nsweep = [1, 0, 4]", Some("mining.sweep")),
            ("[mining]\nbeam_width = 0", Some("mining.beam_width")),
            ("judge_fraction = 0", Some("judge_fraction")),
        ];
        for (text, refused) in cases {
            std::fs::write(&path, text).unwrap();
            match (PipelineConfig::load(&path), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(key)) => {
                    let e = e.to_string();
                    assert!(e.contains("run.toml") && e.contains(key), "{text}: {e}");
                }
                (Ok(_), Some(key)) => panic!("{text}: accepted, `{key}` not checked"),
                (Err(e), None) => panic!("{text}: refused: {e}"),
            }
        }
    }
}
