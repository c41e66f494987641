//! Lloyd's k-means with k-means++ initialisation, restarts and an optional
//! spherical (cosine) mode.
//!
//! The assignment step is exact Lloyd with Yinyang-style bounds: centroids
//! are put in groups of about [`GROUP_SIZE`] nearby ones, each point keeps an
//! upper bound on its distance to its centroid and a lower bound per group,
//! and a point or a group is skipped only when the bounds prove it cannot
//! change the label. The update step keeps running per-cluster sums moved by
//! the points that changed cluster.
//!
//! Determinism: for a given seed the result is the same bit for bit whatever
//! the number of threads. Distances are computed in fixed row blocks, every
//! sum over points is taken in a fixed order (cluster sums built in index
//! order, then moved by the points that changed cluster in index order;
//! potentials per block then over blocks in order), and all random draws
//! happen on one thread.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{check_finite, check_matrix, Error, Result};
use crate::linalg::{
    checked_sq_norms, nearest, normalize_rows, row_sq_norms, sq_dist, Metric, ROW_BLOCK,
};
use crate::rng::Rng;
use crate::simd::{accumulate_rows, add_row, argmin2, column_argmin2, sub_row};

/// How the initial centroids are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Greedy k-means++ (2 + ln k candidates per step, as scikit-learn).
    KMeansPlusPlus,
    /// k distinct rows drawn uniformly.
    Random,
    /// These k×d centroids (row-major). Runs once: `n_init` is ignored.
    Given(Vec<f32>),
}

/// Parameters of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    /// Number of clusters (1 ≤ k ≤ n).
    pub k: usize,
    /// Restarts; the run with the lowest inertia is kept.
    pub n_init: usize,
    /// Maximum Lloyd iterations per run (0 returns the initial centroids).
    pub max_iter: usize,
    /// Stop when the summed squared centroid shift is at most
    /// `tol × mean per-feature variance of x` (scikit-learn's rule).
    pub tol: f64,
    /// Seed of the random generator.
    pub seed: u64,
    /// Initialisation.
    pub init: Init,
    /// Cosine k-means: rows are normalised and centroids kept at unit norm.
    pub spherical: bool,
    /// Candidates drawn per k-means++ centre, the one that lowers the
    /// potential most being kept. `None`: 2 + ⌊ln k⌋ (greedy k-means++, as
    /// scikit-learn); `Some(1)`: the original k-means++ (one draw per centre,
    /// as faiss), about (2 + ln k)× cheaper for a slightly worse start.
    pub n_local_trials: Option<usize>,
}

impl KMeansParams {
    /// The defaults (`n_init=1, max_iter=300, tol=1e-4, seed=0, k-means++`).
    pub fn new(k: usize) -> Self {
        KMeansParams {
            k,
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            init: Init::KMeansPlusPlus,
            spherical: false,
            n_local_trials: None,
        }
    }
}

/// The outcome of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// k×d centroids, row-major.
    pub centroids: Vec<f32>,
    /// The nearest centroid of each point.
    pub labels: Vec<u32>,
    /// Sum of squared distances of points to their centroid (exact, f64).
    pub inertia: f64,
    /// Lloyd iterations run by the kept restart.
    pub n_iter: usize,
    /// Whether the kept restart met the stopping rule before `max_iter`.
    pub converged: bool,
}

/// Runs k-means on the n×d row-major matrix `x`.
///
/// Parallel in the current rayon pool; see the module docs for determinism.
pub fn kmeans(x: &[f32], n: usize, d: usize, params: &KMeansParams) -> Result<KMeansResult> {
    let side_by_side = parallel_restarts(n, d, params.k, params.n_init);
    kmeans_with(x, n, d, params, side_by_side)
}

/// [`kmeans`], with its restarts side by side or not (same results).
fn kmeans_with(
    x: &[f32],
    n: usize,
    d: usize,
    params: &KMeansParams,
    side_by_side: bool,
) -> Result<KMeansResult> {
    let k = params.k;
    check_points(x, n, d, k, params.n_local_trials)?;
    if params.n_init == 0 {
        return Err(Error::invalid("n_init", "must be at least 1"));
    }
    if !(params.tol.is_finite() && params.tol >= 0.0) {
        return Err(Error::invalid("tol", "must be a finite number ≥ 0"));
    }
    check_finite("x", x, d)?;
    let x: Cow<[f32]> = if params.spherical {
        let mut owned = x.to_vec();
        if let Some(row) = normalize_rows(&mut owned, d) {
            return Err(Error::invalid(
                "x",
                format!("row {row} has zero norm; spherical k-means needs non-zero rows"),
            ));
        }
        Cow::Owned(owned)
    } else {
        Cow::Borrowed(x)
    };
    let given = match &params.init {
        Init::Given(c) => {
            check_matrix("init", c, k, d)?;
            check_finite("init", c, d)?;
            let mut c = c.clone();
            if params.spherical {
                if let Some(row) = normalize_rows(&mut c, d) {
                    return Err(Error::invalid(
                        "init",
                        format!("row {row} has zero norm; spherical k-means needs non-zero rows"),
                    ));
                }
            }
            Some(c)
        }
        _ => None,
    };

    let x = &*x;
    let x_norms = row_sq_norms(x, d);
    let tol = params.tol * mean_feature_variance(x, n, d);
    let mut rng = Rng::new(params.seed);
    let runs = if given.is_some() { 1 } else { params.n_init };
    // Bounds pay only when a step is long enough to amortise their
    // bookkeeping (same results either way).
    let bounded = n.saturating_mul(d).saturating_mul(k) >= BOUNDED_MIN_WORK;
    // The seeds of every restart first, in order: they alone draw from `rng`,
    // so the restarts' Lloyd runs are independent of each other.
    let inits: Vec<Vec<f32>> = (0..runs)
        .map(|_| match (&params.init, &given) {
            (_, Some(c)) => c.clone(),
            (Init::Random, _) => random_init(x, n, d, k, &mut rng),
            _ => gather_rows(
                x,
                d,
                &kmeans_plus_plus(x, &x_norms, n, d, k, params.n_local_trials, &mut rng, true),
            ),
        })
        .collect();
    let run = |init: Vec<f32>| {
        lloyd(
            x,
            &x_norms,
            n,
            d,
            init,
            params.max_iter,
            tol,
            params.spherical,
            bounded,
        )
    };
    // Small problems run their restarts side by side (a step is too short to
    // split well); large ones one after the other, each step parallel, so that
    // only one restart's buffers are alive at a time. Same results either way.
    let runs: Vec<KMeansResult> = if side_by_side && runs > 1 {
        inits.into_par_iter().map(run).collect()
    } else {
        inits.into_iter().map(run).collect()
    };
    // the first restart of least inertia, as when they ran one by one
    runs.into_iter()
        .reduce(|best, r| if r.inertia < best.inertia { r } else { best })
        .ok_or_else(|| Error::invalid("n_init", "must be at least 1"))
}

/// Whether [`kmeans`] runs its `runs` restarts in parallel: several, on a
/// problem whose steps are too small to split (n·d·k below
/// [`crate::parallel::SERIAL_WORK`]).
pub fn parallel_restarts(n: usize, d: usize, k: usize, runs: usize) -> bool {
    runs > 1 && n.saturating_mul(d).saturating_mul(k) < crate::parallel::SERIAL_WORK
}

/// The checks shared by [`kmeans`] and [`kmeans_plusplus`] (finiteness
/// aside).
fn check_points(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    n_local_trials: Option<usize>,
) -> Result<()> {
    check_matrix("x", x, n, d)?;
    if n == 0 {
        return Err(Error::invalid("x", "must have at least one row"));
    }
    if d == 0 {
        return Err(Error::invalid("x", "must have at least one column"));
    }
    if k == 0 {
        return Err(Error::invalid("k", "must be at least 1"));
    }
    if k > n {
        return Err(Error::invalid(
            "k",
            format!("k={k} exceeds the number of points ({n})"),
        ));
    }
    if n_local_trials == Some(0) {
        return Err(Error::invalid("n_local_trials", "must be at least 1"));
    }
    Ok(())
}

/// The k-means++ seeds of the n×d row-major matrix `x`: the indices of the
/// `k` chosen rows, in the order chosen (`n_local_trials` as in
/// [`KMeansParams`]). They are the initial centroids of [`kmeans`] with the
/// same seed and `n_init = 1` (without `spherical`), without its assignment
/// of the points.
pub fn kmeans_plusplus(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    seed: u64,
    n_local_trials: Option<usize>,
) -> Result<Vec<usize>> {
    check_points(x, n, d, k, n_local_trials)?;
    let x_norms = checked_sq_norms("x", x, d)?;
    let mut rng = Rng::new(seed);
    Ok(kmeans_plus_plus(
        x,
        &x_norms,
        n,
        d,
        k,
        n_local_trials,
        &mut rng,
        true,
    ))
}

/// The rows `idx` of the n×d matrix `x`, in that order.
fn gather_rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Mean over features of the per-feature variance (f64, fixed order).
fn mean_feature_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0f64; d];
    for row in x.chunks(d) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            let t = v as f64 - m;
            *s += t * t;
        }
    }
    var.iter().sum::<f64>() / (n as f64 * d as f64)
}

fn random_init(x: &[f32], n: usize, d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    // Partial Fisher–Yates over the row indices: k distinct rows.
    let mut idx: Vec<usize> = (0..n).collect();
    let mut c = Vec::with_capacity(k * d);
    for i in 0..k {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
        c.extend_from_slice(&x[idx[i] * d..(idx[i] + 1) * d]);
    }
    c
}

/// Per-block sums of `v` (f64), one entry per [`ROW_BLOCK`] rows.
fn block_sums(v: &[f32]) -> Vec<f64> {
    v.par_chunks(ROW_BLOCK)
        .map(|b| b.iter().map(|&t| t as f64).sum())
        .collect()
}

/// The index `i` such that the running sum of `weights` first exceeds `r`,
/// located through the per-block sums; the last positive weight if rounding
/// runs past the end.
fn sample_index(weights: &[f32], sums: &[f64], r: f64) -> usize {
    let mut acc = 0.0;
    for (b, &s) in sums.iter().enumerate() {
        if acc + s > r {
            let start = b * ROW_BLOCK;
            for (i, &w) in weights[start..].iter().take(ROW_BLOCK).enumerate() {
                acc += w as f64;
                if acc > r {
                    return start + i;
                }
            }
        } else {
            acc += s;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// Relative bound on the error of a distance computed by expansion,
/// `‖x‖² − 2x·c + ‖c‖²` in f32 with a d ≤ ~4000 dot product: the computed
/// value is within `DIST_REL_ERR × (‖x‖² + ‖c‖²)` of the true squared
/// distance (the dot product's worst-case error is `d·2⁻²⁴·‖x‖‖c‖`, 2.3e-5
/// of `‖x‖‖c‖` at d = 384; this leaves ≥ 4× headroom at d = 384).
const DIST_REL_ERR: f64 = 1e-4;

/// [`DIST_REL_ERR`], raised for long rows: `4·d·2⁻²⁴` covers the worst-case
/// error of any summation order of a d-term f32 dot product with room to
/// spare (it passes 1e-4 at d ≈ 420).
fn dist_rel_err(d: usize) -> f64 {
    DIST_REL_ERR.max(4.0 * d as f64 * f64::powi(2.0, -24))
}

/// Whether no point of a block can get closer to any candidate than to its
/// current centre, proved by the triangle inequality with a margin for the
/// rounding error of the computed distances. When it holds, the unpruned
/// computation would leave every `min(closest, dist)` of the block equal to
/// `closest`, so the block can be skipped without changing any result.
#[allow(clippy::too_many_arguments)]
fn block_prunable(
    closest: &[f32],
    assign: &[u32],
    norms: &[f32],
    center_norms: &[f32],
    cand_norms: &[f32],
    cc: &[f32],
    centers: usize,
) -> bool {
    let trials = cand_norms.len();
    closest
        .iter()
        .zip(assign)
        .zip(norms)
        .all(|((&c, &a), &xn)| {
            let (c, xn, an) = (c as f64, xn as f64, center_norms[a as usize] as f64);
            // ‖x − a‖ (true) is at most this.
            let up = (c + DIST_REL_ERR * (xn + an)).sqrt();
            (0..trials).all(|t| {
                let cn = cand_norms[t] as f64;
                // ‖cand − a‖ (true) is at least this (cc was computed like
                // any other distance, so it carries the same error bound).
                let cc2 = cc[t * centers + a as usize] as f64 - DIST_REL_ERR * (cn + an);
                let lo_tri = cc2.max(0.0).sqrt() - up;
                // | ‖x‖ − ‖cand‖ | with the norms' own rounding.
                let (xl, xh) = ((xn * (1.0 - 1e-6)).sqrt(), (xn * (1.0 + 1e-6)).sqrt());
                let (cl, ch) = ((cn * (1.0 - 1e-6)).sqrt(), (cn * (1.0 + 1e-6)).sqrt());
                let lo_norm = (xl - ch).max(cl - xh);
                let lo = lo_tri.max(lo_norm);
                lo > 0.0 && lo * lo * (1.0 - 1e-9) >= c + DIST_REL_ERR * (xn + cn)
            })
        })
}

/// Blocks skipped by k-means++ pruning (tests only).
#[cfg(test)]
static SKIPPED_BLOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Greedy k-means++ (Arthur & Vassilvitskii, with scikit-learn's
/// 2 + ⌊ln k⌋ local trials per centre).
///
/// Per centre: one pass over the data computes every candidate's squared
/// distances by blocks (each row read once, scored against every candidate
/// by [`crate::kernels::block_dots`]) and the
/// candidates' potentials per block; a second pass folds the chosen
/// candidate into `closest`. Blocks that the triangle inequality proves
/// unaffected by every candidate are skipped (`prune`); this never changes
/// the result (see [`block_prunable`]).
#[allow(clippy::too_many_arguments)]
fn kmeans_plus_plus(
    x: &[f32],
    x_norms: &[f32],
    n: usize,
    d: usize,
    k: usize,
    n_local_trials: Option<usize>,
    rng: &mut Rng,
    prune: bool,
) -> Vec<usize> {
    let trials = n_local_trials.unwrap_or(2 + (k as f64).ln().floor() as usize);
    let mut centers = Vec::with_capacity(k * d);
    let mut center_norms = Vec::with_capacity(k);
    let first = rng.below(n);
    let mut chosen = Vec::with_capacity(k);
    chosen.push(first);
    centers.extend_from_slice(&x[first * d..(first + 1) * d]);
    center_norms.push(x_norms[first]);
    let mut closest = vec![0f32; n];
    // The index of a centre at distance `closest` (for the bounds).
    let mut assign = vec![0u32; n];
    nearest(
        x,
        x_norms,
        &centers,
        &x_norms[first..first + 1],
        d,
        Metric::L2,
        &mut assign,
        &mut closest,
    );
    closest[first] = 0.0;
    let mut sums = block_sums(&closest);
    let n_blocks = sums.len();
    let mut dist = vec![0f32; n * trials];
    let mut cand = vec![0f32; trials * d];
    let mut cand_norms = vec![0f32; trials];
    let mut cand_idx = vec![0usize; trials];
    let mut cc = Vec::new();
    let mut has_cand = vec![false; n_blocks];
    let mut computed = vec![true; n_blocks];
    for step in 1..k {
        let pot: f64 = sums.iter().sum();
        for t in 0..trials {
            let i = if pot > 0.0 {
                sample_index(&closest, &sums, rng.next_f64() * pot)
            } else {
                rng.below(n)
            };
            cand_idx[t] = i;
            cand[t * d..(t + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
            cand_norms[t] = x_norms[i];
        }
        if prune {
            // Squared candidate–centre distances, computed like all others.
            cc.resize(trials * step, 0.0);
            crate::linalg::dot_nt(&cand, trials, &centers, step, d, &mut cc);
            for t in 0..trials {
                for (j, v) in cc[t * step..(t + 1) * step].iter_mut().enumerate() {
                    *v = (cand_norms[t] - 2.0 * *v + center_norms[j]).max(0.0);
                }
            }
        }
        has_cand.iter_mut().for_each(|h| *h = false);
        for &i in &cand_idx {
            has_cand[i / ROW_BLOCK] = true;
        }
        // Pass 1: per block, the candidates' squared distances (kept for
        // pass 2) and the candidates' potentials.
        let (cc_ref, cand_ref, cn_ref, cnorm_ref) = (&cc, &cand, &cand_norms, &center_norms);
        let (cidx, hc) = (&cand_idx, &has_cand);
        let block_pots: Vec<(bool, Vec<f64>)> = x
            .par_chunks(ROW_BLOCK * d)
            .zip(dist.par_chunks_mut(ROW_BLOCK * trials))
            .zip(closest.par_chunks(ROW_BLOCK))
            .zip(assign.par_chunks(ROW_BLOCK))
            .enumerate()
            .map(|(b, (((xb, db), cb), ab))| {
                let rows = cb.len();
                let base = b * ROW_BLOCK;
                let nb = &x_norms[base..base + rows];
                let mut p = vec![0f64; trials];
                if prune && !hc[b] && block_prunable(cb, ab, nb, cnorm_ref, cn_ref, cc_ref, step) {
                    for &c in cb {
                        for v in p.iter_mut() {
                            *v += c as f64;
                        }
                    }
                    #[cfg(test)]
                    SKIPPED_BLOCKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return (false, p);
                }
                crate::kernels::block_dots(xb, rows, cand_ref, trials, d, db);
                for r in 0..rows {
                    let (xn, c) = (nb[r], cb[r]);
                    let dr = &mut db[r * trials..(r + 1) * trials];
                    for t in 0..trials {
                        let v = if base + r == cidx[t] {
                            0.0
                        } else {
                            (xn - 2.0 * dr[t] + cn_ref[t]).max(0.0)
                        };
                        dr[t] = v;
                        p[t] += c.min(v) as f64;
                    }
                }
                (true, p)
            })
            .collect();
        let mut best = 0;
        let mut best_pot = f64::INFINITY;
        for t in 0..trials {
            let p: f64 = block_pots.iter().map(|b| b.1[t]).sum();
            if p < best_pot {
                best_pot = p;
                best = t;
            }
        }
        for (c, bp) in computed.iter_mut().zip(&block_pots) {
            *c = bp.0;
        }
        // Pass 2: fold the chosen candidate into `closest` (computed blocks
        // only: a skipped block is unchanged) and refresh the block sums.
        let comp = &computed;
        closest
            .par_chunks_mut(ROW_BLOCK)
            .zip(assign.par_chunks_mut(ROW_BLOCK))
            .zip(dist.par_chunks(ROW_BLOCK * trials))
            .zip(sums.par_iter_mut())
            .enumerate()
            .for_each(|(b, (((cb, ab), db), s))| {
                if !comp[b] {
                    return;
                }
                for (r, (c, a)) in cb.iter_mut().zip(ab.iter_mut()).enumerate() {
                    let v = db[r * trials + best];
                    if v < *c {
                        *c = v;
                        *a = step as u32;
                    }
                }
                *s = cb.iter().map(|&t| t as f64).sum();
            });
        centers.extend_from_slice(&cand[best * d..(best + 1) * d]);
        center_norms.push(cand_norms[best]);
        chosen.push(cand_idx[best]);
    }
    chosen
}

/// Per-group products run by the bounded assignment (tests only).
#[cfg(test)]
static GROUP_PRODUCTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Smallest n·d·k for which Lloyd keeps bounds (below, plain steps are
/// cheaper than the bookkeeping).
const BOUNDED_MIN_WORK: usize = 1 << 20;

/// Target number of centroids per group of the grouped bounds.
const GROUP_SIZE: usize = 16;

/// A partition of the centroids into groups of nearby centroids (Yinyang
/// k-means): each point keeps one lower bound per group instead of one per
/// centroid (Elkan) or one in all (Hamerly).
struct Groups {
    /// Original centroid indices, group by group, ascending within a group.
    order: Vec<u32>,
    /// Group `g` is `order[start[g]..start[g + 1]]`.
    start: Vec<usize>,
    /// The group of each centroid (original index).
    of: Vec<u32>,
}

impl Groups {
    fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// Groups of about [`GROUP_SIZE`] centroids from a few Lloyd steps over
    /// the centroids themselves (deterministic: evenly spaced starting
    /// centroids, sums in index order). At most `d / 4` groups, so the
    /// bounds take at most a quarter of the memory of the points.
    fn new(c: &[f32], k: usize, d: usize) -> Groups {
        let t = k.div_ceil(GROUP_SIZE).min((d / 4).max(1)).max(1);
        let mut of = vec![0u32; k];
        if t > 1 {
            let mut gc: Vec<f32> = (0..t)
                .flat_map(|g| c[g * k / t * d..(g * k / t + 1) * d].iter().copied())
                .collect();
            let mut dots = vec![0f32; k * t];
            for _ in 0..5 {
                let gn = row_sq_norms(&gc, d);
                crate::linalg::dot_nt(c, k, &gc, t, d, &mut dots);
                for (j, o) in of.iter_mut().enumerate() {
                    *o = argmin2(&gn, &dots[j * t..(j + 1) * t]).0 as u32;
                }
                let mut sums = vec![0f64; t * d];
                let mut counts = vec![0usize; t];
                for (j, &g) in of.iter().enumerate() {
                    counts[g as usize] += 1;
                    let s = &mut sums[g as usize * d..(g as usize + 1) * d];
                    for (a, &v) in s.iter_mut().zip(&c[j * d..(j + 1) * d]) {
                        *a += v as f64;
                    }
                }
                for g in (0..t).filter(|&g| counts[g] > 0) {
                    let inv = 1.0 / counts[g] as f64;
                    for (o, &s) in gc[g * d..(g + 1) * d].iter_mut().zip(&sums[g * d..]) {
                        *o = (s * inv) as f32;
                    }
                }
            }
        }
        // Drop empty groups and renumber.
        let mut counts = vec![0usize; t];
        of.iter().for_each(|&g| counts[g as usize] += 1);
        let mut renum = vec![0u32; t];
        let mut start = vec![0usize];
        for g in (0..t).filter(|&g| counts[g] > 0) {
            renum[g] = (start.len() - 1) as u32;
            start.push(start[start.len() - 1] + counts[g]);
        }
        of.iter_mut().for_each(|g| *g = renum[*g as usize]);
        let mut fill = start.clone();
        let mut order = vec![0u32; k];
        for (j, &g) in of.iter().enumerate() {
            order[fill[g as usize]] = j as u32;
            fill[g as usize] += 1;
        }
        Groups { order, start, of }
    }
}

/// Bounds of each point: `upper` ≥ its distance to its centroid; `lower`
/// (n × groups) ≤ its distance to every other centroid of each group.
struct Bounds {
    upper: Vec<f32>,
    lower: Vec<f32>,
}

/// The centroids of one iteration in group order, with what the bounded
/// assignment needs.
struct GroupedCentroids<'a> {
    /// Original order (for the distance to a point's own centroid), and
    /// squared norms.
    c: &'a [f32],
    c_norms: &'a [f32],
    /// Rows permuted into group order, and their squared norms.
    cp: Vec<f32>,
    cp_norms: Vec<f32>,
    groups: &'a Groups,
    /// Half the distance from each centroid to its nearest other one (a
    /// lower bound), original order; zeros when not computed.
    half_sep: Vec<f32>,
    /// How far each centroid moved in the last update (an upper bound), and
    /// the largest move in each group.
    drift: &'a [f64],
    group_drift: &'a [f64],
    c_max: f64,
}

/// Work buffers of one thread of [`assign_grouped`].
#[derive(Default)]
struct Scratch {
    need: Vec<u32>,
    per_group: Vec<Vec<u32>>,
    gathered: Vec<f32>,
    dots: Vec<f32>,
    dots_rows: Vec<f32>,
    best: Vec<(f32, u32)>,
    /// Each block row's position in `need` (`u32::MAX`: not needed).
    pos: Vec<u32>,
    cols: GroupScan,
    /// (row position in `need`, group, smallest, second smallest, original
    /// index of the smallest) for every group computed for a row.
    found: Vec<(u32, u32, f32, f32, u32)>,
}

/// Per row, the smallest value over one group of centroids, the second
/// smallest and the original index of the smallest.
#[derive(Default)]
struct GroupScan {
    m1: Vec<f32>,
    m2: Vec<f32>,
    arg: Vec<u32>,
}

impl GroupScan {
    /// Over group `g` of the centroids, for each of the `m` rows whose
    /// products with the group's centroids are the columns of `dots` (one
    /// row of `m` per centroid): the smallest value of `‖c‖² − 2x·c`, the
    /// second smallest and the original index of the smallest (the lowest
    /// among equals: a group's centroids are in ascending order), into
    /// `m1`, `m2` and `arg`.
    fn scan(&mut self, gc: &GroupedCentroids, g: usize, dots: &[f32], m: usize) {
        let (st, en) = (gc.groups.start[g], gc.groups.start[g + 1]);
        self.m1.resize(m, 0.0);
        self.m2.resize(m, 0.0);
        self.arg.resize(m, 0);
        column_argmin2(
            &gc.cp_norms[st..en],
            dots,
            &mut self.m1,
            &mut self.m2,
            &mut self.arg,
        );
        for a in &mut self.arg {
            *a = gc.groups.order[st + *a as usize];
        }
    }
}

/// Rows per block of the bounded assignment: larger than [`ROW_BLOCK`] so
/// that the rows needing one group make a product large enough to run at
/// full rate. Fixed, like every block size here.
const GROUP_BLOCK: usize = 256;

/// The assignment step with grouped (Yinyang) bounds, exact: a point keeps
/// its label when its bounds prove that no centroid is nearer, and a group
/// of centroids is skipped for a point when its bound proves none of them is
/// nearer, with a margin for the rounding of the computed distances; the
/// labels are those of the plain step up to exact float ties, which go to
/// the lowest index as there. With `full`, every point is compared with every
/// centroid and its bounds are set afresh. Otherwise the bounds are first
/// moved by the last update's drifts. Work is split in fixed row blocks; a
/// block's products are one GEMM per group over the points that need it.
/// `dists` gets the squared distance of the points that were compared.
/// Returns the number of point-centroid distances computed.
#[allow(clippy::too_many_arguments)]
fn assign_grouped(
    x: &[f32],
    x_norms: &[f32],
    d: usize,
    gc: &GroupedCentroids,
    full: bool,
    labels: &mut [u32],
    dists: &mut [f32],
    bounds: &mut Bounds,
) -> usize {
    let k = gc.cp_norms.len();
    let t = gc.groups.len();
    let parts: Vec<usize> = x
        .par_chunks(GROUP_BLOCK * d)
        .zip(labels.par_chunks_mut(GROUP_BLOCK))
        .zip(dists.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.upper.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.lower.par_chunks_mut(GROUP_BLOCK * t))
        .enumerate()
        .map_init(Scratch::default, |s, (b, ((((xb, lb), db), ub), lwb))| {
            let rows = lb.len();
            let base = b * GROUP_BLOCK;
            s.need.clear();
            s.per_group.resize_with(t, Vec::new);
            s.per_group.iter_mut().for_each(Vec::clear);
            let mut pairs_needed = 0usize;
            for r in 0..rows {
                if full {
                    s.need.push(r as u32);
                    continue;
                }
                let a = lb[r] as usize;
                let lw = &mut lwb[r * t..(r + 1) * t];
                let mut glb = f32::INFINITY;
                for (l, &gd) in lw.iter_mut().zip(gc.group_drift) {
                    *l = ((*l as f64 - gd).max(0.0) * (1.0 - 1e-6)) as f32;
                    glb = glb.min(*l);
                }
                let bound = glb.max(gc.half_sep[a]);
                let u = ((ub[r] as f64 + gc.drift[a]) * (1.0 + 1e-6)) as f32;
                ub[r] = u;
                if u <= bound {
                    continue;
                }
                // Tighten the upper bound to the current distance (computed
                // in f32 like every other distance, within the margin `e`).
                let xn = x_norms[base + r] as f64;
                let e = dist_rel_err(d) * (xn + gc.c_max);
                let dot = crate::simd::dot(&xb[r * d..(r + 1) * d], &gc.c[a * d..(a + 1) * d]);
                let computed = (xn + gc.c_norms[a] as f64 - 2.0 * dot as f64).max(0.0);
                let u = ((computed + 2.0 * e).sqrt() * (1.0 + 1e-6)) as f32;
                ub[r] = u;
                if u <= bound {
                    continue;
                }
                let own = gc.groups.of[a] as usize;
                for (g, &l) in lw.iter().enumerate() {
                    if l < u || g == own {
                        s.per_group[g].push(r as u32);
                        pairs_needed += gc.groups.start[g + 1] - gc.groups.start[g];
                    }
                }
                s.need.push(r as u32);
            }
            let m = s.need.len();
            if m == 0 {
                return 0;
            }
            s.best.clear();
            s.best.resize(m, (f32::INFINITY, u32::MAX));
            s.found.clear();
            s.pos.clear();
            s.pos.resize(rows, u32::MAX);
            for (p, &r) in s.need.iter().enumerate() {
                s.pos[r as usize] = p as u32;
            }
            let computed;
            if full || pairs_needed * 2 >= m * k {
                // Most groups are needed: one product of the rows with all
                // centroids, every group scanned.
                computed = m * k;
                let src: &[f32] = if m == rows {
                    xb
                } else {
                    s.gathered.clear();
                    for &r in &s.need {
                        let r = r as usize;
                        s.gathered.extend_from_slice(&xb[r * d..(r + 1) * d]);
                    }
                    &s.gathered
                };
                s.dots.resize(m * k, 0.0);
                crate::linalg::dot_nt_transposed(
                    src,
                    m,
                    &gc.cp,
                    k,
                    d,
                    &mut s.dots,
                    &mut s.dots_rows,
                );
                for g in 0..t {
                    let (st, en) = (gc.groups.start[g], gc.groups.start[g + 1]);
                    s.cols.scan(gc, g, &s.dots[st * m..en * m], m);
                    for p in 0..m {
                        let c = &s.cols;
                        let found = (p as u32, g as u32, c.m1[p], c.m2[p], c.arg[p]);
                        s.found.push(found);
                    }
                }
            } else {
                computed = pairs_needed;
                for g in 0..t {
                    let rows_g = &s.per_group[g];
                    if rows_g.is_empty() {
                        continue;
                    }
                    let (st, en) = (gc.groups.start[g], gc.groups.start[g + 1]);
                    let kg = en - st;
                    let mg = rows_g.len();
                    s.gathered.clear();
                    for &r in rows_g {
                        let r = r as usize;
                        s.gathered.extend_from_slice(&xb[r * d..(r + 1) * d]);
                    }
                    s.dots.resize(mg * kg, 0.0);
                    #[cfg(test)]
                    GROUP_PRODUCTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::linalg::dot_nt_transposed(
                        &s.gathered,
                        mg,
                        &gc.cp[st * d..en * d],
                        kg,
                        d,
                        &mut s.dots,
                        &mut s.dots_rows,
                    );
                    s.cols.scan(gc, g, &s.dots[..mg * kg], mg);
                    for (q, &r) in s.per_group[g].iter().enumerate() {
                        let c = &s.cols;
                        let found = (s.pos[r as usize], g as u32, c.m1[q], c.m2[q], c.arg[q]);
                        s.found.push(found);
                    }
                }
            }
            // The nearest centroid of each row over its computed groups
            // (lowest original index among equals).
            for &(p, _, m1, _, arg) in &s.found {
                let best = &mut s.best[p as usize];
                if m1 < best.0 || (m1 == best.0 && arg < best.1) {
                    *best = (m1, arg);
                }
            }
            for (p, &r) in s.need.iter().enumerate() {
                let r = r as usize;
                let (v, arg) = s.best[p];
                let xn = x_norms[base + r];
                let e = dist_rel_err(d) * (xn as f64 + gc.c_max);
                let d1 = (xn + v).max(0.0);
                lb[r] = arg;
                db[r] = d1;
                ub[r] = ((d1 as f64 + e).sqrt() * (1.0 + 1e-6)) as f32;
            }
            // Fresh lower bounds of the computed groups: the group's smallest
            // distance, or its second smallest when it holds the new label.
            for &(p, g, m1, m2, _) in &s.found {
                let r = s.need[p as usize] as usize;
                let label = lb[r];
                let m = if gc.groups.of[label as usize] == g {
                    m2
                } else {
                    m1
                };
                let xn = x_norms[base + r];
                let e = dist_rel_err(d) * (xn as f64 + gc.c_max);
                lwb[r * t + g as usize] = if m.is_finite() {
                    (((xn + m) as f64 - e).max(0.0).sqrt() * (1.0 - 1e-6)) as f32
                } else {
                    f32::INFINITY
                };
            }
            computed
        })
        .collect();
    parts.iter().sum()
}

/// Half the distance from each centroid to its nearest other centroid, a
/// lower bound (computed distances less their rounding margin).
fn half_separation(c: &[f32], c_norms: &[f32], d: usize) -> Vec<f32> {
    let k = c_norms.len();
    if k < 2 {
        return vec![f32::INFINITY; k];
    }
    let mut cc = vec![0f32; k * k];
    crate::linalg::dot_nt(c, k, c, k, d, &mut cc);
    (0..k)
        .map(|i| {
            let mut m = f64::INFINITY;
            for j in (0..k).filter(|&j| j != i) {
                let v = (c_norms[i] + c_norms[j] - 2.0 * cc[i * k + j]) as f64
                    - dist_rel_err(d) * (c_norms[i] as f64 + c_norms[j] as f64);
                m = m.min(v);
            }
            (0.5 * m.max(0.0).sqrt() * (1.0 - 1e-6)) as f32
        })
        .collect()
}

/// Lloyd iterations from `centroids`; returns the run's result with labels
/// and inertia taken against the returned centroids.
///
/// With `bounded`, the assignment step skips the points and groups of
/// centroids whose bounds prove the label unchanged ([`assign_grouped`]); the
/// labels are those of the plain step (up to exact float ties), and so are the
/// centroids.
#[allow(clippy::too_many_arguments)]
fn lloyd(
    x: &[f32],
    x_norms: &[f32],
    n: usize,
    d: usize,
    mut centroids: Vec<f32>,
    max_iter: usize,
    tol: f64,
    spherical: bool,
    bounded: bool,
) -> KMeansResult {
    let k = centroids.len() / d;
    let mut labels = vec![0u32; n];
    let mut dists = vec![0f32; n];
    let groups = if bounded && max_iter > 0 {
        Some(Groups::new(&centroids, k, d))
    } else {
        None
    };
    let t = groups.as_ref().map_or(0, Groups::len);
    let mut bounds = Bounds {
        upper: vec![0f32; if t > 0 { n } else { 0 }],
        lower: vec![0f32; n * t],
    };
    let mut drift = vec![0f64; k];
    let mut group_drift = vec![0f64; t];
    // Whether the next bounded step compares every point with every centroid.
    let mut full = true;
    // When a bounded step still computes more than half of the distances it
    // costs more than a plain one (its products are smaller and its rows
    // are copied per group), so the next `cooldown` steps are plain ones
    // (no bounds kept), the last of them a full step that sets the bounds
    // afresh; each failure doubles the wait (`backoff`), a success resets it.
    let mut cooldown = 0usize;
    let mut backoff = 2usize;
    let mut sums = ClusterSums::new();
    let mut n_iter = 0;
    let mut converged = false;
    for it in 0..max_iter {
        let c_norms = row_sq_norms(&centroids, d);
        let plain = match &groups {
            None => true,
            Some(_) if cooldown > 0 => {
                cooldown -= 1;
                full = true;
                cooldown > 0
            }
            Some(_) => false,
        };
        if let (Some(groups), false) = (&groups, plain) {
            let mut gc = GroupedCentroids {
                c: &centroids,
                c_norms: &c_norms,
                cp: groups
                    .order
                    .iter()
                    .flat_map(|&j| {
                        centroids[j as usize * d..(j as usize + 1) * d]
                            .iter()
                            .copied()
                    })
                    .collect(),
                cp_norms: groups.order.iter().map(|&j| c_norms[j as usize]).collect(),
                groups,
                half_sep: if full {
                    vec![0f32; k]
                } else {
                    half_separation(&centroids, &c_norms, d)
                },
                drift: &drift,
                group_drift: &group_drift,
                c_max: c_norms.iter().fold(0f32, |a, &b| a.max(b)) as f64,
            };
            let done = assign_grouped(
                x,
                x_norms,
                d,
                &gc,
                full,
                &mut labels,
                &mut dists,
                &mut bounds,
            );
            if !full {
                if done * 2 > n * k {
                    cooldown = backoff;
                    backoff = (backoff * 2).min(max_iter.max(2));
                } else {
                    backoff = 2;
                }
            }
            let mut has = vec![false; k];
            labels.iter().for_each(|&l| has[l as usize] = true);
            if !full && has.contains(&false) {
                // Empty clusters are repaired from exact distances of all points.
                gc.half_sep = vec![0f32; k];
                assign_grouped(
                    x,
                    x_norms,
                    d,
                    &gc,
                    true,
                    &mut labels,
                    &mut dists,
                    &mut bounds,
                );
            }
            full = false;
        } else {
            nearest(
                x,
                x_norms,
                &centroids,
                &c_norms,
                d,
                Metric::L2,
                &mut labels,
                &mut dists,
            );
        }
        // The sums follow the labels of the previous step, so no point
        // moving means the labels did not change: converged.
        let moved = sums.update(x, d, k, &labels);
        let new = sums.centroids(x, d, &dists, &centroids, spherical);
        let sq_drift: Vec<f64> = (0..k)
            .map(|j| sq_dist(&new[j * d..(j + 1) * d], &centroids[j * d..(j + 1) * d]))
            .collect();
        let shift: f64 = sq_drift.iter().sum();
        if let Some(groups) = &groups {
            for (dr, &s) in drift.iter_mut().zip(&sq_drift) {
                *dr = s.sqrt() * (1.0 + 1e-9);
            }
            for (g, gd) in group_drift.iter_mut().enumerate() {
                *gd = groups.order[groups.start[g]..groups.start[g + 1]]
                    .iter()
                    .fold(0f64, |a, &j| a.max(drift[j as usize]));
            }
        }
        centroids = new;
        n_iter = it + 1;
        if moved == 0 || shift <= tol {
            converged = true;
            break;
        }
    }
    let c_norms = row_sq_norms(&centroids, d);
    nearest(
        x,
        x_norms,
        &centroids,
        &c_norms,
        d,
        Metric::L2,
        &mut labels,
        &mut dists,
    );
    let inertia = exact_inertia(x, d, &centroids, &labels);
    KMeansResult {
        centroids,
        labels,
        inertia,
        n_iter,
        converged,
    }
}

/// Σ‖x_i − c_{label_i}‖², in f64, per block then over blocks in order.
pub fn exact_inertia(x: &[f32], d: usize, centroids: &[f32], labels: &[u32]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(ROW_BLOCK * d)
        .zip(labels.par_chunks(ROW_BLOCK))
        .map(|(xb, lb)| {
            xb.chunks(d)
                .zip(lb)
                .map(|(row, &l)| sq_dist(row, &centroids[l as usize * d..(l as usize + 1) * d]))
                .sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

/// Running per-cluster sums (f64) and member counts of the points, kept in
/// step with their labels: built once in index order, then moved by the
/// points that changed cluster, in index order, so an iteration touches only
/// those points (the plain update reads every point again).
struct ClusterSums {
    sums: Vec<f64>,
    counts: Vec<usize>,
    /// The labels the sums reflect (`None` before the first build).
    labels: Option<Vec<u32>>,
}

impl ClusterSums {
    fn new() -> Self {
        ClusterSums {
            sums: Vec::new(),
            counts: Vec::new(),
            labels: None,
        }
    }

    /// Brings the sums in step with `labels`; returns how many points changed
    /// cluster since the last call (all of them on the first). Parallel over
    /// clusters; each cluster's additions and removals are applied in index
    /// order, so the result does not depend on the thread count.
    fn update(&mut self, x: &[f32], d: usize, k: usize, labels: &[u32]) -> usize {
        let n = labels.len();
        let Some(prev) = self.labels.as_mut() else {
            // First build: each cluster's members summed in index order.
            let (offsets, order) = sort_by_label(labels, k);
            self.counts = (0..k).map(|j| offsets[j + 1] - offsets[j]).collect();
            self.sums = vec![0f64; k * d];
            self.sums
                .par_chunks_mut(d)
                .enumerate()
                .for_each(|(j, acc)| {
                    accumulate_rows(acc, x, &order[offsets[j]..offsets[j + 1]], d);
                });
            self.labels = Some(labels.to_vec());
            return n;
        };
        // Moves, grouped by the cluster they touch: (point, +1 joins / −1 leaves).
        let moved: Vec<u32> = (0..n as u32)
            .filter(|&i| labels[i as usize] != prev[i as usize])
            .collect();
        if moved.is_empty() {
            return 0;
        }
        let mut offsets = vec![0usize; k + 1];
        for &i in &moved {
            offsets[labels[i as usize] as usize + 1] += 1;
            offsets[prev[i as usize] as usize + 1] += 1;
        }
        for j in 0..k {
            offsets[j + 1] += offsets[j];
        }
        let mut fill = offsets.clone();
        let mut moves = vec![(0u32, false); offsets[k]];
        for &i in &moved {
            for (j, joins) in [(labels[i as usize], true), (prev[i as usize], false)] {
                moves[fill[j as usize]] = (i, joins);
                fill[j as usize] += 1;
            }
        }
        self.sums
            .par_chunks_mut(d)
            .zip(self.counts.par_iter_mut())
            .enumerate()
            .for_each(|(j, (acc, count))| {
                for &(i, joins) in &moves[offsets[j]..offsets[j + 1]] {
                    let src = &x[i as usize * d..(i as usize + 1) * d];
                    if joins {
                        *count += 1;
                        add_row(acc, src);
                    } else {
                        *count -= 1;
                        sub_row(acc, src);
                    }
                }
            });
        for &i in &moved {
            prev[i as usize] = labels[i as usize];
        }
        moved.len()
    }

    /// The centroids: each cluster's mean (unit-normalised when
    /// `spherical`; a zero mean keeps the old centroid). Empty clusters take
    /// the points farthest from their centroid (`dists`), farthest first,
    /// ties by index.
    fn centroids(
        &self,
        x: &[f32],
        d: usize,
        dists: &[f32],
        old: &[f32],
        spherical: bool,
    ) -> Vec<f32> {
        let k = self.counts.len();
        let n = dists.len();
        let mut new = vec![0f32; k * d];
        new.par_chunks_mut(d).enumerate().for_each(|(j, row)| {
            let count = self.counts[j];
            if count == 0 {
                return;
            }
            let inv = 1.0 / count as f64;
            let mut norm = 0f64;
            for (o, a) in row.iter_mut().zip(&self.sums[j * d..(j + 1) * d]) {
                let m = a * inv;
                norm += m * m;
                *o = m as f32;
            }
            if spherical {
                if norm > 0.0 {
                    let s = (1.0 / norm.sqrt()) as f32;
                    row.iter_mut().for_each(|v| *v *= s);
                } else {
                    row.copy_from_slice(&old[j * d..(j + 1) * d]);
                }
            }
        });
        let empty: Vec<usize> = (0..k).filter(|&j| self.counts[j] == 0).collect();
        if !empty.is_empty() {
            // Farthest points first; ties by index, so the choice is deterministic.
            let mut far: Vec<u32> = (0..n as u32).collect();
            let m = empty.len().min(n);
            let cmp = |a: &u32, b: &u32| {
                dists[*b as usize]
                    .total_cmp(&dists[*a as usize])
                    .then(a.cmp(b))
            };
            if m < n {
                far.select_nth_unstable_by(m, cmp);
            }
            far.truncate(m);
            far.sort_unstable_by(cmp);
            for (&j, &i) in empty.iter().zip(&far) {
                new[j * d..(j + 1) * d].copy_from_slice(&x[i as usize * d..(i as usize + 1) * d]);
            }
        }
        new
    }
}

/// Stable counting sort of the points by label: `(offsets, order)` with the
/// members of cluster `j` at `order[offsets[j]..offsets[j + 1]]`, ascending.
fn sort_by_label(labels: &[u32], k: usize) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; k + 1];
    for &l in labels {
        offsets[l as usize + 1] += 1;
    }
    for j in 0..k {
        offsets[j + 1] += offsets[j];
    }
    let mut fill = offsets.clone();
    let mut order = vec![0u32; labels.len()];
    for (i, &l) in labels.iter().enumerate() {
        order[fill[l as usize]] = i as u32;
        fill[l as usize] += 1;
    }
    (offsets, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs in 2-D, `per` points each.
    fn blobs(per: usize, seed: u64) -> (Vec<f32>, usize) {
        let mut rng = Rng::new(seed);
        let centers = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        let mut x = Vec::new();
        for &(cx, cy) in &centers {
            for _ in 0..per {
                x.push(cx + rng.next_f64() as f32 - 0.5);
                x.push(cy + rng.next_f64() as f32 - 0.5);
            }
        }
        (x, 3 * per)
    }

    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// `per` points around each of `centers` random centres in `d` dimensions
    /// (spread `noise`), in an order that keeps blobs contiguous when
    /// `sorted`.
    fn hd_blobs(per: usize, centers: usize, d: usize, noise: f32, sorted: bool) -> Vec<f32> {
        let mut rng = Rng::new(99);
        let cs: Vec<f32> = (0..centers * d)
            .map(|_| (rng.next_f64() as f32 - 0.5) * 20.0)
            .collect();
        let mut x = Vec::with_capacity(per * centers * d);
        for i in 0..per * centers {
            let j = if sorted { i / per } else { rng.below(centers) };
            for t in 0..d {
                x.push(cs[j * d + t] + noise * (rng.next_f64() as f32 - 0.5));
            }
        }
        x
    }

    #[test]
    fn kmeans_plus_plus_pruning_changes_nothing() {
        let d = 16;
        for (sorted, noise, k) in [(true, 0.5, 12), (false, 0.5, 9), (true, 30.0, 20)] {
            let x = hd_blobs(600, 10, d, noise, sorted);
            let n = x.len() / d;
            let norms = row_sq_norms(&x, d);
            let before = SKIPPED_BLOCKS.load(std::sync::atomic::Ordering::Relaxed);
            let a = in_pool(2, || {
                kmeans_plus_plus(&x, &norms, n, d, k, None, &mut Rng::new(5), true)
            });
            let skipped = SKIPPED_BLOCKS.load(std::sync::atomic::Ordering::Relaxed) - before;
            let b = in_pool(1, || {
                kmeans_plus_plus(&x, &norms, n, d, k, None, &mut Rng::new(5), false)
            });
            let c = in_pool(3, || {
                kmeans_plus_plus(&x, &norms, n, d, k, None, &mut Rng::new(5), true)
            });
            assert_eq!(a, b, "sorted={sorted} noise={noise}");
            assert_eq!(a, c);
            if sorted && noise < 1.0 {
                assert!(skipped > 0, "pruning never fired");
            }
        }
    }

    #[test]
    fn bounded_lloyd_matches_plain_lloyd() {
        let d = 32;
        for (sorted, noise, k, iters) in [
            (true, 2.0, 12, 30),
            (false, 8.0, 25, 40),
            (false, 30.0, 7, 15),
            (true, 0.5, 10, 10),
            (false, 4.0, 70, 25),
            (true, 1.0, 90, 25),
        ] {
            let x = hd_blobs(300, 10, d, noise, sorted);
            let n = x.len() / d;
            let norms = row_sq_norms(&x, d);
            let init = random_init(&x, n, d, k, &mut Rng::new(3));
            let run = |bounded: bool, threads: usize| {
                in_pool(threads, || {
                    lloyd(&x, &norms, n, d, init.clone(), iters, 0.0, false, bounded)
                })
            };
            let plain = run(false, 1);
            let before = GROUP_PRODUCTS.load(std::sync::atomic::Ordering::Relaxed);
            let fast = run(true, 2);
            if k >= 70 {
                assert!(Groups::new(&init, k, d).len() > 2);
                let products = GROUP_PRODUCTS.load(std::sync::atomic::Ordering::Relaxed) - before;
                assert!(products > 0, "the grouped bounds never skipped a group");
            }
            assert_eq!(plain.labels, fast.labels, "noise={noise} k={k}");
            assert_eq!(plain.n_iter, fast.n_iter);
            let bits = |v: &[f32]| v.iter().map(|t| t.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain.centroids), bits(&fast.centroids));
            assert_eq!(plain.inertia.to_bits(), fast.inertia.to_bits());
            assert_eq!(fast, run(true, 3));
        }
        // Starts with empty clusters (repaired from exact distances).
        let (x, n) = blobs(50, 7);
        let norms = row_sq_norms(&x, 2);
        let init = vec![5.0, 5.0, 100.0, 100.0, 200.0, 200.0, 0.0, 0.1];
        let plain = lloyd(&x, &norms, n, 2, init.clone(), 20, 0.0, false, false);
        let fast = lloyd(&x, &norms, n, 2, init, 20, 0.0, false, true);
        assert_eq!(plain, fast);
    }

    #[test]
    fn finds_separated_blobs() {
        let (x, n) = blobs(200, 1);
        let r = kmeans(&x, n, 2, &KMeansParams::new(3)).unwrap();
        assert!(r.converged);
        // Each blob lands in one cluster.
        for b in 0..3 {
            let l = r.labels[b * 200];
            assert!(r.labels[b * 200..(b + 1) * 200].iter().all(|&v| v == l));
        }
        assert!(r.inertia / (n as f64) < 0.2, "{}", r.inertia);
        assert!((exact_inertia(&x, 2, &r.centroids, &r.labels) - r.inertia).abs() < 1e-9);
    }

    #[test]
    fn same_result_with_one_and_many_threads() {
        let (x, n) = blobs(1_000, 2);
        let mut p = KMeansParams::new(7);
        p.n_init = 3;
        p.seed = 11;
        let a = in_pool(1, || kmeans(&x, n, 2, &p).unwrap());
        let b = in_pool(3, || kmeans(&x, n, 2, &p).unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn restarts_side_by_side_give_the_sequential_result() {
        // uniform points: restarts end in different local optima, so the pick matters
        let mut rng = Rng::new(5);
        let (n, d) = (300, 3);
        let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32).collect();
        let mut inertias = Vec::new();
        for (seed, runs) in [(3, 2), (8, 5), (21, 10)] {
            let mut p = KMeansParams::new(9);
            p.n_init = runs;
            p.seed = seed;
            let seq = in_pool(2, || kmeans_with(&x, n, d, &p, false).unwrap());
            let par = in_pool(2, || kmeans_with(&x, n, d, &p, true).unwrap());
            inertias.push(seq.inertia);
            assert_eq!(seq, par);
            assert_eq!(
                seq.centroids
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                par.centroids
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            );
        }
        assert!(inertias[0] != inertias[1] && inertias[1] != inertias[2]);
        assert!(parallel_restarts(50, 384, 5, 10));
        assert!(!parallel_restarts(50, 384, 5, 1));
        assert!(!parallel_restarts(100_000, 384, 256, 10));
    }

    #[test]
    fn centroids_are_member_means_at_convergence() {
        let (x, n) = blobs(300, 3);
        let mut p = KMeansParams::new(5);
        p.tol = 0.0;
        let r = kmeans(&x, n, 2, &p).unwrap();
        assert!(r.converged);
        for j in 0..5 {
            let members: Vec<usize> = (0..n).filter(|&i| r.labels[i] == j as u32).collect();
            assert!(!members.is_empty());
            for t in 0..2 {
                let mean = members.iter().map(|&i| x[i * 2 + t] as f64).sum::<f64>()
                    / members.len() as f64;
                assert!((mean - r.centroids[j * 2 + t] as f64).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn k_equal_to_distinct_points_gives_zero_inertia() {
        let pts = [[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5], [7.0, 7.0]];
        let x: Vec<f32> = pts.iter().cycle().take(40).flatten().copied().collect();
        let r = kmeans(&x, 40, 2, &KMeansParams::new(4)).unwrap();
        assert_eq!(r.inertia, 0.0);
    }

    #[test]
    fn given_init_and_max_iter_zero() {
        let (x, n) = blobs(50, 4);
        let init = vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0];
        let mut p = KMeansParams::new(3);
        p.init = Init::Given(init.clone());
        p.max_iter = 0;
        let r = kmeans(&x, n, 2, &p).unwrap();
        assert_eq!(r.centroids, init);
        assert_eq!(r.n_iter, 0);
        assert_eq!(r.labels[0], 0);
        assert_eq!(r.labels[n - 1], 2);
    }

    #[test]
    fn inertia_never_increases_across_iterations() {
        let (x, n) = blobs(400, 5);
        let mut last = f64::INFINITY;
        for it in 0..8 {
            let mut p = KMeansParams::new(6);
            p.init = Init::Random;
            p.max_iter = it;
            p.tol = 0.0;
            let r = kmeans(&x, n, 2, &p).unwrap();
            assert!(
                r.inertia <= last * (1.0 + 1e-9),
                "iter {it}: {} > {last}",
                r.inertia
            );
            last = r.inertia;
        }
    }

    #[test]
    fn spherical_centroids_have_unit_norm() {
        let (x, n) = blobs(100, 6);
        let x: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
        let mut p = KMeansParams::new(3);
        p.spherical = true;
        let r = kmeans(&x, n, 2, &p).unwrap();
        for c in r.centroids.chunks(2) {
            let norm = (c[0] * c[0] + c[1] * c[1]).sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn empty_clusters_are_repaired() {
        // All initial centroids far away but one: the others start empty.
        let (x, n) = blobs(50, 7);
        let mut p = KMeansParams::new(3);
        p.init = Init::Given(vec![5.0, 5.0, 100.0, 100.0, 200.0, 200.0]);
        let r = kmeans(&x, n, 2, &p).unwrap();
        let mut seen = [false; 3];
        r.labels.iter().for_each(|&l| seen[l as usize] = true);
        assert_eq!(seen, [true; 3]);
        assert!(r.converged);
        // Better than one cluster holding everything.
        let one = kmeans(&x, n, 2, &KMeansParams::new(1)).unwrap();
        assert!(r.inertia < one.inertia, "{} vs {}", r.inertia, one.inertia);
    }

    #[test]
    fn rejects_bad_input() {
        let x = vec![0.0f32; 6];
        let e = kmeans(&x, 3, 2, &KMeansParams::new(4)).unwrap_err();
        assert!(e.to_string().starts_with("k:"), "{e}");
        assert!(kmeans(&x, 3, 2, &KMeansParams::new(0)).is_err());
        assert!(kmeans(&x, 2, 2, &KMeansParams::new(1)).is_err());
        let mut bad = x.clone();
        bad[3] = f32::NAN;
        let e = kmeans(&bad, 3, 2, &KMeansParams::new(1)).unwrap_err();
        assert_eq!(e, Error::NonFinite { arg: "x", row: 1 });
        let mut p = KMeansParams::new(2);
        p.init = Init::Given(vec![0.0; 3]);
        assert!(kmeans(&x, 3, 2, &p).is_err());
        p = KMeansParams::new(1);
        p.spherical = true;
        assert!(kmeans(&x, 3, 2, &p).is_err());
        p = KMeansParams::new(1);
        p.tol = -1.0;
        assert!(kmeans(&x, 3, 2, &p).is_err());
        p = KMeansParams::new(1);
        p.n_local_trials = Some(0);
        let e = kmeans(&x, 3, 2, &p).unwrap_err();
        assert!(e.to_string().starts_with("n_local_trials:"), "{e}");
    }

    #[test]
    fn seeds_alone_are_the_initial_centroids_of_kmeans() {
        let x = hd_blobs(100, 6, 8, 2.0, false);
        let n = x.len() / 8;
        for trials in [None, Some(1), Some(4)] {
            let mut p = KMeansParams::new(6);
            p.max_iter = 0;
            p.seed = 17;
            p.n_local_trials = trials;
            let idx = kmeans_plusplus(&x, n, 8, 6, 17, trials).unwrap();
            assert_eq!(idx.len(), 6);
            assert_eq!(
                gather_rows(&x, 8, &idx),
                kmeans(&x, n, 8, &p).unwrap().centroids
            );
            let mut sorted = idx.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 6, "a row chosen twice");
        }
        assert!(kmeans_plusplus(&x, n, 8, n + 1, 0, None).is_err());
        assert!(kmeans_plusplus(&x, n, 8, 2, 0, Some(0)).is_err());
        let mut bad = x.clone();
        bad[8 * 5 + 2] = f32::INFINITY;
        let e = kmeans_plusplus(&bad, n, 8, 2, 0, None).unwrap_err();
        assert_eq!(e, Error::NonFinite { arg: "x", row: 5 });
    }

    #[test]
    fn one_local_trial_is_plain_kmeans_plus_plus() {
        let x = hd_blobs(200, 10, 8, 0.5, false);
        let n = x.len() / 8;
        let mut p = KMeansParams::new(10);
        p.max_iter = 0;
        p.n_local_trials = Some(1);
        let a = kmeans(&x, n, 8, &p).unwrap();
        // Seeds are distinct data points, reproducible, and spread over the
        // blobs: far better than one centre.
        assert_eq!(a, kmeans(&x, n, 8, &p).unwrap());
        let rows: Vec<&[f32]> = x.chunks(8).collect();
        let mut seeds: Vec<&[f32]> = a.centroids.chunks(8).collect();
        assert!(seeds.iter().all(|c| rows.contains(c)));
        seeds.dedup();
        assert_eq!(seeds.len(), 10);
        let one = kmeans(&x, n, 8, &KMeansParams::new(1)).unwrap();
        assert!(
            a.inertia < 0.2 * one.inertia,
            "{} vs {}",
            a.inertia,
            one.inertia
        );
        // Greedy differs (more candidates drawn per centre).
        p.n_local_trials = None;
        assert_ne!(kmeans(&x, n, 8, &p).unwrap().centroids, a.centroids);
    }
}
