//! Nearest-prototype lookup: for each query, the nearest centroid and its
//! score, parallel over blocks of queries.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{check_matrix, too_large, Error, Result, MAX_SQ_NORM, MIN_SQ_NORM};
use crate::kernels::{row_dots, run_widest, RowKernel, RowOps};
use crate::linalg::{checked_sq_norms, nearest, normalize_rows, Metric, ROW_BLOCK};

/// The similarity used by [`nearest_prototype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupMetric {
    /// Smallest squared Euclidean distance; the score is that distance.
    L2,
    /// Largest cosine similarity; the score is that similarity.
    Cosine,
}

impl std::str::FromStr for LookupMetric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l2" => Ok(LookupMetric::L2),
            "cosine" => Ok(LookupMetric::Cosine),
            other => Err(Error::invalid(
                "metric",
                format!("expected 'l2' or 'cosine', got {other:?}"),
            )),
        }
    }
}

fn zero_norm(arg: &'static str, row: usize) -> Error {
    Error::invalid(
        arg,
        format!("row {row} has zero norm (or one below 1.1e-19); cosine similarity is undefined"),
    )
}

fn normalized<'a>(arg: &'static str, x: &'a [f32], d: usize) -> Result<Cow<'a, [f32]>> {
    let mut owned = x.to_vec();
    if let Some(row) = normalize_rows(&mut owned, d) {
        return Err(zero_norm(arg, row));
    }
    Ok(Cow::Owned(owned))
}

/// Up to this many centroids the lookup scores each query row in one fused
/// pass (validation, norm and every dot product) instead of going through
/// blockwise matrix products, which do not pay off for a handful of columns.
const FUSED_MAX_K: usize = 16;

/// What the fused pass over a block of queries found wrong, as row indices
/// into the whole query matrix (the first of each kind).
#[derive(Debug, Default, Clone, Copy)]
struct BlockStatus {
    non_finite: Option<usize>,
    too_large: Option<usize>,
    zero_norm: Option<usize>,
}

/// The centroid side of a fused lookup.
struct Fused<'a> {
    /// k×d; unit rows for the cosine metric.
    c: &'a [f32],
    /// Squared centroid norms (L2 only).
    c_norms: &'a [f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
}

/// One block of queries to score: the rows of `xb` (the rows from `base`
/// on of the whole query matrix), their ids and scores to fill.
struct FusedBlock<'a, 'b> {
    f: &'a Fused<'a>,
    xb: &'b [f32],
    base: usize,
    ids: &'b mut [u32],
    scores: &'b mut [f32],
}

impl RowKernel for FusedBlock<'_, '_> {
    type Output = BlockStatus;

    /// Per row: its norm (which also validates it), its dot product with
    /// each centroid, and the best centroid, ties to the lowest index.
    #[inline(always)]
    unsafe fn run<R: RowOps>(self) -> BlockStatus {
        let FusedBlock {
            f,
            xb,
            base,
            ids,
            scores,
        } = self;
        // SAFETY: the CPU has `R`'s features (the caller's precondition).
        unsafe { fused_block::<R>(f, xb, base, ids, scores) }
    }
}

/// [`FusedBlock::run`].
///
/// # Safety
/// The CPU must have the features `R` is built for.
#[inline(always)]
unsafe fn fused_block<R: RowOps>(
    f: &Fused<'_>,
    xb: &[f32],
    base: usize,
    ids: &mut [u32],
    scores: &mut [f32],
) -> BlockStatus {
    let d = f.d;
    // `row_dots` below gets `k` rows of `d` values and each query row's `d`
    // values (`chunks_exact(d)`).
    debug_assert_eq!(f.c.len(), f.k * d);
    let mut status = BlockStatus::default();
    let mut dots = [0f32; FUSED_MAX_K];
    let dots = &mut dots[..f.k];
    for (r, ((x, id), score)) in xb
        .chunks_exact(d)
        .zip(ids.iter_mut())
        .zip(scores.iter_mut())
        .enumerate()
    {
        // SAFETY: the CPU has `R`'s features (the caller's precondition).
        let norm = unsafe { R::sq_norm(x) };
        // Finite f32 values cannot overflow the f64 norm: it is finite
        // exactly when the row is.
        if !norm.is_finite() {
            status.non_finite.get_or_insert(base + r);
        } else if norm >= MAX_SQ_NORM {
            status.too_large.get_or_insert(base + r);
        }
        // SAFETY: as above; `f.c` holds `dots.len() = k` rows of
        // `d = x.len()` values (asserted above).
        unsafe { row_dots::<R>(x, f.c, dots) };
        let (best, value) = match f.metric {
            LookupMetric::L2 => {
                let mut best = 0;
                let mut best_v = f.c_norms[0] - 2.0 * dots[0];
                for (j, (&cn, &dot)) in f.c_norms.iter().zip(dots.iter()).enumerate().skip(1) {
                    let v = cn - 2.0 * dot;
                    if v < best_v {
                        best_v = v;
                        best = j;
                    }
                }
                (best, (norm as f32 + best_v).max(0.0))
            }
            LookupMetric::Cosine => {
                if norm < MIN_SQ_NORM {
                    status.zero_norm.get_or_insert(base + r);
                }
                let inv = (1.0 / norm.sqrt()) as f32;
                let mut best = 0;
                let mut best_v = dots[0] * inv;
                for (j, &dot) in dots.iter().enumerate().skip(1) {
                    let v = dot * inv;
                    if v > best_v {
                        best_v = v;
                        best = j;
                    }
                }
                (best, best_v)
            }
        };
        *id = best as u32;
        *score = value;
    }
    status
}

/// For each of the `q` rows of `queries` (q×d), the index of the nearest of
/// the `k` rows of `centroids` (k×d) and its score. Ties go to the lowest
/// index.
pub fn nearest_prototype(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    check_matrix("queries", queries, q, d)?;
    check_matrix("centroids", centroids, k, d)?;
    if k == 0 {
        return Err(Error::invalid("centroids", "must have at least one row"));
    }
    if d == 0 {
        return Err(Error::invalid("centroids", "must have at least one column"));
    }
    if k <= FUSED_MAX_K {
        return nearest_fused(queries, q, centroids, k, d, metric);
    }
    blockwise(queries, q, centroids, k, d, metric)
}

/// [`nearest_prototype`] by blockwise matrix products (inputs checked for
/// shape, `k ≥ 1`, `d ≥ 1`).
fn blockwise(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    // One parallel pass over the queries both validates them and gives the
    // norms the L2 metric needs.
    let q_norms = checked_sq_norms("queries", queries, d)?;
    let c_norms = checked_sq_norms("centroids", centroids, d)?;
    let (qs, cs, m, q_norms, c_norms) = match metric {
        LookupMetric::L2 => (
            Cow::Borrowed(queries),
            Cow::Borrowed(centroids),
            Metric::L2,
            q_norms,
            c_norms,
        ),
        LookupMetric::Cosine => (
            normalized("queries", queries, d)?,
            normalized("centroids", centroids, d)?,
            Metric::InnerProduct,
            Vec::new(),
            vec![0.0; k],
        ),
    };
    let mut ids = vec![0u32; q];
    let mut scores = vec![0f32; q];
    nearest(&qs, &q_norms, &cs, &c_norms, d, m, &mut ids, &mut scores);
    Ok((ids, scores))
}

/// [`nearest_prototype`] for `k ≤ FUSED_MAX_K` centroids: one parallel pass
/// over fixed blocks of queries validates each row, takes its norm and its
/// dot products with every centroid, and picks the nearest. Errors are
/// reported in the order of the blockwise path.
fn nearest_fused(
    queries: &[f32],
    q: usize,
    centroids: &[f32],
    k: usize,
    d: usize,
    metric: LookupMetric,
) -> Result<(Vec<u32>, Vec<f32>)> {
    // A few rows: sequential, the same sums as `checked_sq_norms`.
    let c_norms: Vec<f64> = centroids
        .chunks_exact(d)
        .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    if let Some(row) = c_norms.iter().position(|v| !v.is_finite()) {
        // A bad query row is reported first, as on the blockwise path.
        checked_sq_norms("queries", queries, d)?;
        return Err(Error::NonFinite {
            arg: "centroids",
            row,
        });
    }
    if let Some(row) = c_norms.iter().position(|&v| v >= MAX_SQ_NORM) {
        checked_sq_norms("queries", queries, d)?;
        return Err(too_large("centroids", row));
    }
    let (cs, c_norms, c_zero) = match metric {
        LookupMetric::L2 => (
            Cow::Borrowed(centroids),
            c_norms.iter().map(|&v| v as f32).collect(),
            None,
        ),
        LookupMetric::Cosine => {
            let mut owned = centroids.to_vec();
            let zero = normalize_rows(&mut owned, d);
            (Cow::Owned(owned), Vec::new(), zero)
        }
    };
    let f = Fused {
        c: &cs,
        c_norms: &c_norms,
        k,
        d,
        metric,
    };
    let mut ids = vec![0u32; q];
    let mut scores = vec![0f32; q];
    let statuses: Vec<BlockStatus> = queries
        .par_chunks(ROW_BLOCK * d)
        .zip(ids.par_chunks_mut(ROW_BLOCK))
        .zip(scores.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .map(|(b, ((xb, ib), sb))| {
            // The same kernel for every block and thread: the CPU's level
            // is detected once.
            run_widest(FusedBlock {
                f: &f,
                xb,
                base: b * ROW_BLOCK,
                ids: ib,
                scores: sb,
            })
        })
        .collect();
    if let Some(row) = statuses.iter().find_map(|s| s.non_finite) {
        return Err(Error::NonFinite {
            arg: "queries",
            row,
        });
    }
    if let Some(row) = statuses.iter().find_map(|s| s.too_large) {
        return Err(too_large("queries", row));
    }
    if let Some(row) = statuses.iter().find_map(|s| s.zero_norm) {
        return Err(zero_norm("queries", row));
    }
    if let Some(row) = c_zero {
        return Err(zero_norm("centroids", row));
    }
    Ok((ids, scores))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuLevel;
    use crate::kernels::tests::values;
    use crate::kernels::{run_at, Portable};

    #[test]
    fn huge_rows_are_rejected_and_large_ones_are_exact() {
        // squared norms of ~1e19 overflow f32: the nearest row of x to
        // itself came out wrong ([0, 2, 2])
        for k in [3, 40] {
            for metric in [LookupMetric::L2, LookupMetric::Cosine] {
                let mut x: Vec<f32> = (0..k * 2).map(|i| (i as f32 + 1.0) * 5e15).collect();
                x[1] = -x[1];
                let (ids, _) = nearest_prototype(&x, k, &x, k, 2, metric).unwrap();
                if metric == LookupMetric::L2 {
                    assert_eq!(ids, (0..k as u32).collect::<Vec<_>>(), "k={k}");
                }
                x[2 * 2 + 1] = 2e19;
                let e = nearest_prototype(&x, k, &x[2..], k - 1, 2, metric).unwrap_err();
                assert_eq!(e, too_large("queries", 2), "k={k} {metric:?}");
                let q = [1.0f32, 1.0];
                let e = nearest_prototype(&q, 1, &x, k, 2, metric).unwrap_err();
                assert_eq!(e, too_large("centroids", 2), "k={k} {metric:?}");
            }
        }
    }

    #[test]
    fn subnormal_rows_count_as_zero_for_cosine() {
        for k in [2, 40] {
            let mut c: Vec<f32> = (0..k * 2).map(|i| 1.0 + i as f32).collect();
            let tiny = [1e-40f32, 1e-40, 1.0, 2.0];
            let e = nearest_prototype(&tiny, 2, &c, k, 2, LookupMetric::Cosine).unwrap_err();
            assert!(
                e.to_string().starts_with("queries: row 0 has zero norm"),
                "{e}"
            );
            // small but normal rows work, with finite scores
            let small = [1e-18f32, 2e-18];
            let (_, s) = nearest_prototype(&small, 1, &c, k, 2, LookupMetric::Cosine).unwrap();
            assert!(s[0].is_finite() && s[0] <= 1.0 + 1e-6, "{s:?}");
            c[3] = 1e-41;
            c[2] = 0.0;
            let e = nearest_prototype(&small, 1, &c, k, 2, LookupMetric::Cosine).unwrap_err();
            assert!(
                e.to_string().starts_with("centroids: row 1 has zero norm"),
                "{e}"
            );
            // L2 has no trouble with them
            assert!(nearest_prototype(&tiny, 2, &c, k, 2, LookupMetric::L2).is_ok());
        }
    }

    #[test]
    fn l2_and_cosine() {
        let c = [1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0];
        let q = [0.9f32, 0.1, 0.0, 5.0, -2.0, -3.0, 10.0, 1.0];
        let (ids, scores) = nearest_prototype(&q, 4, &c, 3, 2, LookupMetric::L2).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0]);
        assert!((scores[0] - 0.02).abs() < 1e-5);
        let (ids, scores) = nearest_prototype(&q, 4, &c, 3, 2, LookupMetric::Cosine).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0]);
        assert!((scores[1] - 1.0).abs() < 1e-6);
        let expect = (2.0f32 + 3.0) / (2.0f32.sqrt() * 13.0f32.sqrt());
        assert!((scores[2] - expect).abs() < 1e-6);
    }

    #[test]
    fn empty_queries_and_errors() {
        let c = [1.0f32, 0.0];
        let (ids, _) = nearest_prototype(&[], 0, &c, 1, 2, LookupMetric::L2).unwrap();
        assert!(ids.is_empty());
        assert!(nearest_prototype(&[1.0], 1, &c, 1, 2, LookupMetric::L2).is_err());
        assert!(nearest_prototype(&[0.0, 0.0], 1, &c, 1, 2, LookupMetric::Cosine).is_err());
        assert!(nearest_prototype(&[f32::NAN, 0.0], 1, &c, 1, 2, LookupMetric::L2).is_err());
        assert!(nearest_prototype(&[1.0, 0.0], 1, &[], 0, 2, LookupMetric::L2).is_err());
        assert!("dot".parse::<LookupMetric>().is_err());
    }
    /// Brute force in f64: for each query, the distance (L2) or cosine to
    /// every centroid.
    fn brute(x: &[f32], c: &[f32], d: usize, metric: LookupMetric) -> Vec<Vec<f64>> {
        let norm = |r: &[f32]| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        x.chunks(d)
            .map(|xr| {
                c.chunks(d)
                    .map(|cr| match metric {
                        LookupMetric::L2 => crate::linalg::sq_dist(xr, cr),
                        LookupMetric::Cosine => {
                            let dot: f64 =
                                xr.iter().zip(cr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            dot / (norm(xr) * norm(cr))
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// `ids`/`scores` pick a best centroid (within rounding) and give its
    /// score.
    fn check_against_brute(
        x: &[f32],
        c: &[f32],
        d: usize,
        metric: LookupMetric,
        ids: &[u32],
        scores: &[f32],
    ) {
        for (i, all) in brute(x, c, d, metric).iter().enumerate() {
            let got = all[ids[i] as usize];
            let (best, tol) = match metric {
                LookupMetric::L2 => {
                    let best = all.iter().cloned().fold(f64::INFINITY, f64::min);
                    (best, 1e-5 * (1.0 + best))
                }
                LookupMetric::Cosine => {
                    (all.iter().cloned().fold(f64::NEG_INFINITY, f64::max), 1e-5)
                }
            };
            match metric {
                LookupMetric::L2 => assert!(got <= best + tol, "row {i}: {got} vs {best}"),
                LookupMetric::Cosine => assert!(got >= best - tol, "row {i}: {got} vs {best}"),
            }
            assert!(
                (scores[i] as f64 - best).abs() <= tol * 10.0,
                "row {i}: {} vs {best}",
                scores[i]
            );
        }
    }

    /// Runs one kernel variant over the whole matrix, block by block.
    fn run_variant(
        variant: &BlockFn,
        x: &[f32],
        c: &[f32],
        k: usize,
        d: usize,
        metric: LookupMetric,
    ) -> (Vec<u32>, Vec<f32>, Vec<BlockStatus>) {
        let q = x.len() / d;
        let mut cs = c.to_vec();
        let c_norms: Vec<f32> = match metric {
            LookupMetric::L2 => crate::linalg::row_sq_norms(c, d),
            LookupMetric::Cosine => {
                normalize_rows(&mut cs, d);
                Vec::new()
            }
        };
        let f = Fused {
            c: &cs,
            c_norms: &c_norms,
            k,
            d,
            metric,
        };
        let (mut ids, mut scores) = (vec![0u32; q], vec![0f32; q]);
        let statuses = x
            .chunks(ROW_BLOCK * d)
            .zip(ids.chunks_mut(ROW_BLOCK))
            .zip(scores.chunks_mut(ROW_BLOCK))
            .enumerate()
            .map(|(b, ((xb, ib), sb))| variant(&f, xb, b * ROW_BLOCK, ib, sb))
            .collect();
        (ids, scores, statuses)
    }

    /// One kernel variant, run on a block.
    type BlockFn = Box<dyn Fn(&Fused<'_>, &[f32], usize, &mut [u32], &mut [f32]) -> BlockStatus>;

    /// Every kernel variant this CPU can run, by name.
    fn variants() -> Vec<(String, BlockFn)> {
        let mut v: Vec<(String, BlockFn)> = vec![
            (
                "dispatch".into(),
                Box::new(|f, xb, base, ids, scores| {
                    run_widest(FusedBlock {
                        f,
                        xb,
                        base,
                        ids,
                        scores,
                    })
                }),
            ),
            (
                "portable-8".into(),
                // SAFETY: portable code needs no CPU feature.
                Box::new(|f, x, b, i, s| unsafe {
                    fused_block::<Portable<8, false>>(f, x, b, i, s)
                }),
            ),
        ];
        for level in CpuLevel::available() {
            v.push((
                format!("{level:?}"),
                Box::new(move |f, xb, base, ids, scores| {
                    assert!(level <= crate::cpu::level());
                    let kernel = FusedBlock {
                        f,
                        xb,
                        base,
                        ids,
                        scores,
                    };
                    // SAFETY: the CPU supports `level` (asserted above).
                    unsafe { run_at(level, kernel) }
                }),
            ));
        }
        v
    }

    #[test]
    fn fused_matches_brute_force_for_every_k_and_variant() {
        for &d in &[1usize, 3, 16, 17, 45, 384] {
            for k in 1..=FUSED_MAX_K {
                let q = 300;
                let x = values(q * d, (d * 100 + k) as u64);
                let c = values(k * d, (d * 100 + k) as u64 + 7);
                for metric in [LookupMetric::L2, LookupMetric::Cosine] {
                    let (ids, scores) = nearest_prototype(&x, q, &c, k, d, metric).unwrap();
                    check_against_brute(&x, &c, d, metric, &ids, &scores);
                    let (bids, bscores) = blockwise(&x, q, &c, k, d, metric).unwrap();
                    for i in 0..q {
                        assert!((scores[i] - bscores[i]).abs() <= 1e-5 * (1.0 + bscores[i].abs()));
                    }
                    // Ids differ only on near-ties (with d = 1 every cosine
                    // is ±1: all ties).
                    let check_ids = d > 1 || metric == LookupMetric::L2;
                    let same = ids.iter().zip(&bids).filter(|(a, b)| a == b).count();
                    assert!(
                        !check_ids || same + 2 >= q,
                        "d={d} k={k} {metric:?}: {same}/{q}"
                    );
                    for (name, variant) in variants() {
                        let (vids, vscores, st) = run_variant(&variant, &x, &c, k, d, metric);
                        assert!(st
                            .iter()
                            .all(|s| s.non_finite.is_none() && s.zero_norm.is_none()));
                        check_against_brute(&x, &c, d, metric, &vids, &vscores);
                        let same = ids.iter().zip(&vids).filter(|(a, b)| a == b).count();
                        assert!(
                            !check_ids || same + 2 >= q,
                            "{name} d={d} k={k}: {same}/{q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_ties_go_to_lowest_index() {
        // Duplicated centroids: exact ties, in both sweeps (k = 16).
        let d = 37;
        let base = values(4 * d, 3);
        let c: Vec<f32> = (0..16)
            .flat_map(|j| base[(j % 4) * d..(j % 4 + 1) * d].to_vec())
            .collect();
        let x = values(50 * d, 4);
        for metric in [LookupMetric::L2, LookupMetric::Cosine] {
            for k in [4, 8, 12, 16] {
                let (ids, _) = nearest_prototype(&x, 50, &c[..k * d], k, d, metric).unwrap();
                assert!(ids.iter().all(|&i| i < 4), "{metric:?} k={k}: {ids:?}");
                for (name, variant) in variants() {
                    let (vids, _, _) = run_variant(&variant, &x, &c[..k * d], k, d, metric);
                    assert_eq!(vids, ids, "{name}");
                }
            }
        }
        // A query equidistant from two centroids, and one centroid repeated.
        let c = [1.0f32, 0.0, -1.0, 0.0, 0.0, 5.0];
        let x = [0.0f32, 1.0, 0.0, -1.0];
        let (ids, _) = nearest_prototype(&x, 2, &c, 3, 2, LookupMetric::L2).unwrap();
        assert_eq!(ids, vec![0, 0]);
        let c = [0.0f32, 1.0, 0.0, 1.0];
        let (ids, scores) = nearest_prototype(&x, 2, &c, 2, 2, LookupMetric::Cosine).unwrap();
        assert_eq!(ids, vec![0, 0]);
        assert_eq!(scores, vec![1.0, -1.0]);
    }

    #[test]
    fn fused_k1_and_exact_scores() {
        let (q, d) = (513, 20);
        let x = values(q * d, 11);
        let c = values(d, 12);
        let (ids, scores) = nearest_prototype(&x, q, &c, 1, d, LookupMetric::L2).unwrap();
        assert!(ids.iter().all(|&i| i == 0));
        check_against_brute(&x, &c, d, LookupMetric::L2, &ids, &scores);
        // A query equal to a centroid scores about 0, never below.
        let (_, s) = nearest_prototype(&c, 1, &c, 1, d, LookupMetric::L2).unwrap();
        assert!((0.0..1e-5).contains(&s[0]), "{s:?}");
    }

    #[test]
    fn fused_is_independent_of_thread_count() {
        let (q, d, k) = (2000, 384, 5);
        let x = values(q * d, 21);
        let c = values(k * d, 22);
        let run = |threads: usize, metric| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| nearest_prototype(&x, q, &c, k, d, metric).unwrap())
        };
        for metric in [LookupMetric::L2, LookupMetric::Cosine] {
            let one = run(1, metric);
            assert_eq!(one, run(3, metric));
            assert_eq!(one, run(8, metric));
        }
    }

    #[test]
    fn fused_errors_match_blockwise() {
        let (q, d, k) = (700, 19, 3);
        let x = values(q * d, 31);
        let c = values(k * d, 32);
        let mut bad_x = x.clone();
        bad_x[600 * d + 5] = f32::NAN;
        bad_x[300 * d] = f32::INFINITY;
        bad_x[650 * d + 1] = f32::NEG_INFINITY;
        let mut zero_x = x.clone();
        zero_x[400 * d..401 * d].fill(0.0);
        zero_x[500 * d..501 * d].fill(0.0);
        let mut bad_c = c.clone();
        bad_c[2 * d + 3] = f32::NAN;
        let mut zero_c = c.clone();
        zero_c[d..2 * d].fill(0.0);
        let cases: [(&[f32], &[f32]); 8] = [
            (&bad_x, &c),
            (&x, &bad_c),
            (&bad_x, &bad_c),
            (&zero_x, &c),
            (&x, &zero_c),
            (&zero_x, &zero_c),
            (&zero_x, &bad_c),
            (&bad_x, &zero_c),
        ];
        for (xs, cs) in cases {
            for metric in [LookupMetric::L2, LookupMetric::Cosine] {
                let fused = nearest_prototype(xs, q, cs, k, d, metric);
                let block = blockwise(xs, q, cs, k, d, metric);
                match (&fused, &block) {
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    (Ok(_), Ok(_)) => {}
                    _ => panic!("{metric:?}: {fused:?} vs {block:?}"),
                }
            }
        }
        let e = nearest_prototype(&bad_x, q, &c, k, d, LookupMetric::L2).unwrap_err();
        assert_eq!(
            e,
            Error::NonFinite {
                arg: "queries",
                row: 300
            }
        );
        assert_eq!(
            e.to_string(),
            "queries: contains a non-finite value (NaN or inf) in row 300"
        );
        let e = nearest_prototype(&zero_x, q, &c, k, d, LookupMetric::Cosine).unwrap_err();
        assert!(
            e.to_string().starts_with("queries: row 400 has zero norm"),
            "{e}"
        );
        // Large finite values are not mistaken for non-finite ones: too
        // large (their squares overflow f32), not NaN or inf.
        let big = vec![f32::MAX; 2 * d];
        assert_eq!(
            nearest_prototype(&big, 2, &c, k, d, LookupMetric::L2).unwrap_err(),
            too_large("queries", 0)
        );
    }
}
