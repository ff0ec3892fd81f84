//! Vectorisable f32 arithmetic shared by the decoding pass and the native engine: fixed
//! lane arrays the compiler keeps in vector registers, and an `exp` without branches (libm's
//! `expf` is a call per element and stops a loop from vectorising).

/// Lanes of one accumulator: a 256-bit register of f32.
pub const LANES: usize = 8;

/// `a · b + c`, fused where the target has FMA (x86-64-v3, aarch64); elsewhere `mul_add`
/// would be a libm call, far slower than the two roundings it saves.
#[inline(always)]
pub fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_feature = "fma", target_arch = "aarch64")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A dot product in 8 independent lanes, so the compiler can vectorise it (a plain
/// sequential sum cannot be reordered and runs at one add per FP latency).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += x[lane] * y[lane];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ free[i] · e^(logits[i] − max)`, `free` 1.0 or 0.0: the softmax denominator over the
/// candidates still free (a chosen candidate's logit, even NaN, adds nothing).
pub fn free_exp_sum(logits: &[f32], free: &[f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    // exp first, then select: a branch around exp kept this loop scalar.
    let mut add = |l: &[f32; LANES], f: &[f32; LANES]| {
        for lane in 0..LANES {
            let e = exp(l[lane] - max);
            acc[lane] += if f[lane] != 0.0 { e } else { 0.0 };
        }
    };
    let ((ls, l_tail), (fs, f_tail)) = (logits.as_chunks(), free.as_chunks());
    for (l, f) in ls.iter().zip(fs) {
        add(l, f);
    }
    // The last few padded to a whole vector (not free), so they take the vector path too.
    let (mut l, mut f) = ([max; LANES], [0.0f32; LANES]);
    l[..l_tail.len()].copy_from_slice(l_tail);
    f[..f_tail.len()].copy_from_slice(f_tail);
    add(&l, &f);
    acc.iter().sum()
}

/// The largest logit whose `allowed` is not 0.0 (−∞ if none is), or `None` if one of those
/// is not finite. One pass of whole vectors: a scalar loop's compare-and-branch per
/// candidate cost more than the step's arithmetic.
pub fn allowed_max(logits: &[f32], allowed: &[f32]) -> Option<f32> {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut finite = [true; LANES];
    let mut fold = |l: &[f32; LANES], a: &[f32; LANES]| {
        for lane in 0..LANES {
            let on = a[lane] != 0.0;
            // |l| < ∞ is false for ±∞ and NaN alike.
            finite[lane] &= !on || l[lane].abs() < f32::INFINITY;
            let v = if on { l[lane] } else { f32::NEG_INFINITY };
            max[lane] = if v > max[lane] { v } else { max[lane] };
        }
    };
    let ((ls, l_tail), (al, a_tail)) = (logits.as_chunks(), allowed.as_chunks());
    for (l, a) in ls.iter().zip(al) {
        fold(l, a);
    }
    // The last few padded to a whole vector (not allowed).
    let (mut l, mut a) = ([0.0f32; LANES], [0.0f32; LANES]);
    l[..l_tail.len()].copy_from_slice(l_tail);
    a[..a_tail.len()].copy_from_slice(a_tail);
    fold(&l, &a);
    finite
        .iter()
        .all(|&f| f)
        .then(|| max.into_iter().fold(f32::NEG_INFINITY, f32::max))
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
        0.5,
    ] {
        p = fmadd(p, r, coefficient);
    }
    let e_r = fmadd(p, r * r, r) + 1.0;
    // 2^k by building the exponent bits: k + 127 is an integer in [1, 254] after the clamp,
    // so adding 2^23 puts it in the low mantissa bits, and shifting them moves it into the
    // exponent. (`k as i32` would be a saturating, NaN-checked scalar conversion per lane:
    // it kept this loop from vectorising.)
    const TWO_23: f32 = 8_388_608.0;
    let two_k = f32::from_bits((k + (127.0 + TWO_23)).to_bits() << 23);
    e_r * two_k
}

/// `tanh(x) = 1 − 2 / (e^{2|x|} + 1)`, signed: within 2e-7 of libm's, and vectorisable.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let t = 1.0 - 2.0 / (exp(2.0 * x.abs()) + 1.0);
    t.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The largest exponent the clamp allows is built right, not wrapped.
        for big in [88.3, 1000.0, f32::INFINITY] {
            assert!(exp(big).is_finite() && exp(big) > 1e38, "exp({big})");
        }
        // Whole powers of two inside the clamp come out right: the exponent bits are k.
        for k in -125..=127 {
            let x = k as f32 * std::f32::consts::LN_2;
            let got = exp(x);
            let want = (x as f64).exp() as f32;
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({k}·ln2) = {got}");
        }
    }

    #[test]
    fn allowed_max_ignores_what_is_not_allowed_and_refuses_what_is_not_finite() {
        // 11 candidates: a whole vector and a tail of 3.
        let mut logits = [0.5, 9.0, -1.0, 2.0, 0.0, 0.0, 3.5, 0.0, 1.0, 7.0, -2.0];
        let mut allowed = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        assert_eq!(allowed_max(&logits, &allowed), Some(3.5));
        allowed[6] = 0.0;
        assert_eq!(allowed_max(&logits, &allowed), Some(2.0));
        assert_eq!(allowed_max(&logits, &[0.0; 11]), Some(f32::NEG_INFINITY));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            logits[9] = bad; // not allowed: ignored
            assert_eq!(allowed_max(&logits, &allowed), Some(2.0));
            logits[10] = bad; // allowed, in the tail
            assert_eq!(allowed_max(&logits, &allowed), None, "{bad}");
            logits[10] = -2.0;
        }
    }

    #[test]
    fn free_exp_sum_skips_chosen_candidates() {
        let logits = [0.0, f32::NAN, 1.0, 2.0, 0.5, 0.0, 0.0, 0.0, 3.0, -1.0];
        let free = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let want: f32 = logits
            .iter()
            .zip(&free)
            .filter(|(_, &f)| f == 1.0)
            .map(|(&l, _)| (l - 2.0f32).exp())
            .sum();
        assert!((free_exp_sum(&logits, &free, 2.0) - want).abs() < 1e-6);
    }
}
