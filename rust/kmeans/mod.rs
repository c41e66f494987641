//! Lloyd's k-means with k-means++ initialisation, restarts and an optional
//! spherical (cosine) mode.
//!
//! The assignment step is exact Lloyd with Yinyang-style bounds: centroids
//! are put in groups of about [`GROUP_SIZE`] nearby ones, each point keeps an
//! upper bound on its distance to its centroid and a lower bound per group,
//! and a point or a group is skipped only when the bounds prove it cannot
//! change the label. The bounds are set up only once few points still change
//! cluster (before that a bounded step computes nearly every distance and
//! costs more than a plain one), so short runs pay for none. The update step keeps running per-cluster sums moved by
//! the points that changed cluster.
//!
//! Determinism: for a given seed the result is the same bit for bit whatever
//! the number of threads. Distances are computed in fixed row blocks, every
//! sum over points is taken in a fixed order (cluster sums built in index
//! order, then moved by the points that changed cluster in index order;
//! potentials per block then over blocks in order), and all random draws
//! happen on one thread.

mod assign;
mod bounds;
mod lloyd;
mod plain;
mod seeding;
mod sums;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{check_finite, check_matrix, Error, Result};
use crate::kernels::screen::QuantCache;
use crate::linalg::{checked_sq_norms, normalize_rows};
use crate::rng::Rng;

use assign::GROUP_BLOCK;
use lloyd::lloyd;
use seeding::{greedy_kmeanspp, random_init};
pub use sums::exact_inertia;

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
    /// After the last update, label every point with its nearest returned
    /// centroid (scikit-learn's labels; one more distance pass unless the
    /// last update moved no centroid). `false`: the labels of the last
    /// assignment step, whose member means the returned centroids are (the
    /// partition faiss's centroids come from), without that pass.
    pub reassign: bool,
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
            reassign: true,
        }
    }
}

/// The outcome of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// k×d centroids, row-major.
    pub centroids: Vec<f32>,
    /// The nearest centroid of each point (with `reassign`; else the label
    /// of the last assignment step).
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
    if params.n_init > MAX_N_INIT {
        return Err(Error::invalid(
            "n_init",
            format!("at most {MAX_N_INIT} restarts, got {}", params.n_init),
        ));
    }
    if !(params.tol.is_finite() && params.tol >= 0.0) {
        return Err(Error::invalid("tol", "must be a finite number ≥ 0"));
    }
    // Outside spherical mode the checked norms below find the non-finite
    // rows in the same pass as the norms (one pass over `x` instead of two).
    let mut x_norms = None;
    if params.spherical {
        check_finite("x", x, d)?;
    } else {
        x_norms = Some(checked_sq_norms("x", x, d)?);
    }
    let x: Cow<[f32]> = if params.spherical {
        let mut owned = x.to_vec();
        if let Some(row) = normalize_rows(&mut owned, d) {
            return Err(Error::invalid(
                "x",
                format!(
                    "row {row} has zero norm (or one below 1.1e-19); spherical k-means needs non-zero rows"
                ),
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
            if !params.spherical {
                checked_sq_norms("init", &c, d)?;
            }
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
    // also rejects rows of norm ≥ 1e18, whose squares overflow f32 (after
    // normalisation, in spherical mode, there are none)
    let x_norms = match x_norms {
        Some(norms) => norms,
        None => checked_sq_norms("x", x, d)?,
    };
    // tol = 0 needs no variance (a pass over `x`)
    let tol = if params.tol > 0.0 {
        params.tol * mean_feature_variance(x, n, d)
    } else {
        0.0
    };
    let mut rng = Rng::new(params.seed);
    let runs = if given.is_some() { 1 } else { params.n_init };
    // Bounds pay only when a step is long enough to amortise their
    // bookkeeping (same results either way).
    let bounded = n.saturating_mul(d).saturating_mul(k) >= BOUNDED_MIN_WORK;
    // The seeds of the restarts are drawn in order, and they alone draw from
    // `rng`, so the restarts' Lloyd runs are independent of each other.
    let draw = |rng: &mut Rng| -> Result<Vec<f32>> {
        Ok(match (&params.init, &given) {
            (_, Some(c)) => c.clone(),
            (Init::Random, _) => random_init(x, n, d, k, rng),
            _ => gather_rows(
                x,
                d,
                &greedy_kmeanspp(x, &x_norms, n, d, k, params.n_local_trials, rng, true)?,
            ),
        })
    };
    // the rows as the AMX screen quantizes them, for every restart
    let quant = QuantCache::new(n, d, GROUP_BLOCK);
    let run = |init: Vec<f32>| {
        lloyd(
            x,
            &x_norms,
            &quant,
            n,
            d,
            init,
            params.max_iter,
            tol,
            params.spherical,
            bounded,
            params.reassign,
        )
    };
    // Small problems run their restarts side by side (a step is too short to
    // split well), RESTART_CHUNK at a time; large ones one after the other,
    // each step parallel, so that only one restart's buffers are alive at a
    // time. Same results either way: only the seeds draw from `rng`, in order.
    let chunk = if side_by_side && runs > 1 {
        RESTART_CHUNK
    } else {
        1
    };
    let mut best: Option<KMeansResult> = None;
    let mut done = 0;
    while done < runs {
        let m = chunk.min(runs - done);
        let inits = (0..m).map(|_| draw(&mut rng)).collect::<Result<Vec<_>>>()?;
        let results: Vec<KMeansResult> = if m > 1 {
            inits.into_par_iter().map(run).collect()
        } else {
            inits.into_iter().map(run).collect()
        };
        // the first restart of least inertia, as when they ran one by one
        for r in results {
            best = match best {
                Some(b) if r.inertia < b.inertia => Some(r),
                Some(b) => Some(b),
                None => Some(r),
            };
        }
        done += m;
    }
    best.ok_or_else(|| Error::invalid("n_init", "must be at least 1"))
}

/// Most restarts [`kmeans`] accepts: more is taken for a mistake (each
/// restart is a whole k-means run).
pub const MAX_N_INIT: usize = 1 << 20;

/// Restarts run side by side at once (bounds the memory of many restarts).
const RESTART_CHUNK: usize = 64;

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
    greedy_kmeanspp(x, &x_norms, n, d, k, n_local_trials, &mut rng, true)
}

/// The rows `idx` of the n×d matrix `x`, in that order.
fn gather_rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Mean over features of the per-feature variance (f64): sums per fixed
/// block of [`VARIANCE_BLOCK`] rows, in parallel, added in block order (the
/// same bits whatever the thread count).
fn mean_feature_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let add_blocks = |parts: Vec<Vec<f64>>| {
        parts.into_iter().fold(vec![0f64; d], |mut acc, p| {
            acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
            acc
        })
    };
    let mut mean = add_blocks(
        x.par_chunks(VARIANCE_BLOCK * d)
            .map(|xb| {
                let mut s = vec![0f64; d];
                for row in xb.chunks(d) {
                    for (m, &v) in s.iter_mut().zip(row) {
                        *m += v as f64;
                    }
                }
                s
            })
            .collect(),
    );
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let var = add_blocks(
        x.par_chunks(VARIANCE_BLOCK * d)
            .map(|xb| {
                let mut s = vec![0f64; d];
                for row in xb.chunks(d) {
                    for ((a, &v), m) in s.iter_mut().zip(row).zip(&mean) {
                        let t = v as f64 - m;
                        *a += t * t;
                    }
                }
                s
            })
            .collect(),
    );
    var.iter().sum::<f64>() / (n as f64 * d as f64)
}

/// Rows per block of [`mean_feature_variance`] (fixed: the sums must not
/// depend on the thread count).
const VARIANCE_BLOCK: usize = 4096;

/// Smallest n·d·k for which Lloyd keeps bounds (below, plain steps are
/// cheaper than the bookkeeping).
const BOUNDED_MIN_WORK: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs in 2-D, `per` points each.
    pub(crate) fn blobs(per: usize, seed: u64) -> (Vec<f32>, usize) {
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

    pub(crate) fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// `per` points around each of `centers` random centres in `d` dimensions
    /// (spread `noise`), in an order that keeps blobs contiguous when
    /// `sorted`.
    pub(crate) fn hd_blobs(
        per: usize,
        centers: usize,
        d: usize,
        noise: f32,
        sorted: bool,
    ) -> Vec<f32> {
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

    /// The same labels, and the same bits of centroids and inertia.
    pub(crate) fn assert_same_bits(a: &KMeansResult, b: &KMeansResult) {
        assert_eq!(a.labels, b.labels);
        assert!(a
            .centroids
            .iter()
            .zip(&b.centroids)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
    }

    #[test]
    fn feature_variance_is_blockwise_exact_and_thread_free() {
        let mut rng = Rng::new(31);
        let (n, d) = (2 * VARIANCE_BLOCK + 5, 3);
        let x: Vec<f32> = (0..n * d)
            .map(|i| rng.next_f64() as f32 * (1 + i % 3) as f32)
            .collect();
        let mut want = 0f64;
        for t in 0..d {
            let col: Vec<f64> = (0..n).map(|i| x[i * d + t] as f64).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            want += col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        }
        want /= d as f64;
        let one = in_pool(1, || mean_feature_variance(&x, n, d));
        assert!((one - want).abs() < 1e-12 * want, "{one} vs {want}");
        assert_eq!(
            one.to_bits(),
            in_pool(3, || mean_feature_variance(&x, n, d)).to_bits()
        );
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
    fn the_amx_screen_changes_no_bit() {
        // 2 000 rows near 256 centres, k = 256 and d = 256 (the screen's
        // range): the same run with the screen off and (where the CPU has
        // AMX) on
        let mut rng = Rng::new(21);
        let (n, d, k) = (2000, 256, 256);
        assert!(crate::kernels::screen::worth_it(k, d, false));
        let centres: Vec<f32> = (0..k * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            let c = (i * 7919) % k;
            for t in 0..d {
                x.push(centres[c * d + t] + (rng.next_f64() as f32 - 0.5) * 1.5);
            }
        }
        let run = |amx: bool| {
            crate::set_amx(amx);
            let mut p = KMeansParams::new(k);
            p.max_iter = 4;
            p.tol = 0.0;
            kmeans(&x, n, d, &p).unwrap()
        };
        let (off, on) = (run(false), run(true));
        crate::set_amx(true);
        assert_same_bits(&off, &on);
        // the run moved points: the steps compared were not trivial
        assert_eq!(off.n_iter, 4);
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
    fn absurd_restarts_and_trials_are_errors_or_capped() {
        let (x, n) = blobs(20, 8);
        for n_init in [MAX_N_INIT + 1, 1 << 40, 1 << 63, usize::MAX] {
            let mut p = KMeansParams::new(2);
            p.n_init = n_init;
            let e = kmeans(&x, n, 2, &p).unwrap_err();
            assert!(e.to_string().starts_with("n_init:"), "{e}");
        }
        // more candidates per centre than points: capped at n
        let mut p = KMeansParams::new(2);
        p.n_local_trials = Some(n);
        let capped = kmeans(&x, n, 2, &p).unwrap();
        for trials in [n + 1, 1_000_000_000, 1 << 62, usize::MAX] {
            p.n_local_trials = Some(trials);
            assert_eq!(kmeans(&x, n, 2, &p).unwrap(), capped);
            let seeds = kmeans_plusplus(&x, n, 2, 3, 0, Some(trials)).unwrap();
            assert_eq!(seeds, kmeans_plusplus(&x, n, 2, 3, 0, Some(n)).unwrap());
        }
    }

    #[test]
    fn huge_rows_are_rejected_and_large_ones_are_exact() {
        // rows of ~1e19: squared norms overflow f32 (inertia 4e40, not 0)
        let pts = [[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5]];
        for scale in [1e17f32, 1e19] {
            let x: Vec<f32> = pts.iter().flatten().map(|v| v * scale).collect();
            let mut p = KMeansParams::new(3);
            let r = kmeans(&x, 3, 2, &p);
            let seeds = kmeans_plusplus(&x, 3, 2, 3, 0, None);
            if scale < 1e18 {
                assert_eq!(r.unwrap().inertia, 0.0);
                assert!(seeds.is_ok());
            } else {
                assert_eq!(r.unwrap_err(), crate::error::too_large("x", 0));
                assert_eq!(seeds.unwrap_err(), crate::error::too_large("x", 0));
                // spherical k-means normalises them first: fine
                p.spherical = true;
                assert!(kmeans(&x, 3, 2, &p).is_ok());
            }
        }
        let (x, n) = blobs(10, 9);
        let mut p = KMeansParams::new(2);
        p.init = Init::Given(vec![0.0, 0.0, 5e18, 0.0]);
        assert_eq!(
            kmeans(&x, n, 2, &p).unwrap_err(),
            crate::error::too_large("init", 1)
        );
    }

    #[test]
    fn subnormal_rows_are_zero_for_spherical_kmeans() {
        let x = [1.0f32, 0.0, 0.0, 1.0, 1e-40, -1e-40];
        let mut p = KMeansParams::new(2);
        p.spherical = true;
        let e = kmeans(&x, 3, 2, &p).unwrap_err();
        assert!(e.to_string().starts_with("x: row 2 has zero norm"), "{e}");
        let y = [1.0f32, 0.0, 0.0, 1.0, 1e-18, -1e-18];
        let r = kmeans(&y, 3, 2, &p).unwrap();
        assert!(r.centroids.iter().all(|v| v.is_finite()), "{r:?}");
        p.init = Init::Given(vec![1.0, 0.0, 1e-41, 0.0]);
        let e = kmeans(&y, 3, 2, &p).unwrap_err();
        assert!(
            e.to_string().starts_with("init: row 1 has zero norm"),
            "{e}"
        );
    }

    #[test]
    fn random_arguments_give_an_error_or_a_consistent_result() {
        let values = [0.0f32, 1.0, -2.5, 1e-40, 3e17, 2e19, f32::MAX, f32::NAN];
        let sizes = [0usize, 1, 2, 3, 7, 1 << 40, usize::MAX];
        for seed in 0..300u64 {
            let mut r = Rng::new(seed);
            let (n, d) = (r.below(6), 1 + r.below(3));
            let x: Vec<f32> = (0..n * d)
                .map(|_| {
                    if r.below(8) == 0 {
                        values[r.below(values.len())]
                    } else {
                        r.next_f64() as f32
                    }
                })
                .collect();
            let mut p = KMeansParams::new(sizes[r.below(5)]);
            p.n_init = sizes[r.below(sizes.len())];
            p.max_iter = sizes[r.below(5)];
            p.tol = [0.0, 1e-4, -1.0, f64::NAN][r.below(4)];
            p.spherical = r.below(2) == 0;
            p.n_local_trials =
                [None, Some(0), Some(1), Some(1 << 40), Some(usize::MAX)][r.below(5)];
            p.init = match r.below(3) {
                0 => Init::Random,
                1 => Init::Given((0..p.k.min(8) * d).map(|i| i as f32).collect()),
                _ => Init::KMeansPlusPlus,
            };
            if let Ok(res) = kmeans(&x, n, d, &p) {
                assert_eq!(res.labels.len(), n, "seed {seed}");
                assert_eq!(res.centroids.len(), p.k * d, "seed {seed}");
                assert!(res.labels.iter().all(|&l| (l as usize) < p.k));
                assert!(res.inertia.is_finite() && res.inertia >= 0.0, "seed {seed}");
            }
            if let Ok(idx) = kmeans_plusplus(&x, n, d, p.k, seed, p.n_local_trials) {
                assert_eq!(idx.len(), p.k);
                assert!(idx.iter().all(|&i| i < n));
            }
        }
    }

    #[test]
    fn many_restarts_in_chunks_give_the_sequential_result() {
        let mut rng = Rng::new(12);
        let (n, d) = (40, 2);
        let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32).collect();
        let mut p = KMeansParams::new(5);
        p.n_init = 2 * RESTART_CHUNK + 3;
        p.seed = 4;
        let seq = in_pool(2, || kmeans_with(&x, n, d, &p, false).unwrap());
        let par = in_pool(2, || kmeans_with(&x, n, d, &p, true).unwrap());
        assert_eq!(seq, par);
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
    fn one_local_trial_is_plain_greedy_kmeanspp() {
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
