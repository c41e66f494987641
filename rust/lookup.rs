//! Nearest-prototype lookup: for each query, the nearest centroid and its
//! score, parallel over blocks of queries.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{check_matrix, Error, Result};
use crate::linalg::{checked_sq_norms, nearest, normalize_rows, Metric, ROW_BLOCK};

/// The similarity used by [`nearest_prototype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupMetric {
    /// Smallest squared Euclidean distance; the score is that distance.
    L2,
    /// Largest cosine similarity; the score is that similarity.
    Cosine,
}

impl std::str::FromStr for LookupMetric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l2" => Ok(LookupMetric::L2),
            "cosine" => Ok(LookupMetric::Cosine),
            other => Err(Error::invalid(
                "metric",
                format!("expected 'l2' or 'cosine', got {other:?}"),
            )),
        }
    }
}

fn zero_norm(arg: &'static str, row: usize) -> Error {
    Error::invalid(
        arg,
        format!("row {row} has zero norm; cosine similarity is undefined"),
    )
}

fn normalized<'a>(arg: &'static str, x: &'a [f32], d: usize) -> Result<Cow<'a, [f32]>> {
    let mut owned = x.to_vec();
    if let Some(row) = normalize_rows(&mut owned, d) {
        return Err(zero_norm(arg, row));
    }
    Ok(Cow::Owned(owned))
}

/// Up to this many centroids the lookup scores each query row in one fused
/// pass (validation, norm and every dot product) instead of going through
/// blockwise matrix products, which do not pay off for a handful of columns.
const FUSED_MAX_K: usize = 16;

/// What the fused pass over a block of queries found wrong, as row indices
/// into the whole query matrix (the first of each kind).
#[derive(Debug, Default, Clone, Copy)]
struct BlockStatus {
    non_finite: Option<usize>,
    zero_norm: Option<usize>,
}

/// The centroid side of a fused lookup.
struct Fused<'a> {
    /// k×d; unit rows for the cosine metric.
    c: &'a [f32],
    /// Squared centroid norms (L2 only).
    c_norms: &'a [f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
}

/// The two per-row reductions of the fused lookup. Every implementation
/// sums in an order that depends only on the row length, never on the
/// thread count.
trait RowOps {
    /// `‖x‖²`, accumulated in f64 (the product of two f32 is exact in f64,
    /// so only the summation order differs between implementations).
    ///
    /// # Safety
    /// The CPU must have the features the implementation is built for.
    unsafe fn sq_norm(x: &[f32]) -> f64;

    /// `x·c` in f32 (`c.len() == x.len()`).
    ///
    /// # Safety
    /// As for [`RowOps::sq_norm`].
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32;

    /// `x·c[j]` for 4 rows at once, each summed exactly as [`RowOps::dot`]
    /// sums it (one pass over `x` feeds four independent accumulations).
    ///
    /// # Safety
    /// As for [`RowOps::sq_norm`].
    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: the caller's.
        c.map(|c| unsafe { Self::dot(x, c) })
    }
}

/// Portable code over `L` independent lanes, summed in lane order, then the
/// tail; `FMA`: fused multiply-adds (only where the target has them).
struct Portable<const L: usize, const FMA: bool>;

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
impl RowOps for Avx512 {
    #[inline(always)]
    unsafe fn sq_norm(x: &[f32]) -> f64 {
        use std::arch::x86_64::*;
        let n = x.len();
        let p = x.as_ptr();
        let (mut a0, mut a1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut i = 0;
        // SAFETY (all loads): `i + 16 <= n`, or masked to the lanes below `n`.
        while i + 16 <= n {
            let v = _mm512_loadu_ps(p.add(i));
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            a0 = _mm512_fmadd_pd(lo, lo, a0);
            a1 = _mm512_fmadd_pd(hi, hi, a1);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            a0 = _mm512_fmadd_pd(lo, lo, a0);
            a1 = _mm512_fmadd_pd(hi, hi, a1);
        }
        _mm512_reduce_add_pd(_mm512_add_pd(a0, a1))
    }

    #[inline(always)]
    unsafe fn dot(x: &[f32], c: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert_eq!(c.len(), n);
        let (px, pc) = (x.as_ptr(), c.as_ptr());
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): both slices hold `n` values; every load is
        // within `n`, or masked to the lanes below `n`.
        while i + 32 <= n {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(pc.add(i)), a0);
            a1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(px.add(i + 16)),
                _mm512_loadu_ps(pc.add(i + 16)),
                a1,
            );
            i += 32;
        }
        if i + 16 <= n {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(pc.add(i)), a0);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            a1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, px.add(i)),
                _mm512_maskz_loadu_ps(m, pc.add(i)),
                a1,
            );
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert!(c.iter().all(|c| c.len() == n));
        let px = x.as_ptr();
        let pc = c.map(|c| c.as_ptr());
        let mut a0 = [_mm512_setzero_ps(); 4];
        let mut a1 = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): as in `dot`, for each of the four rows.
        while i + 32 <= n {
            let (x0, x1) = (_mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(px.add(i + 16)));
            for j in 0..4 {
                a0[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(pc[j].add(i)), a0[j]);
                a1[j] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(pc[j].add(i + 16)), a1[j]);
            }
            i += 32;
        }
        if i + 16 <= n {
            let x0 = _mm512_loadu_ps(px.add(i));
            for j in 0..4 {
                a0[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(pc[j].add(i)), a0[j]);
            }
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let x1 = _mm512_maskz_loadu_ps(m, px.add(i));
            for j in 0..4 {
                a1[j] = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m, pc[j].add(i)), a1[j]);
            }
        }
        std::array::from_fn(|j| _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j])))
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
        // SAFETY (all loads): `i + 8 <= n`.
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
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert_eq!(c.len(), n);
        let (px, pc) = (x.as_ptr(), c.as_ptr());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): both slices hold `n` values and every load is
        // within `n`.
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(pc.add(i)), a0);
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(px.add(i + 8)),
                _mm256_loadu_ps(pc.add(i + 8)),
                a1,
            );
            i += 16;
        }
        if i + 8 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(pc.add(i)), a0);
            i += 8;
        }
        let mut s = Self::sum_ps(_mm256_add_ps(a0, a1));
        for (&a, &b) in x[i..].iter().zip(&c[i..]) {
            s = a.mul_add(b, s);
        }
        s
    }

    #[inline(always)]
    unsafe fn dot4(x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let n = x.len();
        debug_assert!(c.iter().all(|c| c.len() == n));
        let px = x.as_ptr();
        let pc = c.map(|c| c.as_ptr());
        let mut a0 = [_mm256_setzero_ps(); 4];
        let mut a1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): as in `dot`, for each of the four rows.
        while i + 16 <= n {
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for j in 0..4 {
                a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pc[j].add(i)), a0[j]);
                a1[j] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pc[j].add(i + 8)), a1[j]);
            }
            i += 16;
        }
        if i + 8 <= n {
            let x0 = _mm256_loadu_ps(px.add(i));
            for j in 0..4 {
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

/// `out[j] = x·c[j]` for the `out.len()` rows of `c` (each `x.len()` long,
/// `c.len() == out.len() · x.len()`): four rows at a time through
/// [`RowOps::dot4`], the rest one by one. Each dot product is summed in an
/// order that depends only on `x.len()` and on `j`'s position.
///
/// # Safety
/// The CPU must have the features `R` is built for.
#[inline(always)]
unsafe fn row_dots<R: RowOps>(x: &[f32], c: &[f32], out: &mut [f32]) {
    let d = x.len();
    let mut quads = c.chunks_exact(4 * d);
    let mut outs = out.chunks_exact_mut(4);
    for (out, c) in (&mut outs).zip(&mut quads) {
        let c = [&c[..d], &c[d..2 * d], &c[2 * d..3 * d], &c[3 * d..]];
        // SAFETY: the caller's.
        out.copy_from_slice(&unsafe { R::dot4(x, c) });
    }
    for (out, c) in outs
        .into_remainder()
        .iter_mut()
        .zip(quads.remainder().chunks_exact(d))
    {
        // SAFETY: the caller's.
        *out = unsafe { R::dot(x, c) };
    }
}

/// [`block_dots`] over one implementation of the row reductions.
///
/// # Safety
/// The CPU must have the features `R` is built for.
#[inline(always)]
unsafe fn block_dots_with<R: RowOps>(
    xb: &[f32],
    rows: usize,
    c: &[f32],
    t: usize,
    d: usize,
    out: &mut [f32],
) {
    let full = t / 4 * 4;
    let rest = t - full;
    // The last 2 or 3 candidates go through one `dot4` (the last repeated):
    // it sums each exactly as `dot` would, with more independent
    // accumulations than one `dot` at a time.
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
                // SAFETY: the caller's.
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
                // SAFETY: the caller's.
                *o = unsafe { R::dot(x, &c[j * d..(j + 1) * d]) };
            }
        }
        return;
    }
    for (x, o) in xb.chunks_exact(d).zip(out.chunks_exact_mut(t)) {
        // SAFETY (all calls): the caller's.
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

/// The portable [`block_dots`] (see [`fused_block_portable`]).
fn block_dots_portable(xb: &[f32], rows: usize, c: &[f32], t: usize, d: usize, out: &mut [f32]) {
    // SAFETY: portable code needs no CPU feature.
    unsafe {
        if cfg!(target_arch = "aarch64") {
            block_dots_with::<Portable<16, true>>(xb, rows, c, t, d, out)
        } else {
            block_dots_with::<Portable<8, false>>(xb, rows, c, t, d, out)
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_dots_avx512(
    xb: &[f32],
    rows: usize,
    c: &[f32],
    t: usize,
    d: usize,
    out: &mut [f32],
) {
    // SAFETY: the caller's.
    unsafe { block_dots_with::<Avx512>(xb, rows, c, t, d, out) }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_dots_avx2(xb: &[f32], rows: usize, c: &[f32], t: usize, d: usize, out: &mut [f32]) {
    // SAFETY: the caller's.
    unsafe { block_dots_with::<Avx2>(xb, rows, c, t, d, out) }
}

/// `out (rows×t) = xb (rows×d) · cᵀ (c is t×d)`, all row-major, in one
/// pass over each row of `xb` (no packing): meant for a few columns `t`,
/// where a general matrix product mostly moves memory. Uses the widest
/// kernel the CPU runs, picked at run time. Every dot product is summed
/// exactly as that kernel's single `x·c` (the fused lookup's order), so each
/// value depends only on its row, its candidate and `d`: not on `t`, on the
/// candidate's position or on which rows a call covers.
pub(crate) fn block_dots(xb: &[f32], rows: usize, c: &[f32], t: usize, d: usize, out: &mut [f32]) {
    assert!(d > 0 && xb.len() >= rows * d && c.len() == t * d && out.len() >= rows * t);
    if rows == 0 || t == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the kernel is built for.
            return unsafe { block_dots_avx512(xb, rows, c, t, d, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { block_dots_avx2(xb, rows, c, t, d, out) };
        }
    }
    block_dots_portable(xb, rows, c, t, d, out)
}

/// Scores the rows of one block of queries (`xb`, the rows from `base` on):
/// per row its norm (which also validates it), its dot product with each
/// centroid, and the best centroid, ties to the lowest index.
///
/// # Safety
/// The CPU must have the features `R` is built for.
#[inline(always)]
unsafe fn fused_block<R: RowOps>(
    f: &Fused<'_>,
    xb: &[f32],
    base: usize,
    ids: &mut [u32],
    scores: &mut [f32],
) -> BlockStatus {
    let d = f.d;
    let mut status = BlockStatus::default();
    let mut dots = [0f32; FUSED_MAX_K];
    let dots = &mut dots[..f.k];
    for (r, ((x, id), score)) in xb
        .chunks_exact(d)
        .zip(ids.iter_mut())
        .zip(scores.iter_mut())
        .enumerate()
    {
        // SAFETY: the caller's.
        let norm = unsafe { R::sq_norm(x) };
        // Finite f32 values cannot overflow the f64 norm: it is finite
        // exactly when the row is.
        if !norm.is_finite() {
            status.non_finite.get_or_insert(base + r);
        }
        // SAFETY: the caller's.
        unsafe { row_dots::<R>(x, f.c, dots) };
        let (best, value) = match f.metric {
            LookupMetric::L2 => {
                let mut best = 0;
                let mut best_v = f.c_norms[0] - 2.0 * dots[0];
                for (j, (&cn, &dot)) in f.c_norms.iter().zip(dots.iter()).enumerate().skip(1) {
                    let v = cn - 2.0 * dot;
                    if v < best_v {
                        best_v = v;
                        best = j;
                    }
                }
                (best, (norm as f32 + best_v).max(0.0))
            }
            LookupMetric::Cosine => {
                if norm == 0.0 {
                    status.zero_norm.get_or_insert(base + r);
                }
                let inv = (1.0 / norm.sqrt()) as f32;
                let mut best = 0;
                let mut best_v = dots[0] * inv;
                for (j, &dot) in dots.iter().enumerate().skip(1) {
                    let v = dot * inv;
                    if v > best_v {
                        best_v = v;
                        best = j;
                    }
                }
                (best, best_v)
            }
        };
        *id = best as u32;
        *score = value;
    }
    status
}

/// The kernel signature shared by every variant.
type BlockFn = fn(&Fused<'_>, &[f32], usize, &mut [u32], &mut [f32]) -> BlockStatus;

/// The portable kernel: 8 lanes of plain products and sums on x86-64
/// without AVX2/FMA; 16 lanes of fused multiply-adds on aarch64 (always
/// has them); 8 lanes of plain arithmetic elsewhere.
fn fused_block_portable(
    f: &Fused<'_>,
    xb: &[f32],
    base: usize,
    ids: &mut [u32],
    scores: &mut [f32],
) -> BlockStatus {
    // SAFETY: portable code needs no CPU feature.
    unsafe {
        if cfg!(target_arch = "aarch64") {
            fused_block::<Portable<16, true>>(f, xb, base, ids, scores)
        } else {
            fused_block::<Portable<8, false>>(f, xb, base, ids, scores)
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn fused_block_avx512(
    f: &Fused<'_>,
    xb: &[f32],
    base: usize,
    ids: &mut [u32],
    scores: &mut [f32],
) -> BlockStatus {
    // SAFETY: the caller's.
    unsafe { fused_block::<Avx512>(f, xb, base, ids, scores) }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_block_avx2(
    f: &Fused<'_>,
    xb: &[f32],
    base: usize,
    ids: &mut [u32],
    scores: &mut [f32],
) -> BlockStatus {
    // SAFETY: the caller's.
    unsafe { fused_block::<Avx2>(f, xb, base, ids, scores) }
}

/// The widest kernel this CPU runs, picked at run time (the same for every
/// block and thread, so results do not depend on the thread count).
fn fused_kernel() -> BlockFn {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the kernel is built for.
            return |f, xb, base, ids, scores| unsafe {
                fused_block_avx512(f, xb, base, ids, scores)
            };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return |f, xb, base, ids, scores| unsafe {
                fused_block_avx2(f, xb, base, ids, scores)
            };
        }
    }
    fused_block_portable
}

/// For each of the `q` rows of `queries` (q×d), the index of the nearest of
/// the `k` rows of `centroids` (k×d) and its score. Ties go to the lowest
/// index.
pub fn nearest_prototype(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    check_matrix("queries", queries, q, d)?;
    check_matrix("centroids", centroids, k, d)?;
    if k == 0 {
        return Err(Error::invalid("centroids", "must have at least one row"));
    }
    if d == 0 {
        return Err(Error::invalid("centroids", "must have at least one column"));
    }
    if k <= FUSED_MAX_K {
        return nearest_fused(queries, q, centroids, k, d, metric);
    }
    blockwise(queries, q, centroids, k, d, metric)
}

/// [`nearest_prototype`] by blockwise matrix products (inputs checked for
/// shape, `k ≥ 1`, `d ≥ 1`).
fn blockwise(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    // One parallel pass over the queries both validates them and gives the
    // norms the L2 metric needs.
    let q_norms = checked_sq_norms("queries", queries, d)?;
    let c_norms = checked_sq_norms("centroids", centroids, d)?;
    let (qs, cs, m, q_norms, c_norms) = match metric {
        LookupMetric::L2 => (
            Cow::Borrowed(queries),
            Cow::Borrowed(centroids),
            Metric::L2,
            q_norms,
            c_norms,
        ),
        LookupMetric::Cosine => (
            normalized("queries", queries, d)?,
            normalized("centroids", centroids, d)?,
            Metric::InnerProduct,
            Vec::new(),
            vec![0.0; k],
        ),
    };
    let mut ids = vec![0u32; q];
    let mut scores = vec![0f32; q];
    nearest(&qs, &q_norms, &cs, &c_norms, d, m, &mut ids, &mut scores);
    Ok((ids, scores))
}

/// [`nearest_prototype`] for `k ≤ FUSED_MAX_K` centroids: one parallel pass
/// over fixed blocks of queries validates each row, takes its norm and its
/// dot products with every centroid, and picks the nearest. Errors are
/// reported in the order of the blockwise path.
fn nearest_fused(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    // A few rows: sequential, the same sums as `checked_sq_norms`.
    let c_norms: Vec<f64> = centroids
        .chunks_exact(d)
        .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    if let Some(row) = c_norms.iter().position(|v| !v.is_finite()) {
        // A bad query row is reported first, as on the blockwise path.
        checked_sq_norms("queries", queries, d)?;
        return Err(Error::NonFinite {
            arg: "centroids",
            row,
        });
    }
    let (cs, c_norms, c_zero) = match metric {
        LookupMetric::L2 => (
            Cow::Borrowed(centroids),
            c_norms.iter().map(|&v| v as f32).collect(),
            None,
        ),
        LookupMetric::Cosine => {
            let mut owned = centroids.to_vec();
            let zero = normalize_rows(&mut owned, d);
            (Cow::Owned(owned), Vec::new(), zero)
        }
    };
    let f = Fused {
        c: &cs,
        c_norms: &c_norms,
        k,
        d,
        metric,
    };
    let kernel = fused_kernel();
    let mut ids = vec![0u32; q];
    let mut scores = vec![0f32; q];
    let statuses: Vec<BlockStatus> = queries
        .par_chunks(ROW_BLOCK * d)
        .zip(ids.par_chunks_mut(ROW_BLOCK))
        .zip(scores.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .map(|(b, ((xb, ib), sb))| kernel(&f, xb, b * ROW_BLOCK, ib, sb))
        .collect();
    if let Some(row) = statuses.iter().find_map(|s| s.non_finite) {
        return Err(Error::NonFinite {
            arg: "queries",
            row,
        });
    }
    if let Some(row) = statuses.iter().find_map(|s| s.zero_norm) {
        return Err(zero_norm("queries", row));
    }
    if let Some(row) = c_zero {
        return Err(zero_norm("centroids", row));
    }
    Ok((ids, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_and_cosine() {
        let c = [1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0];
        let q = [0.9f32, 0.1, 0.0, 5.0, -2.0, -3.0, 10.0, 1.0];
        let (ids, scores) = nearest_prototype(&q, 4, &c, 3, 2, LookupMetric::L2).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0]);
        assert!((scores[0] - 0.02).abs() < 1e-5);
        let (ids, scores) = nearest_prototype(&q, 4, &c, 3, 2, LookupMetric::Cosine).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0]);
        assert!((scores[1] - 1.0).abs() < 1e-6);
        let expect = (2.0f32 + 3.0) / (2.0f32.sqrt() * 13.0f32.sqrt());
        assert!((scores[2] - expect).abs() < 1e-6);
    }

    #[test]
    fn empty_queries_and_errors() {
        let c = [1.0f32, 0.0];
        let (ids, _) = nearest_prototype(&[], 0, &c, 1, 2, LookupMetric::L2).unwrap();
        assert!(ids.is_empty());
        assert!(nearest_prototype(&[1.0], 1, &c, 1, 2, LookupMetric::L2).is_err());
        assert!(nearest_prototype(&[0.0, 0.0], 1, &c, 1, 2, LookupMetric::Cosine).is_err());
        assert!(nearest_prototype(&[f32::NAN, 0.0], 1, &c, 1, 2, LookupMetric::L2).is_err());
        assert!(nearest_prototype(&[1.0, 0.0], 1, &[], 0, 2, LookupMetric::L2).is_err());
        assert!("dot".parse::<LookupMetric>().is_err());
    }
    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
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

    /// Brute force in f64: for each query, the distance (L2) or cosine to
    /// every centroid.
    fn brute(x: &[f32], c: &[f32], d: usize, metric: LookupMetric) -> Vec<Vec<f64>> {
        let norm = |r: &[f32]| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        x.chunks(d)
            .map(|xr| {
                c.chunks(d)
                    .map(|cr| match metric {
                        LookupMetric::L2 => crate::linalg::sq_dist(xr, cr),
                        LookupMetric::Cosine => {
                            let dot: f64 =
                                xr.iter().zip(cr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            dot / (norm(xr) * norm(cr))
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// `ids`/`scores` pick a best centroid (within rounding) and give its
    /// score.
    fn check_against_brute(
        x: &[f32],
        c: &[f32],
        d: usize,
        metric: LookupMetric,
        ids: &[u32],
        scores: &[f32],
    ) {
        for (i, all) in brute(x, c, d, metric).iter().enumerate() {
            let got = all[ids[i] as usize];
            let (best, tol) = match metric {
                LookupMetric::L2 => {
                    let best = all.iter().cloned().fold(f64::INFINITY, f64::min);
                    (best, 1e-5 * (1.0 + best))
                }
                LookupMetric::Cosine => {
                    (all.iter().cloned().fold(f64::NEG_INFINITY, f64::max), 1e-5)
                }
            };
            match metric {
                LookupMetric::L2 => assert!(got <= best + tol, "row {i}: {got} vs {best}"),
                LookupMetric::Cosine => assert!(got >= best - tol, "row {i}: {got} vs {best}"),
            }
            assert!(
                (scores[i] as f64 - best).abs() <= tol * 10.0,
                "row {i}: {} vs {best}",
                scores[i]
            );
        }
    }

    /// Runs one kernel variant over the whole matrix, block by block.
    fn run_variant(
        variant: BlockFn,
        x: &[f32],
        c: &[f32],
        k: usize,
        d: usize,
        metric: LookupMetric,
    ) -> (Vec<u32>, Vec<f32>, Vec<BlockStatus>) {
        let q = x.len() / d;
        let mut cs = c.to_vec();
        let c_norms: Vec<f32> = match metric {
            LookupMetric::L2 => crate::linalg::row_sq_norms(c, d),
            LookupMetric::Cosine => {
                normalize_rows(&mut cs, d);
                Vec::new()
            }
        };
        let f = Fused {
            c: &cs,
            c_norms: &c_norms,
            k,
            d,
            metric,
        };
        let (mut ids, mut scores) = (vec![0u32; q], vec![0f32; q]);
        let statuses = x
            .chunks(ROW_BLOCK * d)
            .zip(ids.chunks_mut(ROW_BLOCK))
            .zip(scores.chunks_mut(ROW_BLOCK))
            .enumerate()
            .map(|(b, ((xb, ib), sb))| variant(&f, xb, b * ROW_BLOCK, ib, sb))
            .collect();
        (ids, scores, statuses)
    }

    /// Every kernel variant this CPU can run, by name.
    fn variants() -> Vec<(&'static str, BlockFn)> {
        let mut v: Vec<(&'static str, BlockFn)> = vec![
            ("dispatch", fused_kernel()),
            ("portable", fused_block_portable),
            ("portable-8", |f, x, b, i, s| unsafe {
                fused_block::<Portable<8, false>>(f, x, b, i, s)
            }),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(("avx2", |f, x, b, i, s| unsafe {
                    fused_block_avx2(f, x, b, i, s)
                }));
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                v.push(("avx512", |f, x, b, i, s| unsafe {
                    fused_block_avx512(f, x, b, i, s)
                }));
            }
        }
        v
    }

    #[test]
    fn fused_matches_brute_force_for_every_k_and_variant() {
        for &d in &[1usize, 3, 16, 17, 45, 384] {
            for k in 1..=FUSED_MAX_K {
                let q = 300;
                let x = values(q * d, (d * 100 + k) as u64);
                let c = values(k * d, (d * 100 + k) as u64 + 7);
                for metric in [LookupMetric::L2, LookupMetric::Cosine] {
                    let (ids, scores) = nearest_prototype(&x, q, &c, k, d, metric).unwrap();
                    check_against_brute(&x, &c, d, metric, &ids, &scores);
                    let (bids, bscores) = blockwise(&x, q, &c, k, d, metric).unwrap();
                    for i in 0..q {
                        assert!((scores[i] - bscores[i]).abs() <= 1e-5 * (1.0 + bscores[i].abs()));
                    }
                    // Ids differ only on near-ties (with d = 1 every cosine
                    // is ±1: all ties).
                    let check_ids = d > 1 || metric == LookupMetric::L2;
                    let same = ids.iter().zip(&bids).filter(|(a, b)| a == b).count();
                    assert!(
                        !check_ids || same + 2 >= q,
                        "d={d} k={k} {metric:?}: {same}/{q}"
                    );
                    for (name, variant) in variants() {
                        let (vids, vscores, st) = run_variant(variant, &x, &c, k, d, metric);
                        assert!(st
                            .iter()
                            .all(|s| s.non_finite.is_none() && s.zero_norm.is_none()));
                        check_against_brute(&x, &c, d, metric, &vids, &vscores);
                        let same = ids.iter().zip(&vids).filter(|(a, b)| a == b).count();
                        assert!(
                            !check_ids || same + 2 >= q,
                            "{name} d={d} k={k}: {same}/{q}"
                        );
                    }
                }
            }
        }
    }

    /// Every `block_dots` variant this CPU can run, by name.
    #[allow(clippy::type_complexity)]
    fn block_dots_variants() -> Vec<(
        &'static str,
        fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
    )> {
        let mut v: Vec<(
            &'static str,
            fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
        )> = vec![("dispatch", block_dots), ("portable", block_dots_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(("avx2", |x, r, c, t, d, o| unsafe {
                    block_dots_avx2(x, r, c, t, d, o)
                }));
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                v.push(("avx512", |x, r, c, t, d, o| unsafe {
                    block_dots_avx512(x, r, c, t, d, o)
                }));
            }
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

    #[test]
    fn fused_ties_go_to_lowest_index() {
        // Duplicated centroids: exact ties, in both sweeps (k = 16).
        let d = 37;
        let base = values(4 * d, 3);
        let c: Vec<f32> = (0..16)
            .flat_map(|j| base[(j % 4) * d..(j % 4 + 1) * d].to_vec())
            .collect();
        let x = values(50 * d, 4);
        for metric in [LookupMetric::L2, LookupMetric::Cosine] {
            for k in [4, 8, 12, 16] {
                let (ids, _) = nearest_prototype(&x, 50, &c[..k * d], k, d, metric).unwrap();
                assert!(ids.iter().all(|&i| i < 4), "{metric:?} k={k}: {ids:?}");
                for (name, variant) in variants() {
                    let (vids, _, _) = run_variant(variant, &x, &c[..k * d], k, d, metric);
                    assert_eq!(vids, ids, "{name}");
                }
            }
        }
        // A query equidistant from two centroids, and one centroid repeated.
        let c = [1.0f32, 0.0, -1.0, 0.0, 0.0, 5.0];
        let x = [0.0f32, 1.0, 0.0, -1.0];
        let (ids, _) = nearest_prototype(&x, 2, &c, 3, 2, LookupMetric::L2).unwrap();
        assert_eq!(ids, vec![0, 0]);
        let c = [0.0f32, 1.0, 0.0, 1.0];
        let (ids, scores) = nearest_prototype(&x, 2, &c, 2, 2, LookupMetric::Cosine).unwrap();
        assert_eq!(ids, vec![0, 0]);
        assert_eq!(scores, vec![1.0, -1.0]);
    }

    #[test]
    fn fused_k1_and_exact_scores() {
        let (q, d) = (513, 20);
        let x = values(q * d, 11);
        let c = values(d, 12);
        let (ids, scores) = nearest_prototype(&x, q, &c, 1, d, LookupMetric::L2).unwrap();
        assert!(ids.iter().all(|&i| i == 0));
        check_against_brute(&x, &c, d, LookupMetric::L2, &ids, &scores);
        // A query equal to a centroid scores about 0, never below.
        let (_, s) = nearest_prototype(&c, 1, &c, 1, d, LookupMetric::L2).unwrap();
        assert!((0.0..1e-5).contains(&s[0]), "{s:?}");
    }

    #[test]
    fn fused_is_independent_of_thread_count() {
        let (q, d, k) = (2000, 384, 5);
        let x = values(q * d, 21);
        let c = values(k * d, 22);
        let run = |threads: usize, metric| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| nearest_prototype(&x, q, &c, k, d, metric).unwrap())
        };
        for metric in [LookupMetric::L2, LookupMetric::Cosine] {
            let one = run(1, metric);
            assert_eq!(one, run(3, metric));
            assert_eq!(one, run(8, metric));
        }
    }

    #[test]
    fn fused_errors_match_blockwise() {
        let (q, d, k) = (700, 19, 3);
        let x = values(q * d, 31);
        let c = values(k * d, 32);
        let mut bad_x = x.clone();
        bad_x[600 * d + 5] = f32::NAN;
        bad_x[300 * d] = f32::INFINITY;
        bad_x[650 * d + 1] = f32::NEG_INFINITY;
        let mut zero_x = x.clone();
        zero_x[400 * d..401 * d].fill(0.0);
        zero_x[500 * d..501 * d].fill(0.0);
        let mut bad_c = c.clone();
        bad_c[2 * d + 3] = f32::NAN;
        let mut zero_c = c.clone();
        zero_c[d..2 * d].fill(0.0);
        let cases: [(&[f32], &[f32]); 8] = [
            (&bad_x, &c),
            (&x, &bad_c),
            (&bad_x, &bad_c),
            (&zero_x, &c),
            (&x, &zero_c),
            (&zero_x, &zero_c),
            (&zero_x, &bad_c),
            (&bad_x, &zero_c),
        ];
        for (xs, cs) in cases {
            for metric in [LookupMetric::L2, LookupMetric::Cosine] {
                let fused = nearest_prototype(xs, q, cs, k, d, metric);
                let block = blockwise(xs, q, cs, k, d, metric);
                match (&fused, &block) {
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    (Ok(_), Ok(_)) => {}
                    _ => panic!("{metric:?}: {fused:?} vs {block:?}"),
                }
            }
        }
        let e = nearest_prototype(&bad_x, q, &c, k, d, LookupMetric::L2).unwrap_err();
        assert_eq!(
            e,
            Error::NonFinite {
                arg: "queries",
                row: 300
            }
        );
        assert_eq!(
            e.to_string(),
            "queries: contains a non-finite value (NaN or inf) in row 300"
        );
        let e = nearest_prototype(&zero_x, q, &c, k, d, LookupMetric::Cosine).unwrap_err();
        assert!(
            e.to_string().starts_with("queries: row 400 has zero norm"),
            "{e}"
        );
        // Large finite values are not mistaken for non-finite ones.
        let big = vec![f32::MAX; 2 * d];
        assert!(nearest_prototype(&big, 2, &c, k, d, LookupMetric::L2).is_ok());
    }
}
