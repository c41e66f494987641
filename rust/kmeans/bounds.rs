//! What proves a distance need not be computed: the rounding margin of
//! computed distances, the triangle-inequality test of k-means++ pruning,
//! and the Yinyang-style groups of centroids with the bounds Lloyd keeps per
//! point.

use crate::linalg::row_sq_norms;
use crate::simd::argmin2;

/// Relative bound on the error of a distance computed by expansion,
/// `‖x‖² − 2x·c + ‖c‖²` in f32 with a d ≤ ~4000 dot product: the computed
/// value is within `DIST_REL_ERR × (‖x‖² + ‖c‖²)` of the true squared
/// distance (the dot product's worst-case error is `d·2⁻²⁴·‖x‖‖c‖`, 2.3e-5
/// of `‖x‖‖c‖` at d = 384; this leaves ≥ 4× headroom at d = 384).
pub(super) const DIST_REL_ERR: f64 = 1e-4;

/// [`DIST_REL_ERR`], raised for long rows: `4·d·2⁻²⁴` covers the worst-case
/// error of any summation order of a d-term f32 dot product with room to
/// spare (it passes 1e-4 at d ≈ 420).
pub(super) fn dist_rel_err(d: usize) -> f64 {
    DIST_REL_ERR.max(4.0 * d as f64 * f64::powi(2.0, -24))
}

/// The rounding margin of a squared distance computed for a row of squared
/// norm `xn` against centroids of squared norms at most `c_max` (see
/// [`dist_rel_err`]).
pub(super) fn margin(d: usize, xn: f64, c_max: f64) -> f64 {
    dist_rel_err(d) * (xn + c_max)
}

/// An upper bound (f32) on a true distance whose square, as computed, is at
/// most `sq`, with the margin `e` of that computation.
pub(super) fn upper_from(sq: f64, e: f64) -> f32 {
    ((sq + e).sqrt() * (1.0 + 1e-6)) as f32
}

/// A lower bound (f32) on a true distance whose square, as computed, is at
/// least `sq`, with the margin `e` of that computation.
pub(super) fn lower_from(sq: f64, e: f64) -> f32 {
    ((sq - e).max(0.0).sqrt() * (1.0 - 1e-6)) as f32
}

/// The largest of the centroids' squared norms (0 for none), as f64.
pub(super) fn max_norm(c_norms: &[f32]) -> f64 {
    c_norms.iter().fold(0f32, |a, &b| a.max(b)) as f64
}

/// Whether no point of a block can get closer to any candidate than to its
/// current centre, proved by the triangle inequality with a margin for the
/// rounding error of the computed distances. When it holds, the unpruned
/// computation would leave every `min(closest, dist)` of the block equal to
/// `closest`, so the block can be skipped without changing any result.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_prunable(
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

/// Target number of centroids per group of the grouped bounds.
const GROUP_SIZE: usize = 16;

/// A partition of the centroids into groups of nearby centroids (Yinyang
/// k-means): each point keeps one lower bound per group instead of one per
/// centroid (Elkan) or one in all (Hamerly).
pub(super) struct Groups {
    /// Original centroid indices, group by group, ascending within a group.
    pub(super) order: Vec<u32>,
    /// Group `g` is `order[start[g]..start[g + 1]]`.
    pub(super) start: Vec<usize>,
    /// The group of each centroid (original index).
    pub(super) of: Vec<u32>,
}

impl Groups {
    /// `out[g]`: the largest of `per_centroid` over group `g`.
    pub(super) fn max_per_group(&self, per_centroid: &[f64], out: &mut [f64]) {
        for (g, o) in out.iter_mut().enumerate() {
            *o = self.order[self.start[g]..self.start[g + 1]]
                .iter()
                .fold(0f64, |a, &j| a.max(per_centroid[j as usize]));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// Groups of about [`GROUP_SIZE`] centroids from a few Lloyd steps over
    /// the centroids themselves (deterministic: evenly spaced starting
    /// centroids, sums in index order). At most `d / 4` groups, so the
    /// bounds take at most a quarter of the memory of the points.
    pub(super) fn new(c: &[f32], k: usize, d: usize) -> Groups {
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
pub(super) struct Bounds {
    pub(super) upper: Vec<f32>,
    pub(super) lower: Vec<f32>,
}

/// Half the distance from each centroid to its nearest other centroid, a
/// lower bound (computed distances less their rounding margin).
pub(super) fn half_separation(c: &[f32], c_norms: &[f32], d: usize) -> Vec<f32> {
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
