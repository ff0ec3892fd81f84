//! One request's compute on the bundled model: encode N candidates once, then K greedy
//! decoder steps. Run: `cargo bench --bench decode`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use degre::repository::Repository;
use degre::rerank::{InputBuilder, RerankInput};

fn input(generator: &degre::runtime::LoadedModel, n: usize, k: u32) -> RerankInput {
    let schema = &generator.manifest.schema;
    let value = |i: usize, j: usize| ((i * 31 + j * 17) % 23) as f32 / 11.0 - 1.0;
    let mut b = InputBuilder::new(schema, n, n).expect("n within limits");
    let ctx: Vec<f32> = (0..schema.context_dense.len())
        .map(|j| value(99, j))
        .collect();
    b.context(&ctx, &vec![1; schema.context_categorical.len()])
        .expect("valid context");
    for i in 0..n {
        let dense: Vec<f32> = (0..schema.candidate_dense.len())
            .map(|j| value(i, j))
            .collect();
        let ids: Vec<i64> = (0..schema.candidate_categorical.len())
            .map(|j| (i * 7 + j) as i64)
            .collect();
        b.candidate(i, format!("item-{i}"), &dense, &ids)
            .expect("valid candidate");
    }
    b.finish(k).expect("unique item ids")
}

fn decode(c: &mut Criterion) {
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
    let repo = Repository::open(models.as_ref(), None).expect("bundled model repository");
    let version = repo.versions().expect("versions")[0];
    let generator = repo.load(version).expect("bundled model loads");
    let mut group = c.benchmark_group("rerank");
    for k in [10u32, 20] {
        for n in [10usize, 50, 100, 200] {
            let input = input(&generator, n, k);
            // Steady state: the server compiles plans for each N it sees in the background.
            generator.prepare(n);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(format!("k{k}"), n), &input, |b, input| {
                b.iter(|| generator.rerank(input).expect("decode"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
