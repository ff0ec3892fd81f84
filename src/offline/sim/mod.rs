//! The benchmark environment: a simulated world whose true utility of any list is known.

mod config;
mod generate;
mod world;

pub use config::SimConfig;
pub use generate::{sample_split, simulate, TEST_FILE, TRAIN_FILE, WORLD_FILE};
pub use world::{item_id, sigmoid, Item, Reading, Truth, World};

use crate::offline::search::{self, ListModel, Scored};

/// The best list under the truth, and how it was found.
pub fn oracle(truth: &Truth<'_>, config: &SimConfig) -> (Scored, OracleMethod) {
    let k = config.slots.min(truth.candidates());
    if search::permutations(truth.candidates(), k) <= u128::from(config.oracle_exhaustive_limit) {
        (search::exhaustive(truth, k), OracleMethod::Exhaustive)
    } else {
        let best = search::beam(truth, k, config.oracle_beam_width).swap_remove(0);
        (best, OracleMethod::Beam(config.oracle_beam_width))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleMethod {
    Exhaustive,
    Beam(usize),
}

impl std::fmt::Display for OracleMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OracleMethod::Exhaustive => write!(f, "exhaustive search"),
            OracleMethod::Beam(width) => {
                write!(f, "beam search (width {width}) under the true model")
            }
        }
    }
}

#[cfg(test)]
mod tests;
