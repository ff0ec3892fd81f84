use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::offline::objective::Objective;
use crate::offline::search;

/// A small world where redundancy and complementarity both fire often.
fn small_config() -> SimConfig {
    SimConfig {
        train_requests: 0,
        test_requests: 0,
        items: 60,
        categories: 3,
        complement_pairs: 2,
        candidates: 6,
        retrieval_pool: 20,
        slots: 3,
        fatigue: 0.05,
        ..SimConfig::default()
    }
}

#[test]
fn exact_utility_matches_monte_carlo_for_clicks_and_value() {
    let world = World::generate(small_config(), 11);
    let request = world.sample_request("r".into(), &mut StdRng::seed_from_u64(1));
    let list = [0, 1, 2, 3, 4, 5];
    for objective in [Objective::CLICKS, Objective::VALUE] {
        let truth = world.truth(&request, objective).unwrap();
        let exact = search::value(&truth, &list);
        let mut rng = StdRng::seed_from_u64(2);
        let sessions = 200_000;
        let rewards: Vec<f64> = (0..sessions)
            .map(|_| {
                let clicks = truth.sample_clicks(&list, &mut rng);
                list.iter()
                    .zip(clicks)
                    .filter(|(_, c)| *c)
                    .map(|(&a, _)| truth.reward_of_click(a))
                    .sum()
            })
            .collect();
        let (mean, std) = crate::offline::metrics::mean_std(&rewards);
        let stderr = std / (sessions as f64).sqrt();
        assert!(
            (mean - exact).abs() < 4.0 * stderr,
            "{objective}: Monte Carlo {mean:.5} ± {stderr:.5}, exact {exact:.5}"
        );
    }
}

#[test]
fn the_click_optimal_and_the_value_optimal_lists_differ() {
    let config = SimConfig::default();
    let world = World::generate(config.clone(), 0);
    let (mut differ, mut loss) = (0, 0.0);
    let requests = sample_split(&world, "test", 40);
    for request in &requests {
        let clicks = world.truth(request, Objective::CLICKS).unwrap();
        let value = clicks.with_objective(Objective::VALUE);
        let by_clicks = oracle(&clicks, &config).0;
        let by_value = oracle(&value, &config).0;
        differ += usize::from(by_clicks.list != by_value.list);
        // Serving the click-optimal list gives up value: the objectives really disagree.
        loss += 1.0 - search::value(&value, &by_clicks.list) / by_value.value;
    }
    assert!(differ >= 36, "only {differ} of 40 oracle lists differ");
    let loss = loss / requests.len() as f64;
    assert!(
        loss > 0.05,
        "click-optimal lists lose only {:.1}% of value",
        100.0 * loss
    );
}

fn all_lists(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for prefix in all_lists(n, k - 1) {
        for a in (0..n).filter(|a| !prefix.contains(a)) {
            let mut list = prefix.clone();
            list.push(a);
            out.push(list);
        }
    }
    out
}

#[test]
fn exhaustive_oracle_is_at_least_every_list_and_every_search() {
    let config = small_config();
    let world = World::generate(config.clone(), 5);
    let mut rng = StdRng::seed_from_u64(3);
    for r in 0..20 {
        let request = world.sample_request(format!("r{r}"), &mut rng);
        let truth = world.truth(&request, Objective::CLICKS).unwrap();
        let (best, method) = oracle(&truth, &config);
        assert_eq!(method, OracleMethod::Exhaustive);
        let lists = all_lists(config.candidates, config.slots);
        assert_eq!(lists.len() as u128, search::permutations(6, 3));
        let max = lists
            .iter()
            .map(|l| search::value(&truth, l))
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((best.value - max).abs() < 1e-12, "{} vs {max}", best.value);
        assert!((search::value(&truth, &best.list) - best.value).abs() < 1e-12);
        for width in [1, 2, 8] {
            assert!(search::beam(&truth, 3, width)[0].value <= best.value + 1e-12);
        }
        // A beam as wide as the space is exhaustive.
        assert!((search::beam(&truth, 3, lists.len())[0].value - best.value).abs() < 1e-12);
    }
}

#[test]
fn the_same_seed_gives_the_same_logs() {
    let config = SimConfig {
        train_requests: 30,
        test_requests: 5,
        ..small_config()
    };
    let a = sample_split(&World::generate(config.clone(), 9), "train", 30);
    let b = sample_split(&World::generate(config.clone(), 9), "train", 30);
    let c = sample_split(&World::generate(config, 10), "train", 30);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn context_effects_make_pointwise_sorting_clearly_suboptimal_by_default() {
    let config = SimConfig::default();
    let world = World::generate(config.clone(), 0);
    let requests = sample_split(&world, "test", 150);
    let (mut pointwise, mut best) = (0.0, 0.0);
    for request in &requests {
        let truth = world.truth(request, Objective::CLICKS).unwrap();
        let list = search::sort_by_score(&truth.pointwise_scores(), config.slots);
        pointwise += search::value(&truth, &list);
        best += oracle(&truth, &config).0.value;
    }
    let ratio = pointwise / best;
    assert!(
        ratio <= 0.92,
        "pointwise reaches {:.1}% of the oracle",
        100.0 * ratio
    );
}

#[test]
fn configs_are_validated() {
    let bad = SimConfig {
        slots: 30,
        ..SimConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "`slots` must not exceed `candidates`"
    );
    let bad = SimConfig {
        redundancy: 1.5,
        ..SimConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "`redundancy` must be within [0, 1]"
    );
    let bad = SimConfig {
        purchase_rate: 0.0,
        ..SimConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "`purchase_rate` must be within (0, 1]"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.toml");
    std::fs::write(&path, "candidates = 12\nslotz = 3\n").unwrap();
    let err = SimConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `slotz`"), "{err}");
}

#[test]
fn purchases_make_values_sparse_but_keep_a_clicks_expected_value() {
    let world = World::generate(
        SimConfig {
            purchase_rate: 0.25,
            ..small_config()
        },
        4,
    );
    let ids = world.id_map();
    let mut rng = StdRng::seed_from_u64(9);
    let (mut clicks, mut bought, mut logged, mut price) = (0usize, 0usize, 0.0, 0.0);
    for i in 0..20_000 {
        let request = world.sample_request(format!("r{i}"), &mut rng);
        let values = request.values.as_ref().unwrap();
        for ((&a, &click), &value) in request.exposed.iter().zip(&request.clicks).zip(values) {
            if click {
                let p = world.items[ids[&request.candidates[a].item_id]].price;
                clicks += 1;
                bought += usize::from(value > 0.0);
                logged += f64::from(value);
                price += p;
                if value > 0.0 {
                    assert!((f64::from(value) - p / 0.25).abs() < 1e-3 * p / 0.25);
                }
            } else {
                assert_eq!(value, 0.0);
            }
        }
    }
    // About one click in four buys; a click's logged value is its price on average.
    let rate = bought as f64 / clicks as f64;
    assert!(
        (0.23..0.27).contains(&rate),
        "{rate} of {clicks} clicks bought"
    );
    let ratio = logged / price;
    assert!((0.9..1.1).contains(&ratio), "logged / price = {ratio:.3}");
}
