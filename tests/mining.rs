//! Beam-search mining over a (briefly trained) evaluator on tiny cases: a wide beam finds the
//! evaluator's exhaustive optimum, lookahead values give proper soft targets, and a run can
//! be resumed after an interruption and split into shards.
#![cfg(feature = "offline")]

use std::path::Path;

use degre::offline::evaluator::{self, Ensemble, Evaluator, TrainConfig};
use degre::offline::logs::LoggedRequest;
use degre::offline::mine::{mine, mine_request, read_mined, MineConfig, Shard};
use degre::offline::search;
use degre::offline::search::ListModel;
use degre::offline::sim::{sample_split, SimConfig, World};

fn tiny() -> (Vec<LoggedRequest>, Evaluator, tempfile::TempDir) {
    let config = SimConfig {
        items: 80,
        categories: 4,
        candidates: 6,
        slots: 3,
        retrieval_pool: 20,
        complement_pairs: 3,
        ..SimConfig::default()
    };
    let world = World::generate(config, 21);
    let rows = sample_split(&world, "train", 60);
    let dir = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        hidden: 16,
        epochs: 2,
        seed: 3,
        progress: false,
        ..TrainConfig::default()
    };
    let evaluator = evaluator::train(&rows, &train, dir.path(), false).unwrap();
    (rows, evaluator, dir)
}

/// A briefly trained evaluator on `rows`, saved under `dir/sub`.
fn small(
    rows: &[LoggedRequest],
    dir: &Path,
    seed: u64,
    interactions: bool,
    sub: &str,
) -> Evaluator {
    let config = TrainConfig {
        hidden: 16,
        epochs: 2,
        seed,
        interactions,
        progress: false,
        ..TrainConfig::default()
    };
    evaluator::train(rows, &config, &dir.join(sub), false).unwrap()
}

#[test]
fn a_wide_beam_finds_the_evaluators_exhaustive_optimum() {
    let (rows, evaluator, _dir) = tiny();
    for row in rows.iter().take(15) {
        let scorer = evaluator.scorer(row).unwrap();
        let best = search::exhaustive(&scorer, 3);
        // 6·5·4 = 120 lists: a beam of 120 keeps every prefix.
        let mined = mine_request(&scorer, &row.request_id, 3, 120, None);
        assert!(
            (mined.value - best.value).abs() < 1e-9,
            "{} vs {}",
            mined.value,
            best.value
        );
        assert!((search::value(&scorer, &mined.list) - mined.value).abs() < 1e-9);
        // A narrow beam never beats it.
        assert!(mine_request(&scorer, &row.request_id, 3, 2, None).value <= best.value + 1e-9);
    }
}

#[test]
fn lookahead_values_give_distributions_over_the_remaining_candidates() {
    let (rows, evaluator, _dir) = tiny();
    for row in rows.iter().take(15) {
        let scorer = evaluator.scorer(row).unwrap();
        let mined = mine_request(&scorer, &row.request_id, 3, 4, None);
        assert_eq!(mined.steps.len(), 3);
        for (t, step) in mined.steps.iter().enumerate() {
            let expected: Vec<usize> = (0..6).filter(|a| !mined.list[..t].contains(a)).collect();
            assert_eq!(step.candidates, expected);
            // The mined item's lookahead value is the mined list's value, the best found.
            let own = step
                .candidates
                .iter()
                .position(|&a| a == mined.list[t])
                .unwrap();
            assert!((step.q[own] - mined.value).abs() < 1e-9);
            for temperature in [0.01, 0.1, 1.0] {
                let p = step.soft_target(temperature);
                assert_eq!(p.len(), step.candidates.len());
                assert!(p.iter().all(|&p| (0.0..=1.0).contains(&p)));
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            }
            // No candidate's value exceeds its best completion.
            for (&a, &q) in step.candidates.iter().zip(&step.q) {
                let mut prefix = mined.list[..t].to_vec();
                prefix.push(a);
                assert!(q <= search::exhaustive_from(&scorer, &prefix, 3).value + 1e-9);
            }
        }
    }
}

#[test]
fn mining_resumes_after_an_interruption_and_splits_into_shards() {
    let (rows, evaluator, dir) = tiny();
    let evaluator = Ensemble::single(evaluator);
    let config = |shard, resume| MineConfig {
        width: 4,
        trust_margin: None,
        slots: 0,
        shard,
        resume,
        progress: false,
    };
    // Into a folder that does not exist yet, as a Job on a fresh volume does.
    let full = dir.path().join("out").join("full.jsonl");
    let summary = mine(&rows, &evaluator, &config(Shard::ALL, false), &full).unwrap();
    assert_eq!(summary.mined, rows.len());
    let expected = std::fs::read_to_string(&full).unwrap();

    // Interrupted mid-line: resuming cuts the torn line and mines only what is missing.
    let resumed = dir.path().join("resumed.jsonl");
    std::fs::write(&resumed, &expected[..expected.len() * 2 / 3]).unwrap();
    let summary = mine(&rows, &evaluator, &config(Shard::ALL, true), &resumed).unwrap();
    assert!(summary.skipped_as_done > 0 && summary.mined < rows.len());
    let mut a = read_mined(&[&full]).unwrap();
    let mut b = read_mined(&[&resumed]).unwrap();
    a.sort_by(|x, y| x.request_id.cmp(&y.request_id));
    b.sort_by(|x, y| x.request_id.cmp(&y.request_id));
    assert_eq!(a, b);

    // Shards partition the requests; together they are the full run.
    let shards: Vec<_> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("shard-{i}.jsonl"));
            let shard = Shard { index: i, count: 3 };
            mine(&rows, &evaluator, &config(shard, false), &path).unwrap();
            path
        })
        .collect();
    let mut merged = read_mined(&shards).unwrap();
    assert_eq!(merged.len(), rows.len());
    merged.sort_by(|x, y| x.request_id.cmp(&y.request_id));
    assert_eq!(merged, a);
    assert!("3/3".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
}

#[test]
fn the_ensembles_pessimistic_value_is_below_its_mean_and_one_member_is_itself() {
    let (rows, first, dir) = tiny();
    let train = TrainConfig {
        hidden: 16,
        epochs: 2,
        seed: 4,
        progress: false,
        ..TrainConfig::default()
    };
    let second = evaluator::train(&rows, &train, &dir.path().join("second"), false).unwrap();
    let reload = || Evaluator::load(dir.path()).unwrap();
    let pessimistic = Ensemble::new(vec![reload(), second], 1.0).unwrap();
    let load_second = || Evaluator::load(&dir.path().join("second")).unwrap();
    let mean = Ensemble::new(vec![reload(), load_second()], 0.0).unwrap();
    let second = load_second();
    let alone = Ensemble::single(reload());
    let mut strictly_below = 0;
    for row in rows.iter().take(10) {
        let (p, m, a) = (
            pessimistic.scorer(row).unwrap(),
            mean.scorer(row).unwrap(),
            alone.scorer(row).unwrap(),
        );
        let single = first.scorer(row).unwrap();
        let other = second.scorer(row).unwrap();
        for list in [vec![0, 1, 2], vec![5, 3, 1], vec![2, 4, 0]] {
            let (vp, vm) = (search::value(&p, &list), search::value(&m, &list));
            assert!(vp <= vm + 1e-12, "pessimistic {vp} > mean {vm}");
            strictly_below += usize::from(vp < vm - 1e-9);
            // The spread is the list values' (two members: sd = |V₀ − V₁| / 2), not the
            // sum of the slots' spreads.
            let members = [search::value(&single, &list), search::value(&other, &list)];
            let list_level =
                (members[0] + members[1]) / 2.0 - (members[0] - members[1]).abs() / 2.0;
            assert!((vp - list_level).abs() < 1e-9, "{vp} against {list_level}");
            assert_eq!(search::value(&a, &list), search::value(&single, &list));
        }
        // The mean is the members' mean, slot by slot.
        let state = m.initial();
        let gains = m.member_gains(&state, 0);
        assert!((m.gain(&state, 0) - (gains[0] + gains[1]) / 2.0).abs() < 1e-12);
    }
    assert!(
        strictly_below > 20,
        "the members never disagree: {strictly_below}"
    );
}

#[test]
fn a_pointwise_blend_mixes_every_member_with_the_pointwise_evaluator() {
    let (rows, _, dir) = tiny();
    small(&rows, dir.path(), 8, true, "a");
    small(&rows, dir.path(), 9, true, "b");
    small(&rows, dir.path(), 8, false, "pointwise");
    let load = |sub: &str| Evaluator::load(&dir.path().join(sub)).unwrap();
    let members = || vec![load("a"), load("b")];
    let blended = |w: f64| {
        Ensemble::new(members(), 1.0)
            .unwrap()
            .blended(load("pointwise"), w)
            .unwrap()
    };
    let (plain, quarter, whole) = (
        Ensemble::new(members(), 1.0).unwrap(),
        blended(0.25),
        blended(1.0),
    );
    let alone = Ensemble::single(load("pointwise"));
    assert!(Ensemble::new(members(), 1.0)
        .unwrap()
        .blended(load("pointwise"), 1.5)
        .is_err());
    // Blending in an evaluator that is not pointwise is refused.
    assert!(Ensemble::new(members(), 1.0)
        .unwrap()
        .blended(load("a"), 0.5)
        .is_err());
    for row in rows.iter().take(10) {
        let (p, q, w) = (
            plain.scorer(row).unwrap(),
            quarter.scorer(row).unwrap(),
            whole.scorer(row).unwrap(),
        );
        let point = alone.scorer(row).unwrap();
        let incumbent = row.upstream_list(3);
        for list in [vec![0, 1, 2], vec![5, 3, 1], vec![2, 4, 0]] {
            // Weight 1 is the members alone.
            assert!((search::value(&w, &list) - search::value(&p, &list)).abs() < 1e-9);
            assert!((w.advantage(&list, &incumbent) - p.advantage(&list, &incumbent)).abs() < 1e-9);
            // Slot by slot, each member is w·itself + (1 − w)·pointwise.
            let (mut sq, mut sp, mut spoint) = (q.initial(), p.initial(), point.initial());
            for &a in &list {
                let (mixed, own) = (q.member_gains(&sq, a), p.member_gains(&sp, a));
                let pointwise = point.gain(&spoint, a);
                for (m, o) in mixed.iter().zip(&own) {
                    assert!((m - (0.25 * o + 0.75 * pointwise)).abs() < 1e-9, "{m} {o}");
                }
                q.push(&mut sq, a);
                p.push(&mut sp, a);
                point.push(&mut spoint, a);
            }
        }
    }
}

#[test]
fn the_teacher_departs_from_the_incumbent_only_where_the_evaluators_agree() {
    let (rows, _, dir) = tiny();
    let train = |seed: u64, sub: &str| small(&rows, dir.path(), seed, true, sub);
    let members = || vec![train(5, "a"), train(6, "b"), train(7, "c")];
    let bold = Ensemble::new(members(), 0.0).unwrap();
    let cautious = Ensemble::new(members(), 3.0).unwrap();
    let (mut kept_bold, mut kept_cautious) = (0, 0);
    for row in &rows {
        let incumbent = row.upstream_list(3);
        let (b, c) = (bold.scorer(row).unwrap(), cautious.scorer(row).unwrap());
        let best = mine_request(&b, &row.request_id, 3, 8, None).list;
        // The agreed advantage is at most the mean's, and nothing beats itself.
        assert!(c.advantage(&best, &incumbent) <= b.advantage(&best, &incumbent) + 1e-12);
        assert!(c.advantage(&incumbent, &incumbent).abs() < 1e-12);
        for (scorer, kept) in [(&b, &mut kept_bold), (&c, &mut kept_cautious)] {
            let mined = mine_request(scorer, &row.request_id, 3, 8, Some((&incumbent, 0.0)));
            if mined.kept_incumbent {
                *kept += 1;
                assert_eq!(mined.list, incumbent);
                assert!((mined.value - search::value(scorer, &incumbent)).abs() < 1e-9);
                // Its targets are the incumbent's own items.
                let forced = degre::offline::distill::Forced::soft(&mined, 0.02);
                assert_eq!(forced, degre::offline::distill::Forced::hard(&incumbent));
            } else {
                assert!(scorer.advantage(&mined.list, &incumbent) > 0.0);
            }
        }
        // A margin beyond any gain keeps the incumbent everywhere.
        let mined = mine_request(&b, &row.request_id, 3, 8, Some((&incumbent, 1e9)));
        assert!(mined.kept_incumbent && mined.list == incumbent);
    }
    assert!(
        kept_cautious > kept_bold,
        "cautious kept {kept_cautious}, bold {kept_bold} of {}",
        rows.len()
    );
}
