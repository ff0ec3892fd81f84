//! The arithmetic of the native engine: row-major f32 kernels written so the compiler keeps
//! the accumulators in vector registers (fixed-size lane arrays) and vectorises every loop.

/// Lanes of one accumulator: a 256-bit register of f32.
const LANES: usize = 8;

/// `a · b + c`, fused where the target has FMA (x86-64-v3, aarch64); elsewhere `mul_add`
/// would be a libm call, far slower than the two roundings it saves.
#[inline(always)]
fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_feature = "fma", target_arch = "aarch64")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `out[r×c] = a[r×k] · b[k×c]`.
pub fn matmul(a: &[f32], b: &[f32], out: &mut [f32], k: usize, c: usize) {
    debug_assert_eq!(b.len(), k * c);
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // Rows in pairs: each load of `b` feeds two FMAs, and 2·B independent accumulators hide
    // the FMA latency (one chain per register would run at a quarter of the FMA throughput).
    let mut a_pairs = a.chunks_exact(2 * k);
    let mut out_pairs = out.chunks_exact_mut(2 * c);
    for (a2, out2) in (&mut a_pairs).zip(&mut out_pairs) {
        let (a_rows, (out0, out1)) = ([&a2[..k], &a2[k..]], out2.split_at_mut(c));
        let mut out_rows = [out0, out1];
        row_block::<2>(a_rows, b, &mut out_rows, c);
    }
    let (a_row, out_row) = (a_pairs.remainder(), out_pairs.into_remainder());
    if a_row.len() == k && out_row.len() == c {
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
    while col + LANES <= c {
        columns::<R, 1>(a, b, out, col, c);
        col += LANES;
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

/// A sum in `LANES` independent partial sums, so it vectorises (a sequential f32 sum
/// cannot be reordered by the compiler).
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[c×r] = xᵀ` for `x[r×c]`.
pub fn transpose(x: &[f32], out: &mut [f32], r: usize, c: usize) {
    for (i, row) in x.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * r + i] = v;
        }
    }
}

/// Row-wise softmax of `x[r×c]` into `out`.
pub fn softmax_rows(x: &[f32], out: &mut [f32], c: usize) {
    for (row, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = exp(v - max);
        }
        let inv = 1.0 / sum(out);
        out.iter_mut().for_each(|o| *o *= inv);
    }
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

/// `e^x` to ~1 ulp, branch-free so a loop over it vectorises (libm's `expf` does not): the
/// Cephes range reduction `x = k·ln2 + r` and a degree-6 polynomial for `e^r`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let k = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = fmadd(k, -LN2_LO, fmadd(k, -LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = fmadd(p, r, coefficient);
    }
    let e_r = fmadd(p, r * r, r) + 1.0;
    // 2^k by building the exponent bits: k is in [-126, 127] after the clamp.
    let two_k = f32::from_bits(((k as i32 + 127).clamp(0, 255) as u32) << 23);
    e_r * two_k
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
        // 45 columns: one 32-wide block, one 8-wide block and a 5-column tail.
        for (r, k, c) in [(3, 7, 45), (1, 32, 32), (5, 1, 8), (2, 3, 3)] {
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
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, libm {want}"
            );
            x += 0.0137;
        }
        for tiny in [-1000.0, f32::NEG_INFINITY] {
            assert!((0.0..1e-37).contains(&exp(tiny)));
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
    fn transpose_swaps_axes() {
        let mut out = [0.0; 6];
        transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut out, 2, 3);
        assert_eq!(out, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
