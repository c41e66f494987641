//! Lloyd's iterations, with or without the grouped bounds.

use crate::linalg::{nearest, row_sq_norms, sq_dist, Metric};

use super::assign::{assign_grouped, GroupedCentroids};
use super::bounds::{half_separation, Bounds, Groups};
use super::sums::{exact_inertia, ClusterSums};
use super::KMeansResult;

/// Lloyd iterations from `centroids`; returns the run's result with labels
/// and inertia taken against the returned centroids.
///
/// With `bounded`, the assignment step skips the points and groups of
/// centroids whose bounds prove the label unchanged ([`assign_grouped`]); the
/// labels are those of the plain step (up to exact float ties), and so are the
/// centroids.
#[allow(clippy::too_many_arguments)]
pub(super) fn lloyd(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::assign::GROUP_PRODUCTS;
    use crate::kmeans::seeding::random_init;
    use crate::kmeans::tests::{blobs, hd_blobs, in_pool};
    use crate::rng::Rng;

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
}
