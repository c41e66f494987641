//! Hot loops compiled for the CPU they run on.
//!
//! The crate is built for the baseline of its target (SSE2 on x86-64), so
//! plain loops would use 128-bit vectors even on AVX-512 machines. Each
//! function here is written once as portable code over fixed-width lanes and
//! compiled again with AVX-512 and with AVX2 enabled; the widest version the
//! CPU supports ([`crate::cpu::level`]) is picked at run time.
//!
//! Results never depend on the version picked: every loop is element-wise or
//! reduces over a fixed number of lanes in a fixed order (no reassociation,
//! no fused multiply-add), so all versions round identically.

/// Defines `fn $name` that runs the body compiled for AVX-512, AVX2 or the
/// baseline, as the CPU's level says.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::cpu::level() {
                    // SAFETY: `level()` is `Avx512` only on a CPU that has
                    // every feature `v4` enables (see `CpuLevel::detect`).
                    $crate::cpu::CpuLevel::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: `level()` is `Avx2` only on a CPU that has AVX2
                    // and FMA, the features `v3` enables.
                    $crate::cpu::CpuLevel::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::cpu::CpuLevel::Portable => {}
                }
            }
            imp($($arg),*)
        }
    };
}

/// Lanes of the fixed-width reductions below.
const LANES: usize = 16;

/// Half of [`LANES`]: one AVX-512 vector of f64.
const HALF: usize = LANES / 2;

multiversion! {
    /// `Σ_t a[t]·b[t]` in f32, over [`LANES`] partial sums (each over the
    /// indices congruent modulo `LANES`, in order) added in lane order.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        let mut acc = [0f32; LANES];
        for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += ca[l] * cb[l];
            }
        }
        for j in full..n {
            acc[j - full] += a[j] * b[j];
        }
        acc.iter().sum()
    }
}

multiversion! {
    /// `Σ_t a[t]²` in f64, over [`LANES`] partial sums added in lane order
    /// (non-finite when `a` holds a NaN or an infinity).
    pub fn sq_norm(a: &[f32]) -> f64 {
        let full = a.len() / LANES * LANES;
        // two halves of the lanes, as in `sq_dist`
        let (mut lo, mut hi) = ([0f64; HALF], [0f64; HALF]);
        for ca in a[..full].chunks_exact(LANES) {
            for l in 0..HALF {
                let t = ca[l] as f64;
                lo[l] += t * t;
            }
            for l in 0..HALF {
                let t = ca[HALF + l] as f64;
                hi[l] += t * t;
            }
        }
        for (j, &v) in a[full..].iter().enumerate() {
            let t = v as f64;
            if j < HALF {
                lo[j] += t * t;
            } else {
                hi[j - HALF] += t * t;
            }
        }
        lo.iter().chain(&hi).sum()
    }
}

multiversion! {
    /// `acc[t] += src[t]` in f64.
    pub fn add_row(acc: &mut [f64], src: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += v as f64;
        }
    }
}

multiversion! {
    /// `acc[t] −= src[t]` in f64.
    pub fn sub_row(acc: &mut [f64], src: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(src) {
            *a -= v as f64;
        }
    }
}

multiversion! {
    /// The largest value of `x` (NaNs skipped; −∞ when empty).
    pub fn max(x: &[f32]) -> f32 {
        let mut m = [f32::NEG_INFINITY; LANES];
        let full = x.len() / LANES * LANES;
        for c in x[..full].chunks_exact(LANES) {
            for l in 0..LANES {
                m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            }
        }
        for (l, &v) in x[full..].iter().enumerate() {
            m[l] = if v > m[l] { v } else { m[l] };
        }
        m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    }
}

multiversion! {
    /// In place `x[t] ← exp(x[t] − m)` for `m ≥ max x`; returns
    /// `Σ_t w[t]·x[t]` over [`LANES`] partial sums added in lane order.
    pub fn exp_shifted_dot(x: &mut [f32], m: f32, w: &[f32]) -> f32 {
        let n = x.len().min(w.len());
        let full = n / LANES * LANES;
        let mut acc = [0f32; LANES];
        for (cx, cw) in x[..full].chunks_exact_mut(LANES).zip(w[..full].chunks_exact(LANES)) {
            for l in 0..LANES {
                cx[l] = exp_nonpositive(cx[l] - m);
                acc[l] += cw[l] * cx[l];
            }
        }
        for (l, (v, &c)) in x[full..n].iter_mut().zip(&w[full..n]).enumerate() {
            *v = exp_nonpositive(*v - m);
            acc[l] += c * *v;
        }
        acc.iter().sum()
    }
}

multiversion! {
    /// `x[t] *= s`.
    pub fn scale(x: &mut [f32], s: f32) {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}

multiversion! {
    /// `out[t] += x[t]`.
    pub fn add_assign(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o += v;
        }
    }
}

/// `eˣ` for `x ≤ 0` (NaN propagates), within 2 ulp, written to vectorise: a
/// power of two from the exponent bits times a degree-7 polynomial on
/// `|r| ≤ ln 2 / 2` (the Cephes `expf` coefficients). Results below the
/// smallest normal float (`x < −87`) are `e⁻⁸⁷`, about 1.6e-38.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    // t's low mantissa bits hold n (here in [−126, 0]) as a two's complement
    let e = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow2 = f32::from_bits(((e + 127) as u32) << 23);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    (p * r * r + r + 1.0) * pow2
}

multiversion! {
    /// `out[t] += acc[t]`: a running f64 sum gains a partial sum.
    pub fn add_f64(out: &mut [f64], acc: &[f64]) {
        for (o, &a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

multiversion! {
    /// Whether no value of `data` is a NaN or an infinity (one branch-free
    /// pass).
    pub fn all_finite(data: &[f32]) -> bool {
        data.iter().fold(true, |ok, v| ok & v.is_finite())
    }
}

multiversion! {
    /// Over `v_j = c_norms[j] − 2·dots[j]`: the index of the smallest (the
    /// lowest index among equals), the smallest and the second smallest
    /// (equal to the smallest when it occurs twice; +∞ when there is one
    /// value). Both slices have the same non-zero length.
    pub fn argmin2(c_norms: &[f32], dots: &[f32]) -> (usize, f32, f32) {
        let k = c_norms.len().min(dots.len());
        let mut m1 = [f32::INFINITY; LANES];
        let mut m2 = [f32::INFINITY; LANES];
        let mut i1 = [0u32; LANES];
        let full = k / LANES * LANES;
        for (base, (cc, dd)) in c_norms[..full]
            .chunks_exact(LANES)
            .zip(dots[..full].chunks_exact(LANES))
            .enumerate()
        {
            let base = (base * LANES) as u32;
            for l in 0..LANES {
                let v = cc[l] - 2.0 * dd[l];
                let lt = v < m1[l];
                let second = if v < m2[l] { v } else { m2[l] };
                m2[l] = if lt { m1[l] } else { second };
                i1[l] = if lt { base + l as u32 } else { i1[l] };
                m1[l] = if lt { v } else { m1[l] };
            }
        }
        for j in full..k {
            let l = j - full;
            let v = c_norms[j] - 2.0 * dots[j];
            if v < m1[l] {
                m2[l] = m1[l];
                m1[l] = v;
                i1[l] = j as u32;
            } else if v < m2[l] {
                m2[l] = v;
            }
        }
        // The best lane (lowest index among equal minima), then the second
        // smallest: the best lane's runner-up or another lane's minimum.
        let mut b = 0;
        for l in 1..LANES {
            if m1[l] < m1[b] || (m1[l] == m1[b] && i1[l] < i1[b]) {
                b = l;
            }
        }
        let mut second = m2[b];
        for l in (0..LANES).filter(|&l| l != b) {
            if m1[l] < second {
                second = m1[l];
            }
        }
        (i1[b] as usize, m1[b], second)
    }
}

multiversion! {
    /// `Σ_t (a[t] − b[t])²` in f64, over [`LANES`] partial sums (each over
    /// the indices congruent modulo `LANES`, in order) added in lane order.
    pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        // two halves of the lanes, each one f64 vector of 8 (written so,
        // the compiler keeps each half in one register)
        let (mut lo, mut hi) = ([0f64; HALF], [0f64; HALF]);
        for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
            for l in 0..HALF {
                let t = ca[l] as f64 - cb[l] as f64;
                lo[l] += t * t;
            }
            for l in 0..HALF {
                let t = ca[HALF + l] as f64 - cb[HALF + l] as f64;
                hi[l] += t * t;
            }
        }
        for j in full..n {
            let t = a[j] as f64 - b[j] as f64;
            let l = j - full;
            if l < HALF {
                lo[l] += t * t;
            } else {
                hi[l - HALF] += t * t;
            }
        }
        lo.iter().chain(&hi).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn argmin2_scalar(c_norms: &[f32], dots: &[f32]) -> (usize, f32, f32) {
        let (mut best, mut b1, mut b2) = (0usize, f32::INFINITY, f32::INFINITY);
        for (j, (&cn, &dot)) in c_norms.iter().zip(dots).enumerate() {
            let v = cn - 2.0 * dot;
            if v < b1 {
                b2 = b1;
                b1 = v;
                best = j;
            } else if v < b2 {
                b2 = v;
            }
        }
        (best, b1, b2)
    }

    #[test]
    fn argmin2_matches_the_scalar_scan() {
        let mut rng = Rng::new(4);
        for k in [1, 2, 3, 15, 16, 17, 31, 33, 100, 257] {
            for ties in [false, true] {
                let c: Vec<f32> = (0..k)
                    .map(|_| {
                        if ties {
                            rng.below(3) as f32
                        } else {
                            rng.next_f64() as f32
                        }
                    })
                    .collect();
                let dt: Vec<f32> = (0..k)
                    .map(|_| if ties { 0.5 } else { rng.next_f64() as f32 })
                    .collect();
                let got = argmin2(&c, &dt);
                let want = argmin2_scalar(&c, &dt);
                assert_eq!(got.0, want.0, "k={k} ties={ties}");
                assert_eq!(got.1.to_bits(), want.1.to_bits());
                assert_eq!(got.2.to_bits(), want.2.to_bits(), "k={k} ties={ties}");
            }
        }
    }

    #[test]
    fn dot_matches_the_f64_sum_to_f32_rounding() {
        let mut rng = Rng::new(10);
        for n in [0, 1, 15, 16, 17, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            let got = dot(&a, &b) as f64;
            assert!(
                (got - exact).abs() <= 1e-6 * scale.max(1e-30) + 1e-30,
                "n={n}"
            );
        }
    }

    #[test]
    fn sq_dist_matches_the_plain_sum() {
        let mut rng = Rng::new(9);
        for n in [0, 1, 15, 16, 17, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum();
            let got = sq_dist(&a, &b);
            assert!((got - plain).abs() <= 1e-12 * plain.max(1.0), "n={n}");
            // the documented order, bit for bit: lane l sums the indices
            // congruent to l, in order; the lanes are added in order
            let mut lanes = [0f64; LANES];
            for (t, (&x, &y)) in a.iter().zip(&b).enumerate() {
                let v = x as f64 - y as f64;
                lanes[t % LANES] += v * v;
            }
            let want: f64 = lanes.iter().sum();
            assert_eq!(got.to_bits(), want.to_bits(), "n={n}");
        }
    }

    #[test]
    fn sq_norm_follows_the_documented_lane_order() {
        let mut rng = Rng::new(11);
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 24, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
            // lane l sums the squares of the indices congruent to l, in
            // order; the lanes are added in order
            let mut lanes = [0f64; LANES];
            for (t, &x) in a.iter().enumerate() {
                lanes[t % LANES] += x as f64 * x as f64;
            }
            let want: f64 = lanes.iter().sum();
            assert_eq!(sq_norm(&a).to_bits(), want.to_bits(), "n={n}");
        }
        assert!(!sq_norm(&[1.0, f32::NAN]).is_finite());
        assert!(!sq_norm(&[f32::INFINITY]).is_finite());
    }

    #[test]
    fn all_finite_finds_any_nan_or_infinity() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let clean: Vec<f32> = (0..n).map(|v| v as f32 - 7.5).collect();
            assert!(all_finite(&clean), "n={n}");
            for pos in [0, n / 2, n.saturating_sub(1)]
                .into_iter()
                .filter(|&p| p < n)
            {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut v = clean.clone();
                    v[pos] = bad;
                    assert!(!all_finite(&v), "n={n} pos={pos} bad={bad}");
                }
            }
        }
    }

    #[test]
    fn add_f64_adds_elementwise() {
        let mut out = vec![1.0f64; 19];
        add_f64(&mut out, &[2f64.powi(-40); 19]);
        assert!(out.iter().all(|&o| o == 1.0 + 2f64.powi(-40)));
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_f64_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = f64::from(exp_nonpositive(x));
            let want = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert!(exp_nonpositive(f32::NEG_INFINITY) > 0.0);
    }

    #[test]
    fn max_and_exp_shifted_dot_match_plain_loops() {
        let mut rng = Rng::new(9);
        for n in [1usize, 5, 16, 17, 40] {
            let x: Vec<f32> = (0..n).map(|_| 10.0 * rng.next_f64() as f32 - 5.0).collect();
            let w: Vec<f32> = (0..n).map(|_| rng.below(4) as f32 + 1.0).collect();
            let m = max(&x);
            assert_eq!(m, x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            let mut e = x.clone();
            let total = exp_shifted_dot(&mut e, m, &w);
            let mut want = 0f64;
            for t in 0..n {
                let v = f64::from(x[t] - m).exp(); // the difference rounds in f32
                assert!((f64::from(e[t]) - v).abs() <= 3e-7 * v, "n={n} t={t}");
                want += f64::from(w[t]) * v;
            }
            assert!((f64::from(total) - want).abs() <= 1e-6 * want, "n={n}");
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN, 2.0, 1.0]), 2.0);
    }
}
