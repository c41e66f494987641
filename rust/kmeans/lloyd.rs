//! Lloyd's iterations, with or without the grouped bounds.

use crate::kernels::argmin::Packed;
use crate::kernels::screen::{QuantCache, Screen};
use crate::linalg::{row_sq_norms, sq_dist};

use super::assign::{assign_full_screened, assign_grouped, AssignStats, GroupedCentroids};
use super::bounds::{half_separation, max_norm, Bounds, Groups};
use super::plain::{assign_plain, assign_plain_inertia};
use super::sums::{exact_inertia, ClusterSums};
use super::KMeansResult;

/// Lloyd iterations from `centroids`; returns the run's result with labels
/// taken against the returned centroids (`reassign`; else those of the
/// last assignment step) and the inertia of those labels.
///
/// With `bounded`, once few points change cluster ([`bounds_will_pay`]),
/// the assignment steps skip the points and groups of centroids whose
/// bounds prove the label unchanged ([`assign_grouped`]); the labels are
/// those of the plain step (up to exact float ties), and so are the
/// centroids. The rows the AMX screen quantizes are kept in `quant`
/// (shared by the restarts of one call: the rows are the same).
#[allow(clippy::too_many_arguments)]
pub(super) fn lloyd(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    n: usize,
    d: usize,
    centroids: Vec<f32>,
    max_iter: usize,
    tol: f64,
    spherical: bool,
    bounded: bool,
    reassign: bool,
) -> KMeansResult {
    lloyd_counting(
        x, x_norms, quant, n, d, centroids, max_iter, tol, spherical, bounded, reassign,
    )
    .0
}

/// One assignment step against `centroids`: a bounded one through `bounded`
/// when it is given, else a plain one; a bounded step adds its per-group
/// products and itself to `tally`.
#[allow(clippy::too_many_arguments)]
fn assign_step(
    bounded: Option<&mut BoundedSteps>,
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    d: usize,
    centroids: &[f32],
    c_norms: &[f32],
    max_iter: usize,
    labels: &mut [u32],
    dists: &mut [f32],
    tally: (&mut usize, &mut usize),
) {
    match bounded {
        Some(b) => {
            let stats = b.assign(
                x, x_norms, quant, d, centroids, c_norms, max_iter, labels, dists,
            );
            *tally.0 += stats.group_products;
            *tally.1 += 1;
        }
        None => assign_plain(x, x_norms, quant, d, centroids, c_norms, labels, dists),
    }
}

/// [`lloyd`], how many per-group products its bounded steps ran and how
/// many assignment steps (the final one included) were bounded ones.
#[allow(clippy::too_many_arguments)]
fn lloyd_counting(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    n: usize,
    d: usize,
    mut centroids: Vec<f32>,
    max_iter: usize,
    tol: f64,
    spherical: bool,
    bounded: bool,
    reassign: bool,
) -> (KMeansResult, usize, usize) {
    let k = centroids.len() / d;
    let mut labels = vec![0u32; n];
    let mut dists = vec![0f32; n];
    // The bounds are set up (by a full bounded step) only once the points
    // have mostly settled: see `bounds_will_pay`.
    let mut bounded_steps: Option<BoundedSteps> = None;
    let mut moved_last: Option<usize> = None;
    let mut group_products = 0;
    let mut bounded_count = 0;
    let mut sums = ClusterSums::new();
    let mut n_iter = 0;
    let mut converged = false;
    // whether the last update left every centroid as it was (bit for bit)
    let mut unchanged = false;
    // one assignment step, bounded through `b` when given
    let step = |b: Option<&mut BoundedSteps>,
                centroids: &[f32],
                c_norms: &[f32],
                labels: &mut [u32],
                dists: &mut [f32],
                tally: (&mut usize, &mut usize)| {
        assign_step(
            b, x, x_norms, quant, d, centroids, c_norms, max_iter, labels, dists, tally,
        )
    };
    for it in 0..max_iter {
        let c_norms = row_sq_norms(&centroids, d);
        if bounded && bounded_steps.is_none() && bounds_will_pay(moved_last, n) {
            bounded_steps = Some(BoundedSteps::new(&centroids, n, d));
        }
        let step_bounded = bounded_steps.as_mut().is_some_and(|b| b.next_is_bounded());
        step(
            bounded_steps.as_mut().filter(|_| step_bounded),
            &centroids,
            &c_norms,
            &mut labels,
            &mut dists,
            (&mut group_products, &mut bounded_count),
        );
        // The sums follow the labels of the previous step, so no point
        // moving means the labels did not change: converged.
        let moved = sums.update(x, d, k, &labels);
        let new = sums.centroids(x, d, &dists, &centroids, spherical);
        let sq_drift: Vec<f64> = (0..k)
            .map(|j| sq_dist(&new[j * d..(j + 1) * d], &centroids[j * d..(j + 1) * d]))
            .collect();
        let shift: f64 = sq_drift.iter().sum();
        if let Some(b) = &mut bounded_steps {
            b.set_drift(&sq_drift);
        }
        moved_last = Some(moved);
        unchanged = new
            .iter()
            .zip(&centroids)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        centroids = new;
        n_iter = it + 1;
        if moved == 0 || shift <= tol {
            converged = true;
            break;
        }
    }
    // The labels against the returned centroids: those of the last step
    // when its update changed no centroid, else one more assignment step,
    // bounded when the bounds are current (the plain step's labels either
    // way). Without `reassign`, the last step's labels stay (a run of no
    // step still needs one). A plain final step also sums the inertia,
    // from the rows while they are in cache.
    let mut inertia = None;
    if !unchanged && (reassign || n_iter == 0) {
        let c_norms = row_sq_norms(&centroids, d);
        match bounded_steps.as_mut().filter(|b| b.is_current()) {
            Some(b) => step(
                Some(b),
                &centroids,
                &c_norms,
                &mut labels,
                &mut dists,
                (&mut group_products, &mut bounded_count),
            ),
            None => {
                inertia = Some(assign_plain_inertia(
                    x,
                    x_norms,
                    quant,
                    d,
                    &centroids,
                    &c_norms,
                    &mut labels,
                    &mut dists,
                ));
            }
        }
    }
    let inertia = inertia.unwrap_or_else(|| exact_inertia(x, d, &centroids, &labels));
    let result = KMeansResult {
        centroids,
        labels,
        inertia,
        n_iter,
        converged,
    };
    (result, group_products, bounded_count)
}

/// Whether a Lloyd run should set up its bounds for the coming step, from
/// how many of the `n` points the last update moved (`None` before the
/// first step). The bounds prove a label unchanged only when the centroids
/// move little, which follows from few points changing cluster; while many
/// do, a bounded step computes nearly every distance (measured: over 90%
/// of them with 0.5–8% of the points moving, on clustered unit rows at
/// D = 384) and costs more than a plain one, and the bounds' set-up (a full
/// step that also keeps a lower bound per group) is wasted. So the first
/// step is plain (every point "moves" then), and the bounds start once
/// fewer than one point in [`SETTLED_FRACTION`] moved.
fn bounds_will_pay(moved_last: Option<usize>, n: usize) -> bool {
    moved_last.is_some_and(|m| m.saturating_mul(SETTLED_FRACTION) < n)
}

/// See [`bounds_will_pay`].
const SETTLED_FRACTION: usize = 128;

/// What the bounded steps of a Lloyd run keep from one step to the next.
struct BoundedSteps {
    groups: Groups,
    bounds: Bounds,
    /// How far each centroid moved in the last update, and the largest move
    /// per group (upper bounds).
    drift: Vec<f64>,
    group_drift: Vec<f64>,
    /// Whether the next bounded step compares every point with every
    /// centroid.
    full: bool,
    /// When a bounded step still computes more than half of the distances
    /// it costs more than a plain one (its products are smaller and its rows
    /// are copied per group), so the next `cooldown` steps are plain ones
    /// (no bounds kept), the last of them a full step that sets the bounds
    /// afresh; each failure doubles the wait (`backoff`), a success resets
    /// it.
    cooldown: usize,
    backoff: usize,
}

impl BoundedSteps {
    /// Groups of the initial `centroids` and room for the bounds of `n`
    /// points.
    fn new(centroids: &[f32], n: usize, d: usize) -> Self {
        let k = centroids.len() / d;
        let groups = Groups::new(centroids, k, d);
        let t = groups.len();
        BoundedSteps {
            bounds: Bounds {
                upper: vec![0f32; if t > 0 { n } else { 0 }],
                lower: vec![0f32; n * t],
            },
            groups,
            drift: vec![0f64; k],
            group_drift: vec![0f64; t],
            full: true,
            cooldown: 0,
            backoff: 2,
        }
    }

    /// Whether the bounds were kept by the last step and it was not too
    /// costly (no cooldown started): a bounded step may follow.
    fn is_current(&self) -> bool {
        self.cooldown == 0 && !self.full
    }

    /// Whether the coming step is a bounded one (counts down a cooldown).
    fn next_is_bounded(&mut self) -> bool {
        if self.cooldown > 0 {
            self.cooldown -= 1;
            self.full = true;
            return self.cooldown == 0;
        }
        true
    }

    /// One bounded assignment step (see [`assign_grouped`]; a full one
    /// through the AMX screen where it applies, [`assign_full_screened`]),
    /// with empty clusters repaired from exact distances; adjusts the
    /// cooldown.
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &mut self,
        x: &[f32],
        x_norms: &[f32],
        quant: &QuantCache,
        d: usize,
        centroids: &[f32],
        c_norms: &[f32],
        max_iter: usize,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> AssignStats {
        let (n, k) = (labels.len(), c_norms.len());
        let full = self.full;
        if full {
            if let Some(sc) = Screen::for_step(centroids, c_norms, d, quant.keeps()) {
                // the bounds set up from the screen: measured 1.4× a plain
                // step's time, where a full grouped step (every distance by
                // groups) took 2–2.5×
                let packed = Packed::new(centroids, c_norms, d);
                assign_full_screened(
                    x,
                    x_norms,
                    quant,
                    d,
                    c_norms,
                    &packed,
                    &sc,
                    &self.groups,
                    labels,
                    dists,
                    &mut self.bounds,
                );
                self.full = false;
                return AssignStats {
                    distances: n * k,
                    group_products: 0,
                };
            }
        }
        let cp: Vec<f32> = self
            .groups
            .order
            .iter()
            .flat_map(|&j| {
                centroids[j as usize * d..(j as usize + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        let cp_norms: Vec<f32> = self
            .groups
            .order
            .iter()
            .map(|&j| c_norms[j as usize])
            .collect();
        let packed = (0..self.groups.len())
            .map(|g| {
                let (st, en) = (self.groups.start[g], self.groups.start[g + 1]);
                Packed::new(&cp[st * d..en * d], &cp_norms[st..en], d)
            })
            .collect();
        let all = Packed::new(&cp, &cp_norms, d);
        let mut gc = GroupedCentroids {
            c: centroids,
            c_norms,
            packed,
            all,
            groups: &self.groups,
            half_sep: if full {
                vec![0f32; k]
            } else {
                half_separation(centroids, c_norms, d)
            },
            drift: &self.drift,
            group_drift: &self.group_drift,
            c_max: max_norm(c_norms),
        };
        let mut stats = assign_grouped(x, x_norms, d, &gc, full, labels, dists, &mut self.bounds);
        if !full {
            if stats.distances * 2 > n * k {
                self.cooldown = self.backoff;
                self.backoff = (self.backoff * 2).min(max_iter.max(2));
            } else {
                self.backoff = 2;
            }
        }
        let mut has = vec![false; k];
        labels.iter().for_each(|&l| has[l as usize] = true);
        if !full && has.contains(&false) {
            // Empty clusters are repaired from exact distances of all points.
            gc.half_sep = vec![0f32; k];
            let repair = assign_grouped(x, x_norms, d, &gc, true, labels, dists, &mut self.bounds);
            stats = stats + repair;
        }
        self.full = false;
        stats
    }

    /// Takes the last update's squared centroid moves as drift bounds.
    fn set_drift(&mut self, sq_drift: &[f64]) {
        for (dr, &s) in self.drift.iter_mut().zip(sq_drift) {
            *dr = s.sqrt() * (1.0 + 1e-9);
        }
        self.groups
            .max_per_group(&self.drift, &mut self.group_drift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_start_once_points_have_settled() {
        assert!(!bounds_will_pay(None, 1_000_000));
        assert!(!bounds_will_pay(Some(1_000_000), 1_000_000));
        let n = 1000 * SETTLED_FRACTION;
        assert!(!bounds_will_pay(Some(1000), n));
        assert!(bounds_will_pay(Some(999), n));
        assert!(bounds_will_pay(Some(0), 10));
        assert!(!bounds_will_pay(Some(1), 10));
        assert!(!bounds_will_pay(Some(usize::MAX), 10));
    }
    use crate::kmeans::assign::GROUP_BLOCK;
    use crate::kmeans::seeding::random_init;
    use crate::kmeans::tests::{assert_same_bits, blobs, hd_blobs, in_pool};
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
                    lloyd(
                        &x,
                        &norms,
                        &QuantCache::new(n, d, GROUP_BLOCK),
                        n,
                        d,
                        init.clone(),
                        iters,
                        0.0,
                        false,
                        bounded,
                        true,
                    )
                })
            };
            let plain = run(false, 1);
            let (fast, products, _) = in_pool(2, || {
                lloyd_counting(
                    &x,
                    &norms,
                    &QuantCache::new(n, d, GROUP_BLOCK),
                    n,
                    d,
                    init.clone(),
                    iters,
                    0.0,
                    false,
                    true,
                    true,
                )
            });
            if k >= 70 {
                assert!(Groups::new(&init, k, d).len() > 2);
                assert!(products > 0, "the grouped bounds never skipped a group");
            }
            assert_eq!(plain.labels, fast.labels, "noise={noise} k={k}");
            assert_eq!(plain.n_iter, fast.n_iter);
            let bits = |v: &[f32]| v.iter().map(|t| t.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain.centroids), bits(&fast.centroids));
            assert_eq!(plain.inertia.to_bits(), fast.inertia.to_bits());
            assert_eq!(fast, run(true, 3));
        }
        // Short runs on settled points: the bounds start after a few plain
        // steps and give the final labels too; same bits as plain steps.
        let x = hd_blobs(400, 10, d, 0.5, false);
        let n = x.len() / d;
        let norms = row_sq_norms(&x, d);
        let init = random_init(&x, n, d, 10, &mut Rng::new(5));
        let mut some_bounded = false;
        for iters in 1..=6 {
            let plain = lloyd(
                &x,
                &norms,
                &QuantCache::new(n, d, GROUP_BLOCK),
                n,
                d,
                init.clone(),
                iters,
                0.0,
                false,
                false,
                true,
            );
            let (fast, _, steps) = in_pool(2, || {
                lloyd_counting(
                    &x,
                    &norms,
                    &QuantCache::new(n, d, GROUP_BLOCK),
                    n,
                    d,
                    init.clone(),
                    iters,
                    0.0,
                    false,
                    true,
                    true,
                )
            });
            some_bounded |= steps > 0;
            assert_eq!(plain, fast, "iters={iters}");
            let bits = |v: &[f32]| v.iter().map(|t| t.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain.centroids), bits(&fast.centroids));
            assert_eq!(
                fast,
                in_pool(1, || lloyd(
                    &x,
                    &norms,
                    &QuantCache::new(n, d, GROUP_BLOCK),
                    n,
                    d,
                    init.clone(),
                    iters,
                    0.0,
                    false,
                    true,
                    true
                ))
            );
        }
        assert!(some_bounded, "no run set up its bounds");
        // Starts with empty clusters (repaired from exact distances).
        let (x, n) = blobs(50, 7);
        let norms = row_sq_norms(&x, 2);
        let init = vec![5.0, 5.0, 100.0, 100.0, 200.0, 200.0, 0.0, 0.1];
        let plain = lloyd(
            &x,
            &norms,
            &QuantCache::none(),
            n,
            2,
            init.clone(),
            20,
            0.0,
            false,
            false,
            true,
        );
        let fast = lloyd(
            &x,
            &norms,
            &QuantCache::none(),
            n,
            2,
            init,
            20,
            0.0,
            false,
            true,
            true,
        );
        assert_eq!(plain, fast);
    }

    #[test]
    fn bounds_set_up_through_the_amx_screen_change_no_bit() {
        // k = 256, d = 256 (the screen's range), clustered rows: the bounds
        // start within the run; with AMX (where the CPU has it) their full
        // step runs through the screen, and the run is the same bits
        let (d, k) = (256, 256);
        assert!(crate::kernels::screen::worth_it(k, d, false));
        let x = hd_blobs(12, k, d, 2.0, false);
        let n = x.len() / d;
        let norms = row_sq_norms(&x, d);
        let init = random_init(&x, n, d, k, &mut Rng::new(4));
        let run = |amx: bool| {
            crate::set_amx(amx);
            let quant = QuantCache::new(n, d, GROUP_BLOCK);
            let r = lloyd_counting(
                &x,
                &norms,
                &quant,
                n,
                d,
                init.clone(),
                30,
                0.0,
                false,
                true,
                true,
            );
            crate::set_amx(true);
            r
        };
        let ((off, _, off_bounded), (on, _, on_bounded)) = (run(false), run(true));
        assert!(
            off_bounded > 0 && on_bounded > 0,
            "the bounds never started"
        );
        assert_same_bits(&off, &on);
        assert_eq!(off.n_iter, on.n_iter);
    }

    #[test]
    fn without_reassign_the_centroids_are_the_means_of_the_labels() {
        let d = 8;
        let x = hd_blobs(200, 8, d, 6.0, false);
        let n = x.len() / d;
        let norms = row_sq_norms(&x, d);
        let init = random_init(&x, n, d, 12, &mut Rng::new(9));
        let mut differed = false;
        for iters in 0..=4 {
            for bounded in [false, true] {
                let run = |reassign| {
                    lloyd(
                        &x,
                        &norms,
                        &QuantCache::new(n, d, GROUP_BLOCK),
                        n,
                        d,
                        init.clone(),
                        iters,
                        0.0,
                        false,
                        bounded,
                        reassign,
                    )
                };
                let (nearest, last) = (run(true), run(false));
                assert_eq!(nearest.centroids, last.centroids, "iters={iters}");
                assert_eq!(nearest.n_iter, last.n_iter);
                differed |= nearest.labels != last.labels;
                if iters == 0 {
                    assert_eq!(nearest, last, "no step: the labels are the nearest");
                    continue;
                }
                // every non-empty cluster of `last` averages its members
                // (f64 sums, scaled by the inverse count as the update does)
                for j in 0..12u32 {
                    let mut sum = vec![0f64; d];
                    let mut count = 0usize;
                    for (row, _) in x.chunks(d).zip(&last.labels).filter(|(_, &l)| l == j) {
                        count += 1;
                        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
                    }
                    if count > 0 {
                        let inv = 1.0 / count as f64;
                        let mean: Vec<f32> = sum.iter().map(|s| (s * inv) as f32).collect();
                        assert_eq!(mean, &last.centroids[j as usize * d..(j as usize + 1) * d]);
                    }
                }
                let inertia =
                    crate::kmeans::sums::exact_inertia(&x, d, &last.centroids, &last.labels);
                assert_eq!(inertia.to_bits(), last.inertia.to_bits());
            }
        }
        assert!(
            differed,
            "the two labellings never differed: the test cannot fail"
        );
    }
}
