//! Mining throughput: beam search over the Lookahead Evaluator plus the lookahead values of
//! every step, for one request of the default simulated world (N = 20, K = 10), on one
//! thread. `degre mine` runs one such request per core.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use degre::offline::evaluator::{self, TrainConfig};
use degre::offline::mine::mine_request;
use degre::offline::sim::{sample_split, SimConfig, World};

fn mining(c: &mut Criterion) {
    let world = World::generate(SimConfig::default(), 0);
    let rows = sample_split(&world, "bench", 300);
    let dir = tempfile::tempdir().unwrap();
    // The weights do not change the cost; one epoch gives the default network sizes.
    let config = TrainConfig {
        epochs: 1,
        progress: false,
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &config, dir.path(), false).unwrap();
    let request = &rows[0];
    let mut group = c.benchmark_group("mine_request_n20_k10");
    for width in [1, 4, 16] {
        group.bench_with_input(BenchmarkId::from_parameter(width), &width, |b, &width| {
            b.iter(|| {
                let scorer = evaluator.scorer(request).unwrap();
                mine_request(&scorer, &request.request_id, 10, width, None)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mining);
criterion_main!(benches);
