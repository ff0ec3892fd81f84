//! `degre simulate`: a world and its logs, written to a directory.

use std::path::Path;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

use super::{SimConfig, World};
use crate::offline::logs::{write_logs, LoggedRequest};

pub const WORLD_FILE: &str = "world.json";
pub const TRAIN_FILE: &str = "train.parquet";
pub const TEST_FILE: &str = "test.parquet";

/// Requests of one split. Each request has its own seed, so the logs do not depend on how
/// many threads drew them.
pub fn sample_split(world: &World, split: &str, count: usize) -> Vec<LoggedRequest> {
    let split_seed = world.seed
        ^ split
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(131) ^ u64::from(b));
    (0..count)
        .into_par_iter()
        .map(|i| {
            let seed = split_seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            world.sample_request(format!("{split}-{i}"), &mut StdRng::seed_from_u64(seed))
        })
        .collect()
}

/// Writes `world.json`, `train.parquet` and `test.parquet` into `out`.
pub fn simulate(config: SimConfig, seed: u64, out: &Path) -> anyhow::Result<World> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let world = World::generate(config, seed);
    let path = out.join(WORLD_FILE);
    std::fs::write(&path, serde_json::to_string(&world)?)
        .with_context(|| format!("{}", path.display()))?;
    for (file, split, count) in [
        (TRAIN_FILE, "train", world.config.train_requests),
        (TEST_FILE, "test", world.config.test_requests),
    ] {
        if count > 0 {
            write_logs(&out.join(file), &sample_split(&world, split, count))?;
        }
    }
    Ok(world)
}

impl World {
    pub fn load(path: &Path) -> anyhow::Result<World> {
        let path = if path.is_dir() {
            path.join(WORLD_FILE)
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let world: World =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        world
            .config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(world)
    }
}
