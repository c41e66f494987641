//! Per-cluster sums kept in step with the labels, and the inertia.

use rayon::prelude::*;

use crate::linalg::{sq_dist, ROW_BLOCK};
use crate::simd::{accumulate_rows, add_row, sub_row};

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
