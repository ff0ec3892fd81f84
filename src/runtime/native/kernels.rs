//! The arithmetic of the native engine: row-major f32 kernels written so the compiler keeps
//! the accumulators in vector registers (fixed-size lane arrays) and vectorises every loop.

use crate::rerank::math::{exp, fmadd, LANES};

/// `out[r×c] = a[r×k] · b[k×c]`.
pub fn matmul(a: &[f32], b: &[f32], out: &mut [f32], k: usize, c: usize) {
    debug_assert_eq!(b.len(), k * c);
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // Rows in blocks: each load of `b` feeds R FMAs, and R·B independent accumulators hide
    // the FMA latency (one chain per register would run at a quarter of the FMA throughput).
    // A narrow product (the induced mixer's N×8 scores) has few vectors a row: more rows.
    match c.div_ceil(LANES) {
        0 | 1 => row_blocks::<8>(a, b, out, k, c),
        2 => row_blocks::<4>(a, b, out, k, c),
        _ => row_blocks::<2>(a, b, out, k, c),
    }
}

/// The product `R` rows at a time, then the rows left one by one.
#[inline(always)]
fn row_blocks<const R: usize>(a: &[f32], b: &[f32], out: &mut [f32], k: usize, c: usize) {
    let mut a_blocks = a.chunks_exact(R * k);
    let mut out_blocks = out.chunks_exact_mut(R * c);
    for (a_block, out_block) in (&mut a_blocks).zip(&mut out_blocks) {
        let a_rows: [&[f32]; R] = std::array::from_fn(|r| &a_block[r * k..(r + 1) * k]);
        let mut rows = out_block.chunks_exact_mut(c);
        let mut out_rows: [&mut [f32]; R] =
            std::array::from_fn(|_| rows.next().expect("R rows of c in the block"));
        row_block::<R>(a_rows, b, &mut out_rows, c);
    }
    let rows_left = a_blocks.remainder().chunks_exact(k);
    for (a_row, out_row) in rows_left.zip(out_blocks.into_remainder().chunks_exact_mut(c)) {
        row_block::<1>([a_row], b, &mut [out_row], c);
    }
}

/// `R` rows of the product, all columns.
#[inline(always)]
fn row_block<const R: usize>(a: [&[f32]; R], b: &[f32], out: &mut [&mut [f32]; R], c: usize) {
    let mut col = 0;
    while col + 4 * LANES <= c {
        columns::<R, 4>(a, b, out, col, c);
        col += 4 * LANES;
    }
    // The last one to three whole vectors in one pass, so their accumulators interleave.
    match (c - col) / LANES {
        3 => columns::<R, 3>(a, b, out, col, c),
        2 => columns::<R, 2>(a, b, out, col, c),
        1 => columns::<R, 1>(a, b, out, col, c),
        _ => {}
    }
    col += (c - col) / LANES * LANES;
    if col < c && c >= LANES {
        // The last `c % LANES` columns as the vector ending at `c`: it overlaps columns
        // already written, with the same operations in the same order, so the same values.
        // Scalar, each of these columns was a chain of `k` dependent FMAs read with a
        // stride of `c` (at N = 100 the attention scores' last 4 columns: ~5 µs a request).
        columns::<R, 1>(a, b, out, c - LANES, c);
        col = c;
    }
    for j in col..c {
        for (a_row, out_row) in a.iter().zip(out.iter_mut()) {
            out_row[j] = a_row
                .iter()
                .zip(b[j..].iter().step_by(c))
                .fold(0.0, |acc, (&x, &y)| fmadd(x, y, acc));
        }
    }
}

/// `B·LANES` output columns of `R` rows, starting at `col`: each vector of `b` loaded
/// feeds `R` FMAs, into `R·B` accumulators held in registers.
#[inline(always)]
fn columns<const R: usize, const B: usize>(
    a: [&[f32]; R],
    b: &[f32],
    out: &mut [&mut [f32]; R],
    col: usize,
    c: usize,
) {
    let mut acc = [[[0.0f32; LANES]; B]; R];
    for (i, b_row) in b.chunks_exact(c).enumerate() {
        let b_row = &b_row[col..col + B * LANES];
        for (acc, a_row) in acc.iter_mut().zip(a) {
            let x = a_row[i];
            for (block, acc) in acc.iter_mut().enumerate() {
                for (lane, acc) in acc.iter_mut().enumerate() {
                    *acc = fmadd(x, b_row[block * LANES + lane], *acc);
                }
            }
        }
    }
    for (acc, out_row) in acc.iter().zip(out.iter_mut()) {
        for (block, acc) in acc.iter().enumerate() {
            let start = col + block * LANES;
            out_row[start..start + LANES].copy_from_slice(acc);
        }
    }
}

/// `out[c×r] = xᵀ` for `x[r×c]`.
pub fn transpose(x: &[f32], out: &mut [f32], r: usize, c: usize) {
    for (i, row) in x.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * r + i] = v;
        }
    }
}

/// Row-wise softmax of `x[r×c]` into `out`: exp and sum in one pass of whole vectors, the
/// row's last `c % LANES` values padded to one more (a scalar `exp` costs as much as a
/// vector of them).
pub fn softmax_rows(x: &[f32], out: &mut [f32], c: usize) {
    for (row, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let max = max(row);
        let mut acc = [0.0f32; LANES];
        let mut exp_into = |x: &[f32; LANES], o: &mut [f32; LANES], len: usize| {
            for lane in 0..LANES {
                let e = exp(x[lane] - max);
                o[lane] = e;
                acc[lane] += if lane < len { e } else { 0.0 };
            }
        };
        let ((xs, x_tail), (outs, o_tail)) = (row.as_chunks(), out.as_chunks_mut());
        for (x, o) in xs.iter().zip(outs) {
            exp_into(x, o, LANES);
        }
        if !x_tail.is_empty() {
            let mut x = [max; LANES];
            x[..x_tail.len()].copy_from_slice(x_tail);
            let mut o = [0.0f32; LANES];
            exp_into(&x, &mut o, x_tail.len());
            o_tail.copy_from_slice(&o[..x_tail.len()]);
        }
        let inv = 1.0 / tree(acc, |a, b| a + b);
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// `op` over a vector's lanes, pairwise: three dependent steps, not seven (a softmax over
/// the induced mixer's 8-wide rows spent most of its time in two sequential reductions).
#[inline(always)]
fn tree(v: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    const { assert!(LANES == 8) };
    let quarter: [f32; 4] = std::array::from_fn(|i| op(v[i], v[i + 4]));
    op(op(quarter[0], quarter[2]), op(quarter[1], quarter[3]))
}

/// The largest value, in `LANES` partial maxima so it vectorises.
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    tree(acc, f32::max).max(tail)
}

/// `out[1×c]` = the mean of the rows of `x[r×c]`.
pub fn mean_rows(x: &[f32], out: &mut [f32], c: usize) {
    out.fill(0.0);
    let rows = x.len() / c.max(1);
    for row in x.chunks_exact(c) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
    }
    let inv = 1.0 / rows as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_matmul(a: &[f32], b: &[f32], k: usize, c: usize) -> Vec<f32> {
        let r = a.len() / k;
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[i * c + j] = (0..k).map(|t| a[i * k + t] * b[t * c + j]).sum();
            }
        }
        out
    }

    #[test]
    fn matmul_matches_the_definition_on_every_column_block() {
        // 45 columns: one 32-wide block, one 8-wide block and a 5-column tail; 100: three
        // 32-wide blocks and a 4-column tail; 24 and 52: three and two 8-wide blocks after
        // any 32-wide ones; 3: narrower than a vector.
        let shapes = [(3, 7, 45), (1, 32, 32), (5, 1, 8), (2, 3, 3), (3, 32, 100)];
        // Narrow products run 8 or 4 rows at a time, the rows left one by one.
        let narrow = [(100, 32, 8), (13, 5, 8), (11, 8, 16), (9, 4, 3), (7, 6, 12)];
        for (r, k, c) in shapes
            .into_iter()
            .chain([(2, 5, 24), (4, 9, 52), (1, 3, 13)])
            .chain(narrow)
        {
            let a: Vec<f32> = (0..r * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut out = vec![f32::NAN; r * c];
            matmul(&a, &b, &mut out, k, c);
            for (got, want) in out.iter().zip(naive_matmul(&a, &b, k, c)) {
                assert!((got - want).abs() < 1e-5, "{r}x{k}x{c}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn softmax_and_mean_rows() {
        let x = [1.0, 2.0, 3.0, -1.0, -1.0, -1.0];
        let mut out = [0.0; 6];
        softmax_rows(&x, &mut out, 3);
        let z = 1.0f32.exp() + 2.0f32.exp() + 3.0f32.exp();
        assert!((out[2] - 3.0f32.exp() / z).abs() < 1e-6);
        assert!((out[3] - 1.0 / 3.0).abs() < 1e-6);
        let mut mean = [0.0; 3];
        mean_rows(&x, &mut mean, 3);
        assert_eq!(mean, [0.0, 0.5, 1.0]);
    }

    #[test]
    fn softmax_matches_the_definition_with_and_without_a_tail() {
        for c in [1, 8, 19, 100] {
            let x: Vec<f32> = (0..2 * c).map(|i| (i as f32 * 0.61).sin() * 9.0).collect();
            let mut out = vec![f32::NAN; 2 * c];
            softmax_rows(&x, &mut out, c);
            for (row, got) in x.chunks(c).zip(out.chunks(c)) {
                let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
                let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                for (&v, &g) in row.iter().zip(got) {
                    let want = (v as f64 - max).exp() / z;
                    assert!((g as f64 - want).abs() < 1e-6, "c={c}: {g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn transpose_swaps_axes() {
        let mut out = [0.0; 6];
        transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut out, 2, 3);
        assert_eq!(out, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        for (r, c) in [(16, 8), (100, 32), (13, 19), (1, 9), (5, 3)] {
            let x: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let mut out = vec![f32::NAN; r * c];
            transpose(&x, &mut out, r, c);
            for (i, j) in (0..r).flat_map(|i| (0..c).map(move |j| (i, j))) {
                assert_eq!(out[j * r + i], x[i * c + j], "{r}x{c} at ({i}, {j})");
            }
        }
    }
}
