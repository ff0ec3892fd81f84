//! The ground truth: a catalog of priced items, how users value them, how they read a
//! list, and the exact expected reward `U(list)` of any list under an objective (expected
//! clicks, expected value = clicks × price, or a weighted sum). Described in `docs/offline.md`, "The benchmark environment".

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::{index, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gumbel, StandardNormal};
use serde::{Deserialize, Serialize};

use super::SimConfig;
use crate::offline::logs::{Candidate, Features, LoggedRequest};
use crate::offline::objective::Objective;
use crate::offline::search::ListModel;

/// Attractiveness is capped below 1 so that no list is certain to stop the user.
const MAX_ATTRACTIVENESS: f64 = 0.95;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub latent: Vec<f64>,
    pub bias: f64,
    pub category: u32,
    pub brand: u32,
    pub price: f64,
}

/// Everything the simulator draws once: the same seed gives the same world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub config: SimConfig,
    pub seed: u64,
    /// `user_dim × item_dim`, row-major: the affinity is `uᵀ W x`.
    pub interaction: Vec<f64>,
    pub segment_centres: Vec<Vec<f64>>,
    pub items: Vec<Item>,
    /// `complements[a * categories + b]`: an item of category `a` above boosts category `b`.
    pub complements: Vec<bool>,
}

fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

pub fn item_id(index: usize) -> String {
    format!("item-{index}")
}

impl World {
    pub fn generate(config: SimConfig, seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let c = &config;
        let scale = c.affinity_scale / ((c.user_dim * c.item_dim) as f64).sqrt();
        let interaction = (0..c.user_dim * c.item_dim)
            .map(|_| normal(&mut rng) * scale)
            .collect();
        let segment_centres = (0..c.user_segments)
            .map(|_| (0..c.user_dim).map(|_| normal(&mut rng)).collect())
            .collect();
        let centres: Vec<Vec<f64>> = (0..c.categories)
            .map(|_| (0..c.item_dim).map(|_| normal(&mut rng)).collect())
            .collect();
        let items = (0..c.items)
            .map(|_| {
                let category = rng.random_range(0..c.categories);
                Item {
                    latent: centres[category]
                        .iter()
                        .map(|m| m + c.category_spread * normal(&mut rng))
                        .collect(),
                    bias: c.item_bias_mean + c.item_bias_spread * normal(&mut rng),
                    category: category as u32,
                    brand: rng.random_range(0..c.brands) as u32,
                    price: (2.0 + 0.8 * normal(&mut rng)).exp(),
                }
            })
            .collect();
        let mut complements = vec![false; c.categories * c.categories];
        let mut pairs: Vec<usize> = (0..complements.len())
            .filter(|p| p / c.categories != p % c.categories)
            .collect();
        pairs.shuffle(&mut rng);
        for &p in pairs.iter().take(c.complement_pairs) {
            complements[p] = true;
        }
        World {
            config,
            seed,
            interaction,
            segment_centres,
            items,
            complements,
        }
    }

    fn affinity_logit(&self, user: &[f64], item: &Item) -> f64 {
        let d = self.config.item_dim;
        let mut logit = item.bias;
        for (j, u) in user.iter().enumerate() {
            let row = &self.interaction[j * d..(j + 1) * d];
            logit += u * row
                .iter()
                .zip(&item.latent)
                .map(|(w, x)| w * x)
                .sum::<f64>();
        }
        logit
    }

    fn segment(&self, user: &[f64]) -> usize {
        let distance =
            |c: &Vec<f64>| -> f64 { c.iter().zip(user).map(|(a, b)| (a - b).powi(2)).sum() };
        (0..self.segment_centres.len())
            .min_by(|&a, &b| {
                distance(&self.segment_centres[a]).total_cmp(&distance(&self.segment_centres[b]))
            })
            .unwrap_or(0)
    }

    /// Draws one request: a user, the ranking stage's candidates, the logging policy's list
    /// and the clicks a user of the cascade model gives it.
    pub fn sample_request(&self, request_id: String, rng: &mut StdRng) -> LoggedRequest {
        let c = &self.config;
        let user: Vec<f64> = (0..c.user_dim).map(|_| normal(rng)).collect();
        let pool = index::sample(rng, self.items.len(), c.retrieval_pool);
        let mut scored: Vec<(usize, f64)> = pool
            .iter()
            .map(|i| {
                let logit = self.affinity_logit(&user, &self.items[i]);
                (i, logit + c.ranking_noise * normal(rng))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(c.candidates);
        // Candidate order carries no information; policies use the ranking score.
        scored.shuffle(rng);
        let candidates: Vec<Candidate> = scored
            .iter()
            .map(|&(i, score)| self.candidate(i, score))
            .collect();
        let context = Features {
            dense: user.iter().map(|&u| u as f32).collect(),
            categorical: vec![self.segment(&user) as i64],
        };
        let exposed = self.logging_policy(&scored, rng);
        let items = scored.iter().map(|&(i, _)| i).collect();
        let truth = self.truth_of(&user, items, Objective::CLICKS);
        let clicks = truth.sample_clicks(&exposed, rng);
        let values = exposed
            .iter()
            .zip(&clicks)
            .map(|(&a, &click)| {
                let price = self.items[scored[a].0].price;
                // Drawn only below 1, so the default world's logs do not change.
                let bought = c.purchase_rate >= 1.0 || rng.random_bool(c.purchase_rate);
                if click && bought {
                    (price / c.purchase_rate) as f32
                } else {
                    0.0
                }
            })
            .collect();
        LoggedRequest {
            request_id,
            context,
            candidates,
            exposed,
            clicks,
            values: Some(values),
        }
    }

    fn candidate(&self, index: usize, ranking_score: f64) -> Candidate {
        let item = &self.items[index];
        let mut dense: Vec<f32> = item.latent.iter().map(|&x| x as f32).collect();
        if self.config.item_bias_visible {
            dense.push(item.bias as f32);
        }
        dense.push(item.price.ln() as f32);
        Candidate {
            item_id: item_id(index),
            features: Features {
                dense,
                categorical: vec![item.category as i64, item.brand as i64],
            },
            ranking_score: ranking_score as f32,
        }
    }

    /// Plackett-Luce over the ranking score (Gumbel top-K), or a random list (exploration).
    fn logging_policy(&self, scored: &[(usize, f64)], rng: &mut StdRng) -> Vec<usize> {
        let c = &self.config;
        if rng.random_bool(c.exploration) {
            return index::sample(rng, scored.len(), c.slots).into_vec();
        }
        let gumbel = Gumbel::new(0.0, 1.0).expect("valid Gumbel parameters");
        let keys: Vec<f64> = scored
            .iter()
            .map(|&(_, s)| s + c.logging_temperature * gumbel.sample(rng))
            .collect();
        crate::offline::search::sort_by_score(&keys, c.slots)
    }

    fn truth_of(&self, user: &[f64], items: Vec<usize>, objective: Objective) -> Truth<'_> {
        let attractiveness = items
            .iter()
            .map(|&i| sigmoid(self.affinity_logit(user, &self.items[i])))
            .collect();
        Truth {
            world: self,
            items,
            attractiveness,
            objective,
        }
    }

    /// The ground truth for a logged request of this world (its items found by id), whose
    /// utility is the expected reward under `objective`.
    pub fn truth(
        &self,
        request: &LoggedRequest,
        objective: Objective,
    ) -> Result<Truth<'_>, String> {
        if request.context.dense.len() != self.config.user_dim {
            return Err(format!(
                "request {}: context has {} dense features, the world's users have {}",
                request.request_id,
                request.context.dense.len(),
                self.config.user_dim
            ));
        }
        let user: Vec<f64> = request.context.dense.iter().map(|&u| u.into()).collect();
        let items = request
            .candidates
            .iter()
            .map(|c| self.index_of(&c.item_id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|id| format!("request {}: unknown item {id:?}", request.request_id))?;
        Ok(self.truth_of(&user, items, objective))
    }

    fn index_of(&self, id: &str) -> Result<usize, String> {
        id.strip_prefix("item-")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < self.items.len() && item_id(i) == id)
            .ok_or_else(|| id.to_string())
    }

    /// Item ids → catalog positions, for callers that look up many ids.
    pub fn id_map(&self) -> HashMap<String, usize> {
        (0..self.items.len()).map(|i| (item_id(i), i)).collect()
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One request's ground truth: the exact user model over its candidates.
pub struct Truth<'w> {
    world: &'w World,
    items: Vec<usize>,
    /// Base attractiveness of each candidate, before context effects.
    pub attractiveness: Vec<f64>,
    objective: Objective,
}

/// What the user model remembers of a prefix.
#[derive(Debug, Clone)]
pub struct Reading {
    slot: usize,
    /// Probability that the user looks at the next slot.
    examine: f64,
    /// Items of each category shown so far.
    shown: Vec<u16>,
}

impl Truth<'_> {
    fn category(&self, a: usize) -> usize {
        self.world.items[self.items[a]].category as usize
    }

    /// The same request under another objective.
    pub fn with_objective(&self, objective: Objective) -> Truth<'_> {
        Truth {
            world: self.world,
            items: self.items.clone(),
            attractiveness: self.attractiveness.clone(),
            objective,
        }
    }

    /// A click's reward on candidate `a`: its price is the value of a click.
    pub(crate) fn reward_of_click(&self, a: usize) -> f64 {
        let price = self.world.items[self.items[a]].price;
        self.objective.reward_of_click(price)
    }

    /// Each candidate's expected reward alone at the top: the true pointwise score.
    pub fn pointwise_scores(&self) -> Vec<f64> {
        (0..self.items.len())
            .map(|a| self.attractiveness[a] * self.reward_of_click(a))
            .collect()
    }

    /// Click probability of candidate `a` in the next slot, if examined.
    fn click_probability(&self, state: &Reading, a: usize) -> f64 {
        let c = &self.world.config;
        let category = self.category(a);
        let mut p = self.attractiveness[a] * c.redundancy.powi(state.shown[category].into());
        let complemented = (0..c.categories).any(|above| {
            state.shown[above] > 0 && self.world.complements[above * c.categories + category]
        });
        if complemented {
            p *= 1.0 + c.complement_boost;
        }
        p *= (1.0 - c.fatigue).powi(state.slot as i32);
        p.min(MAX_ATTRACTIVENESS)
    }

    /// Clicks of one simulated user reading `list` top-down (cascade).
    pub fn sample_clicks(&self, list: &[usize], rng: &mut StdRng) -> Vec<bool> {
        let c = &self.world.config;
        let mut state = self.initial();
        let mut examining = true;
        let mut clicks = Vec::with_capacity(list.len());
        for &a in list {
            let click = examining && rng.random_bool(self.click_probability(&state, a));
            if examining {
                let stay = if click {
                    c.continue_after_click
                } else {
                    c.continue_after_skip
                };
                examining = rng.random_bool(stay);
            }
            clicks.push(click);
            self.push(&mut state, a);
        }
        clicks
    }
}

impl ListModel for Truth<'_> {
    type State = Reading;

    fn candidates(&self) -> usize {
        self.items.len()
    }

    fn initial(&self) -> Reading {
        Reading {
            slot: 0,
            examine: 1.0,
            shown: vec![0; self.world.config.categories],
        }
    }

    /// Expected reward of the slot: P(examined) · P(click | examined) · reward of a click.
    fn gain(&self, state: &Reading, a: usize) -> f64 {
        state.examine * self.click_probability(state, a) * self.reward_of_click(a)
    }

    fn push(&self, state: &mut Reading, a: usize) {
        let c = &self.world.config;
        let p = self.click_probability(state, a);
        state.examine *= p * c.continue_after_click + (1.0 - p) * c.continue_after_skip;
        state.shown[self.category(a)] += 1;
        state.slot += 1;
    }
}
