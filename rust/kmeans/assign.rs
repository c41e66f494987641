//! The assignment step with grouped (Yinyang) bounds.

use rayon::prelude::*;

use crate::simd::column_argmin2;

use super::bounds::{dist_rel_err, Bounds, Groups};

/// Per-group products run by the bounded assignment (tests only).
#[cfg(test)]
pub(super) static GROUP_PRODUCTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The centroids of one iteration in group order, with what the bounded
/// assignment needs.
pub(super) struct GroupedCentroids<'a> {
    /// Original order (for the distance to a point's own centroid), and
    /// squared norms.
    pub(super) c: &'a [f32],
    pub(super) c_norms: &'a [f32],
    /// Rows permuted into group order, and their squared norms.
    pub(super) cp: Vec<f32>,
    pub(super) cp_norms: Vec<f32>,
    pub(super) groups: &'a Groups,
    /// Half the distance from each centroid to its nearest other one (a
    /// lower bound), original order; zeros when not computed.
    pub(super) half_sep: Vec<f32>,
    /// How far each centroid moved in the last update (an upper bound), and
    /// the largest move in each group.
    pub(super) drift: &'a [f64],
    pub(super) group_drift: &'a [f64],
    pub(super) c_max: f64,
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

/// Rows per block of the bounded assignment: larger than
/// [`ROW_BLOCK`](crate::linalg::ROW_BLOCK) so
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
pub(super) fn assign_grouped(
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
