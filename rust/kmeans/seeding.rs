//! The initial centroids: k distinct random rows, or (greedy) k-means++.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{nearest, Metric, ROW_BLOCK};
use crate::rng::Rng;

use super::bounds::block_prunable;

/// `k` distinct rows of `x` drawn uniformly, as k×d centroids.
pub(super) fn random_init(x: &[f32], n: usize, d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
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

/// Greedy k-means++ (Arthur & Vassilvitskii, with scikit-learn's
/// 2 + ⌊ln k⌋ local trials per centre): the indices of the `k` rows chosen,
/// in order.
///
/// Per centre: one pass over the data computes every candidate's squared
/// distances by blocks (each row read once, scored against every candidate
/// by [`crate::kernels::block_dots`]) and the candidates' potentials per
/// block; a second pass folds the chosen candidate into `closest`. Blocks
/// that the triangle inequality proves unaffected by every candidate are
/// skipped (`prune`); this never changes the result (see
/// [`block_prunable`]).
///
/// More candidates per centre than points are capped at `n`; an error when
/// the `n × candidates` distances cannot be allocated.
#[allow(clippy::too_many_arguments)]
pub(super) fn greedy_kmeanspp(
    x: &[f32],
    x_norms: &[f32],
    n: usize,
    d: usize,
    k: usize,
    n_local_trials: Option<usize>,
    rng: &mut Rng,
    prune: bool,
) -> Result<Vec<usize>> {
    Ok(seed_and_count(x, x_norms, n, d, k, n_local_trials, rng, prune)?.0)
}

/// Candidates drawn per centre: `n_local_trials` (default 2 + ⌊ln k⌋, never
/// more than `k ≤ n` for `k ≥ 2`), at most `n`.
pub(super) fn local_trials(n: usize, k: usize, n_local_trials: Option<usize>) -> usize {
    n_local_trials
        .unwrap_or(2 + (k as f64).ln().floor() as usize)
        .min(n.max(1))
}

/// [`greedy_kmeanspp`], and how many blocks pruning skipped in all.
#[allow(clippy::too_many_arguments)]
fn seed_and_count(
    x: &[f32],
    x_norms: &[f32],
    n: usize,
    d: usize,
    k: usize,
    n_local_trials: Option<usize>,
    rng: &mut Rng,
    prune: bool,
) -> Result<(Vec<usize>, usize)> {
    let trials = local_trials(n, k, n_local_trials);
    let mut s = Seeding::start(x, x_norms, n, d, k, trials, prune, rng)?;
    let mut skipped = 0;
    for _ in 1..k {
        s.draw_candidates(rng);
        if prune {
            s.candidate_center_distances();
        }
        let (best, skipped_now) = s.score_candidates();
        skipped += skipped_now;
        s.add_center(best);
    }
    Ok((s.chosen, skipped))
}

/// `len` zeros, or an error naming `n_local_trials` when they cannot be
/// allocated.
fn zeros<T: Clone + Default>(len: Option<usize>) -> Result<Vec<T>> {
    let fail = || {
        Error::invalid(
            "n_local_trials",
            "too many candidates per centre: their distances to every point cannot be allocated",
        )
    };
    let len = len.ok_or_else(fail)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| fail())?;
    v.resize(len, T::default());
    Ok(v)
}

/// The state of greedy k-means++ between two centres.
struct Seeding<'a> {
    x: &'a [f32],
    x_norms: &'a [f32],
    d: usize,
    trials: usize,
    prune: bool,
    /// The centres so far (row-major), their squared norms and row indices.
    centers: Vec<f32>,
    center_norms: Vec<f32>,
    chosen: Vec<usize>,
    /// Each point's squared distance to its nearest centre, the index of a
    /// centre at that distance (for the bounds), and per-block sums of
    /// `closest`.
    closest: Vec<f32>,
    assign: Vec<u32>,
    sums: Vec<f64>,
    /// This step's candidates: rows, squared norms and row indices.
    cand: Vec<f32>,
    cand_norms: Vec<f32>,
    cand_idx: Vec<usize>,
    /// Squared candidate–centre distances (`trials × centres`, when pruning).
    cc: Vec<f32>,
    /// Squared point–candidate distances (`n × trials`) of computed blocks.
    dist: Vec<f32>,
    /// Per block: whether it holds a candidate, whether pass 1 computed it.
    has_cand: Vec<bool>,
    computed: Vec<bool>,
}

impl<'a> Seeding<'a> {
    /// The first centre, drawn uniformly, and every point's distance to it.
    #[allow(clippy::too_many_arguments)]
    fn start(
        x: &'a [f32],
        x_norms: &'a [f32],
        n: usize,
        d: usize,
        k: usize,
        trials: usize,
        prune: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        // the buffers sized by the caller's `n_local_trials`, first
        let dist = zeros(n.checked_mul(trials))?;
        let cand = zeros(trials.checked_mul(d))?;
        let first = rng.below(n);
        let mut centers = Vec::with_capacity(k * d);
        centers.extend_from_slice(&x[first * d..(first + 1) * d]);
        let mut center_norms = Vec::with_capacity(k);
        center_norms.push(x_norms[first]);
        let mut chosen = Vec::with_capacity(k);
        chosen.push(first);
        let mut closest = vec![0f32; n];
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
        let sums = block_sums(&closest);
        let n_blocks = sums.len();
        Ok(Seeding {
            x,
            x_norms,
            d,
            trials,
            prune,
            centers,
            center_norms,
            chosen,
            closest,
            assign,
            sums,
            cand,
            cand_norms: vec![0f32; trials],
            cand_idx: vec![0usize; trials],
            cc: Vec::new(),
            dist,
            has_cand: vec![false; n_blocks],
            computed: vec![true; n_blocks],
        })
    }

    /// Draws this step's candidates, each with probability proportional to
    /// its `closest` (uniformly when every point is a centre already).
    fn draw_candidates(&mut self, rng: &mut Rng) {
        let (x, d, n) = (self.x, self.d, self.closest.len());
        let pot: f64 = self.sums.iter().sum();
        for t in 0..self.trials {
            let i = if pot > 0.0 {
                sample_index(&self.closest, &self.sums, rng.next_f64() * pot)
            } else {
                rng.below(n)
            };
            self.cand_idx[t] = i;
            self.cand[t * d..(t + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
            self.cand_norms[t] = self.x_norms[i];
        }
        self.has_cand.iter_mut().for_each(|h| *h = false);
        for &i in &self.cand_idx {
            self.has_cand[i / ROW_BLOCK] = true;
        }
    }

    /// Squared candidate–centre distances (for pruning), computed like all
    /// others.
    fn candidate_center_distances(&mut self) {
        let (trials, step) = (self.trials, self.chosen.len());
        self.cc.resize(trials * step, 0.0);
        crate::linalg::dot_nt(
            &self.cand,
            trials,
            &self.centers,
            step,
            self.d,
            &mut self.cc,
        );
        for t in 0..trials {
            for (j, v) in self.cc[t * step..(t + 1) * step].iter_mut().enumerate() {
                *v = (self.cand_norms[t] - 2.0 * *v + self.center_norms[j]).max(0.0);
            }
        }
    }

    /// Pass 1: per block, the candidates' squared distances (kept for pass
    /// 2) and potentials; returns the candidate of least potential (the
    /// first among equals) and how many blocks pruning skipped.
    fn score_candidates(&mut self) -> (usize, usize) {
        let (x, x_norms, d, trials, prune) =
            (self.x, self.x_norms, self.d, self.trials, self.prune);
        let step = self.chosen.len();
        let (cc, cand, cand_norms) = (&self.cc, &self.cand, &self.cand_norms);
        let (center_norms, cand_idx, has_cand) =
            (&self.center_norms, &self.cand_idx, &self.has_cand);
        let block_pots: Vec<(bool, Vec<f64>)> = x
            .par_chunks(ROW_BLOCK * d)
            .zip(self.dist.par_chunks_mut(ROW_BLOCK * trials))
            .zip(self.closest.par_chunks(ROW_BLOCK))
            .zip(self.assign.par_chunks(ROW_BLOCK))
            .enumerate()
            .map(|(b, (((xb, db), cb), ab))| {
                let rows = cb.len();
                let base = b * ROW_BLOCK;
                let nb = &x_norms[base..base + rows];
                let mut p = vec![0f64; trials];
                if prune
                    && !has_cand[b]
                    && block_prunable(cb, ab, nb, center_norms, cand_norms, cc, step)
                {
                    for &c in cb {
                        for v in p.iter_mut() {
                            *v += c as f64;
                        }
                    }
                    return (false, p);
                }
                crate::kernels::block_dots(xb, rows, cand, trials, d, db);
                for r in 0..rows {
                    let (xn, c) = (nb[r], cb[r]);
                    let dr = &mut db[r * trials..(r + 1) * trials];
                    for t in 0..trials {
                        let v = if base + r == cand_idx[t] {
                            0.0
                        } else {
                            (xn - 2.0 * dr[t] + cand_norms[t]).max(0.0)
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
        for (c, bp) in self.computed.iter_mut().zip(&block_pots) {
            *c = bp.0;
        }
        let skipped = block_pots.iter().filter(|b| !b.0).count();
        (best, skipped)
    }

    /// Pass 2: makes candidate `best` a centre, folding it into `closest`
    /// (computed blocks only: a skipped block is unchanged) and refreshing
    /// the block sums.
    fn add_center(&mut self, best: usize) {
        let (d, trials) = (self.d, self.trials);
        let step = self.chosen.len();
        let computed = &self.computed;
        self.closest
            .par_chunks_mut(ROW_BLOCK)
            .zip(self.assign.par_chunks_mut(ROW_BLOCK))
            .zip(self.dist.par_chunks(ROW_BLOCK * trials))
            .zip(self.sums.par_iter_mut())
            .enumerate()
            .for_each(|(b, (((cb, ab), db), s))| {
                if !computed[b] {
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
        self.centers
            .extend_from_slice(&self.cand[best * d..(best + 1) * d]);
        self.center_norms.push(self.cand_norms[best]);
        self.chosen.push(self.cand_idx[best]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::tests::{hd_blobs, in_pool};
    use crate::linalg::row_sq_norms;

    #[test]
    fn greedy_kmeanspp_pruning_changes_nothing() {
        let d = 16;
        for (sorted, noise, k) in [(true, 0.5, 12), (false, 0.5, 9), (true, 30.0, 20)] {
            let x = hd_blobs(600, 10, d, noise, sorted);
            let n = x.len() / d;
            let norms = row_sq_norms(&x, d);
            let (a, skipped) = in_pool(2, || {
                seed_and_count(&x, &norms, n, d, k, None, &mut Rng::new(5), true).unwrap()
            });
            let b = in_pool(1, || {
                greedy_kmeanspp(&x, &norms, n, d, k, None, &mut Rng::new(5), false).unwrap()
            });
            let c = in_pool(3, || {
                greedy_kmeanspp(&x, &norms, n, d, k, None, &mut Rng::new(5), true).unwrap()
            });
            assert_eq!(a, b, "sorted={sorted} noise={noise}");
            assert_eq!(a, c);
            if sorted && noise < 1.0 {
                assert!(skipped > 0, "pruning never fired");
            }
        }
    }
}
