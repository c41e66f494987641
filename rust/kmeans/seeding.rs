//! The initial centroids: k distinct random rows, or (greedy) k-means++.

use rayon::prelude::*;

use crate::linalg::{nearest, Metric, ROW_BLOCK};
use crate::rng::Rng;

use super::bounds::block_prunable;

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
pub(super) fn greedy_kmeanspp(
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
            let before = SKIPPED_BLOCKS.load(std::sync::atomic::Ordering::Relaxed);
            let a = in_pool(2, || {
                greedy_kmeanspp(&x, &norms, n, d, k, None, &mut Rng::new(5), true)
            });
            let skipped = SKIPPED_BLOCKS.load(std::sync::atomic::Ordering::Relaxed) - before;
            let b = in_pool(1, || {
                greedy_kmeanspp(&x, &norms, n, d, k, None, &mut Rng::new(5), false)
            });
            let c = in_pool(3, || {
                greedy_kmeanspp(&x, &norms, n, d, k, None, &mut Rng::new(5), true)
            });
            assert_eq!(a, b, "sorted={sorted} noise={noise}");
            assert_eq!(a, c);
            if sorted && noise < 1.0 {
                assert!(skipped > 0, "pruning never fired");
            }
        }
    }
}
