//! The Lookahead Evaluator on a small seeded simulated run: it learns, it ranks lists like
//! the true utility does, and its incremental scorer equals the training-time network.

use degre::offline::eval::{evaluate, EvalInputs};
use degre::offline::evaluator::{self, Evaluator, ListRef, TrainConfig};
use degre::offline::logs::LoggedRequest;
use degre::offline::policy::Policy;
use degre::offline::search::{self, ListModel};
use degre::offline::sim::{sample_split, SimConfig, World};

fn small_world() -> World {
    let config = SimConfig {
        items: 500,
        candidates: 10,
        slots: 5,
        retrieval_pool: 100,
        ..SimConfig::default()
    };
    World::generate(config, 3)
}

#[test]
fn evaluator_learns_and_ranks_lists_like_the_true_utility() {
    let world = small_world();
    let train = sample_split(&world, "train", 4000);
    let test = sample_split(&world, "test", 400);
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        hidden: 32,
        epochs: 8,
        seed: 1,
        progress: false,
        ..TrainConfig::default()
    };
    let trained = evaluator::train(&train, &config, dir.path(), false).unwrap();
    let summary = trained.spec.training.clone().unwrap();
    assert!(summary.valid_loss < summary.constant_valid_loss);

    let loaded = Evaluator::load(dir.path()).unwrap();
    let report = evaluate(&EvalInputs {
        logs: &test,
        world: Some(&world),
        evaluator: Some(&loaded),
        policies: &[Policy::Random, Policy::EvaluatorGreedy],
        seed: 0,
        correlation_requests: 100,
        correlation_lists: 30,
    })
    .unwrap();
    let e = report.evaluator.unwrap();
    assert!(
        e.held_out_loss < 0.97 * e.constant_loss,
        "held-out BCE {} vs constant {}",
        e.held_out_loss,
        e.constant_loss
    );
    assert!(e.auc.unwrap() > 0.65, "AUC {:?}", e.auc);
    let within = e.rank_correlation.unwrap().within_request.unwrap();
    assert!(within > 0.3, "Spearman(V, U) within a request: {within}");
    // Searching the evaluator finds better lists than chance, under the true utility.
    let utility = |name: &str| {
        report
            .policies
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.true_utility)
            .unwrap()
    };
    assert!(utility("evaluator-greedy") > 1.08 * utility("random"));
}

#[test]
fn incremental_scorer_matches_the_training_forward_across_candidate_counts() {
    let world = small_world();
    let mut rows: Vec<LoggedRequest> = sample_split(&world, "train", 40);
    // Variable N: drop candidates from some requests (keeping the shown ones valid).
    for (i, row) in rows.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        let keep = 6 + i % 4;
        row.candidates.truncate(keep);
        row.exposed = (0..keep.min(5)).rev().collect();
        row.clicks.truncate(row.exposed.len());
        row.values = None;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        hidden: 16,
        epochs: 1,
        seed: 4,
        progress: false,
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &config, dir.path(), false).unwrap();
    let lists: Vec<ListRef<'_>> = rows
        .iter()
        .map(|r| ListRef {
            request: r,
            list: &r.exposed,
            rewards: None,
        })
        .collect();
    let batched = evaluator.slot_probabilities(&lists).unwrap();
    for (row, probabilities) in rows.iter().zip(&batched) {
        let scorer = evaluator.scorer(row).unwrap();
        let mut state = scorer.initial();
        for (&a, &p) in row.exposed.iter().zip(probabilities) {
            let q = scorer.gain(&state, a) as f32;
            assert!(
                (p - q).abs() < 1e-5,
                "{}: batched {p}, incremental {q}",
                row.request_id
            );
            scorer.push(&mut state, a);
        }
        let v = search::value(&scorer, &row.exposed);
        let sum: f32 = probabilities.iter().sum();
        assert!((v as f32 - sum).abs() < 1e-4);
    }
}
