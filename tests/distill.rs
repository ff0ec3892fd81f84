//! Distillation into the served generator: on a tiny case it reproduces its teacher's lists,
//! and the exported graph run by tract equals the training-time (candle) forward pass.
#![cfg(feature = "offline")]

use candle_core::Tensor;
use degre::contract::manifest::Limits;
use degre::network::export::version_files;
use degre::network::{Dims, Mixer, Weights};
use degre::offline::distill::{
    self, schema_of, CandleOps, DistillConfig, Forced, Inputs, TrainedGenerator,
};
use degre::offline::evaluator::{self, FeatureMap, TrainConfig};
use degre::offline::logs::{LogShape, LoggedRequest};
use degre::offline::mine::mine_request;
use degre::offline::objective::Objective;
use degre::offline::rules;
use degre::offline::sim::{sample_split, SimConfig, World};
use degre::repository::publish::publish_files;
use degre::repository::Repository;

fn world(candidates: usize) -> World {
    let config = SimConfig {
        items: 100,
        categories: 4,
        candidates,
        slots: 3.min(candidates),
        retrieval_pool: 30,
        complement_pairs: 3,
        ..SimConfig::default()
    };
    World::generate(config, 8)
}

#[test]
fn the_distilled_generator_reproduces_its_teachers_lists() {
    // A teacher with real preferences (an evaluator that learnt from 400 requests, not
    // the near-ties of one that saw a handful); the generator distilled from its lists on
    // the same requests must follow them (its best epoch is chosen on held-out requests,
    // so it cannot just memorise a few).
    let rows = sample_split(&world(6), "train", 400);
    let dir = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        hidden: 16,
        epochs: 4,
        seed: 1,
        progress: false,
        objective: Some(Objective::CLICKS),
        // The teacher's preferences come from the features; no incumbent needed.
        ranking_score: false,
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &train, dir.path(), false).unwrap();
    let mined: Vec<_> = rows
        .iter()
        .map(|r| mine_request(&evaluator.scorer(r).unwrap(), &r.request_id, 3, 8, None))
        .collect();
    let requests: Vec<&LoggedRequest> = rows.iter().collect();
    let targets: Vec<Forced> = mined.iter().map(|m| Forced::soft(m, 0.02)).collect();
    let config = DistillConfig {
        hidden: 16,
        embed: 4,
        epochs: 40,
        batch_size: 16,
        learning_rate: 5e-3,
        ce_weight: 0.5,
        patience: 40,
        valid_fraction: 0.1,
        progress: false,
        ..DistillConfig::default()
    };
    let (generator, summary) = distill::distill(
        &requests,
        &targets,
        &evaluator.spec.features,
        &config,
        "test",
    )
    .unwrap();
    assert!(summary.valid_loss.is_finite());
    let same = rows
        .iter()
        .zip(&mined)
        .filter(|(r, m)| generator.rerank(r, 3).unwrap() == m.list)
        .count();
    // Chance is 1 list in 120; evaluator seeds 1 to 4 gave 63–69%.
    assert!(
        same * 2 >= rows.len(),
        "{same} of {} lists reproduced",
        rows.len()
    );
}

/// The incumbent's order carries what the features do not (the ranking stage's noise is
/// in no feature): a generator that reads `ranking_score` learns to reproduce it on
/// requests it never saw, as it must to fall back to it where the evaluator knows nothing.
#[test]
fn a_generator_reading_ranking_score_reproduces_the_upstream_order_on_new_requests() {
    let w = world(8);
    let train = sample_split(&w, "train", 120);
    let test = sample_split(&w, "test", 40);
    let shape = LogShape::of(&train).unwrap();
    let requests: Vec<&LoggedRequest> = train.iter().collect();
    let targets: Vec<Forced> = train
        .iter()
        .map(|r| Forced::hard(&r.upstream_list(3)))
        .collect();
    let config = DistillConfig {
        hidden: 16,
        embed: 4,
        epochs: 12,
        batch_size: 8,
        learning_rate: 5e-3,
        progress: false,
        ..DistillConfig::default()
    };
    let reproduced = |ranking_score: bool| {
        let map = FeatureMap::fit(&requests, &shape, ranking_score);
        let (generator, _) = distill::distill(&requests, &targets, &map, &config, "t").unwrap();
        test.iter()
            .filter(|r| generator.rerank(r, 3).unwrap() == r.upstream_list(3))
            .count()
    };
    let (with, without) = (reproduced(true), reproduced(false));
    assert!(
        with * 10 >= test.len() * 9,
        "{with} of {} reproduced",
        test.len()
    );
    assert!(
        with > without,
        "with ranking_score {with}, without {without}"
    );
}

/// With `average_epochs`, validation and the kept generator are the moving average of the
/// weights: over a horizon far longer than the run it stays near the initial weights, so
/// what is kept has learnt visibly less than the weights themselves.
#[test]
fn the_kept_generator_is_the_weights_moving_average() {
    let w = world(8);
    let train = sample_split(&w, "train", 120);
    let test = sample_split(&w, "test", 40);
    let shape = LogShape::of(&train).unwrap();
    let requests: Vec<&LoggedRequest> = train.iter().collect();
    let targets: Vec<Forced> = (train.iter())
        .map(|r| Forced::hard(&r.upstream_list(3)))
        .collect();
    let map = FeatureMap::fit(&requests, &shape, true);
    let run = |average_epochs| {
        let config = DistillConfig {
            hidden: 16,
            embed: 4,
            epochs: 6,
            batch_size: 8,
            learning_rate: 5e-3,
            average_epochs,
            progress: false,
            ..DistillConfig::default()
        };
        let (generator, summary) =
            distill::distill(&requests, &targets, &map, &config, "t").unwrap();
        let reproduced = (test.iter())
            .filter(|r| generator.rerank(r, 3).unwrap() == r.upstream_list(3))
            .count();
        (reproduced, summary.valid_loss)
    };
    let (plain, plain_loss) = run(0.0);
    let (lagging, lagging_loss) = run(1000.0);
    assert!(
        lagging_loss > plain_loss && plain > lagging,
        "plain: {plain} reproduced, loss {plain_loss}; averaged over 1000 epochs: {lagging}, {lagging_loss}"
    );
}

/// Requests of different sizes and list lengths (one fills every slot), padded into one
/// batch: the batched loss is the sum of the one-request losses, so training on batches
/// optimises the same objective.
#[test]
fn the_batched_loss_is_the_sum_of_the_per_request_losses() {
    let (small, large) = (
        sample_split(&world(6), "a", 3),
        sample_split(&world(9), "b", 3),
    );
    let rows: Vec<&LoggedRequest> = small.iter().chain(&large).collect();
    let map = FeatureMap::fit(&rows, &LogShape::of(&large).unwrap(), true);
    let inputs: Vec<Inputs> = rows.iter().map(|r| Inputs::new(&map, r)).collect();
    let targets: Vec<Forced> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let k = [2, 3, r.candidates.len()][i % 3];
            let list = r.upstream_list(k);
            // Soft targets over the first few candidates not yet placed, as mining gives.
            let targets = (0..k)
                .map(|t| {
                    let open: Vec<usize> = (0..r.candidates.len())
                        .filter(|a| !list[..t].contains(a))
                        .take(3)
                        .collect();
                    open.iter().map(|&a| (a, 1.0 / open.len() as f32)).collect()
                })
                .collect();
            Forced { list, targets }
        })
        .collect();
    // Every encoder: attention and the inducing points' pooling mask the padding.
    for (seed, mixer) in [Mixer::Attention, Mixer::Mean, Mixer::Induced]
        .into_iter()
        .enumerate()
    {
        let dims = Dims {
            hidden: 16,
            embed: 4,
            mixer,
        };
        let weights = Weights::init(&schema_of(&map), dims, seed as u64 + 3);
        let mut ops = CandleOps::new(&weights).unwrap();
        let one_by_one: f32 = inputs
            .iter()
            .zip(&targets)
            .map(|(i, f)| {
                distill::forced_loss(&mut ops, &weights, i, f, 0.5)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum();
        let batched = distill::forced_loss_sum(
            &ops,
            &weights,
            &inputs.iter().collect::<Vec<_>>(),
            &targets.iter().collect::<Vec<_>>(),
            0.5,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(
            (batched - one_by_one).abs() <= 1e-4 * one_by_one.abs(),
            "{mixer:?}: batched {batched}, one by one {one_by_one}"
        );
    }
}

/// The sparse-reward baseline learns from sampled lists scored by the evaluator: its
/// greedy lists end up valued above the untrained generator's (best epoch after 0).
#[test]
fn the_sparse_reward_generator_improves_on_its_initial_weights() {
    let rows = sample_split(&world(6), "train", 60);
    let dir = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        hidden: 16,
        epochs: 3,
        seed: 2,
        progress: false,
        objective: Some(Objective::CLICKS),
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &train, dir.path(), false).unwrap();
    let requests: Vec<&LoggedRequest> = rows.iter().collect();
    let config = DistillConfig {
        hidden: 16,
        embed: 4,
        batch_size: 8,
        learning_rate: 1e-2,
        reinforce_epochs: 6,
        patience: 6,
        progress: false,
        ..DistillConfig::default()
    };
    let (_, summary) = distill::reinforce(&requests, &evaluator, 3, &config).unwrap();
    assert!(summary.best_epoch > 0, "{summary:?}");
}

/// The simulated business rules hold whether the generator decodes under them or a rule
/// engine fixes its unconstrained ranking up afterwards: the sponsored item in its slot,
/// at most 2 items of a category in any 4 slots, every slot filled.
#[test]
fn business_rules_hold_inside_the_pass_and_after_it() {
    let rows = sample_split(&world(12), "test", 40);
    let all: Vec<&LoggedRequest> = rows.iter().collect();
    let map = FeatureMap::fit(&all, &LogShape::of(&rows).unwrap(), true);
    let dims = Dims {
        hidden: 16,
        embed: 4,
        mixer: Mixer::Attention,
    };
    let generator = TrainedGenerator::fold(Weights::init(&schema_of(&map), dims, 4), &map);
    let mut differ = 0;
    for r in &rows {
        let (rules, slots) = rules::of(r, 3).unwrap();
        let inside = generator.rerank_under(r, slots, &rules).unwrap();
        let ranking = generator.rerank(r, r.candidates.len()).unwrap();
        let after = rules::applied_after(&ranking, &rules, slots);
        let sponsored = *r.upstream_list(r.candidates.len()).last().unwrap();
        for list in [&inside, &after] {
            assert_eq!(list.len(), 3);
            assert_eq!(list[rules::PIN_SLOT as usize], sponsored);
            for window in list.windows(list.len().min(4)) {
                for c in window {
                    let category = |i: &usize| r.candidates[*i].features.categorical[0];
                    let same = window.iter().filter(|i| category(i) == category(c)).count();
                    assert!(same <= 2, "{list:?}");
                }
            }
        }
        differ += usize::from(inside != after);
    }
    // The model re-plans around the rules: its lists are not always the fixed-up ones.
    assert!(differ > 0);
}

#[test]
fn the_exported_graph_equals_the_training_forward_for_any_candidate_count() {
    let mixers = [Mixer::Attention, Mixer::Induced, Mixer::Mean];
    for (n, mixer) in [2, 7, 20].into_iter().flat_map(|n| mixers.map(|m| (n, m))) {
        let rows = sample_split(&world(n), "any", 6);
        let shape = LogShape::of(&rows).unwrap();
        let map = FeatureMap::fit(&rows.iter().collect::<Vec<_>>(), &shape, true);
        let trained = Weights::init(
            &schema_of(&map),
            Dims {
                hidden: 16,
                embed: 4,
                mixer,
            },
            n as u64,
        );
        let served = TrainedGenerator::fold(trained.clone(), &map);
        let dir = tempfile::tempdir().unwrap();
        let files = version_files(
            &served.weights,
            &served.schema,
            "m",
            Limits { max_candidates: 64 },
            serde_json::Value::Null,
        );
        publish_files(dir.path(), "m", &files).unwrap();
        let tract = Repository::open(dir.path(), None).unwrap().load(1).unwrap();
        for row in &rows {
            let prefix: Vec<usize> = (0..n).rev().take(3).collect();
            let expected = tract
                .logits_along(
                    &row.rerank_input(&served.schema, n).unwrap(),
                    &prefix,
                    degre::runtime::Engine::TractGeneric,
                )
                .unwrap();
            // The training forward: candle ops, standardised inputs, unfolded weights.
            let mut ops = CandleOps::new(&trained).unwrap();
            let inputs = Inputs::new(&map, row);
            let encoded = inputs.encode(&mut ops, &trained).unwrap();
            let mut state = encoded.state.clone();
            let mut prev =
                Tensor::zeros((1, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            for (t, want) in expected.iter().enumerate() {
                let (query, next) = trained.step(&mut ops, &state, &prev);
                let got: Vec<f32> = encoded
                    .keys
                    .matmul(&query.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for (a, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{mixer:?} N={n} step {t} candidate {a}: candle {g}, tract {w}"
                    );
                }
                prev = encoded.values.narrow(0, prefix[t], 1).unwrap();
                state = next;
            }
        }
    }
}
