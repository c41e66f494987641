//! Per-cluster sums kept in step with the labels, and the inertia.

use rayon::prelude::*;

use crate::linalg::{sq_dist, ROW_BLOCK};
use crate::simd::{add_row, sub_row};

/// Σ‖x_i − c_{label_i}‖², in f64, per block of `INERTIA_BLOCK` rows
/// (`block_inertia`) then over blocks in order (`sum_parts`).
pub fn exact_inertia(x: &[f32], d: usize, centroids: &[f32], labels: &[u32]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(INERTIA_BLOCK * d)
        .zip(labels.par_chunks(INERTIA_BLOCK))
        .map(|(xb, lb)| block_inertia(xb, d, centroids, lb))
        .collect();
    sum_parts(&parts)
}

/// Rows per part of [`exact_inertia`].
pub(super) const INERTIA_BLOCK: usize = ROW_BLOCK;

/// Σ‖x_i − c_{label_i}‖² over the rows `xb` (labels `lb`), in f64, in
/// order: one part of [`exact_inertia`].
pub(super) fn block_inertia(xb: &[f32], d: usize, centroids: &[f32], lb: &[u32]) -> f64 {
    xb.chunks(d)
        .zip(lb)
        .map(|(row, &l)| sq_dist(row, &centroids[l as usize * d..(l as usize + 1) * d]))
        .sum::<f64>()
}

/// The parts of [`exact_inertia`] added up, in order.
pub(super) fn sum_parts(parts: &[f64]) -> f64 {
    parts.iter().sum()
}

/// Running per-cluster sums (f64) and member counts of the points, kept in
/// step with their labels: built once in index order, then moved by the
/// points that changed cluster, in index order, so an iteration touches only
/// those points (the plain update reads every point again).
pub(super) struct ClusterSums {
    sums: Vec<f64>,
    counts: Vec<usize>,
    /// The labels the sums reflect (`None` before the first build).
    labels: Option<Vec<u32>>,
}

impl ClusterSums {
    pub(super) fn new() -> Self {
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
    pub(super) fn update(&mut self, x: &[f32], d: usize, k: usize, labels: &[u32]) -> usize {
        let n = labels.len();
        let Some(prev) = self.labels.as_mut() else {
            // First build: each cluster's members summed in index order.
            self.counts = vec![0usize; k];
            self.sums = vec![0f64; k * d];
            let all = (0..n as u32).collect::<Vec<_>>();
            let events = |i: usize| (Some(labels[i]), None);
            Self::apply_to(&mut self.sums, &mut self.counts, x, d, &all, events);
            self.labels = Some(labels.to_vec());
            return n;
        };
        // The points that changed cluster: each joins its new cluster and
        // leaves its old one.
        let moved: Vec<u32> = (0..n as u32)
            .filter(|&i| labels[i as usize] != prev[i as usize])
            .collect();
        if moved.is_empty() {
            return 0;
        }
        let prev_labels: &[u32] = prev;
        let events = |i: usize| (Some(labels[i]), Some(prev_labels[i]));
        Self::apply_to(&mut self.sums, &mut self.counts, x, d, &moved, events);
        for &i in &moved {
            prev[i as usize] = labels[i as usize];
        }
        moved.len()
    }

    /// For each of `points` (ascending), `events(i)`: the cluster point `i`
    /// joins and the one it leaves; its row is added to the first's sum and
    /// subtracted from the second's. The points are streamed in index order
    /// (rows read in ascending addresses) by each of a few tasks, each
    /// applying the events of one range of clusters: every cluster sees its
    /// events in index order whatever the ranges, so the sums do not depend
    /// on the thread count.
    fn apply_to(
        sums: &mut [f64],
        counts: &mut [usize],
        x: &[f32],
        d: usize,
        points: &[u32],
        events: impl Fn(usize) -> (Option<u32>, Option<u32>) + Sync,
    ) {
        let k = counts.len();
        if k == 0 {
            return;
        }
        if d == 0 {
            // no rows to add: counts only
            for &i in points {
                let (joins, leaves) = events(i as usize);
                if let Some(j) = joins {
                    counts[j as usize] += 1;
                }
                if let Some(j) = leaves {
                    counts[j as usize] -= 1;
                }
            }
            return;
        }
        let span = k.div_ceil(rayon::current_num_threads().max(1));
        sums.par_chunks_mut(span * d)
            .zip(counts.par_chunks_mut(span))
            .enumerate()
            .for_each(|(c, (acc, cnt))| {
                let lo = (c * span) as u32;
                let hi = lo + cnt.len() as u32;
                let ours =
                    |j: Option<u32>| j.filter(|&j| j >= lo && j < hi).map(|j| (j - lo) as usize);
                for &i in points {
                    let i = i as usize;
                    let (joins, leaves) = events(i);
                    let row = &x[i * d..(i + 1) * d];
                    if let Some(j) = ours(joins) {
                        cnt[j] += 1;
                        add_row(&mut acc[j * d..(j + 1) * d], row);
                    }
                    if let Some(j) = ours(leaves) {
                        cnt[j] -= 1;
                        sub_row(&mut acc[j * d..(j + 1) * d], row);
                    }
                }
            });
    }

    /// The centroids: each cluster's mean (unit-normalised when
    /// `spherical`; a zero (or subnormal) mean keeps the old centroid). Empty clusters take
    /// the points farthest from their centroid (`dists`), farthest first,
    /// ties by index.
    pub(super) fn centroids(
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
                // a mean so short that its inverse norm overflows f32
                // counts as zero, as in `normalize_rows`
                if norm >= crate::error::MIN_SQ_NORM {
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
