//! The assignment step with grouped (Yinyang) bounds.

use rayon::prelude::*;

use crate::kernels::argmin::{argmin_rows, smallest_two, values_rows, Packed};
use crate::kernels::screen::{Kept, QuantCache, Screen, ScreenWork};

use super::bounds::{lower_from, margin, max_norm, upper_from, Bounds, Groups};

/// The centroids of one iteration in group order, with what the bounded
/// assignment needs.
pub(super) struct GroupedCentroids<'a> {
    /// Original order (for the distance to a point's own centroid), and
    /// squared norms.
    pub(super) c: &'a [f32],
    pub(super) c_norms: &'a [f32],
    /// Each group's centroids packed for [`argmin_rows`], and all of them
    /// in group order for [`values_rows`].
    pub(super) packed: Vec<Packed>,
    pub(super) all: Packed,
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
    /// The values of the `need` rows against every centroid (group order).
    values: Vec<f32>,
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
    /// Over group `g` of the centroids, for each of the `m` rows of `rows`
    /// (m×d): the smallest value of `‖c‖² − 2x·c`, the second smallest and
    /// the original index of the smallest (the lowest among equals: a
    /// group's centroids are in ascending order), into `m1`, `m2` and
    /// `arg`.
    fn scan(&mut self, gc: &GroupedCentroids, g: usize, rows: &[f32], m: usize) {
        self.m1.resize(m, 0.0);
        self.m2.resize(m, 0.0);
        self.arg.resize(m, 0);
        argmin_rows(
            rows,
            m,
            &gc.packed[g],
            &mut self.m1,
            Some(&mut self.m2),
            &mut self.arg,
        );
        let st = gc.groups.start[g];
        for a in &mut self.arg {
            *a = gc.groups.order[st + *a as usize];
        }
    }
}

/// Rows per block of the bounded assignment: larger than
/// [`ROW_BLOCK`](crate::linalg::ROW_BLOCK) so
/// that the rows needing one group make a product large enough to run at
/// full rate. Fixed, like every block size here.
pub(super) const GROUP_BLOCK: usize = 256;

/// What one call of [`assign_grouped`] computed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct AssignStats {
    /// Point–centroid distances computed.
    pub(super) distances: usize,
    /// Per-group products run (rows gathered for one group of centroids).
    pub(super) group_products: usize,
}

impl std::ops::Add for AssignStats {
    type Output = AssignStats;

    fn add(self, o: AssignStats) -> AssignStats {
        AssignStats {
            distances: self.distances + o.distances,
            group_products: self.group_products + o.group_products,
        }
    }
}

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
) -> AssignStats {
    let t = gc.groups.len();
    let parts: Vec<AssignStats> = x
        .par_chunks(GROUP_BLOCK * d)
        .zip(labels.par_chunks_mut(GROUP_BLOCK))
        .zip(dists.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.upper.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.lower.par_chunks_mut(GROUP_BLOCK * t))
        .enumerate()
        .map_init(Scratch::default, |s, (b, ((((xb, lb), db), ub), lwb))| {
            let base = b * GROUP_BLOCK;
            let mut block = Block {
                x: xb,
                norms: &x_norms[base..base + lb.len()],
                labels: lb,
                dists: db,
                upper: ub,
                lower: lwb,
            };
            let pairs_needed = s.rows_to_compute(gc, &mut block, d, full);
            let m = s.need.len();
            if m == 0 {
                return AssignStats::default();
            }
            s.reset_found(block.labels.len());
            let k = gc.c_norms.len();
            let stats = if full || pairs_needed * 2 >= m * k {
                s.scan_all_groups(gc, block.x, d)
            } else {
                s.scan_needed_groups(gc, block.x, d, pairs_needed)
            };
            s.settle(gc, &mut block, d);
            stats
        })
        .collect();
    parts.into_iter().fold(AssignStats::default(), |a, b| a + b)
}

/// A full step of [`assign_grouped`] (every point's label, distance and
/// fresh bounds) through the AMX screen `sc` (built from `c`, `c_norms` in
/// their original order, as `packed`): the labels and distances are the
/// plain step's bits (the screen re-checks the candidates with the fused
/// kernel's arithmetic), and each group's lower bound comes from the
/// screened values less the row's bound on their error, so that no group
/// is computed in full as [`assign_grouped`] does. The bounds are looser
/// than the exact ones by that error (about 2⁻¹⁵ of the values): later
/// steps may re-check a few more points, never change a label. A row the
/// screen had no bound for gets lower bounds of 0 (re-checked next step).
#[allow(clippy::too_many_arguments)]
pub(super) fn assign_full_screened(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    d: usize,
    c_norms: &[f32],
    packed: &Packed,
    sc: &Screen,
    groups: &Groups,
    labels: &mut [u32],
    dists: &mut [f32],
    bounds: &mut Bounds,
) {
    let t = groups.len();
    let kp = sc.padded();
    let c_max = max_norm(c_norms);
    // where each centroid sits in the groups' order
    let mut at = vec![0usize; c_norms.len()];
    for (i, &j) in groups.order.iter().enumerate() {
        at[j as usize] = i;
    }
    x.par_chunks(GROUP_BLOCK * d)
        .zip(labels.par_chunks_mut(GROUP_BLOCK))
        .zip(dists.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.upper.par_chunks_mut(GROUP_BLOCK))
        .zip(bounds.lower.par_chunks_mut(GROUP_BLOCK * t))
        .enumerate()
        .for_each_init(
            <(Vec<f32>, ScreenWork, Vec<f32>, Vec<f64>, Vec<f32>)>::default,
            |(m1, work, values, row_err, ordered), (b, ((((xb, lb), db), ub), lwb))| {
                let m = lb.len();
                m1.resize(m, 0.0);
                values.resize(m * kp, 0.0);
                row_err.resize(m, 0.0);
                let kept = Kept {
                    values,
                    bounds: row_err,
                };
                sc.argmin_rows(xb, m, packed, m1, lb, work, Some(kept), quant.get(b, xb));
                let norms = &x_norms[b * GROUP_BLOCK..b * GROUP_BLOCK + m];
                for r in 0..m {
                    let xn = norms[r];
                    let e = margin(d, xn as f64, c_max);
                    // as `Scratch::settle` sets them
                    let d1 = (xn + m1[r]).max(0.0);
                    db[r] = d1;
                    ub[r] = upper_from(d1 as f64, e);
                    let label = lb[r] as usize;
                    // the row's screened values in group order, its own
                    // centroid's left out
                    let vals = &values[r * kp..(r + 1) * kp];
                    ordered.clear();
                    ordered.extend(groups.order.iter().map(|&j| vals[j as usize]));
                    ordered[at[label]] = f32::INFINITY;
                    let own = groups.of[label] as usize;
                    for (g, lo) in lwb[r * t..(r + 1) * t].iter_mut().enumerate() {
                        let (st, en) = (groups.start[g], groups.start[g + 1]);
                        let others = en - st > usize::from(g == own);
                        let least =
                            ordered[st..en]
                                .iter()
                                .fold(f32::INFINITY, |a, &v| if v < a { v } else { a });
                        *lo = if !others {
                            // no other centroid in the group
                            f32::INFINITY
                        } else if row_err[r].is_finite() && least.is_finite() {
                            // every other centroid's computed value is at
                            // least `least − row_err`
                            lower_from(xn as f64 + least as f64 - row_err[r], e)
                        } else {
                            0.0
                        };
                    }
                }
            },
        );
}

/// One block of points of [`assign_grouped`], with their labels, distances
/// and bounds (`lower`: one row of groups per point).
struct Block<'b> {
    x: &'b [f32],
    norms: &'b [f32],
    labels: &'b mut [u32],
    dists: &'b mut [f32],
    upper: &'b mut [f32],
    lower: &'b mut [f32],
}

impl Scratch {
    /// Moves the bounds of the block's points by the last drifts and lists
    /// the points whose bounds do not prove their label (all of them when
    /// `full`) in `need`, and per group the points that must be compared
    /// with it in `per_group`; returns how many point–centroid distances
    /// the groups listed add up to.
    fn rows_to_compute(
        &mut self,
        gc: &GroupedCentroids,
        b: &mut Block,
        d: usize,
        full: bool,
    ) -> usize {
        let t = gc.groups.len();
        let rows = b.labels.len();
        self.need.clear();
        self.per_group.resize_with(t, Vec::new);
        self.per_group.iter_mut().for_each(Vec::clear);
        let mut pairs_needed = 0usize;
        for r in 0..rows {
            if full {
                self.need.push(r as u32);
                continue;
            }
            let a = b.labels[r] as usize;
            let lw = &mut b.lower[r * t..(r + 1) * t];
            let mut glb = f32::INFINITY;
            for (l, &gd) in lw.iter_mut().zip(gc.group_drift) {
                *l = ((*l as f64 - gd).max(0.0) * (1.0 - 1e-6)) as f32;
                glb = glb.min(*l);
            }
            let bound = glb.max(gc.half_sep[a]);
            let u = ((b.upper[r] as f64 + gc.drift[a]) * (1.0 + 1e-6)) as f32;
            b.upper[r] = u;
            if u <= bound {
                continue;
            }
            // Tighten the upper bound to the current distance (computed
            // in f32 like every other distance, within the margin `e`).
            let xn = b.norms[r] as f64;
            let e = margin(d, xn, gc.c_max);
            let dot = crate::simd::dot(&b.x[r * d..(r + 1) * d], &gc.c[a * d..(a + 1) * d]);
            let computed = (xn + gc.c_norms[a] as f64 - 2.0 * dot as f64).max(0.0);
            let u = upper_from(computed, 2.0 * e);
            b.upper[r] = u;
            if u <= bound {
                continue;
            }
            let own = gc.groups.of[a] as usize;
            for (g, &l) in lw.iter().enumerate() {
                if l < u || g == own {
                    self.per_group[g].push(r as u32);
                    pairs_needed += gc.groups.start[g + 1] - gc.groups.start[g];
                }
            }
            self.need.push(r as u32);
        }
        pairs_needed
    }

    /// Clears the per-row results of the `need` rows of a block of `rows`.
    fn reset_found(&mut self, rows: usize) {
        let m = self.need.len();
        self.best.clear();
        self.best.resize(m, (f32::INFINITY, u32::MAX));
        self.found.clear();
        self.pos.clear();
        self.pos.resize(rows, u32::MAX);
        for (p, &r) in self.need.iter().enumerate() {
            self.pos[r as usize] = p as u32;
        }
    }

    /// Most groups are needed: the values of the `need` rows against every
    /// centroid in one pass ([`values_rows`], the bits the per-group scans
    /// would fold), then every group scanned.
    fn scan_all_groups(&mut self, gc: &GroupedCentroids, xb: &[f32], d: usize) -> AssignStats {
        let (k, t) = (gc.c_norms.len(), gc.groups.len());
        let m = self.need.len();
        let src: &[f32] = if m == xb.len() / d {
            xb
        } else {
            self.gathered.clear();
            for &r in &self.need {
                let r = r as usize;
                self.gathered.extend_from_slice(&xb[r * d..(r + 1) * d]);
            }
            &self.gathered
        };
        let kp = gc.all.padded();
        self.values.resize(m * kp, 0.0);
        values_rows(src, m, &gc.all, &mut self.values);
        for g in 0..t {
            let (st, en) = (gc.groups.start[g], gc.groups.start[g + 1]);
            for p in 0..m {
                let (m1, a, m2) = smallest_two(&self.values[p * kp + st..p * kp + en]);
                let arg = gc.groups.order[st + a as usize];
                self.found.push((p as u32, g as u32, m1, m2, arg));
            }
        }
        AssignStats {
            distances: m * k,
            group_products: 0,
        }
    }

    /// Few groups are needed: per group, one product of the rows that need
    /// it (`pairs_needed` distances in all).
    fn scan_needed_groups(
        &mut self,
        gc: &GroupedCentroids,
        xb: &[f32],
        d: usize,
        pairs_needed: usize,
    ) -> AssignStats {
        let mut products = 0;
        for g in 0..gc.groups.len() {
            let rows_g = &self.per_group[g];
            if rows_g.is_empty() {
                continue;
            }
            let mg = rows_g.len();
            self.gathered.clear();
            for &r in rows_g {
                let r = r as usize;
                self.gathered.extend_from_slice(&xb[r * d..(r + 1) * d]);
            }
            products += 1;
            self.cols.scan(gc, g, &self.gathered, mg);
            for (q, &r) in self.per_group[g].iter().enumerate() {
                let c = &self.cols;
                let found = (self.pos[r as usize], g as u32, c.m1[q], c.m2[q], c.arg[q]);
                self.found.push(found);
            }
        }
        AssignStats {
            distances: pairs_needed,
            group_products: products,
        }
    }

    /// From the groups scanned: each `need` row's nearest centroid (lowest
    /// original index among equals), its distance and fresh bounds.
    fn settle(&mut self, gc: &GroupedCentroids, b: &mut Block, d: usize) {
        let t = gc.groups.len();
        for &(p, _, m1, _, arg) in &self.found {
            let best = &mut self.best[p as usize];
            if m1 < best.0 || (m1 == best.0 && arg < best.1) {
                *best = (m1, arg);
            }
        }
        for (p, &r) in self.need.iter().enumerate() {
            let r = r as usize;
            let (v, arg) = self.best[p];
            let xn = b.norms[r];
            let e = margin(d, xn as f64, gc.c_max);
            let d1 = (xn + v).max(0.0);
            b.labels[r] = arg;
            b.dists[r] = d1;
            b.upper[r] = upper_from(d1 as f64, e);
        }
        // Fresh lower bounds of the computed groups: the group's smallest
        // distance, or its second smallest when it holds the new label.
        for &(p, g, m1, m2, _) in &self.found {
            let r = self.need[p as usize] as usize;
            let label = b.labels[r];
            let m = if gc.groups.of[label as usize] == g {
                m2
            } else {
                m1
            };
            let xn = b.norms[r];
            let e = margin(d, xn as f64, gc.c_max);
            b.lower[r * t + g as usize] = if m.is_finite() {
                lower_from((xn + m) as f64, e)
            } else {
                f32::INFINITY
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::plain::assign_plain;
    use crate::kmeans::tests::hd_blobs;
    use crate::linalg::row_sq_norms;

    #[test]
    fn the_screened_full_step_gives_the_plain_labels_and_sound_bounds() {
        // 700 rows (a short last block) near 40 centres, 200 centroids
        // (13 panels, the last one short) in groups; portable products,
        // so the test runs on every machine
        let (d, k) = (160, 200);
        let x = hd_blobs(20, 35, d, 3.0, false);
        let n = x.len() / d;
        let c: Vec<f32> = (0..k)
            .flat_map(|j| {
                x[(j * 3 % n) * d..(j * 3 % n + 1) * d]
                    .iter()
                    .map(|v| v * 0.9)
            })
            .collect();
        let (xn, cn) = (row_sq_norms(&x, d), row_sq_norms(&c, d));
        let groups = Groups::new(&c, k, d);
        let t = groups.len();
        assert!(t > 4);
        let sc = Screen::new(&c, &cn, d, false).expect("quantizable");
        let packed = Packed::new(&c, &cn, d);
        let mut bounds = Bounds {
            upper: vec![0f32; n],
            lower: vec![0f32; n * t],
        };
        let (mut want, mut want_d) = (vec![0u32; n], vec![0f32; n]);
        assign_plain(
            &x,
            &xn,
            &QuantCache::none(),
            d,
            &c,
            &cn,
            &mut want,
            &mut want_d,
        );
        // rows quantized by the step, then kept by a run's cache: its first
        // step fills it, the second reads it
        let kept = QuantCache::new(n, d, GROUP_BLOCK);
        let (mut labels, mut dists) = (vec![0u32; n], vec![0f32; n]);
        let mut first_bounds = None;
        for quant in [&QuantCache::none(), &kept, &kept] {
            labels.fill(u32::MAX);
            assign_full_screened(
                &x,
                &xn,
                quant,
                d,
                &cn,
                &packed,
                &sc,
                &groups,
                &mut labels,
                &mut dists,
                &mut bounds,
            );
            assert_eq!(labels, want);
            assert!(dists
                .iter()
                .zip(&want_d)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let now = (bounds.upper.clone(), bounds.lower.clone());
            assert_eq!(first_bounds.get_or_insert_with(|| now.clone()), &now);
        }
        assert!(kept.get(0, &x[..GROUP_BLOCK * d]).is_some());
        // every bound holds against the true (f64) distances, and most are
        // close to them (not zeros)
        let true_dist = |r: usize, j: usize| {
            let (a, b) = (&x[r * d..(r + 1) * d], &c[j * d..(j + 1) * d]);
            a.iter()
                .zip(b)
                .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut tight = 0;
        for (r, &label) in labels.iter().enumerate() {
            let own = true_dist(r, label as usize);
            assert!(
                bounds.upper[r] as f64 >= own,
                "row {r}: upper below the distance"
            );
            for g in 0..t {
                let others: Vec<f64> = groups.order[groups.start[g]..groups.start[g + 1]]
                    .iter()
                    .filter(|&&j| j != label)
                    .map(|&j| true_dist(r, j as usize))
                    .collect();
                let lo = bounds.lower[r * t + g] as f64;
                let least = others.iter().fold(f64::INFINITY, |a, &b| a.min(b));
                assert!(lo <= least, "row {r} group {g}: {lo} > {least}");
                tight += usize::from(lo >= 0.999 * least);
            }
        }
        assert!(tight * 10 >= n * t * 9, "{tight} of {} bounds tight", n * t);
    }
}
