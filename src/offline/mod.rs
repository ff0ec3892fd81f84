//! The offline half of DeGRe (feature `offline`): logged requests (`logs`), the benchmark
//! world with a known utility (`sim`), the Lookahead Evaluator (`evaluator`), beam search
//! and mining of lists with lookahead values (`search`, `mine`), distillation of the
//! generator (`distill`), the policies compared and their comparison (`policy`, `compare`,
//! `metrics`), and the whole run with its report (`pipeline`, `report`). The shared
//! training loop lives in `training`. Nothing in the serving core imports from here.

pub mod compare;
pub mod distill;
pub mod evaluator;
pub mod gate;
pub mod logs;
pub mod metrics;
pub mod mine;
pub mod objective;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod report;
pub mod rules;
pub mod search;
pub mod sim;
pub mod training;

/// Offline work is parallel across requests and jobs (rayon), each on one thread. candle's
/// matrix kernels read `RAYON_NUM_THREADS` at every product and split even tiny products
/// across threads, which made training 4× slower here; so rayon's pool is built first, one
/// thread per core (or `RAYON_NUM_THREADS`), then candle is told to stay on its caller's
/// thread. Call it before any other thread starts: it sets an environment variable.
pub fn single_threaded_kernels() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Fails only if the pool exists already, in which case it keeps its size.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    std::env::set_var("RAYON_NUM_THREADS", "1");
}
