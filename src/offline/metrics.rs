//! Offline metrics: ranking quality on logs, and how well a click model is calibrated.

use serde::Serialize;

/// Area under the ROC curve of scores against binary labels (ties count one half).
/// `None` when only one class is present.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the positives' mid-ranks (Mann-Whitney U).
    let ranks = mid_ranks(scores, &order);
    let rank_sum: f64 = (0..scores.len())
        .filter(|&i| labels[i])
        .map(|i| ranks[i])
        .sum();
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// 1-based ranks with ties given their average rank; `order` sorts `values` ascending.
fn mid_ranks(values: &[f64], order: &[usize]) -> Vec<f64> {
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation; `None` if either side is constant or too short.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    let rank = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        mid_ranks(v, &order)
    };
    pearson(&rank(x), &rank(y))
}

pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() < 2 || x.len() != y.len() {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Reliability of predicted probabilities, in equal-width bins.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Expected calibration error: bin-weighted |mean predicted − observed rate|.
    pub ece: f64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
    pub bins: Vec<CalibrationBin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationBin {
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

pub fn calibration(predicted: &[f64], labels: &[bool], bins: usize) -> Calibration {
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &l) in predicted.iter().zip(labels) {
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += usize::from(l);
    }
    let n = predicted.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(b, &(count, sum, positives))| {
            let mean_predicted = sum / count as f64;
            let observed_rate = positives as f64 / count as f64;
            ece += count as f64 / n * (mean_predicted - observed_rate).abs();
            CalibrationBin {
                upper: (b + 1) as f64 / bins as f64,
                count,
                mean_predicted,
                observed_rate,
            }
        })
        .collect();
    Calibration {
        ece,
        mean_predicted: predicted.iter().sum::<f64>() / n,
        observed_rate: labels.iter().filter(|&&l| l).count() as f64 / n,
        bins,
    }
}

/// NDCG@k of a ranking against graded relevance per candidate (`None` without relevant items).
pub fn ndcg_at(ranking: &[usize], relevance: &[f64], k: usize) -> Option<f64> {
    let dcg = |gains: &mut dyn Iterator<Item = f64>| -> f64 {
        gains
            .take(k)
            .enumerate()
            .map(|(t, g)| (2f64.powf(g) - 1.0) / (t as f64 + 2.0).log2())
            .sum()
    };
    let mut ideal: Vec<f64> = relevance.to_vec();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let best = dcg(&mut ideal.into_iter());
    (best > 0.0).then(|| dcg(&mut ranking.iter().map(|&a| relevance[a])) / best)
}

/// Average precision@k with binary relevance, normalised by min(k, #relevant).
pub fn average_precision_at(ranking: &[usize], relevant: &[bool], k: usize) -> Option<f64> {
    let total = relevant.iter().filter(|&&r| r).count();
    if total == 0 {
        return None;
    }
    let (mut hits, mut sum) = (0usize, 0.0);
    for (t, &a) in ranking.iter().take(k).enumerate() {
        if relevant[a] {
            hits += 1;
            sum += hits as f64 / (t + 1) as f64;
        }
    }
    Some(sum / total.min(k) as f64)
}

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_ties() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.7], &[true, true]), None);
    }

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&x, &[1.0, 4.0, 9.0, 16.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&x, &[1.0; 4]), None);
    }

    #[test]
    fn ndcg_and_map_of_perfect_and_reversed_rankings() {
        let relevance = [0.0, 1.0, 0.0, 1.0];
        assert_eq!(ndcg_at(&[1, 3, 0, 2], &relevance, 4), Some(1.0));
        let reversed = ndcg_at(&[0, 2, 1, 3], &relevance, 4).unwrap();
        assert!(reversed < 0.7, "{reversed}");
        let relevant = [false, true, false, true];
        assert_eq!(average_precision_at(&[1, 3, 0, 2], &relevant, 4), Some(1.0));
        // Hits at ranks 3 and 4: (1/3 + 2/4) / 2.
        let ap = average_precision_at(&[0, 2, 1, 3], &relevant, 4).unwrap();
        assert!((ap - (1.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_of_a_perfect_predictor_has_no_error() {
        let predicted = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let labels = [true, false, false, false, true, true, true, false];
        let c = calibration(&predicted, &labels, 10);
        assert!(c.ece < 1e-12, "{c:?}");
        let off = calibration(&[0.9; 4], &[false; 4], 10);
        assert!((off.ece - 0.9).abs() < 1e-12);
    }
}
