use degre::model::repository::Repository;
use degre::rerank::InputBuilder;
use std::time::Instant;
fn main() {
    let repo = Repository::open("models".as_ref(), None).unwrap();
    let g = repo.load(1).unwrap();
    let schema = g.manifest.schema.clone();
    for n in [10usize, 100, 200] {
        let mut b = InputBuilder::new(&schema, n, n).unwrap();
        b.context(&[0.1, 0.2, 0.3, 0.4], &[1]).unwrap();
        for i in 0..n {
            let d: Vec<f32> = (0..8)
                .map(|j| ((i * 31 + j * 17) % 23) as f32 / 11.0 - 1.0)
                .collect();
            b.candidate(i, format!("i{i}"), &d, &[(i % 64) as i64, (i * 7) as i64])
                .unwrap();
        }
        let input = b.finish(20);
        g.prepare(n);
        let iters = 500;
        for (label, k) in [
            ("encode only", 0usize),
            ("encode+10", 10),
            ("encode+20", 20),
        ] {
            let prefix: Vec<usize> = (0..k.min(n)).collect();
            let _ = g.logits_along(&input, &prefix, true).unwrap();
            let t = Instant::now();
            for _ in 0..iters {
                let _ = g.logits_along(&input, &prefix, true).unwrap();
            }
            println!("n={n} {label}: {:?}", t.elapsed() / iters);
        }
        let l = g.logits_along(&input, &[0], true).unwrap();
        println!("logits[0][..5] = {:?}", &l[0][..5]);
        struct Fixed(Vec<f32>);
        impl degre::decode::StepModel for Fixed {
            type Error = ();
            fn next_logits(&mut self, _: Option<usize>) -> Result<&[f32], ()> {
                Ok(&self.0)
            }
        }
        let mut f = Fixed(l[0].clone());
        let t = Instant::now();
        for _ in 0..iters {
            let _ = degre::decode::greedy(&mut f, n, 20).unwrap();
        }
        println!("n={n} greedy only k=20: {:?}", t.elapsed() / iters);
        let t = Instant::now();
        for _ in 0..iters {
            let _ = g.rerank(&input).unwrap();
        }
        println!("n={n} rerank k=20: {:?}", t.elapsed() / iters);
    }
}
#[allow(dead_code)]
fn unused() {}
