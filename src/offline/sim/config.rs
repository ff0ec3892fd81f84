//! The simulator's settings. Every field has a default; a TOML file overrides any of them.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Logged requests written to `train.parquet` and to `test.parquet`.
    pub train_requests: usize,
    pub test_requests: usize,
    /// Catalog size, and how items group.
    pub items: usize,
    pub categories: usize,
    pub brands: usize,
    /// Width of the user vector (the context's dense features) and of item latents.
    pub user_dim: usize,
    pub item_dim: usize,
    /// Users are bucketed into this many segments (the context's categorical feature).
    pub user_segments: usize,
    /// Candidates per request (N) and slots per list (K).
    pub candidates: usize,
    pub slots: usize,
    /// The ranking stage scores this many random catalog items and keeps the best N.
    pub retrieval_pool: usize,
    /// Scale of the user-item affinity `uᵀWx` (standard deviation of the logit, roughly).
    pub affinity_scale: f64,
    /// Mean and spread of the per-item bias of the attractiveness logit.
    pub item_bias_mean: f64,
    pub item_bias_spread: f64,
    /// The item's bias is one of its dense features. `false`: only the ranking stage knows
    /// it (through its score), as when upstream models see signals the reranker does not;
    /// then the incumbent's order is hard to beat without `ranking_score`.
    pub item_bias_visible: bool,
    /// Spread of items around their category's centre (0: a category is one item).
    pub category_spread: f64,
    /// Redundancy: attractiveness times `redundancy^(items of the same category above)`.
    pub redundancy: f64,
    /// Complementarity: this many ordered category pairs (A, B); an item of B is
    /// `1 + complement_boost` times as attractive if an item of A is above it.
    pub complement_pairs: usize,
    pub complement_boost: f64,
    /// Fatigue: attractiveness times `(1 - fatigue)^(t-1)` at slot t.
    pub fatigue: f64,
    /// Cascade examination: probability of looking at the next slot after a skip / a click.
    pub continue_after_skip: f64,
    pub continue_after_click: f64,
    /// A click buys with this probability, and a purchase logs `price / purchase_rate`: a
    /// click's expected value stays its price (the truth), while the logged `values` get as
    /// sparse and noisy as real GMV (most clicks buy nothing). 1: every click logs its price.
    pub purchase_rate: f64,
    /// Standard deviation of the ranking stage's error on the true logit.
    pub ranking_noise: f64,
    /// Logging policy: Plackett-Luce over the ranking score at this temperature ...
    pub logging_temperature: f64,
    /// ... and, with this probability, a uniformly random list instead (exploration).
    pub exploration: f64,
    /// Oracle: enumerate every list when there are at most this many, else beam search.
    pub oracle_exhaustive_limit: u64,
    pub oracle_beam_width: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            train_requests: 20_000,
            test_requests: 2_000,
            items: 2_000,
            categories: 16,
            brands: 64,
            user_dim: 4,
            item_dim: 6,
            user_segments: 8,
            candidates: 20,
            slots: 10,
            retrieval_pool: 200,
            affinity_scale: 1.5,
            item_bias_mean: -2.0,
            item_bias_spread: 0.5,
            item_bias_visible: true,
            category_spread: 0.5,
            redundancy: 0.5,
            complement_pairs: 12,
            complement_boost: 0.8,
            fatigue: 0.0,
            continue_after_skip: 0.9,
            continue_after_click: 0.7,
            purchase_rate: 1.0,
            ranking_noise: 0.7,
            logging_temperature: 0.5,
            exploration: 0.1,
            oracle_exhaustive_limit: 200_000,
            oracle_beam_width: 128,
        }
    }
}

impl SimConfig {
    /// Reads a TOML file (any subset of the fields) and checks the result.
    pub fn load(path: &Path) -> anyhow::Result<SimConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let config: SimConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("items", self.items),
            ("categories", self.categories),
            ("brands", self.brands),
            ("user_dim", self.user_dim),
            ("item_dim", self.item_dim),
            ("user_segments", self.user_segments),
            ("candidates", self.candidates),
            ("slots", self.slots),
            ("oracle_beam_width", self.oracle_beam_width),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be at least 1"));
        }
        if self.slots > self.candidates {
            return Err("`slots` must not exceed `candidates`".into());
        }
        if self.candidates > self.retrieval_pool || self.retrieval_pool > self.items {
            return Err("need `candidates` <= `retrieval_pool` <= `items`".into());
        }
        let unit = [
            ("redundancy", self.redundancy),
            ("fatigue", self.fatigue),
            ("continue_after_skip", self.continue_after_skip),
            ("continue_after_click", self.continue_after_click),
            ("exploration", self.exploration),
        ];
        if let Some((name, _)) = unit.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err(format!("`{name}` must be within [0, 1]"));
        }
        if self.complement_pairs > self.categories * (self.categories - 1) {
            return Err("`complement_pairs` exceeds the ordered pairs of categories".into());
        }
        if !(self.purchase_rate > 0.0 && self.purchase_rate <= 1.0) {
            return Err("`purchase_rate` must be within (0, 1]".into());
        }
        let non_negative = [
            ("affinity_scale", self.affinity_scale),
            ("item_bias_spread", self.item_bias_spread),
            ("category_spread", self.category_spread),
            ("complement_boost", self.complement_boost),
            ("ranking_noise", self.ranking_noise),
            ("logging_temperature", self.logging_temperature),
        ];
        if let Some((name, _)) = non_negative.iter().find(|(_, v)| v.is_nan() || *v < 0.0) {
            return Err(format!("`{name}` must be >= 0"));
        }
        Ok(())
    }
}
