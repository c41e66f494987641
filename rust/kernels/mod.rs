//! Row kernels shared by k-means and the lookup: per-row squared norms and
//! dot products of one row with a few others, written once per instruction
//! set ([`RowOps`]) and run with the widest one the CPU has
//! ([`run_widest`]).
//!
//! Unlike the loops of `simd`, these kernels use fused multiply-adds and a
//! summation order of their own per instruction set, so their results depend
//! on the CPU's level (detected once per process, see [`crate::cpu`]), never
//! on the thread count, on which rows a call covers or on how many
//! candidates it scores at once.
//!
//! [`argmin`] holds the nearest-centroid kernel of Lloyd's assignment step
//! (products and argmin fused, one summation order on every level).

pub(crate) mod argmin;
pub(crate) mod screen;

use crate::cpu::{self, CpuLevel};

/// The per-row reductions. Every implementation sums in an order that
/// depends only on the row length.
pub(crate) trait RowOps {
    /// `‖x‖²`, accumulated in f64 (the product of two f32 is exact in f64,
    /// so only the summation order differs between implementations).
    ///
    /// # Safety
    /// The CPU must have the features the implementation is built for.
    unsafe fn sq_norm(x: &[f32]) -> f64;

    /// `x·c` in f32.
    ///
    /// # Safety
    /// As for [`RowOps::sq_norm`], and `c.len() == x.len()`.
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32;

    /// `x·c[j]` for 4 rows at once, each summed exactly as [`RowOps::dot`]
    /// sums it (one pass over `x` feeds four independent accumulations).
    ///
    /// # Safety
    /// As for [`RowOps::dot`], for each of the four rows.
    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: the CPU has `Self`'s features and every `c[j]` is as long
        // as `x` (both the caller's preconditions).
        c.map(|c| unsafe { Self::dot(x, c) })
    }
}

/// A computation over rows, written once for any [`RowOps`].
pub(crate) trait RowKernel {
    type Output;

    /// Runs the computation with the row reductions of `R`.
    ///
    /// # Safety
    /// The CPU must have the features `R` is built for.
    unsafe fn run<R: RowOps>(self) -> Self::Output;
}

/// Runs `kernel` with the widest row reductions this CPU supports (the same
/// for every call of the process).
#[inline]
pub(crate) fn run_widest<K: RowKernel>(kernel: K) -> K::Output {
    // SAFETY: `cpu::level()` is this CPU's own level.
    unsafe { run_at(cpu::level(), kernel) }
}

/// Runs `kernel` with the row reductions of `level`.
///
/// # Safety
/// The CPU must support `level`: `level <= cpu::level()`.
pub(crate) unsafe fn run_at<K: RowKernel>(level: CpuLevel, kernel: K) -> K::Output {
    debug_assert!(level <= cpu::level(), "{level:?} is not supported here");
    match level {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (it supports `level`,
        // and `CpuLevel::Avx512` implies all three).
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => unsafe { run_avx512(kernel) },
        // SAFETY: the CPU has AVX2 and FMA, as above.
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx2 => unsafe { run_avx2(kernel) },
        _ => run_portable(kernel),
    }
}

/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<K: RowKernel>(kernel: K) -> K::Output {
    // SAFETY: `Avx512` needs exactly the features this function's caller
    // guarantees.
    unsafe { kernel.run::<Avx512>() }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: RowKernel>(kernel: K) -> K::Output {
    // SAFETY: `Avx2` needs exactly the features this function's caller
    // guarantees.
    unsafe { kernel.run::<Avx2>() }
}

/// The portable reductions: 8 lanes of plain products and sums on x86-64
/// without AVX2/FMA; 16 lanes of fused multiply-adds on aarch64 (always has
/// them); 8 lanes of plain arithmetic elsewhere.
fn run_portable<K: RowKernel>(kernel: K) -> K::Output {
    // SAFETY: portable code needs no CPU feature.
    unsafe {
        if cfg!(target_arch = "aarch64") {
            kernel.run::<Portable<16, true>>()
        } else {
            kernel.run::<Portable<8, false>>()
        }
    }
}

/// Portable code over `L` independent lanes, summed in lane order, then the
/// tail; `FMA`: fused multiply-adds (only where the target has them).
pub(crate) struct Portable<const L: usize, const FMA: bool>;

impl<const L: usize, const FMA: bool> RowOps for Portable<L, FMA> {
    #[inline(always)]
    unsafe fn sq_norm(x: &[f32]) -> f64 {
        let body = x.len() - x.len() % L;
        let mut acc = [0f64; L];
        for xs in x[..body].chunks_exact(L) {
            for l in 0..L {
                let v = xs[l] as f64;
                acc[l] += v * v;
            }
        }
        acc.iter().sum::<f64>() + x[body..].iter().map(|&v| v as f64 * v as f64).sum::<f64>()
    }

    #[inline(always)]
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32 {
        let madd = |a: f32, b: f32, s: f32| if FMA { a.mul_add(b, s) } else { a * b + s };
        let body = x.len() - x.len() % L;
        let mut acc = [0f32; L];
        for (xs, cs) in x[..body].chunks_exact(L).zip(c[..body].chunks_exact(L)) {
            for l in 0..L {
                acc[l] = madd(xs[l], cs[l], acc[l]);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (&a, &b) in x[body..].iter().zip(&c[body..]) {
            s = madd(a, b, s);
        }
        s
    }
}

/// AVX-512F: two 16-lane f32 accumulators, the tail in one masked step.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The mask of the first `n < 16` lanes.
    #[inline(always)]
    fn head_mask(n: usize) -> std::arch::x86_64::__mmask16 {
        debug_assert!(n < 16);
        ((1u32 << n) - 1) as u16
    }

    /// `x·c[j]` for `N` rows at once, each summed alike: whatever `N`, row
    /// `j`'s value is the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA, and every `c[j]` must be as long
    /// as `x`.
    #[inline(always)]
    unsafe fn dots<const N: usize>(x: &[f32], c: [&[f32]; N]) -> [f32; N] {
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert!(c.iter().all(|c| c.len() == n));
        let px = x.as_ptr();
        let pc = c.map(|c| c.as_ptr());
        let mut a0 = [_mm512_setzero_ps(); N];
        let mut a1 = [_mm512_setzero_ps(); N];
        let mut i = 0;
        // SAFETY (all loads): `x` and every `c[j]` hold `n` values; each
        // full load reads `[i, i + 16) ⊆ [0, n)` by its loop condition, and
        // the masked load reads only the lanes below `n − i`.
        while i + 32 <= n {
            let (x0, x1) = (_mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(px.add(i + 16)));
            for j in 0..N {
                a0[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(pc[j].add(i)), a0[j]);
                a1[j] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(pc[j].add(i + 16)), a1[j]);
            }
            i += 32;
        }
        if i + 16 <= n {
            let x0 = _mm512_loadu_ps(px.add(i));
            for j in 0..N {
                a0[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(pc[j].add(i)), a0[j]);
            }
            i += 16;
        }
        if i < n {
            let m = Self::head_mask(n - i);
            let x1 = _mm512_maskz_loadu_ps(m, px.add(i));
            for j in 0..N {
                a1[j] = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m, pc[j].add(i)), a1[j]);
            }
        }
        std::array::from_fn(|j| _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j])))
    }
}

#[cfg(target_arch = "x86_64")]
impl RowOps for Avx512 {
    #[inline(always)]
    unsafe fn sq_norm(x: &[f32]) -> f64 {
        use std::arch::x86_64::*;
        /// `lo·lo + a0`, `hi·hi + a1` over the two f64 halves of `v`.
        ///
        /// # Safety
        /// The CPU must have AVX-512F (no memory is touched).
        #[inline(always)]
        unsafe fn add_squares(v: __m512, a0: &mut __m512d, a1: &mut __m512d) {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            *a0 = _mm512_fmadd_pd(lo, lo, *a0);
            *a1 = _mm512_fmadd_pd(hi, hi, *a1);
        }
        let n = x.len();
        let p = x.as_ptr();
        let (mut a0, mut a1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut i = 0;
        // SAFETY (all loads): `x` holds `n` values; each full load reads
        // `[i, i + 16) ⊆ [0, n)`, the masked one only the lanes below
        // `n − i`.
        while i + 16 <= n {
            add_squares(_mm512_loadu_ps(p.add(i)), &mut a0, &mut a1);
            i += 16;
        }
        if i < n {
            let v = _mm512_maskz_loadu_ps(Self::head_mask(n - i), p.add(i));
            add_squares(v, &mut a0, &mut a1);
        }
        _mm512_reduce_add_pd(_mm512_add_pd(a0, a1))
    }

    #[inline(always)]
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32 {
        // SAFETY: the caller's preconditions are `dots`'.
        unsafe { Self::dots(x, [c])[0] }
    }

    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as in `dot`.
        unsafe { Self::dots(x, c) }
    }
}

/// AVX2 with FMA: two 8-lane f32 accumulators, then a scalar tail.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The sum of the 4 lanes of `v`, in a fixed order.
    #[inline(always)]
    unsafe fn sum_pd(v: std::arch::x86_64::__m256d) -> f64 {
        use std::arch::x86_64::*;
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    /// The sum of the 8 lanes of `v`, in a fixed order.
    #[inline(always)]
    unsafe fn sum_ps(v: std::arch::x86_64::__m256) -> f32 {
        use std::arch::x86_64::*;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `x·c[j]` for `N` rows at once, each summed alike: whatever `N`, row
    /// `j`'s value is the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and every `c[j]` must be as long as
    /// `x`.
    #[inline(always)]
    unsafe fn dots<const N: usize>(x: &[f32], c: [&[f32]; N]) -> [f32; N] {
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert!(c.iter().all(|c| c.len() == n));
        let px = x.as_ptr();
        let pc = c.map(|c| c.as_ptr());
        let mut a0 = [_mm256_setzero_ps(); N];
        let mut a1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        // SAFETY (all loads): `x` and every `c[j]` hold `n` values; each
        // load reads `[i, i + 8) ⊆ [0, n)` by its loop condition.
        while i + 16 <= n {
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for j in 0..N {
                a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pc[j].add(i)), a0[j]);
                a1[j] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pc[j].add(i + 8)), a1[j]);
            }
            i += 16;
        }
        if i + 8 <= n {
            let x0 = _mm256_loadu_ps(px.add(i));
            for j in 0..N {
                a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pc[j].add(i)), a0[j]);
            }
            i += 8;
        }
        std::array::from_fn(|j| {
            let mut s = Self::sum_ps(_mm256_add_ps(a0[j], a1[j]));
            for (&a, &b) in x[i..].iter().zip(&c[j][i..]) {
                s = a.mul_add(b, s);
            }
            s
        })
    }
}

#[cfg(target_arch = "x86_64")]
impl RowOps for Avx2 {
    #[inline(always)]
    unsafe fn sq_norm(x: &[f32]) -> f64 {
        use std::arch::x86_64::*;
        let n = x.len();
        let p = x.as_ptr();
        let (mut a0, mut a1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        // SAFETY (all loads): `x` holds `n` values and the loads read
        // `[i, i + 8) ⊆ [0, n)`.
        while i + 8 <= n {
            let lo = _mm256_cvtps_pd(_mm_loadu_ps(p.add(i)));
            let hi = _mm256_cvtps_pd(_mm_loadu_ps(p.add(i + 4)));
            a0 = _mm256_fmadd_pd(lo, lo, a0);
            a1 = _mm256_fmadd_pd(hi, hi, a1);
            i += 8;
        }
        let mut s = Self::sum_pd(_mm256_add_pd(a0, a1));
        for &v in &x[i..] {
            s += v as f64 * v as f64;
        }
        s
    }

    #[inline(always)]
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32 {
        // SAFETY: the caller's preconditions are `dots`'.
        unsafe { Self::dots(x, [c])[0] }
    }

    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as in `dot`.
        unsafe { Self::dots(x, c) }
    }
}

/// `out[j] = x·c[j]` for the `out.len()` rows of `c` (each `x.len()` long):
/// four rows at a time through [`RowOps::dot4`], the rest one by one. Each
/// dot product is summed in an order that depends only on `x.len()`.
///
/// # Safety
/// The CPU must have the features `R` is built for.
#[inline(always)]
pub(crate) unsafe fn row_dots<R: RowOps>(x: &[f32], c: &[f32], out: &mut [f32]) {
    let d = x.len();
    debug_assert_eq!(c.len(), out.len() * d);
    let mut quads = c.chunks_exact(4 * d);
    let mut outs = out.chunks_exact_mut(4);
    for (out, c) in (&mut outs).zip(&mut quads) {
        let c = [&c[..d], &c[d..2 * d], &c[2 * d..3 * d], &c[3 * d..]];
        // SAFETY: the CPU has `R`'s features (the caller's precondition);
        // each `c[j]` is `d = x.len()` long (cut above).
        out.copy_from_slice(&unsafe { R::dot4(x, c) });
    }
    for (out, c) in outs
        .into_remainder()
        .iter_mut()
        .zip(quads.remainder().chunks_exact(d))
    {
        // SAFETY: as above; `c` is `d` long.
        *out = unsafe { R::dot(x, c) };
    }
}

/// The arguments of [`block_dots`], as a [`RowKernel`].
struct BlockDots<'a> {
    xb: &'a [f32],
    rows: usize,
    c: &'a [f32],
    t: usize,
    d: usize,
    out: &'a mut [f32],
}

impl RowKernel for BlockDots<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<R: RowOps>(self) {
        let BlockDots {
            xb,
            rows,
            c,
            t,
            d,
            out,
        } = self;
        let full = t / 4 * 4;
        let rest = t - full;
        // Every slice handed to `dot`/`dot4` below is a row of `xb` or of
        // `c`, all `d` long by these lengths (checked by `block_dots`).
        debug_assert!(d > 0 && xb.len() >= rows * d && c.len() == t * d && out.len() >= rows * t);
        // The last 2 or 3 candidates go through one `dot4` (the last
        // repeated): it sums each exactly as `dot` would, with more
        // independent accumulations than one `dot` at a time.
        let tail = |j: usize| {
            let j = full + j.min(rest.max(1) - 1);
            &c[j * d..(j + 1) * d]
        };
        let (xb, out) = (&xb[..rows * d], &mut out[..rows * t]);
        if t < 4 {
            // Few candidates: four rows at a time against each candidate
            // (`dot4(c, rows)` gives `dot(row, c)` bit for bit: every product
            // and multiply-add is symmetric), for more independent loads.
            let mut quads = xb.chunks_exact(4 * d);
            let mut outs = out.chunks_exact_mut(4 * t);
            for (xq, o) in (&mut quads).zip(&mut outs) {
                let xs = [&xq[..d], &xq[d..2 * d], &xq[2 * d..3 * d], &xq[3 * d..]];
                for j in 0..t {
                    // SAFETY: the CPU has `R`'s features (the caller's
                    // precondition); all five slices are `d` long.
                    let v = unsafe { R::dot4(&c[j * d..(j + 1) * d], xs) };
                    for (r, v) in v.into_iter().enumerate() {
                        o[r * t + j] = v;
                    }
                }
            }
            for (x, o) in quads
                .remainder()
                .chunks_exact(d)
                .zip(outs.into_remainder().chunks_exact_mut(t))
            {
                for (j, o) in o.iter_mut().enumerate() {
                    // SAFETY: as above; `x` and the candidate are `d` long.
                    *o = unsafe { R::dot(x, &c[j * d..(j + 1) * d]) };
                }
            }
            return;
        }
        for (x, o) in xb.chunks_exact(d).zip(out.chunks_exact_mut(t)) {
            // SAFETY (all calls): the CPU has `R`'s features (the caller's
            // precondition); `x` and every candidate row are `d` long, and
            // `c[..full · d]` holds exactly `full` of them.
            unsafe { row_dots::<R>(x, &c[..full * d], &mut o[..full]) };
            match rest {
                0 => {}
                1 => o[full] = unsafe { R::dot(x, tail(0)) },
                _ => {
                    let v = unsafe { R::dot4(x, [tail(0), tail(1), tail(2), tail(3)]) };
                    o[full..].copy_from_slice(&v[..rest]);
                }
            }
        }
    }
}

/// `out (rows×t) = xb (rows×d) · cᵀ (c is t×d)`, all row-major, in one
/// pass over each row of `xb` (no packing): meant for a few columns `t`,
/// where a general matrix product mostly moves memory. Uses the widest
/// kernel the CPU runs, picked at run time. Every dot product is summed
/// exactly as that kernel's single `x·c` (the fused lookup's order), so each
/// value depends only on its row, its candidate and `d`: not on `t`, on the
/// candidate's position or on which rows a call covers.
pub(crate) fn block_dots(xb: &[f32], rows: usize, c: &[f32], t: usize, d: usize, out: &mut [f32]) {
    block_dots_at(cpu::level(), xb, rows, c, t, d, out)
}

/// [`block_dots`] with the kernel of `level` (which the CPU must support).
fn block_dots_at(
    level: CpuLevel,
    xb: &[f32],
    rows: usize,
    c: &[f32],
    t: usize,
    d: usize,
    out: &mut [f32],
) {
    assert!(d > 0 && xb.len() >= rows * d && c.len() == t * d && out.len() >= rows * t);
    assert!(level <= cpu::level());
    if rows == 0 || t == 0 {
        return;
    }
    let kernel = BlockDots {
        xb,
        rows,
        c,
        t,
        d,
        out,
    };
    // SAFETY: the CPU supports `level` (asserted above).
    unsafe { run_at(level, kernel) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every `block_dots` variant this CPU can run, by name.
    #[allow(clippy::type_complexity)]
    fn block_dots_variants() -> Vec<(
        String,
        Box<dyn Fn(&[f32], usize, &[f32], usize, usize, &mut [f32])>,
    )> {
        let mut v: Vec<(
            String,
            Box<dyn Fn(&[f32], usize, &[f32], usize, usize, &mut [f32])>,
        )> = vec![("dispatch".into(), Box::new(block_dots))];
        for level in CpuLevel::available() {
            v.push((
                format!("{level:?}"),
                Box::new(move |x, r, c, t, d, o| block_dots_at(level, x, r, c, t, d, o)),
            ));
        }
        v
    }

    #[test]
    fn block_dots_matches_naive_dot_products() {
        for &d in &[1usize, 3, 8, 15, 16, 17, 31, 33, 45, 384] {
            for t in 1..=9 {
                let rows = 37;
                let x = values(rows * d, (d * 10 + t) as u64);
                let c = values(t * d, (d * 10 + t) as u64 + 3);
                for (name, f) in block_dots_variants() {
                    let mut out = vec![f32::NAN; rows * t];
                    f(&x, rows, &c, t, d, &mut out);
                    for r in 0..rows {
                        for j in 0..t {
                            let xr = &x[r * d..(r + 1) * d];
                            let cr = &c[j * d..(j + 1) * d];
                            let exact: f64 =
                                xr.iter().zip(cr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let scale: f64 = xr
                                .iter()
                                .zip(cr)
                                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                                .sum();
                            let got = out[r * t + j] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-6 * (1.0 + scale),
                                "{name} d={d} t={t} ({r},{j}): {got} vs {exact}"
                            );
                        }
                    }
                    // The same bits whichever rows a call covers.
                    let mut one = vec![0f32; t];
                    for r in [0, 5, rows - 1] {
                        f(&x[r * d..(r + 1) * d], 1, &c, t, d, &mut one);
                        assert_eq!(one, out[r * t..(r + 1) * t], "{name} d={d} t={t} row {r}");
                    }
                    // The same bits one candidate at a time (every grouping
                    // sums each dot product alike).
                    for j in 0..t {
                        let mut single = vec![0f32; rows];
                        f(&x, rows, &c[j * d..(j + 1) * d], 1, d, &mut single);
                        for r in 0..rows {
                            assert_eq!(
                                single[r].to_bits(),
                                out[r * t + j].to_bits(),
                                "{name} d={d} t={t} ({r},{j})"
                            );
                        }
                    }
                    // Only the first `rows` rows are read and written.
                    let mut part = vec![-1f32; rows * t];
                    f(&x, 3, &c, t, d, &mut part);
                    assert_eq!(part[..3 * t], out[..3 * t]);
                    assert!(part[3 * t..].iter().all(|&v| v == -1.0));
                }
            }
        }
        // No rows, no candidates.
        block_dots(&[], 0, &[1.0, 2.0], 1, 2, &mut []);
        block_dots(&[1.0, 2.0], 1, &[], 0, 2, &mut []);
    }
}
