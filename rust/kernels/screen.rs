//! An exact integer screen in front of the fused kernel ([`super::argmin`]),
//! for the plain assignment step on CPUs with AMX (Intel's tile matrix
//! unit, int8 dot products into int32).
//!
//! Each row `x` and each centroid `c` is written as two int8 vectors and a
//! scale, `x ≈ s·(q₁ + q₂/254)` with `s = max|x|/127`, which keeps about 15
//! bits of every value. The tile unit then computes, exactly in int32,
//! `P = q₁·Q₁` and `R = q₂·Q₁ + q₁·Q₂` for every row and centroid, and the
//! screened value of centroid `j` is `ṽ_j = ‖c_j‖² − 2·s·S_j·(P + R/254)`.
//!
//! A bound `B` on `|ṽ_j − v_j|` is computed for every row (from the
//! measured quantization errors, the L1 and L2 norms, the rounding of the
//! fused kernel's own chain of multiply-adds and of the screen's float
//! arithmetic; see [`row_bound`]), so every centroid whose screened value is
//! more than `2B` above the row's smallest cannot be the nearest. The
//! panels of 16 centroids that hold a candidate are then recomputed by the
//! fused kernel's own arithmetic ([`argmin_panels`]), so the label and the
//! distance of every row are those of the full pass bit for bit, ties
//! included: every centroid at the smallest exact value is a candidate.
//! A row whose bound is not finite (overflow, non-finite input) re-checks
//! every panel.
//!
//! The int32 products are exact, so the portable products ([`products`]
//! without AMX, used by the tests on any machine) give the same integers as
//! the tile unit's.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::cpu::{self, CpuLevel};

use super::argmin::{argmin_panels, Packed};

/// Centroids per panel (the unit [`argmin_panels`] recomputes) and per tile
/// column; rows per tile; int8 values per tile row (the depth of one step).
const PANEL: usize = 16;
const TILE_ROWS: usize = 16;
const STEP: usize = 64;

/// One tile of centroids in the tile unit's layout: 16 rows of 64 bytes,
/// row `r` holding depths `4r..4r + 4` of 16 centroids side by side.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([i8; TILE_ROWS * STEP]);

/// `x ≈ s·(q₁ + q₂/254)` for one vector, with what the bound needs.
#[derive(Clone, Copy, Debug, Default)]
struct Quant {
    /// The scale (0 for a zero vector); NaN (no screen) when the vector is
    /// not finite or its largest magnitude is below `127·2⁻¹⁰⁰`.
    s: f32,
    /// A bound on `max_i |x_i − s·(q₁ᵢ + q₂ᵢ/254)|` ([`quant_err`]).
    err: f64,
    /// `‖x‖₁` and `‖x‖₂`, rounded up.
    l1: f64,
    l2: f64,
    /// `‖q₂‖₂`, rounded up.
    q2_l2: f64,
}

impl Quant {
    fn usable(&self) -> bool {
        self.s == 0.0 || self.s >= MIN_SCALE
    }
}

/// The smallest scale quantized: `254/s` and every intermediate stay
/// finite and normal well above it.
const MIN_SCALE: f32 = 1.0 / (1u64 << 50) as f32 / (1u64 << 50) as f32;

/// Writes `v` as `s·(q1 + q2/254)` (int8, |q| ≤ 127), with the bound of
/// [`quant_err`] on its error and the norms, summed in f64.
#[inline(always)]
fn quantize(v: &[f32], q1: &mut [i8], q2: &mut [i8]) -> Quant {
    // f32::max drops NaN: count non-finite values apart
    let amax = v.iter().fold(0f32, |m, &x| {
        if x.is_finite() {
            m.max(x.abs())
        } else {
            f32::INFINITY
        }
    });
    let s = match scale(amax, &mut q1[..v.len()], &mut q2[..v.len()]) {
        Ok(s) => s,
        Err(q) => return q,
    };
    let (inv, fine) = (1.0 / s, 254.0 / s);
    let (mut l1, mut l2, mut q2_l2) = (0f64, 0f64, 0f64);
    for ((&x, a), b) in v.iter().zip(q1.iter_mut()).zip(q2.iter_mut()) {
        let h = (x * inv).round_ties_even().clamp(-127.0, 127.0);
        let r = x - s * h;
        let l = (r * fine).round_ties_even().clamp(-127.0, 127.0);
        *a = h as i8;
        *b = l as i8;
        let x64 = x as f64;
        l1 += x64.abs();
        l2 += x64 * x64;
        q2_l2 += l as f64 * l as f64;
    }
    let up = 1.0 + 2f64.powi(-30);
    Quant {
        s,
        err: quant_err(s, amax),
        l1: l1 * up,
        l2: l2.sqrt() * up,
        q2_l2: q2_l2.sqrt() * up,
    }
}

/// The scale `amax/127` of a vector of largest magnitude `amax` (+∞ when
/// it holds a non-finite value), or the whole answer when it has none: a
/// zero vector (scale 0, `q1` and `q2` zeroed) or one that cannot be
/// quantized (scale NaN).
fn scale(amax: f32, q1: &mut [i8], q2: &mut [i8]) -> Result<f32, Quant> {
    let s = amax / 127.0;
    if amax == 0.0 {
        q1.fill(0);
        q2.fill(0);
        return Err(Quant::default());
    }
    if !amax.is_finite() || s < MIN_SCALE {
        return Err(Quant {
            s: f32::NAN,
            ..Quant::default()
        });
    }
    Ok(s)
}

/// A bound on `|x_i − s·(q₁ᵢ + q₂ᵢ/254)|` for a vector of largest magnitude
/// `amax` and scale `s = fl(amax/127)`: `q₁ = round(x/s)` is within
/// `½ + 2⁻¹⁶` of `x/s` (the product `x·(1/s)` rounds twice, relative
/// `2u`, on values up to 127), so `r = fl(x − fl(s·q₁))` is at most
/// `s·(½ + 2⁻¹⁶) + 2u·amax`, `q₂ = round(fl(r·fl(254/s)))` within `½ + 2⁻¹⁵`
/// of `r·254/s` (never clamped: `|r·254/s| < 127.01`), and `r` within
/// `2u·amax` of `x − s·q₁`. Hence at most `s/508·(1 + 2⁻¹²) + 2⁻²²·amax`,
/// with room.
fn quant_err(s: f32, amax: f32) -> f64 {
    s as f64 / 508.0 * (1.0 + 2f64.powi(-12)) + amax as f64 * 2f64.powi(-22)
}

/// The screen's centroids: quantized and packed for the tile unit, with
/// the per-centroid factors of the screened values and the maxima the row
/// bounds use.
pub(crate) struct Screen {
    /// `k` padded to whole panels; `d` padded to whole steps.
    kp: usize,
    d: usize,
    dp: usize,
    /// Tiles of `Q₁` (depth `dp`) and of `[Q₁; Q₂]` (depth `2·dp`), column
    /// tile-major: tile `(ct, step)` at `ct·steps + step`.
    b1: Vec<Tile>,
    b2: Vec<Tile>,
    /// Per padded centroid: `2·S_j`, `2·S_j/254` and `‖c_j‖²` (+∞ past `k`).
    g: Vec<f32>,
    h: Vec<f32>,
    norms: Vec<f32>,
    maxima: Maxima,
    amx: bool,
}

/// Over the centroids: the largest squared norm, L2 norm, L1 norm,
/// quantization error and scale, and `max_j S_j·‖Q₂_j‖₂/254²`.
#[derive(Clone, Copy, Debug, Default)]
struct Maxima {
    n: f64,
    l2: f64,
    l1: f64,
    err: f64,
    s: f64,
    drop: f64,
}

impl Screen {
    /// The screen of an assignment step against the `k` rows of `c` where
    /// it runs on the tile unit: the CPU and settings allow it
    /// ([`amx_enabled`]) and it pays at this size, the rows quantized once
    /// per run (`kept`) or once per step ([`worth_it`]). `None`
    /// otherwise, or where [`Screen::new`] gives none: the step runs the
    /// full pass.
    pub(crate) fn for_step(c: &[f32], c_norms: &[f32], d: usize, kept: bool) -> Option<Screen> {
        (worth_it(c_norms.len(), d, kept) && amx_enabled())
            .then(|| Screen::new(c, c_norms, d, true))
            .flatten()
    }

    /// Quantizes and packs the `k` rows of `c` (k×d) with their squared
    /// norms `c_norms` (those the fused kernel uses); the products run on
    /// the tile unit when `amx` (the caller checked [`amx_enabled`]), else
    /// in portable code. `None` when a centroid cannot be quantized (not
    /// finite, or its scale below [`MIN_SCALE`]) or its norms overflow:
    /// the caller runs the full pass.
    pub(crate) fn new(c: &[f32], c_norms: &[f32], d: usize, amx: bool) -> Option<Screen> {
        let k = c_norms.len();
        assert!(c.len() == k * d && k > 0 && d > 0);
        let kp = k.div_ceil(PANEL) * PANEL;
        let dp = d.div_ceil(STEP) * STEP;
        use rayon::prelude::*;
        // each centroid quantized (in parallel; padded rows stay zero)
        let (mut q1, mut q2) = (vec![0i8; kp * dp], vec![0i8; kp * dp]);
        let quants: Vec<Quant> = q1
            .par_chunks_mut(dp)
            .zip(q2.par_chunks_mut(dp))
            .zip(c.par_chunks(d))
            .map(|((a, b), row)| quantize_widest(row, &mut a[..d], &mut b[..d]))
            .collect();
        let (mut g, mut h) = (vec![0f32; kp], vec![0f32; kp]);
        let mut norms = vec![f32::INFINITY; kp];
        let mut mx = Maxima::default();
        for (j, q) in quants.iter().enumerate() {
            if !q.usable() {
                return None;
            }
            g[j] = 2.0 * q.s;
            h[j] = 2.0 * q.s / 254.0;
            norms[j] = c_norms[j];
            let s = q.s as f64;
            mx.n = mx.n.max(c_norms[j] as f64);
            mx.l2 = mx.l2.max(q.l2);
            mx.l1 = mx.l1.max(q.l1);
            mx.err = mx.err.max(q.err);
            mx.s = mx.s.max(s);
            mx.drop = mx.drop.max(s * q.q2_l2 / (254.0 * 254.0));
        }
        if !(mx.n.is_finite() && mx.l2.is_finite() && mx.l1.is_finite()) {
            return None;
        }
        let tiles = kp / PANEL;
        let (s1, s2) = (dp / STEP, 2 * dp / STEP);
        let mut b1 = vec![Tile([0; TILE_ROWS * STEP]); tiles * s1];
        let mut b2 = vec![Tile([0; TILE_ROWS * STEP]); tiles * s2];
        // tile (ct, step): row `kr` holds depths step·64 + 4kr .. + 4 of the
        // tile's 16 centroids side by side; [Q₁; Q₂] for `b2`
        let fill = |tile: &mut Tile, q: &[i8], ct: usize, t0: usize| {
            for kr in 0..TILE_ROWS {
                for n in 0..PANEL {
                    let src = (ct * PANEL + n) * dp + t0 + 4 * kr;
                    tile.0[kr * STEP + n * 4..kr * STEP + n * 4 + 4]
                        .copy_from_slice(&q[src..src + 4]);
                }
            }
        };
        b1.par_chunks_mut(s1)
            .zip(b2.par_chunks_mut(s2))
            .enumerate()
            .for_each(|(ct, (t1, t2))| {
                for (step, tile) in t1.iter_mut().enumerate() {
                    fill(tile, &q1, ct, step * STEP);
                }
                for (step, tile) in t2.iter_mut().enumerate() {
                    let (q, t0) = if step < s1 {
                        (&q1, step * STEP)
                    } else {
                        (&q2, (step - s1) * STEP)
                    };
                    fill(tile, q, ct, t0);
                }
            });
        Some(Screen {
            kp,
            d,
            dp,
            b1,
            b2,
            g,
            h,
            norms,
            maxima: mx,
            amx,
        })
    }

    /// For the `m` rows of `x` (m×d), the nearest of the screen's centroids
    /// (packed for the fused kernel in `pc`, the same centroids and norms):
    /// the smallest value `‖c‖² − 2x·c` into `m1` and its index (the lowest
    /// among equals) into `arg`, bit for bit what
    /// [`argmin_rows`](super::argmin::argmin_rows) gives. Returns how many
    /// panels of 16 centroids were recomputed. Single-threaded. With
    /// `kept`, each row's screened values and the bound on their error are
    /// kept there too. With `quant`, the rows already quantized (from
    /// [`QuantRows::new`] on the same `x`); else they are quantized here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn argmin_rows(
        &self,
        x: &[f32],
        m: usize,
        pc: &Packed,
        m1: &mut [f32],
        arg: &mut [u32],
        work: &mut ScreenWork,
        kept: Option<Kept>,
        quant: Option<&QuantRows>,
    ) -> usize {
        assert!(x.len() == m * self.d && m1.len() >= m && arg.len() >= m);
        assert!(quant.is_none_or(|q| q.rows.len() == m && q.dp == self.dp));
        assert!(kept
            .as_ref()
            .is_none_or(|k| k.values.len() >= m * self.kp && k.bounds.len() >= m));
        #[cfg(target_arch = "x86_64")]
        if cpu::level() == CpuLevel::Avx512 {
            // SAFETY: the CPU has AVX-512 F, BW, DQ and VL.
            return unsafe { self.rows_avx512(x, m, pc, m1, arg, work, kept, quant) };
        }
        self.rows::<false>(x, m, pc, m1, arg, work, kept, quant)
    }

    /// Centroids per row of [`Kept::values`]: `k` padded to whole panels.
    pub(crate) fn padded(&self) -> usize {
        self.kp
    }

    /// # Safety
    /// The CPU must have AVX-512 F, BW, DQ and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_avx512(
        &self,
        x: &[f32],
        m: usize,
        pc: &Packed,
        m1: &mut [f32],
        arg: &mut [u32],
        work: &mut ScreenWork,
        kept: Option<Kept>,
        quant: Option<&QuantRows>,
    ) -> usize {
        self.rows::<true>(x, m, pc, m1, arg, work, kept, quant)
    }

    /// [`Screen::argmin_rows`], inlined into each instruction set's version
    /// (`AVX512`: inside [`Screen::rows_avx512`], whose features the scan
    /// of the screened values uses).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rows<const AVX512: bool>(
        &self,
        x: &[f32],
        m: usize,
        pc: &Packed,
        m1: &mut [f32],
        arg: &mut [u32],
        work: &mut ScreenWork,
        mut kept: Option<Kept>,
        quant: Option<&QuantRows>,
    ) -> usize {
        assert_eq!(pc.padded(), self.kp);
        let (d, dp, kp) = (self.d, self.dp, self.kp);
        let quant = match quant {
            Some(q) => q,
            None => {
                work.quant.fill(x, m, d);
                &work.quant
            }
        };
        let pair = 2 * TILE_ROWS;
        work.p.resize(pair * kp, 0);
        work.r.resize(pair * kp, 0);
        work.sv.resize(kp, 0.0);
        work.pairs.clear();
        // 32 rows at a time: their products (32×kp int32, twice) stay in
        // the L2 cache until scanned
        for r0 in (0..m).step_by(pair) {
            let a = &quant.a[r0 * 2 * dp..(r0 + pair) * 2 * dp];
            products(self, a, pair, &mut work.p, &mut work.r);
            for i in 0..pair.min(m - r0) {
                let r = r0 + i;
                let q = quant.rows[r];
                let (p, rr) = (&work.p[i * kp..(i + 1) * kp], &work.r[i * kp..(i + 1) * kp]);
                let thr = match row_bound(&q, &self.maxima, d) {
                    Some(b) if q.usable() => {
                        let least = screened_row::<AVX512>(self, q.s, p, rr, &mut work.sv) as f64;
                        let t = least + 2.0 * b;
                        if let Some(k) = kept.as_mut().filter(|_| t.is_finite()) {
                            k.values[r * kp..(r + 1) * kp].copy_from_slice(&work.sv);
                            k.bounds[r] = b;
                        }
                        t.is_finite().then(|| round_up(t))
                    }
                    _ => None,
                };
                if thr.is_none() {
                    if let Some(k) = kept.as_mut() {
                        k.bounds[r] = f64::INFINITY;
                    }
                }
                let before = work.pairs.len();
                if let Some(thr) = thr {
                    for (c, vals) in work.sv.chunks_exact(PANEL).enumerate() {
                        if vals.iter().fold(false, |hit, &v| hit | (v <= thr)) {
                            work.pairs.push((r as u32, (c * PANEL) as u32));
                        }
                    }
                }
                if work.pairs.len() == before {
                    // no usable bound: every panel
                    work.pairs
                        .extend((0..kp / PANEL).map(|c| (r as u32, (c * PANEL) as u32)));
                }
            }
        }
        // one panel's rows together, for the re-check's tiles
        work.pairs.sort_unstable_by_key(|&(r, j0)| (j0, r));
        m1[..m].fill(f32::INFINITY);
        arg[..m].fill(u32::MAX);
        argmin_panels(x, pc, &work.pairs, m1, arg);
        // rows whose values are all NaN or +∞ (no candidate won): the full
        // pass's answer, index 0
        for a in &mut arg[..m] {
            if *a == u32::MAX {
                *a = 0;
            }
        }
        work.pairs.len()
    }
}

/// Rows quantized for the screen's products: row `r` as `[q₂ | q₁]`
/// (`2·dp` int8 at `r·2·dp`, the depths past `d` zero; `q₁` against `Q₁`
/// gives `P`, the whole row against `[Q₁; Q₂]` gives `R`), with its scale
/// and norms; the rows past `m`, to a whole pair of tiles, zero. They
/// depend only on the rows, so a k-means run keeps them from one step to
/// the next ([`QuantCache`]).
#[derive(Default)]
pub(crate) struct QuantRows {
    a: Vec<i8>,
    rows: Vec<Quant>,
    dp: usize,
}

impl QuantRows {
    /// The `m` rows of `x` (m×d, d ≥ 1) quantized.
    pub(crate) fn new(x: &[f32], m: usize, d: usize) -> QuantRows {
        let mut q = QuantRows::default();
        q.fill(x, m, d);
        q
    }

    /// Quantizes the `m` rows of `x` (m×d) in place of what `self` held,
    /// reusing its room.
    fn fill(&mut self, x: &[f32], m: usize, d: usize) {
        assert!(x.len() == m * d && d > 0);
        let dp = d.div_ceil(STEP) * STEP;
        let mp = m.div_ceil(2 * TILE_ROWS) * 2 * TILE_ROWS;
        self.dp = dp;
        // every value below is written: no need to clear first
        self.a.resize(mp * 2 * dp, 0);
        self.rows.clear();
        for (r, row) in x.chunks_exact(d).enumerate() {
            let (lo, hi) = self.a[r * 2 * dp..(r + 1) * 2 * dp].split_at_mut(dp);
            self.rows
                .push(quantize_widest(row, &mut hi[..d], &mut lo[..d]));
            lo[d..].fill(0);
            hi[d..].fill(0);
        }
        self.a[m * 2 * dp..].fill(0);
    }

    /// Bytes held per row of `d` values.
    fn bytes(d: usize) -> usize {
        2 * d.div_ceil(STEP) * STEP + std::mem::size_of::<Quant>()
    }
}

/// The quantized rows of one k-means run, one [`QuantRows`] per block of
/// `block` rows, each made by the first step that screens that block and
/// kept for the steps after it (the rows do not change during a run; the
/// quantization of a row is the same whichever step or thread makes it).
/// Measured at 10 000×384, k = 100 (a 3-iteration run, two threads): the
/// quantization was 20 % of the run's time when every step quantized its
/// rows again. Runs whose quantized rows would pass [`CACHE_BYTES`] keep
/// none (each step quantizes its own).
pub(crate) struct QuantCache {
    blocks: Vec<OnceLock<QuantRows>>,
    d: usize,
}

/// The most memory a [`QuantCache`] takes: 256 MiB, about 2 bytes per
/// value of the rows (330 000 rows of 384).
pub(crate) const CACHE_BYTES: usize = 256 << 20;

impl QuantCache {
    /// Room for the `n` rows of `d` values of a run, in blocks of `block`
    /// rows (none kept when they would pass [`CACHE_BYTES`]).
    pub(crate) fn new(n: usize, d: usize, block: usize) -> QuantCache {
        let keep = d > 0 && n.saturating_mul(QuantRows::bytes(d)) <= CACHE_BYTES;
        QuantCache {
            blocks: if keep {
                (0..n.div_ceil(block.max(1)))
                    .map(|_| OnceLock::new())
                    .collect()
            } else {
                Vec::new()
            },
            d,
        }
    }

    /// Whether the cache keeps the rows (else each step quantizes its own).
    pub(crate) fn keeps(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// A cache that keeps nothing.
    #[cfg(test)]
    pub(crate) fn none() -> QuantCache {
        QuantCache {
            blocks: Vec::new(),
            d: 0,
        }
    }

    /// Block `b`'s quantized rows (`xb`, its rows), made on first use;
    /// `None` when the cache keeps none.
    pub(crate) fn get(&self, b: usize, xb: &[f32]) -> Option<&QuantRows> {
        let cell = self.blocks.get(b)?;
        let q = cell.get_or_init(|| QuantRows::new(xb, xb.len() / self.d, self.d));
        debug_assert_eq!(q.rows.len() * self.d, xb.len());
        Some(q)
    }
}

/// Where [`Screen::argmin_rows`] keeps what it screened, for the
/// `m` rows of a call.
pub(crate) struct Kept<'a> {
    /// Row `r`'s screened values `ṽ_j` at `r·kp..(r + 1)·kp`
    /// ([`Screen::padded`]; +∞ past `k`); unspecified where its bound is
    /// +∞.
    pub(crate) values: &'a mut [f32],
    /// Row `r`'s bound on `|ṽ_j − v_j|` for every `j`, `v_j` the value the
    /// fused kernel computes (see `row_bound`); +∞ where the row had none
    /// (it was re-checked against every panel).
    pub(crate) bounds: &'a mut [f64],
}

/// Work buffers of one thread of the screened assignment.
#[derive(Default)]
pub(crate) struct ScreenWork {
    quant: QuantRows,
    p: Vec<i32>,
    r: Vec<i32>,
    sv: Vec<f32>,
    pairs: Vec<(u32, u32)>,
}

/// `x`'s f64 value rounded up to an f32.
fn round_up(t: f64) -> f32 {
    let f = t as f32;
    if (f as f64) < t {
        f.next_up()
    } else {
        f
    }
}

/// The screened values `ṽ_j = ‖c_j‖² − s·(2S_j·P + (2S_j/254)·R)` of one
/// row into `sv`, and the smallest (+∞ when none is below +∞). `AVX512`:
/// the caller runs with AVX-512F (the same values, see
/// [`screened_row_avx512`]).
#[inline(always)]
fn screened_row<const AVX512: bool>(
    sc: &Screen,
    s: f32,
    p: &[i32],
    r: &[i32],
    sv: &mut [f32],
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: the caller runs with AVX-512F (see above).
        return unsafe { screened_row_avx512(sc, s, p, r, sv) };
    }
    let mut least = [f32::INFINITY; PANEL];
    let cols = p
        .chunks_exact(PANEL)
        .zip(r.chunks_exact(PANEL))
        .zip(sc.g.chunks_exact(PANEL).zip(sc.h.chunks_exact(PANEL)))
        .zip(sc.norms.chunks_exact(PANEL).zip(sv.chunks_exact_mut(PANEL)));
    for (((p, r), (g, h)), (n, out)) in cols {
        for l in 0..PANEL {
            let v = n[l] - s * (g[l] * p[l] as f32 + h[l] * r[l] as f32);
            out[l] = v;
            least[l] = if v < least[l] { v } else { least[l] };
        }
    }
    least
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a })
}

/// [`screened_row`] with AVX-512F: the same operations in the same order
/// per lane (`vminps(v, least)` is `if v < least { v } else { least }`),
/// so the same values and minimum. Written with intrinsics because the
/// compiler kept the portable loop's running minima on the stack behind a
/// masked store that each next panel's compare waited on (measured: over
/// half of the scan's time at k = 1000).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn screened_row_avx512(sc: &Screen, s: f32, p: &[i32], r: &[i32], sv: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let panels = sv.len() / PANEL;
    assert!(
        p.len() >= panels * PANEL
            && r.len() >= panels * PANEL
            && sc.g.len() >= panels * PANEL
            && sc.h.len() >= panels * PANEL
            && sc.norms.len() >= panels * PANEL
    );
    let mut lanes = [0f32; PANEL];
    // SAFETY: every load and store is of 16 values at `o < panels·16`,
    // inside each slice (asserted); the CPU has AVX-512F (the caller's
    // promise).
    unsafe {
        let scale = _mm512_set1_ps(s);
        let mut least = _mm512_set1_ps(f32::INFINITY);
        for c in 0..panels {
            let o = c * PANEL;
            let pv = _mm512_cvtepi32_ps(_mm512_loadu_si512(p.as_ptr().add(o).cast()));
            let rv = _mm512_cvtepi32_ps(_mm512_loadu_si512(r.as_ptr().add(o).cast()));
            let gp = _mm512_mul_ps(_mm512_loadu_ps(sc.g.as_ptr().add(o)), pv);
            let hr = _mm512_mul_ps(_mm512_loadu_ps(sc.h.as_ptr().add(o)), rv);
            let v = _mm512_sub_ps(
                _mm512_loadu_ps(sc.norms.as_ptr().add(o)),
                _mm512_mul_ps(scale, _mm512_add_ps(gp, hr)),
            );
            _mm512_storeu_ps(sv.as_mut_ptr().add(o), v);
            least = _mm512_min_ps(v, least);
        }
        _mm512_storeu_ps(lanes.as_mut_ptr(), least);
    }
    lanes
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a })
}

/// A bound on `|ṽ_j − v_j|` for one row and every centroid: twice the
/// error of the quantized dot product (`e_x·‖c‖₁ + e_c·‖x̂‖₁` and the
/// dropped `s·S·q₂·Q₂/254²` term, at most `s·S·‖q₂‖₂‖Q₂‖₂/254²`), the rounding of the fused kernel's chain of
/// `d` multiply-adds and of its `‖c‖² − 2s` (`γ_d·‖x‖₂‖c‖₂`, `u·|v|`), and
/// the rounding of the screen's float arithmetic (a few `u` of the terms'
/// magnitudes, which also covers int32 values above 2²⁴); then widened by
/// 1/16 for good measure.
fn row_bound(q: &Quant, c: &Maxima, d: usize) -> Option<f64> {
    let u = f32::EPSILON as f64 / 2.0;
    let df = d as f64;
    let gamma = df * u / (1.0 - df * u);
    let s = q.s as f64;
    let quant = q.err * c.l1 + c.err * (q.l1 + df * q.err) + s * q.q2_l2 * c.drop;
    let exact = 2.0 * gamma * q.l2 * c.l2 + u * (c.n + 3.0 * q.l2 * c.l2);
    let (xq, cq) = (q.l2 + df.sqrt() * s, c.l2 + df.sqrt() * c.s);
    let round = 8.0 * u * (c.n + 6.0 * xq * cq);
    let b = (2.0 * quant + exact + round) * 1.0625 + f32::MIN_POSITIVE as f64;
    b.is_finite().then_some(b)
}

/// For the `mp` rows of `a` (rows of `2·dp`, `[q₂ | q₁]`: see
/// [`QuantRows`]), `P = q₁·Q₁` and `R = [q₂ | q₁]·[Q₁; Q₂]` (int32, `mp`
/// rows × `kp` columns, row-major), on the tile unit or in portable code:
/// the same integers.
fn products(sc: &Screen, a: &[i8], mp: usize, p: &mut [i32], r: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if sc.amx {
        // SAFETY: `amx` is only set when the tile unit is ready
        // ([`amx_enabled`]); the buffers have the sizes the loops read.
        unsafe { amx::products(sc, a, mp, p, r) };
        return;
    }
    let (dp, kp) = (sc.dp, sc.kp);
    let get = |b: &[Tile], steps: usize, t: usize, j: usize| -> i32 {
        let tile = &b[(j / PANEL) * steps + t / STEP];
        let w = t % STEP;
        tile.0[(w / 4) * STEP + (j % PANEL) * 4 + w % 4] as i32
    };
    for i in 0..mp {
        for j in 0..kp {
            let mut acc = 0i32;
            for t in 0..dp {
                acc += a[i * 2 * dp + dp + t] as i32 * get(&sc.b1, dp / STEP, t, j);
            }
            p[i * kp + j] = acc;
            let mut acc = 0i32;
            for t in 0..2 * dp {
                acc += a[i * 2 * dp + t] as i32 * get(&sc.b2, 2 * dp / STEP, t, j);
            }
            r[i * kp + j] = acc;
        }
    }
}

/// [`quantize`] compiled for the widest vectors the CPU has.
fn quantize_widest(v: &[f32], q1: &mut [i8], q2: &mut [i8]) -> Quant {
    #[cfg(target_arch = "x86_64")]
    if cpu::level() == CpuLevel::Avx512 {
        // SAFETY: the CPU has AVX-512 F, BW, DQ and VL.
        return unsafe { quantize_avx512(v, q1, q2) };
    }
    quantize(v, q1, q2)
}

/// [`quantize`] in AVX-512 vectors: the same int8 values and error (the
/// sums in another order, within the same margins).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, DQ and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn quantize_avx512(v: &[f32], q1: &mut [i8], q2: &mut [i8]) -> Quant {
    use std::arch::x86_64::*;
    let n = v.len();
    assert!(q1.len() >= n && q2.len() >= n);
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    // lanes i..i + 16 (masked past the end)
    let mask = |i: usize| -> __mmask16 {
        if i + 16 <= n {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        }
    };
    let body = n - n % 16;
    // SAFETY: every load and store is inside the first n lanes (masked in
    // the tail).
    unsafe {
        let load = |i: usize| {
            if i < body {
                _mm512_loadu_ps(v.as_ptr().add(i))
            } else {
                _mm512_maskz_loadu_ps(mask(i), v.as_ptr().add(i))
            }
        };
        let (mut amax, mut amax2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut bad: __mmask16 = 0;
        for i in (0..n).step_by(32) {
            let x = load(i);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(x));
            bad |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            if i + 16 < n {
                let x = load(i + 16);
                amax2 = _mm512_max_ps(amax2, _mm512_abs_ps(x));
                bad |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            }
        }
        let amax = _mm512_max_ps(amax, amax2);
        let amax = if bad != 0 {
            f32::INFINITY
        } else {
            _mm512_reduce_max_ps(amax)
        };
        let s = match scale(amax, &mut q1[..n], &mut q2[..n]) {
            Ok(s) => s,
            Err(q) => return q,
        };
        let (inv, fine) = (_mm512_set1_ps(1.0 / s), _mm512_set1_ps(254.0 / s));
        let vs = _mm512_set1_ps(s);
        let zero = _mm512_setzero_ps();
        let (mut l1, mut l2, mut q2l2) = (zero, zero, zero);
        for i in (0..n).step_by(16) {
            let x = load(i);
            // |x/s| and |r·254/s| stay below 127.5 (see `quant_err`), so
            // the clamps of `quantize` never act; the conversions saturate
            // all the same
            let h = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(x, inv));
            let r = _mm512_sub_ps(x, _mm512_mul_ps(vs, h));
            let l = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(r, fine));
            let (h8, l8) = (
                _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(h)),
                _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(l)),
            );
            if i < body {
                _mm_storeu_si128(q1.as_mut_ptr().add(i) as *mut _, h8);
                _mm_storeu_si128(q2.as_mut_ptr().add(i) as *mut _, l8);
            } else {
                _mm_mask_storeu_epi8(q1.as_mut_ptr().add(i) as *mut _, mask(i), h8);
                _mm_mask_storeu_epi8(q2.as_mut_ptr().add(i) as *mut _, mask(i), l8);
            }
            l1 = _mm512_add_ps(l1, _mm512_abs_ps(x));
            l2 = _mm512_fmadd_ps(x, x, l2);
            q2l2 = _mm512_fmadd_ps(l, l, q2l2);
        }
        // f32 sums of n non-negative terms: within (n − 1)·u of the true
        // sum (n·u ≤ 2⁻⁸ here); the reduction adds 4 roundings
        let up = 1.0 + 2.0 * (n + 16) as f64 * (f32::EPSILON as f64 / 2.0);
        let sum = |a: __m512| _mm512_reduce_add_ps(a) as f64 * up;
        Quant {
            s,
            err: quant_err(s, amax),
            l1: sum(l1),
            l2: sum(l2).sqrt(),
            q2_l2: sum(q2l2).sqrt(),
        }
    }
}

/// 0: not decided; 1: off; 2: on.
static AMX: AtomicU8 = AtomicU8::new(0);

/// Whether the screen runs: the CPU has AMX's tiles and int8 products and
/// AVX-512, the OS lets this process use the tiles, and the screen was not
/// turned off (`PROTOFAST_AMX=0` in the environment, or [`set_amx`]).
/// Decided on the first call.
pub fn amx_enabled() -> bool {
    match AMX.load(Ordering::Relaxed) {
        0 => {
            let off = std::env::var("PROTOFAST_AMX").is_ok_and(|v| v.trim() == "0");
            let on = !off && amx_supported();
            // a concurrent first call decides the same way
            let _ = AMX.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            AMX.load(Ordering::Relaxed) == 2
        }
        v => v == 2,
    }
}

/// Turns the screen of k-means' plain assignment steps on (where the CPU
/// and OS allow it) or off for the rest of the process; returns whether it
/// now runs. The results are the same bits either way; only the time
/// differs.
pub fn set_amx(on: bool) -> bool {
    let on = on && amx_supported();
    AMX.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    on
}

/// The CPU has AMX-TILE, AMX-INT8 and AVX-512, and the OS granted this
/// process the tile state (asked once).
fn amx_supported() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked
            // first).
            cpu::level() == CpuLevel::Avx512 && {
                let l7 = std::arch::x86_64::__cpuid_count(7, 0);
                let (tile, int8) = (l7.edx >> 24 & 1 == 1, l7.edx >> 25 & 1 == 1);
                tile && int8 && amx::request_permission()
            }
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Whether the screen is worth running for `k` centroids of `d` values,
/// with the rows quantized once per run (`kept`: the run's [`QuantCache`]
/// keeps them) or once per step. Its fixed costs per row (quantizing the
/// row unless kept, scanning `k` screened values, re-checking about one
/// panel) weigh against the `k·d` products it saves.
///
/// Measured, the screen's time over the full pass's (interleaved calls,
/// two threads). Rows quantized every step, one Lloyd iteration of 10 000
/// or 20 000 rows: at d = 384, 1.06 at k = 128, 0.96 at 192, 0.85 at 256,
/// 0.70 at 1000; at k = 256, 2.01 at d = 32, 1.26 at 64, 1.04 at 128 and
/// 192, 0.90 at 256; 1.04 at 256×192, 1.01 at 128×512, 0.87 at 128×1000,
/// 1.34 at 64×1000; hence at least 192 centroids and 65 536 products a row.
/// Rows kept, runs of 1 and 3 iterations of 10 000 rows: at d = 384,
/// 1.10 and 1.09 at k = 80, 0.98 and 0.90 at 96, 0.94 and 0.91 at 100
/// (0.87 at 5 iterations), 0.94 and 0.96 at 128; at d = 256, 1.01 and 1.12
/// at k = 100, 0.93 and 0.86 at 160; at d = 128, 1.16 and 1.12 at k = 128,
/// 0.89 and 0.94 at 256; hence at least 96 centroids and 32 768 products a
/// row. Either way at least 128 values; above 32 768 the int32 products
/// could overflow.
pub(crate) fn worth_it(k: usize, d: usize, kept: bool) -> bool {
    let (least_k, least_kd) = if kept { (96, 32_768) } else { (192, 65_536) };
    k >= least_k && (128..=32_768).contains(&d) && k * d >= least_kd
}

#[cfg(target_arch = "x86_64")]
mod amx {
    //! The tile unit, by inline assembly (stable Rust has no intrinsics for
    //! it). Every tile is configured as 16 rows of 64 bytes: `tmm0`–`tmm3`
    //! accumulate a 32×32 block of int32 products, `tmm4`/`tmm5` hold 16
    //! rows each of the quantized rows, `tmm6`/`tmm7` one tile of
    //! centroids each.

    use std::arch::asm;
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

    use super::{Screen, Tile, PANEL, STEP, TILE_ROWS};

    /// Asks Linux for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, once per process): true when granted.
    #[cfg(target_os = "linux")]
    pub(super) fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call (158) reads two integers and
        // changes no memory of this process; `syscall` clobbers rcx and r11.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") 158i64 => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    fn config() -> Config {
        let mut c = Config([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = STEP as u8;
            c.0[48 + t] = TILE_ROWS as u8;
        }
        c
    }

    /// See [`super::products`].
    ///
    /// # Safety
    /// The tile unit is ready ([`super::amx_enabled`]); `a` holds `mp`
    /// rows of `2·dp`, `p` and `r` `mp` rows of `kp`; `mp` is a multiple
    /// of 32.
    pub(super) unsafe fn products(sc: &Screen, a: &[i8], mp: usize, p: &mut [i32], r: &mut [i32]) {
        let (dp, kp) = (sc.dp, sc.kp);
        assert!(a.len() >= mp * 2 * dp);
        assert!(p.len() >= mp * kp && r.len() >= mp * kp && mp.is_multiple_of(2 * TILE_ROWS));
        let cfg = config();
        let (s1, s2) = (dp / STEP, 2 * dp / STEP);
        let tiles = kp / PANEL;
        // SAFETY: the configuration is valid; every tile load and store
        // below stays inside the buffers asserted above (16 rows of 64
        // bytes at the given strides); the tiles are released at the end.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            for ct in (0..tiles).step_by(2) {
                let pair = ct + 1 < tiles;
                for rp in (0..mp).step_by(2 * TILE_ROWS) {
                    let out = rp * kp + ct * PANEL;
                    // q₁: the second half of each row
                    block(
                        a.as_ptr().add(rp * 2 * dp + dp),
                        2 * dp,
                        sc.b1.as_ptr().add(ct * s1),
                        s1,
                        pair,
                        p.as_mut_ptr().add(out),
                        kp,
                    );
                    block(
                        a.as_ptr().add(rp * 2 * dp),
                        2 * dp,
                        sc.b2.as_ptr().add(ct * s2),
                        s2,
                        pair,
                        r.as_mut_ptr().add(out),
                        kp,
                    );
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    /// 32 rows (at `a`, `stride` bytes apart) by one or two (`pair`) tiles
    /// of centroids (from `b`, the second `steps` tiles further), over
    /// `steps` steps, into int32 `c` (`cstride` values apart).
    ///
    /// # Safety
    /// Tiles configured by [`config`]; the reads and writes are inside the
    /// caller's buffers.
    #[inline(always)]
    unsafe fn block(
        a: *const i8,
        stride: usize,
        b: *const Tile,
        steps: usize,
        pair: bool,
        c: *mut i32,
        cstride: usize,
    ) {
        let cs = cstride * 4;
        // SAFETY: as the caller's.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a_hi = a.add(TILE_ROWS * stride);
            for s in 0..steps {
                let (a0, a1) = (a.add(s * STEP), a_hi.add(s * STEP));
                let b0 = b.add(s);
                // the centroid tiles two steps ahead, into L1 (a hint only:
                // prefetching past the end faults nothing)
                let ahead = b0.wrapping_add(2) as *const i8;
                for line in 0..TILE_ROWS {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * STEP));
                    if pair {
                        _mm_prefetch::<_MM_HINT_T0>(
                            ahead.wrapping_add((steps * TILE_ROWS + line) * STEP),
                        );
                    }
                }
                if pair {
                    let b1 = b.add(steps + s);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbssd tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbssd tmm2, tmm5, tmm6",
                        "tdpbssd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        sa = in(reg) stride,
                        sb = in(reg) STEP,
                        options(nostack, readonly)
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbssd tmm2, tmm5, tmm6",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) b0,
                        sa = in(reg) stride,
                        sb = in(reg) STEP,
                        options(nostack, readonly)
                    );
                }
            }
            let lower = c.add(TILE_ROWS * cstride);
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c2} + {s}*1], tmm2",
                c0 = in(reg) c,
                c2 = in(reg) lower,
                s = in(reg) cs,
                options(nostack)
            );
            if pair {
                asm!(
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c1 = in(reg) c.add(PANEL),
                    c3 = in(reg) lower.add(PANEL),
                    s = in(reg) cs,
                    options(nostack)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::argmin::argmin_rows;
    use crate::rng::Rng;

    fn normal(rng: &mut Rng) -> f32 {
        let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Rows around `k` random centres with noise `noise` (the closer the
    /// noise to the spread, the more near ties), normalised when `unit`.
    fn blobs(n: usize, k: usize, d: usize, noise: f32, unit: bool, rng: &mut Rng) -> Vec<f32> {
        let centres: Vec<f32> = (0..k * d).map(|_| normal(rng)).collect();
        around(&centres, n, d, noise, unit, rng)
    }

    fn around(
        centres: &[f32],
        n: usize,
        d: usize,
        noise: f32,
        unit: bool,
        rng: &mut Rng,
    ) -> Vec<f32> {
        let k = centres.len() / d;
        let mut x = Vec::with_capacity(n * d);
        for _ in 0..n {
            let c = (rng.next_f64() * k as f64) as usize % k;
            let row: Vec<f32> = (0..d)
                .map(|t| centres[c * d + t] + noise * normal(rng))
                .collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.extend(row.iter().map(|v| if unit { v / norm } else { *v }));
        }
        x
    }

    fn sq_norms(c: &[f32], d: usize) -> Vec<f32> {
        c.chunks(d)
            .map(|r| r.iter().fold(0f32, |s, &v| v.mul_add(v, s)))
            .collect()
    }

    /// The screen's labels and values against the full pass, bit for bit,
    /// with portable products and (where the machine has it) the tile
    /// unit's; returns the panels re-checked per row.
    fn check(x: &[f32], m: usize, c: &[f32], d: usize) -> f64 {
        let cn = sq_norms(c, d);
        let pc = Packed::new(c, &cn, d);
        let (mut want1, mut want) = (vec![0f32; m], vec![0u32; m]);
        argmin_rows(x, m, &pc, &mut want1, None, &mut want);
        let mut per_row = 0.0;
        // the rows quantized by the call, or beforehand (as a run keeps them)
        for (amx, pre) in [(false, false), (false, true), (amx_supported(), false)] {
            let sc = Screen::new(c, &cn, d, amx).expect("quantizable");
            let (mut m1, mut arg) = (vec![0f32; m], vec![0u32; m]);
            let mut work = ScreenWork::default();
            let mut pairs = 0;
            for (b, rows) in x.chunks(256 * d).enumerate() {
                let mb = rows.len() / d;
                let r = b * 256..b * 256 + mb;
                let quant = pre.then(|| QuantRows::new(rows, mb, d));
                pairs += sc.argmin_rows(
                    rows,
                    mb,
                    &pc,
                    &mut m1[r.clone()],
                    &mut arg[r],
                    &mut work,
                    None,
                    quant.as_ref(),
                );
            }
            assert_eq!(
                arg,
                want,
                "amx {amx}, pre {pre}, m {m}, k {}, d {d}",
                cn.len()
            );
            for (a, b) in m1.iter().zip(&want1) {
                assert_eq!(a.to_bits(), b.to_bits(), "amx {amx}");
            }
            per_row = pairs as f64 / m as f64;
        }
        per_row
    }

    #[test]
    fn the_screen_gives_the_full_pass_bit_for_bit() {
        let mut rng = Rng::new(11);
        // row, panel, tile and step remainders; unit and raw rows
        for &(m, k, d, noise, unit) in &[
            (1, 32, 1, 0.5, false),
            (33, 33, 65, 0.3, true),
            (300, 100, 384, 0.5, true),
            (70, 48, 130, 2.0, true),
            (64, 256, 64, 1.0, false),
            (45, 40, 17, 0.1, false),
            (257, 129, 200, 0.7, true),
        ] {
            let x = blobs(m, k.min(50), d, noise, unit, &mut rng);
            let c = blobs(k, k.min(50), d, noise, unit, &mut rng);
            check(&x, m, &c, d);
        }
    }

    #[test]
    fn the_vector_scan_gives_the_portable_values_and_minimum() {
        // screened values of random integer products, at scales that give
        // zeros, NaN and ±∞; the AVX-512 scan against the loop
        let mut rng = Rng::new(5);
        let (k, d) = (300, 64);
        let c = blobs(k, 20, d, 0.5, true, &mut rng);
        let sc = Screen::new(&c, &sq_norms(&c, d), d, false).expect("quantizable");
        let kp = sc.padded();
        for trial in 0..40 {
            let mut int = |span: f64| ((rng.next_f64() - 0.5) * span) as i32;
            let p: Vec<i32> = (0..kp).map(|_| int(4.0e6)).collect();
            let r: Vec<i32> = (0..kp).map(|_| int(4.0e8)).collect();
            let s = [1e-3, 0.0, 7.5, f32::NAN, f32::INFINITY][trial % 5];
            let mut portable = vec![0f32; kp];
            let least = screened_row::<false>(&sc, s, &p, &r, &mut portable);
            if cpu::level() == CpuLevel::Avx512 {
                let mut vector = vec![0f32; kp];
                let got = screened_row::<true>(&sc, s, &p, &r, &mut vector);
                assert_eq!(got.to_bits(), least.to_bits(), "trial {trial}");
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&vector), bits(&portable), "trial {trial}");
            }
            // the minimum is that of the values below +∞ (NaN skipped)
            let want = portable
                .iter()
                .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
            assert_eq!(least.to_bits(), want.to_bits(), "trial {trial}");
        }
    }

    #[test]
    fn the_screen_prunes_on_clustered_rows() {
        // unit rows near 100 well-separated centres: most rows need the
        // panel of their own centroid only (7 panels in all)
        let mut rng = Rng::new(5);
        let (m, k, d) = (512, 100, 384);
        let mut c: Vec<f32> = (0..k * d).map(|_| normal(&mut rng)).collect();
        for row in c.chunks_mut(d) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let x = around(&c, m, d, 0.03, true, &mut rng);
        let per_row = check(&x, m, &c, d);
        assert!(per_row < 1.05, "{per_row} panels per row");
    }

    #[test]
    fn ties_and_copies_go_to_the_lowest_index() {
        // centroids 3, 40 and 77 equal, rows equal to them: every row's
        // exact values tie across three panels
        let mut rng = Rng::new(8);
        let (k, d) = (90, 48);
        let mut c = blobs(k, 30, d, 0.2, true, &mut rng);
        let row = c[3 * d..4 * d].to_vec();
        for j in [40, 77] {
            c[j * d..(j + 1) * d].copy_from_slice(&row);
        }
        let mut x = blobs(20, 30, d, 0.2, true, &mut rng);
        for r in 0..5 {
            x[r * d..(r + 1) * d].copy_from_slice(&row);
        }
        check(&x, 20, &c, d);
        let cn = sq_norms(&c, d);
        let pc = Packed::new(&c, &cn, d);
        let sc = Screen::new(&c, &cn, d, false).unwrap();
        let (mut m1, mut arg) = ([0f32; 1], [0u32; 1]);
        sc.argmin_rows(
            &row,
            1,
            &pc,
            &mut m1,
            &mut arg,
            &mut ScreenWork::default(),
            None,
            None,
        );
        assert_eq!(arg[0], 3);
    }

    #[test]
    fn wide_magnitudes_and_zero_rows() {
        let mut rng = Rng::new(2);
        let (m, k, d) = (40, 64, 96);
        let mut x = blobs(m, 20, d, 0.5, false, &mut rng);
        let mut c = blobs(k, 20, d, 0.5, false, &mut rng);
        // rows and centroids from 1e-12 to 1e12, one zero row, one row
        // with a single spike
        for (r, row) in x.chunks_mut(d).enumerate() {
            let f = 10f32.powi((r as i32 % 25) - 12);
            row.iter_mut().for_each(|v| *v *= f);
        }
        for (j, row) in c.chunks_mut(d).enumerate() {
            let f = 10f32.powi((j as i32 % 7) - 3);
            row.iter_mut().for_each(|v| *v *= f);
        }
        x[..d].fill(0.0);
        x[d..2 * d].fill(0.0);
        x[d + 5] = 3.0;
        check(&x, m, &c, d);
    }

    #[test]
    fn rows_without_a_bound_check_every_panel() {
        // a row whose values overflow f32 (its norms are infinite) is
        // compared with every centroid by the full pass's arithmetic
        let mut rng = Rng::new(4);
        let (k, d) = (40, 8);
        let c = blobs(k, 10, d, 0.5, false, &mut rng);
        let mut x = blobs(3, 10, d, 0.5, false, &mut rng);
        x[d..2 * d].fill(3e38);
        let cn = sq_norms(&c, d);
        let pc = Packed::new(&c, &cn, d);
        let sc = Screen::new(&c, &cn, d, false).unwrap();
        let (mut m1, mut arg) = ([0f32; 3], [0u32; 3]);
        let pairs = sc.argmin_rows(
            &x,
            3,
            &pc,
            &mut m1,
            &mut arg,
            &mut ScreenWork::default(),
            None,
            None,
        );
        assert!(pairs >= k.div_ceil(PANEL) + 2);
        let (mut w1, mut w) = ([0f32; 3], [0u32; 3]);
        argmin_rows(&x, 3, &pc, &mut w1, None, &mut w);
        assert_eq!(arg, w);
        assert!(m1.iter().zip(&w1).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn centroids_that_cannot_be_quantized_leave_the_full_pass() {
        let c = [1.0f32, f32::NAN, 0.5, 0.5];
        assert!(Screen::new(&c, &sq_norms(&c, 2), 2, false).is_none());
        let tiny = [1e-40f32, 0.0, 0.5, 0.5];
        assert!(Screen::new(&tiny, &sq_norms(&tiny, 2), 2, false).is_none());
    }

    #[test]
    fn quantization_keeps_fifteen_bits() {
        let mut rng = Rng::new(9);
        let v: Vec<f32> = (0..300).map(|_| normal(&mut rng)).collect();
        let (mut a, mut b) = (vec![0i8; 300], vec![0i8; 300]);
        let q = quantize(&v, &mut a, &mut b);
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        // half a step of the fine scale, s/508, with the margins
        assert!(q.err <= amax / 127.0 / 508.0 * 1.07, "{} vs {amax}", q.err);
        let worst = v
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(&x, (&h, &l))| (x as f64 - q.s as f64 * (h as f64 + l as f64 / 254.0)).abs())
            .fold(0f64, f64::max);
        assert!(
            worst <= q.err && worst > q.err * 0.9,
            "{worst} vs {}",
            q.err
        );
        let (mut a2, mut b2) = (vec![0i8; 300], vec![0i8; 300]);
        let w = quantize_widest(&v, &mut a2, &mut b2);
        assert_eq!((a2, b2, w.s, w.err), (a, b, q.s, q.err));
        assert!((w.l1 / q.l1 - 1.0).abs() < 1e-4 && (w.l2 / q.l2 - 1.0).abs() < 1e-4);
    }

    #[test]
    fn a_run_keeps_each_block_quantized_once_within_its_budget() {
        let mut rng = Rng::new(8);
        let (n, d) = (300, 130);
        let x = blobs(n, 5, d, 0.3, false, &mut rng);
        let cache = QuantCache::new(n, d, 256);
        assert!(cache.keeps());
        let (b0, b1) = (&x[..256 * d], &x[256 * d..]);
        let first = cache.get(0, b0).expect("kept") as *const QuantRows;
        assert!(std::ptr::eq(first, cache.get(0, b0).unwrap()));
        let last = cache.get(1, b1).unwrap();
        let fresh = QuantRows::new(b1, n - 256, d);
        assert_eq!((last.rows.len(), last.dp), (44, 192));
        assert_eq!(last.a, fresh.a);
        assert!(last.a.iter().any(|&v| v != 0));
        // past the budget, or with no values: nothing kept
        let rows = CACHE_BYTES / QuantRows::bytes(d);
        assert!(QuantCache::new(rows, d, 256).keeps());
        assert!(!QuantCache::new(rows + 1, d, 256).keeps());
        assert!(QuantCache::new(rows + 1, d, 256).get(0, b0).is_none());
        assert!(!QuantCache::new(10, 0, 256).keeps());
    }

    #[test]
    fn the_tile_unit_gives_the_portable_integers() {
        if !amx_supported() {
            // the portable products are what every other test checks; the
            // tile unit exists only on some x86-64 CPUs
            eprintln!("no AMX here: the portable products were tested");
            return;
        }
        let mut rng = Rng::new(6);
        let (k, d, mp) = (80, 200, 64);
        let c = blobs(k, 10, d, 0.5, false, &mut rng);
        let cn = sq_norms(&c, d);
        let (port, tile) = (
            Screen::new(&c, &cn, d, false).unwrap(),
            Screen::new(&c, &cn, d, true).unwrap(),
        );
        let dp = port.dp;
        let a: Vec<i8> = (0..mp * 2 * dp)
            .map(|_| (rng.next_f64() * 255.0 - 127.0) as i8)
            .collect();
        let mut out = [
            vec![0i32; mp * port.kp],
            vec![0i32; mp * port.kp],
            vec![0i32; mp * port.kp],
            vec![0i32; mp * port.kp],
        ];
        let [p0, r0, p1, r1] = &mut out;
        products(&port, &a, mp, p0, r0);
        products(&tile, &a, mp, p1, r1);
        assert_eq!(p0, p1);
        assert_eq!(r0, r1);
        assert!(p0.iter().any(|&v| v.abs() > 100_000));
    }
}
