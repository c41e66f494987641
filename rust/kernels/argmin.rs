//! The nearest centroid of each row in one fused pass: the dot products of
//! a tile of rows with a tile of centroids stay in registers, and each is
//! folded into the rows' running minima of `‖c‖² − 2x·c` as soon as it is
//! complete, so no block of products is ever written to memory or scanned
//! again. The centroids are packed once per assignment step ([`Packed`]),
//! not once per block of rows, and the depth is split in passes of [`KC`]
//! so that the centroids a tile reads stay in the L1 cache across the
//! tiles of a block of rows.
//!
//! Every dot product is summed in one fixed order, `x·c = fma(x_{d−1},
//! c_{d−1}, … fma(x_1, c_1, fma(x_0, c_0, 0)))`, whatever the instruction
//! set, the tile a pair falls in or the rows and centroids a call covers: so
//! the results are the same bits on every CPU level, for any thread count,
//! for a row scanned with all centroids or with one group of them.

use crate::cpu::{self, CpuLevel};

/// Centroids per panel: the lanes of the running minima of a row, and the
/// unit the packed centroids are padded to.
const PANEL: usize = 16;

/// One cache line: 16 floats, 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; PANEL]);

/// Centroids packed for [`argmin_rows`], for the kernel of one CPU level:
/// blocks of as many centroids as the kernel's tile is wide, depth-major
/// within a block (the values of depth `t` of a block's centroids side by
/// side, so a tile reads one stream); `k` padded to whole panels with zero
/// rows whose squared norm is +∞ (they never win).
pub(crate) struct Packed {
    lines: Vec<Line>,
    norms: Vec<f32>,
    d: usize,
    level: CpuLevel,
    /// `(first centroid, width)` of each block, and where the narrower
    /// ones start (see [`blocks`]).
    blocks: Vec<(usize, usize)>,
    narrow_start: usize,
}

impl Packed {
    /// Packs the `k` rows of `c` (k×d, row-major, k ≥ 1) with their squared
    /// norms `c_norms`, for this CPU's kernel.
    pub(crate) fn new(c: &[f32], c_norms: &[f32], d: usize) -> Packed {
        Packed::for_level(c, c_norms, d, cpu::level())
    }

    fn for_level(c: &[f32], c_norms: &[f32], d: usize, level: CpuLevel) -> Packed {
        let k = c_norms.len();
        debug_assert_eq!(c.len(), k * d);
        let padded = k.div_ceil(PANEL) * PANEL;
        let mut packed = Packed {
            lines: vec![Line([0.0; PANEL]); padded * d / PANEL],
            norms: vec![f32::INFINITY; padded],
            d,
            level,
            blocks: Vec::new(),
            narrow_start: 0,
        };
        (packed.blocks, packed.narrow_start) = blocks(padded, packed.block());
        packed.norms[..k].copy_from_slice(c_norms);
        for (j, row) in c.chunks_exact(d.max(1)).enumerate().take(k) {
            let (at, stride) = packed.at(j);
            for (t, &v) in row.iter().enumerate() {
                let f = at + t * stride;
                packed.lines[f / PANEL].0[f % PANEL] = v;
            }
        }
        packed
    }

    /// Centroids with room (whole panels): the row length of
    /// [`values_rows`]'s output.
    pub(crate) fn padded(&self) -> usize {
        self.norms.len()
    }

    /// Centroids per block: the width of the level's tile.
    fn block(&self) -> usize {
        match self.level {
            CpuLevel::Avx512 => AVX512_TILE.1 * 16,
            CpuLevel::Avx2 => AVX2_TILE.1 * 8,
            CpuLevel::Portable => PORTABLE_TILE.1 * 4,
        }
    }

    /// Where centroid `j`'s value of depth 0 is (in floats from the start)
    /// and how far apart its depths are: the width of its block.
    fn at(&self, j: usize) -> (usize, usize) {
        let g = self.block();
        let (start, width) = if j < self.narrow_start {
            (j / g * g, g)
        } else {
            *self.blocks[self.narrow_start / g..]
                .iter()
                .find(|&&(s, w)| j < s + w)
                .expect("j is packed")
        };
        (start * self.d + (j - start), width)
    }
}

/// The blocks of `padded` centroids for tiles `g` wide, in order: `(first
/// centroid, width)`; and where the narrower ones start. Full-width blocks,
/// then (when the panels do not divide evenly) one or two blocks a panel
/// narrower, never a lone panel after wider blocks: a one-panel tile has too
/// few accumulators to hide the latency of its multiply-adds (k = 100 on
/// AVX-512: 48 + 32 + 32 columns, not 48 + 48 + 16).
fn blocks(padded: usize, g: usize) -> (Vec<(usize, usize)>, usize) {
    let (p, per) = (padded / PANEL, g / PANEL);
    let (wide, narrow) = match p % per {
        0 => (p / per, 0),
        r if r == per - 1 || p < per => (p / per, 1),
        _ => (p / per - 1, 2),
    };
    let mut out: Vec<(usize, usize)> = (0..wide).map(|b| (b * g, g)).collect();
    let mut j = wide * g;
    for _ in 0..narrow {
        let width = (g - PANEL).max(PANEL).min(padded - j);
        out.push((j, width));
        j += width;
    }
    debug_assert_eq!(j, padded);
    (out, wide * g)
}

/// Rows × vectors of centroids per tile of each level's kernel: AVX-512
/// keeps 8×3 accumulators of its 32 registers (24; three loads and eight
/// broadcasts feed 24 fused multiply-adds; measured against 6×4 and 12×2 at
/// k = 100, 256 and 1000, D = 384: 1–8 % faster), AVX2 6×2 of its 16.
const AVX512_TILE: (usize, usize) = (8, 3);
const AVX2_TILE: (usize, usize) = (6, 2);
const PORTABLE_TILE: (usize, usize) = (4, 4);

/// For each of the `m` rows of `x` (m×d, row-major), over the packed
/// centroids' values `v_j = ‖c_j‖² − 2·x·c_j`: the smallest into `m1`, the
/// index of the smallest (the lowest among equals) into `arg` and, when
/// `m2` is given, the second smallest (equal to the smallest when it occurs
/// twice; +∞ when there is one centroid). Single-threaded.
pub(crate) fn argmin_rows(
    x: &[f32],
    m: usize,
    pc: &Packed,
    m1: &mut [f32],
    m2: Option<&mut [f32]>,
    arg: &mut [u32],
) {
    assert!(m1.len() >= m && arg.len() >= m);
    assert!(m2.as_ref().is_none_or(|s| s.len() >= m));
    let out = Out {
        m1,
        m2,
        arg,
        values: None,
    };
    dispatch(x, m, pc, out);
}

/// For each of the `m` rows of `x` (m×d, row-major), the values `v_j =
/// ‖c_j‖² − 2·x·c_j` of every packed centroid, bit for bit those
/// [`argmin_rows`] takes the minimum of, into `values` (m rows of
/// [`Packed::padded`], row-major; +∞ past the last centroid).
/// Single-threaded.
pub(crate) fn values_rows(x: &[f32], m: usize, pc: &Packed, values: &mut [f32]) {
    assert!(values.len() >= m * pc.padded());
    let out = Out {
        m1: &mut [],
        m2: None,
        arg: &mut [],
        values: Some(values),
    };
    dispatch(x, m, pc, out);
}

/// Over `v`: the smallest value, its index (the lowest among equals) and the
/// second smallest (equal to the smallest when it occurs twice; +∞ for one
/// value): what [`argmin_rows`] finds over the same values.
pub(crate) fn smallest_two(v: &[f32]) -> (f32, u32, f32) {
    let (mut b1, mut j1, mut b2) = (f32::INFINITY, 0u32, f32::INFINITY);
    for (j, &x) in v.iter().enumerate() {
        if x < b1 {
            b2 = b1;
            b1 = x;
            j1 = j as u32;
        } else if x < b2 {
            b2 = x;
        }
    }
    (b1, j1, b2)
}

/// For each `(row, j0)` of `pairs` (`j0` a multiple of [`PANEL`] below
/// [`Packed::padded`]; the pairs of one panel next to each other, a row at
/// most once per panel): the values `v_j = ‖c_j‖² − 2·x·c_j` of the
/// panel's centroids `j0..j0 + 16`, bit for bit those [`argmin_rows`]
/// compares (the same chain of fused multiply-adds per dot product, the
/// same `‖c‖² − (s + s)`), folded into the row's running smallest
/// `m1[row]` and its index `arg[row]`, the lowest index among equals
/// whatever the order of the pairs (the caller starts them at +∞ and
/// `u32::MAX`). The screened assignment re-checks its candidates with
/// this. Single-threaded.
pub(crate) fn argmin_panels(
    x: &[f32],
    pc: &Packed,
    pairs: &[(u32, u32)],
    m1: &mut [f32],
    arg: &mut [u32],
) {
    assert!(pc.level <= cpu::level());
    assert!(pairs.iter().all(|&(r, j0)| {
        (r as usize + 1) * pc.d <= x.len()
            && (r as usize) < m1.len().min(arg.len())
            && (j0 as usize).is_multiple_of(PANEL)
            && (j0 as usize) < pc.padded()
    }));
    match pc.level {
        // SAFETY: the level is this CPU's or below (asserted); the pairs
        // are inside `x`, the outputs and the packing (asserted).
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => unsafe { panels_avx512(x, pc, pairs, m1, arg) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx2 => unsafe { panels_avx2(x, pc, pairs, m1, arg) },
        // SAFETY: portable code needs no CPU feature; the pairs as above.
        _ => unsafe { panels::<Portable, 4>(x, pc, pairs, m1, arg) },
    }
}

/// # Safety
/// As [`panels`], and the CPU must have AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn panels_avx512(
    x: &[f32],
    pc: &Packed,
    pairs: &[(u32, u32)],
    m1: &mut [f32],
    arg: &mut [u32],
) {
    unsafe { panels::<Avx512, 1>(x, pc, pairs, m1, arg) }
}

/// # Safety
/// As [`panels`], and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panels_avx2(
    x: &[f32],
    pc: &Packed,
    pairs: &[(u32, u32)],
    m1: &mut [f32],
    arg: &mut [u32],
) {
    unsafe { panels::<Avx2, 2>(x, pc, pairs, m1, arg) }
}

/// Rows re-checked at once against one panel: independent chains that
/// hide the latency of the multiply-adds, fed by one load of the panel; a
/// run of at most half as many rows takes a tile half as tall.
const ROWS_AT_ONCE: usize = 8;

/// [`argmin_panels`] with `L`'s lanes (`PER` vectors a panel), up to
/// [`ROWS_AT_ONCE`] rows of one panel at a time.
///
/// # Safety
/// The CPU must have `L`'s features; `PER·W` is [`PANEL`]; every pair is
/// inside `x`, `m1`, `arg` and the packing (see [`argmin_panels`]).
#[inline(always)]
unsafe fn panels<L: Lanes, const PER: usize>(
    x: &[f32],
    pc: &Packed,
    pairs: &[(u32, u32)],
    m1: &mut [f32],
    arg: &mut [u32],
) {
    debug_assert_eq!(PER * L::W, PANEL);
    let mut rest = pairs;
    while let Some(&(_, j0)) = rest.first() {
        let run = rest
            .iter()
            .take(ROWS_AT_ONCE)
            .take_while(|p| p.1 == j0)
            .count();
        let (group, tail) = rest.split_at(run);
        rest = tail;
        // SAFETY: as the caller's.
        unsafe {
            if run > ROWS_AT_ONCE / 2 {
                panel_rows::<L, PER, ROWS_AT_ONCE>(x, pc, group, m1, arg);
            } else {
                panel_rows::<L, PER, { ROWS_AT_ONCE / 2 }>(x, pc, group, m1, arg);
            }
        }
    }
}

/// The rows of `group` (1 to `R` pairs, all of one panel) against their
/// panel, `R` chains at once (a short group repeats its first row,
/// computed and not folded), folded as [`argmin_panels`] says.
///
/// # Safety
/// As [`panels`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register tiles read best as indices
unsafe fn panel_rows<L: Lanes, const PER: usize, const R: usize>(
    x: &[f32],
    pc: &Packed,
    group: &[(u32, u32)],
    m1: &mut [f32],
    arg: &mut [u32],
) {
    let (d, run, j0) = (pc.d, group.len(), group[0].1);
    let rows: [*const f32; R] =
        std::array::from_fn(|i| x[group[if i < run { i } else { 0 }].0 as usize * d..].as_ptr());
    let (at, stride) = pc.at(j0 as usize);
    let mut values = [[0f32; PANEL]; R];
    // SAFETY: every pointer read is inside a row of `x` (d values) or the
    // panel (16 values at each of the d depths).
    unsafe {
        let col = (pc.lines.as_ptr() as *const f32).add(at);
        let mut acc = [[L::zero(); PER]; R];
        for t in 0..d {
            let b: [L::V; PER] = std::array::from_fn(|h| L::load(col.add(t * stride + h * L::W)));
            for i in 0..R {
                let a = L::splat(*rows[i].add(t));
                for h in 0..PER {
                    acc[i][h] = L::fma(a, b[h], acc[i][h]);
                }
            }
        }
        let norms = pc.norms.as_ptr().add(j0 as usize);
        for i in 0..R {
            for h in 0..PER {
                let v = L::value(acc[i][h], norms.add(h * L::W));
                L::store(values[i].as_mut_ptr().add(h * L::W), v);
            }
        }
    }
    for (i, &(r, _)) in group.iter().enumerate() {
        let (best, at) = (&mut m1[r as usize], &mut arg[r as usize]);
        for (l, &v) in values[i].iter().enumerate() {
            let j = j0 + l as u32;
            if v < *best || (v == *best && j < *at) {
                *best = v;
                *at = j;
            }
        }
    }
}

/// Runs the kernel of `pc`'s level.
fn dispatch(x: &[f32], m: usize, pc: &Packed, out: Out) {
    assert!(x.len() == m * pc.d);
    assert!(pc.level <= cpu::level());
    if m == 0 {
        return;
    }
    match pc.level {
        // SAFETY: the level is this CPU's or below (asserted): `Avx512`
        // implies AVX-512F and FMA.
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => unsafe { rows_avx512(x, m, pc, out) },
        // SAFETY: as above, `Avx2` implies AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx2 => unsafe { rows_avx2(x, m, pc, out) },
        // SAFETY: portable code needs no CPU feature.
        _ => unsafe { rows::<Portable, { PORTABLE_TILE.0 }, { PORTABLE_TILE.1 }>(x, m, pc, out) },
    }
}

/// Where the kernel writes: the minima (`m1`, `m2`, `arg`), or every value
/// (`values`, when given; the minima are then not computed).
struct Out<'a> {
    m1: &'a mut [f32],
    m2: Option<&'a mut [f32]>,
    arg: &'a mut [u32],
    values: Option<&'a mut [f32]>,
}

/// # Safety
/// The CPU must have AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512(x: &[f32], m: usize, pc: &Packed, out: Out) {
    unsafe { rows::<Avx512, { AVX512_TILE.0 }, { AVX512_TILE.1 }>(x, m, pc, out) }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], m: usize, pc: &Packed, out: Out) {
    unsafe { rows::<Avx2, { AVX2_TILE.0 }, { AVX2_TILE.1 }>(x, m, pc, out) }
}

/// A vector of `W` f32 lanes and the few operations the kernel needs.
trait Lanes {
    type V: Copy;
    const W: usize;
    /// # Safety (all methods)
    /// The CPU must have the implementation's features; pointers must be
    /// valid for `W` values.
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a·b + c`, fused (rounded once).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `norms − 2·acc`: the values [`Lanes::fold`] compares.
    unsafe fn value(acc: Self::V, norms: *const f32) -> Self::V;
    /// Folds `v = norms − 2·acc` (lanes `j0..j0 + W`) into the running
    /// smallest `best` (index `idx`, the first seen among equals) and, with
    /// `SECOND`, the running second smallest `sec`, lane by lane.
    unsafe fn fold<const SECOND: bool>(
        acc: Self::V,
        norms: *const f32,
        j0: u32,
        best: *mut f32,
        sec: *mut f32,
        idx: *mut u32,
    );
}

/// Running minima of a tile of rows, [`PANEL`] lanes per row (lane `l`
/// sees the centroids `≡ l` mod [`PANEL`], in ascending order).
struct TileState<const MR: usize> {
    best: [[f32; PANEL]; MR],
    sec: [[f32; PANEL]; MR],
    idx: [[u32; PANEL]; MR],
}

impl<const MR: usize> TileState<MR> {
    #[inline(always)]
    fn new() -> Self {
        TileState {
            best: [[f32::INFINITY; PANEL]; MR],
            sec: [[f32::INFINITY; PANEL]; MR],
            idx: [[0; PANEL]; MR],
        }
    }

    /// Row `i`'s smallest value, its index (the lowest among equals) and
    /// the second smallest: the best lane's runner-up or another lane's
    /// smallest. (Inlined into each level's kernel, so compiled for its
    /// instruction set.)
    #[inline(always)]
    fn finish(&self, i: usize) -> (f32, u32, f32) {
        let (best, idx) = (&self.best[i], &self.idx[i]);
        let mut b = 0;
        for l in 1..PANEL {
            if best[l] < best[b] || (best[l] == best[b] && idx[l] < idx[b]) {
                b = l;
            }
        }
        let mut second = self.sec[i][b];
        for l in (0..PANEL).filter(|&l| l != b) {
            if best[l] < second {
                second = best[l];
            }
        }
        (best[b], idx[b], second)
    }
}

/// Depths per pass over a block of centroids: the block's values at `KC`
/// depths (48 centroids × 128 × 4 B = 24 KiB on AVX-512) stay in the L1
/// cache while every row tile of the call reads them; the tiles' running
/// sums wait in memory between passes (stored and reloaded exactly, so the
/// sums are those of one pass).
const KC: usize = 128;

/// The kernel: tiles of `MR` rows by `VT` vectors of centroids, blocked
/// over the depth by [`KC`].
///
/// # Safety
/// The CPU must have `L`'s features; `x` holds `m` rows of `pc.d`.
#[inline(always)]
unsafe fn rows<L: Lanes, const MR: usize, const VT: usize>(
    x: &[f32],
    m: usize,
    pc: &Packed,
    out: Out,
) {
    let d = pc.d;
    let Out {
        m1,
        mut m2,
        arg,
        values,
    } = out;
    let values = values.map(|v| v.as_mut_ptr());
    // centroids per full tile: one block of the packing
    let per_tile = VT * L::W;
    debug_assert_eq!(per_tile, pc.block());

    let (full, row_tiles) = (m / MR, m.div_ceil(MR));
    // the last rows, zero-padded to a whole tile
    let mut pad = Vec::new();
    if full < row_tiles {
        pad.extend_from_slice(&x[full * MR * d..m * d]);
        pad.resize(MR * d, 0.0);
    }
    let mut states: Vec<TileState<MR>> = (0..row_tiles).map(|_| TileState::new()).collect();
    // each row tile's running sums between passes
    let slot = MR * VT * L::W;
    let mut partial = vec![0f32; row_tiles * slot];
    let second = m2.is_some();
    let chunks = d.div_ceil(KC).max(1);
    for &(j0, width) in &pc.blocks {
        let vectors = width / L::W;
        for c in 0..chunks {
            let (t0, t1) = (c * KC, d.min((c + 1) * KC));
            let (first, last) = (c == 0, c + 1 == chunks);
            for (rt, st) in states.iter_mut().enumerate() {
                let xt = if rt < full {
                    x[rt * MR * d..].as_ptr()
                } else {
                    pad.as_ptr()
                };
                let sums = partial[rt * slot..].as_mut_ptr();
                // SAFETY: row tile rt's first row is inside `values` (m rows).
                let values = values.map(|v| (unsafe { v.add(rt * MR * pc.padded()) }, m - rt * MR));
                let pass = Pass {
                    t0,
                    t1,
                    first,
                    last,
                    sums,
                    values,
                };
                // SAFETY: `xt` holds MR rows of d; the block is packed,
                // `vectors ≤ VT` vectors wide; `sums` has room for MR·VT
                // vectors.
                unsafe {
                    macro_rules! call {
                        ($v:expr, $s:expr) => {
                            tile::<L, MR, { $v }, $s>(xt, pc, j0, pass, st)
                        };
                    }
                    match (vectors, second) {
                        (1, true) => call!(1, true),
                        (1, false) => call!(1, false),
                        (2, true) => call!(2, true),
                        (2, false) => call!(2, false),
                        (_, true) => call!(VT, true),
                        (_, false) => call!(VT, false),
                    }
                }
            }
        }
    }
    if values.is_some() {
        return;
    }
    for (rt, st) in states.iter().enumerate() {
        for i in 0..MR.min(m - rt * MR) {
            let (b, j, s) = st.finish(i);
            let r = rt * MR + i;
            m1[r] = b;
            arg[r] = j;
            if let Some(m2) = m2.as_deref_mut() {
                m2[r] = s;
            }
        }
    }
}

/// One pass of [`tile`] over the depths `t0..t1`: from zero (`first`) or
/// from the sums left at `sums`; at the end (`last`) folded into the state,
/// or, with `values` (the tile's first output row and how many rows of the
/// tile are real), written out as values; else left at `sums`.
#[derive(Clone, Copy)]
struct Pass {
    t0: usize,
    t1: usize,
    first: bool,
    last: bool,
    sums: *mut f32,
    values: Option<(*mut f32, usize)>,
}

/// `MR` rows (at `xt`, `d` apart) by the `V·W` centroids from `j0` (one
/// block) over the depths of `pass`: products in registers, then folded
/// into `st` after the last depth.
///
/// # Safety
/// The CPU must have `L`'s features; `xt` holds `MR` rows of `pc.d`; the
/// centroids `j0..j0 + V·W` are packed and inside one block; `W` divides
/// [`PANEL`]; `pass.sums` holds `MR·V` vectors.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register tiles read best as indices
unsafe fn tile<L: Lanes, const MR: usize, const V: usize, const SECOND: bool>(
    xt: *const f32,
    pc: &Packed,
    j0: usize,
    pass: Pass,
    st: &mut TileState<MR>,
) {
    let d = pc.d;
    let base = pc.lines.as_ptr() as *const f32;
    // vector h covers centroids j0 + h·W ..
    let col: [(*const f32, usize); V] = std::array::from_fn(|h| {
        let (at, stride) = pc.at(j0 + h * L::W);
        // SAFETY: the tile's centroids are packed (the caller's precondition).
        (unsafe { base.add(at) }, stride)
    });
    let mut acc = [[unsafe { L::zero() }; V]; MR];
    if !pass.first {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, a) in row.iter_mut().enumerate() {
                // SAFETY: `sums` holds MR·V vectors.
                *a = unsafe { L::load(pass.sums.add((i * V + h) * L::W)) };
            }
        }
    }
    for t in pass.t0..pass.t1 {
        // SAFETY: depth t of the tile's centroids is inside `pc.lines`; x
        // value (i, t) inside the MR×d tile.
        unsafe {
            let b: [L::V; V] = std::array::from_fn(|h| L::load(col[h].0.add(t * col[h].1)));
            for i in 0..MR {
                let a = L::splat(*xt.add(i * d + t));
                for h in 0..V {
                    acc[i][h] = L::fma(a, b[h], acc[i][h]);
                }
            }
        }
    }
    if !pass.last {
        for (i, row) in acc.iter().enumerate() {
            for (h, &a) in row.iter().enumerate() {
                // SAFETY: as for the loads above.
                unsafe { L::store(pass.sums.add((i * V + h) * L::W), a) };
            }
        }
        return;
    }
    let norms = pc.norms.as_ptr();
    if let Some((out, real)) = pass.values {
        for h in 0..V {
            let j = j0 + h * L::W;
            // a constant trip count keeps `acc` in registers
            for i in 0..MR {
                if i < real {
                    // SAFETY: values j..j + W of the norms and of output
                    // row i (a real row, `padded` long) exist.
                    unsafe {
                        let v = L::value(acc[i][h], norms.add(j));
                        L::store(out.add(i * pc.padded() + j), v);
                    }
                }
            }
        }
        return;
    }
    for h in 0..V {
        let j = j0 + h * L::W;
        let l = j % PANEL;
        for i in 0..MR {
            // SAFETY: lanes l..l + W of row i's state and of the norms'
            // values j..j + W exist (W divides PANEL).
            unsafe {
                L::fold::<SECOND>(
                    acc[i][h],
                    norms.add(j),
                    j as u32,
                    st.best[i].as_mut_ptr().add(l),
                    st.sec[i].as_mut_ptr().add(l),
                    st.idx[i].as_mut_ptr().add(l),
                );
            }
        }
    }
}

/// The element-wise methods of [`Lanes`] for an x86 vector type: each one
/// or two intrinsics (`setzero`, `loadu`, `set1`, `storeu`, `fmadd`, `sub`
/// and `add`).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_lanes {
    ($zero:ident, $load:ident, $splat:ident, $store:ident, $fma:ident, $sub:ident, $add:ident) => {
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            unsafe { std::arch::x86_64::$zero() }
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            unsafe { std::arch::x86_64::$load(p) }
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self::V {
            unsafe { std::arch::x86_64::$splat(v) }
        }

        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            unsafe { std::arch::x86_64::$store(p, v) }
        }

        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::$fma(a, b, c) }
        }

        #[inline(always)]
        unsafe fn value(acc: Self::V, norms: *const f32) -> Self::V {
            use std::arch::x86_64::*;
            unsafe { $sub($load(norms), $add(acc, acc)) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type V = std::arch::x86_64::__m512;
    const W: usize = 16;

    x86_lanes!(
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_sub_ps,
        _mm512_add_ps
    );

    #[inline(always)]
    unsafe fn fold<const SECOND: bool>(
        acc: Self::V,
        norms: *const f32,
        j0: u32,
        best: *mut f32,
        sec: *mut f32,
        idx: *mut u32,
    ) {
        use std::arch::x86_64::*;
        unsafe {
            let v = Self::value(acc, norms);
            let b = _mm512_loadu_ps(best);
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, b);
            if SECOND {
                // v < sec ? v : sec, then the old best where v is the new one
                let s = _mm512_min_ps(v, _mm512_loadu_ps(sec));
                _mm512_storeu_ps(sec, _mm512_mask_blend_ps(lt, s, b));
            }
            _mm512_storeu_ps(best, _mm512_mask_blend_ps(lt, b, v));
            let lanes = _mm512_add_epi32(
                _mm512_set1_epi32(j0 as i32),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            );
            let old = _mm512_loadu_si512(idx as *const _);
            _mm512_storeu_si512(idx as *mut _, _mm512_mask_blend_epi32(lt, old, lanes));
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    type V = std::arch::x86_64::__m256;
    const W: usize = 8;

    x86_lanes!(
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_sub_ps,
        _mm256_add_ps
    );

    #[inline(always)]
    unsafe fn fold<const SECOND: bool>(
        acc: Self::V,
        norms: *const f32,
        j0: u32,
        best: *mut f32,
        sec: *mut f32,
        idx: *mut u32,
    ) {
        use std::arch::x86_64::*;
        unsafe {
            let v = Self::value(acc, norms);
            let b = _mm256_loadu_ps(best);
            let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(v, b);
            if SECOND {
                let s = _mm256_min_ps(v, _mm256_loadu_ps(sec));
                _mm256_storeu_ps(sec, _mm256_blendv_ps(s, b, lt));
            }
            _mm256_storeu_ps(best, _mm256_blendv_ps(b, v, lt));
            let lanes = _mm256_add_epi32(
                _mm256_set1_epi32(j0 as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            let old = _mm256_loadu_si256(idx as *const _);
            let ltm = _mm256_castps_si256(lt);
            _mm256_storeu_si256(idx as *mut _, _mm256_blendv_epi8(old, lanes, ltm));
        }
    }
}

/// Portable lanes: 4 plain floats with `mul_add` (a fused multiply-add in
/// hardware where the target has one, exactly rounded in software elsewhere).
struct Portable;

impl Lanes for Portable {
    type V = [f32; 4];
    const W: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 4]
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { std::array::from_fn(|l| *p.add(l)) }
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        [v; 4]
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        for (l, &x) in v.iter().enumerate() {
            unsafe { *p.add(l) = x };
        }
    }

    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }

    #[inline(always)]
    unsafe fn value(acc: Self::V, norms: *const f32) -> Self::V {
        std::array::from_fn(|l| unsafe { *norms.add(l) } - (acc[l] + acc[l]))
    }

    #[inline(always)]
    unsafe fn fold<const SECOND: bool>(
        acc: Self::V,
        norms: *const f32,
        j0: u32,
        best: *mut f32,
        sec: *mut f32,
        idx: *mut u32,
    ) {
        for (l, &v) in unsafe { Self::value(acc, norms) }.iter().enumerate() {
            unsafe {
                let (b, s) = (&mut *best.add(l), &mut *sec.add(l));
                let lt = v < *b;
                if SECOND {
                    let m = if v < *s { v } else { *s };
                    *s = if lt { *b } else { m };
                }
                if lt {
                    *b = v;
                    *idx.add(l) = j0 + l as u32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The defined dot product: one fused multiply-add per term, in order.
    fn dot_in_order(x: &[f32], c: &[f32]) -> f32 {
        x.iter().zip(c).fold(0f32, |s, (&a, &b)| a.mul_add(b, s))
    }

    /// (smallest, its lowest index, second smallest) by a plain scan.
    fn scan(x: &[f32], c: &[f32], cn: &[f32], d: usize) -> (f32, u32, f32) {
        let (mut b1, mut j1, mut b2) = (f32::INFINITY, 0u32, f32::INFINITY);
        for (j, &n) in cn.iter().enumerate() {
            let dot = dot_in_order(x, &c[j * d..(j + 1) * d]);
            let v = n - 2.0 * dot;
            if v < b1 {
                b2 = b1;
                b1 = v;
                j1 = j as u32;
            } else if v < b2 {
                b2 = v;
            }
        }
        (b1, j1, b2)
    }

    fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    fn check_all_levels(x: &[f32], m: usize, c: &[f32], d: usize) {
        let k = c.len() / d;
        let cn: Vec<f32> = c.chunks(d).map(|r| dot_in_order(r, r)).collect();
        for level in CpuLevel::available() {
            let pc = Packed::for_level(c, &cn, d, level);
            let (mut m1, mut m2, mut arg) = (vec![0f32; m], vec![0f32; m], vec![0u32; m]);
            argmin_rows(x, m, &pc, &mut m1, Some(&mut m2), &mut arg);
            for i in 0..m {
                let want = scan(&x[i * d..(i + 1) * d], c, &cn, d);
                let got = (m1[i], arg[i], m2[i]);
                assert_eq!(
                    (got.0.to_bits(), got.1, got.2.to_bits()),
                    (want.0.to_bits(), want.1, want.2.to_bits()),
                    "{level:?} row {i} of {m}, k {k}, d {d}: {got:?} vs {want:?}"
                );
            }
            // without the second smallest: the same smallest and index
            let (mut n1, mut narg) = (vec![0f32; m], vec![0u32; m]);
            argmin_rows(x, m, &pc, &mut n1, None, &mut narg);
            assert_eq!(narg, arg);
            assert!(n1.iter().zip(&m1).all(|(a, b)| a.to_bits() == b.to_bits()));
            // every value: the same bits, and the same three results
            let kp = pc.padded();
            let mut values = vec![0f32; m * kp];
            values_rows(x, m, &pc, &mut values);
            for i in 0..m {
                let row = &values[i * kp..(i + 1) * kp];
                assert!(row[k..].iter().all(|v| *v == f32::INFINITY));
                for j in 0..k {
                    let dot = dot_in_order(&x[i * d..(i + 1) * d], &c[j * d..(j + 1) * d]);
                    assert_eq!(row[j].to_bits(), (cn[j] - 2.0 * dot).to_bits());
                }
                let (b, a, s) = smallest_two(&row[..k]);
                assert_eq!(
                    (b.to_bits(), a, s.to_bits()),
                    (m1[i].to_bits(), arg[i], m2[i].to_bits())
                );
            }
        }
    }

    #[test]
    fn every_level_gives_the_in_order_scan_bit_for_bit() {
        let mut rng = Rng::new(7);
        // tile remainders in rows, panels, vectors and odd depths
        for &(m, k, d) in &[
            (1, 1, 1),
            (5, 3, 7),
            (13, 17, 33),
            (25, 16, 16),
            (12, 32, 384),
            (37, 100, 40),
            (7, 48, 5),
            (30, 129, 3),
            (9, 200, 20),
            (7, 70, 300),
            (13, 64, 129),
            (5, 113, 9),
            (4, 170, 3),
        ] {
            let x = random(m * d, &mut rng);
            let c = random(k * d, &mut rng);
            check_all_levels(&x, m, &c, d);
        }
    }

    #[test]
    fn panels_give_the_in_order_scan_at_every_level_in_any_order() {
        let mut rng = Rng::new(12);
        for &(m, k, d) in &[(11, 40, 33), (3, 100, 384), (20, 16, 5), (9, 129, 70)] {
            let x = random(m * d, &mut rng);
            let mut c = random(k * d, &mut rng);
            // a copy of centroid 1 in the last panel: ties across panels
            let one = c[d..2 * d].to_vec();
            c[(k - 1) * d..].copy_from_slice(&one);
            let cn: Vec<f32> = c.chunks(d).map(|r| dot_in_order(r, r)).collect();
            for level in CpuLevel::available() {
                let pc = Packed::for_level(&c, &cn, d, level);
                // every row against every panel, panels in descending
                // order, runs of 1 to 13 rows
                let mut pairs: Vec<(u32, u32)> = Vec::new();
                for p in (0..pc.padded() / PANEL).rev() {
                    pairs.extend((0..m as u32).map(|r| (r, (p * PANEL) as u32)));
                }
                let (mut m1, mut arg) = (vec![f32::INFINITY; m], vec![u32::MAX; m]);
                argmin_panels(&x, &pc, &pairs, &mut m1, &mut arg);
                for i in 0..m {
                    let (b, j, _) = scan(&x[i * d..(i + 1) * d], &c, &cn, d);
                    assert_eq!(
                        (m1[i].to_bits(), arg[i]),
                        (b.to_bits(), j),
                        "{level:?} row {i}"
                    );
                }
                // a row equal to centroid 1 finds 1, not its copy
                let (mut t1, mut targ) = ([f32::INFINITY], [u32::MAX]);
                let pairs: Vec<(u32, u32)> = (0..pc.padded() / PANEL)
                    .rev()
                    .map(|p| (0, (p * PANEL) as u32))
                    .collect();
                argmin_panels(&one, &pc, &pairs, &mut t1, &mut targ);
                assert_eq!(targ[0], 1);
            }
        }
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_count_as_second() {
        let d = 4;
        // centroids 3, 20 and 35 equal: the nearest to a copy of them
        let mut rng = Rng::new(3);
        let mut c = random(40 * d, &mut rng);
        let row: Vec<f32> = c[3 * d..4 * d].to_vec();
        for j in [20, 35] {
            c[j * d..(j + 1) * d].copy_from_slice(&row);
        }
        let x: Vec<f32> = row.iter().map(|v| v * 0.999).collect();
        check_all_levels(&x, 1, &c, d);
        let cn: Vec<f32> = c.chunks(d).map(|r| dot_in_order(r, r)).collect();
        let pc = Packed::new(&c, &cn, d);
        let (mut m1, mut m2, mut arg) = ([0f32], [0f32], [0u32]);
        argmin_rows(&x, 1, &pc, &mut m1, Some(&mut m2), &mut arg);
        assert_eq!(arg[0], 3);
        assert_eq!(m1[0].to_bits(), m2[0].to_bits());
    }

    #[test]
    fn one_centroid_has_no_second() {
        let c = [1.0f32, 2.0];
        let pc = Packed::new(&c, &[5.0], 2);
        let (mut m1, mut m2, mut arg) = ([0f32; 2], [0f32; 2], [9u32; 2]);
        argmin_rows(
            &[1.0, 0.0, 0.0, 1.0],
            2,
            &pc,
            &mut m1,
            Some(&mut m2),
            &mut arg,
        );
        assert_eq!(arg, [0, 0]);
        assert_eq!(m1, [3.0, 1.0]);
        assert_eq!(m2, [f32::INFINITY; 2]);
    }
}
