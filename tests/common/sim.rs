//! A small simulated world for offline tests: 500 items, 10 candidates, 5 slots (so the
//! oracle is exhaustive), the default user behaviour otherwise.

use degre::offline::sim::{SimConfig, World};

pub fn small_config() -> SimConfig {
    SimConfig {
        items: 500,
        candidates: 10,
        slots: 5,
        retrieval_pool: 100,
        ..SimConfig::default()
    }
}

pub fn small_world(seed: u64) -> World {
    World::generate(small_config(), seed)
}
