//! The incumbent's order as a model input. The ranking stage's `ranking_score` is strong
//! evidence of what a good list looks like, so a model may read it (`schema.ranking_score`):
//! the server then feeds the encoder's `upstream` input, `[N, WIDTH]`, derived here from the
//! request's scores. Only the order and the spread within the request matter, so any
//! ranking stage's scale (logits, probabilities, scores) gives the same input.

/// Columns of the `upstream` input.
pub const WIDTH: usize = 2;

/// |z| beyond this is clipped: one outlier must not flatten every other candidate.
const Z_CLIP: f64 = 4.0;

/// Appends each candidate's row to `out`:
/// - `z`: the score standardised within the request, `(s − mean) / sd`, clipped to ±4
///   (0 for every candidate when all scores are equal);
/// - `rank`: the candidate's place in the descending order of scores (ties by position in
///   the request) divided by `N − 1`: 0 for the ranking stage's first, 1 for its last.
pub fn features(scores: &[f32], out: &mut Vec<f32>) {
    let n = scores.len();
    if n == 0 {
        return;
    }
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
    let var = scores
        .iter()
        .map(|&s| (f64::from(s) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let inv_sd = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    // Descending, ties by position, as one integer per candidate: the score's bits made to
    // sort descending above its index. Plain integers sort several times faster than
    // indices compared through their scores (this sort was 2% of a request's CPU).
    let mut order: Vec<u64> = (scores.iter().enumerate())
        .map(|(i, &s)| u64::from(descending(s)) << 32 | i as u64)
        .collect();
    order.sort_unstable();
    let mut rank = vec![0u32; n];
    for (place, &key) in order.iter().enumerate() {
        rank[key as u32 as usize] = place as u32;
    }
    let last = (n - 1).max(1) as f32;
    let start = out.len();
    out.resize(start + n * WIDTH, 0.0);
    for (i, row) in out[start..].chunks_exact_mut(WIDTH).enumerate() {
        let z = (f64::from(scores[i]) - mean) * inv_sd;
        row[0] = z.clamp(-Z_CLIP, Z_CLIP) as f32;
        row[1] = rank[i] as f32 / last;
    }
}

/// A key whose ascending order is `f32::total_cmp`'s descending order.
fn descending(score: f32) -> u32 {
    let bits = score.to_bits();
    // total_cmp's order as unsigned integers: negative values reversed below the positive.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    !ascending
}

/// The scores a request without `ranking_score` stands for: its candidates are in the
/// ranking stage's order, first best.
pub fn scores_of_request_order(n: usize) -> Vec<f32> {
    (0..n).map(|i| -(i as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(scores: &[f32]) -> Vec<[f32; 2]> {
        let mut out = vec![];
        features(scores, &mut out);
        out.chunks(2).map(|r| [r[0], r[1]]).collect()
    }

    #[test]
    fn rank_is_the_descending_order_and_z_is_standardised() {
        let r = rows(&[0.5, 2.0, -1.0, 2.0]);
        assert_eq!(
            r.iter().map(|r| r[1] * 3.0).collect::<Vec<_>>(),
            [2.0, 0.0, 3.0, 1.0]
        );
        let z: Vec<f32> = r.iter().map(|r| r[0]).collect();
        assert!(z.iter().sum::<f32>().abs() < 1e-5);
        assert!((z.iter().map(|z| z * z).sum::<f32>() / 4.0 - 1.0).abs() < 1e-5);
        assert!(z[1] > z[0] && z[0] > z[2]);
    }

    #[test]
    fn any_monotone_rescaling_gives_the_same_ranks_and_affine_the_same_z() {
        let s = [3.0f32, -0.25, 7.5, 1.0, 0.0];
        let affine: Vec<f32> = s.iter().map(|v| 1000.0 * v - 5.0).collect();
        let a = rows(&s);
        let b = rows(&affine);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x[1], y[1]);
            assert!((x[0] - y[0]).abs() < 1e-4);
        }
    }

    #[test]
    fn degenerate_requests_stay_finite() {
        assert_eq!(rows(&[4.0]), [[0.0, 0.0]]);
        assert_eq!(rows(&[1.0, 1.0]), [[0.0, 0.0], [0.0, 1.0]]);
        let mut outlier = vec![0.0; 18];
        outlier[0] = f32::MAX;
        let r = rows(&outlier);
        assert!(r.iter().all(|r| r[0].is_finite() && r[0].abs() <= 4.0));
        assert_eq!(r[0], [4.0, 0.0]);
    }

    #[test]
    fn ranks_follow_total_cmp_descending_with_ties_by_position() {
        let s = [
            -1.5f32,
            0.0,
            -0.0,
            2.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            2.0,
            f32::MAX,
            f32::MIN,
            -1.5,
            0.0,
            3.25,
            -7.0,
        ];
        let mut want: Vec<usize> = (0..s.len()).collect();
        want.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let last = (s.len() - 1) as f32;
        let got = rows(&s);
        for (place, &i) in want.iter().enumerate() {
            assert_eq!(
                (got[i][1] * last).round(),
                place as f32,
                "score {} at {i}",
                s[i]
            );
        }
    }

    #[test]
    fn request_order_ranks_first_best() {
        let r = rows(&scores_of_request_order(3));
        assert_eq!(r.iter().map(|r| r[1]).collect::<Vec<_>>(), [0.0, 0.5, 1.0]);
    }
}
