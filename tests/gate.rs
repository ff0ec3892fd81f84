//! The publish gate on a simulated world, where the truth is known: a judge trained on its
//! own logs refuses a "generator" that is worse than the ranking stage's order and accepts
//! one that is better, and its verdict has the sign of the true difference.
#![cfg(feature = "offline")]

use std::collections::HashMap;

use degre::offline::evaluator::{self, TrainConfig};
use degre::offline::gate::{self, GateReport, Panel};
use degre::offline::logs::LoggedRequest;
use degre::offline::objective::Objective;
use degre::offline::policy::{Policy, RequestContext};
use degre::offline::search;
use degre::offline::sim::{oracle, sample_split};

mod common;
use common::sim::small_world;

/// The gate with `degre` replaced by fixed lists, one per test request, asking for a gain
/// of `min_gain` of upstream's judged value.
fn gate_with(
    panel: &Panel,
    test: &[LoggedRequest],
    lists: impl Fn(&LoggedRequest) -> Vec<usize>,
    min_gain: f64,
) -> GateReport {
    let degre = Policy::Lists {
        name: gate::CANDIDATE.into(),
        lists: test
            .iter()
            .map(|r| (r.request_id.clone(), lists(r)))
            .collect::<HashMap<_, _>>(),
    };
    let policies = [Policy::Logged, Policy::Upstream, degre];
    gate::judge(panel, test, &policies, Some(5), min_gain).unwrap()
}

fn upstream(request: &LoggedRequest) -> Vec<usize> {
    let cx = RequestContext {
        request,
        k: request.candidates.len(),
        truth: None,
        scorer: None,
        seed: 0,
    };
    Policy::Upstream.rank(&cx).unwrap()
}

#[test]
fn the_gate_refuses_a_worse_generator_and_accepts_a_better_one() {
    let world = small_world(21);
    let judged_on = sample_split(&world, "judge", 3000);
    let test = sample_split(&world, "test", 300);
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        hidden: 32,
        epochs: 6,
        seed: 5,
        progress: false,
        ..TrainConfig::default()
    };
    let judge = evaluator::train(&judged_on, &config, dir.path(), false).unwrap();
    assert_eq!(judge.spec.objective, Objective::VALUE);
    let pointwise_dir = tempfile::tempdir().unwrap();
    let pointwise = TrainConfig {
        interactions: false,
        ..config
    };
    let pointwise = evaluator::train(&judged_on, &pointwise, pointwise_dir.path(), false).unwrap();
    let panel = Panel {
        judges: vec![judge],
        pointwise: vec![pointwise],
    };
    let truth_difference = |lists: &dyn Fn(&LoggedRequest) -> Vec<usize>| {
        test.iter()
            .map(|r| {
                let truth = world.truth(r, Objective::VALUE).unwrap();
                let top = &upstream(r)[..5];
                search::value(&truth, &lists(r)) - search::value(&truth, top)
            })
            .sum::<f64>()
            / test.len() as f64
    };

    // Worse than the incumbent: the ranking stage's order read from the bottom.
    let worst_first = |r: &LoggedRequest| upstream(r).into_iter().rev().take(5).collect();
    let worse = gate_with(&panel, &test, worst_first, 0.0);
    assert!(!worse.passed, "{}", worse.verdict());
    assert!(truth_difference(&worst_first) < 0.0);

    // Better: the value-optimal list under the true model.
    let best = |r: &LoggedRequest| {
        let truth = world.truth(r, Objective::VALUE).unwrap();
        oracle(&truth, &world.config).0.list
    };
    let better = gate_with(&panel, &test, best, 0.01);
    assert!(better.passed, "{}", better.verdict());
    assert!(truth_difference(&best) > 0.0);
    let (mean, half) = better.degre_vs_incumbent;
    assert!(mean > half && half > 0.0);
    // Ahead, but not by the gain asked for: refused, and the reason says so.
    let upstream_value = better.judged_value("upstream").unwrap();
    let out_of_reach = (mean - half) / upstream_value + 0.01;
    let not_enough = gate_with(&panel, &test, best, out_of_reach);
    assert!(!not_enough.passed);
    assert!(
        not_enough.verdict().contains("gate_min_gain"),
        "{}",
        not_enough.verdict()
    );

    // The panel's mixture predicts the held-out clicks at least as well as either kind.
    let fit = &better.fit;
    assert!(fit.list_weights.iter().all(|w| (0.0..=1.0).contains(w)));
    let pointwise_loss = fit.pointwise_log_loss.unwrap();
    assert!(fit.log_loss <= fit.list_log_loss.min(pointwise_loss) + 1e-12);

    // The judge knows lists like the logged ones: its estimate of what they earned is close
    // to what they did earn.
    let ratio = better.judged_logged / better.logged_reward;
    assert!((0.8..1.25).contains(&ratio), "judged / logged = {ratio:.3}");
}
