//! Dense kernels shared by k-means and the lookup: row norms, blockwise
//! nearest-centroid search by matrix products (‖x‖² − 2x·c + ‖c‖²).
//!
//! Rows are processed in blocks of [`ROW_BLOCK`]; the block layout is fixed,
//! so every row's result is the same whatever the number of threads.

use rayon::prelude::*;

use crate::error::{too_large, Error, Result, MAX_SQ_NORM, MIN_SQ_NORM};

/// Rows per block in every blockwise routine. Fixed: results must not depend
/// on how many threads share the blocks.
pub const ROW_BLOCK: usize = 256;

/// `out (m×n) = a (m×d) · bᵀ (b is n×d)`, all row-major, single-threaded.
pub fn dot_nt(a: &[f32], m: usize, b: &[f32], n: usize, d: usize, out: &mut [f32]) {
    debug_assert_eq!(a.len(), m * d);
    debug_assert_eq!(b.len(), n * d);
    debug_assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if d == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: `a` is m×d and `b` is n×d, row-major, as the strides below say
    // (lengths checked above in debug builds and by every caller), and `out`
    // holds m·n values whose element (i, j) is at `i·n + j < m·n`, so
    // every element `gemm` reads or writes is inside its slice; `out` is a unique
    // borrow, so it aliases neither input. `read_dst` is false, so `out`'s
    // previous contents are never read. `Parallelism::None` keeps the product
    // on this thread: the summation order depends only on the shapes, never
    // on the thread count.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Squared L2 norm of each row (accumulated in f64).
pub fn row_sq_norms(x: &[f32], d: usize) -> Vec<f32> {
    if d == 0 {
        return vec![0.0; 0];
    }
    x.par_chunks(d)
        .map(|r| crate::simd::sq_norm(r) as f32)
        .collect()
}

/// Squared L2 norm of each row, validating the values in the same parallel
/// pass: a row holding a NaN or an infinity has a non-finite f64 norm (finite
/// f32 values cannot overflow it), reported as [`Error::NonFinite`]; a row
/// of norm 1e18 or more (whose squares overflow f32) is an error too.
pub fn checked_sq_norms(arg: &'static str, x: &[f32], d: usize) -> Result<Vec<f32>> {
    if d == 0 {
        return Ok(Vec::new());
    }
    let norms: Vec<f64> = x.par_chunks(d).map(crate::simd::sq_norm).collect();
    if let Some(row) = norms.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { arg, row });
    }
    if let Some(row) = norms.iter().position(|&v| v >= MAX_SQ_NORM) {
        return Err(too_large(arg, row));
    }
    Ok(norms.into_iter().map(|v| v as f32).collect())
}

/// Squared Euclidean distance between two rows, accumulated in f64.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    crate::simd::sq_dist(a, b)
}

/// Scales each row to unit L2 norm; returns the index of the first row
/// whose norm is zero, if any (left unchanged). A norm so small that its
/// inverse overflows f32 (squared norm below [`MIN_SQ_NORM`]) counts as
/// zero.
pub fn normalize_rows(x: &mut [f32], d: usize) -> Option<usize> {
    let mut zero = None;
    for (i, row) in x.chunks_mut(d).enumerate() {
        let sq = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        let norm = sq.sqrt();
        if sq < MIN_SQ_NORM {
            zero.get_or_insert(i);
            continue;
        }
        let inv = (1.0 / norm) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    zero
}

/// How the nearest centroid is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Smallest squared Euclidean distance; the score is that distance.
    L2,
    /// Largest inner product; the score is the inner product.
    InnerProduct,
}

/// For each row of `x` (n×d), the nearest row of `c` (k×d, k ≥ 1) and its
/// score. `x_norms`/`c_norms` are the squared row norms (only used for L2).
/// Ties go to the lowest centroid index. Parallel over row blocks.
#[allow(clippy::too_many_arguments)]
pub fn nearest(
    x: &[f32],
    x_norms: &[f32],
    c: &[f32],
    c_norms: &[f32],
    d: usize,
    metric: Metric,
    labels: &mut [u32],
    scores: &mut [f32],
) {
    let k = c_norms.len();
    debug_assert!(k > 0);
    let block_len = ROW_BLOCK * d.max(1);
    x.par_chunks(block_len)
        .zip(labels.par_chunks_mut(ROW_BLOCK))
        .zip(scores.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each_init(Vec::new, |buf, (b, ((xb, lb), sb))| {
            let rows = lb.len();
            buf.resize(rows * k, 0.0);
            dot_nt(xb, rows, c, k, d, buf);
            let base = b * ROW_BLOCK;
            for r in 0..rows {
                let dots = &buf[r * k..(r + 1) * k];
                let (best, score) = match metric {
                    Metric::L2 => {
                        let mut best = 0;
                        let mut best_v = c_norms[0] - 2.0 * dots[0];
                        for (j, (&cn, &dot)) in c_norms.iter().zip(dots).enumerate().skip(1) {
                            let v = cn - 2.0 * dot;
                            if v < best_v {
                                best_v = v;
                                best = j;
                            }
                        }
                        (best, (x_norms[base + r] + best_v).max(0.0))
                    }
                    Metric::InnerProduct => {
                        let mut best = 0;
                        let mut best_v = dots[0];
                        for (j, &dot) in dots.iter().enumerate().skip(1) {
                            if dot > best_v {
                                best_v = dot;
                                best = j;
                            }
                        }
                        (best, best_v)
                    }
                };
                lb[r] = best as u32;
                sb[r] = score;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn dot_nt_matches_naive() {
        let (m, n, d) = (5, 7, 3);
        let a: Vec<f32> = (0..m * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; m * n];
        dot_nt(&a, m, &b, n, d, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want = naive_dot(&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn nearest_matches_brute_force() {
        let (n, k, d) = (600, 9, 4);
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0)
            .collect();
        let c: Vec<f32> = (0..k * d).map(|i| ((i * 31) % 17) as f32 / 2.0).collect();
        let (xn, cn) = (row_sq_norms(&x, d), row_sq_norms(&c, d));
        let mut labels = vec![0; n];
        let mut scores = vec![0.0; n];
        nearest(&x, &xn, &c, &cn, d, Metric::L2, &mut labels, &mut scores);
        for i in 0..n {
            let xi = &x[i * d..(i + 1) * d];
            let dists: Vec<f64> = (0..k)
                .map(|j| sq_dist(xi, &c[j * d..(j + 1) * d]))
                .collect();
            let min = dists.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(dists[labels[i] as usize] <= min + 1e-3, "row {i}");
            assert!((scores[i] as f64 - min).abs() < 1e-2 * (1.0 + min));
        }
        nearest(
            &x,
            &xn,
            &c,
            &cn,
            d,
            Metric::InnerProduct,
            &mut labels,
            &mut scores,
        );
        for i in 0..n {
            let xi = &x[i * d..(i + 1) * d];
            let best = (0..k)
                .map(|j| naive_dot(xi, &c[j * d..(j + 1) * d]))
                .fold(f32::NEG_INFINITY, f32::max);
            assert!((scores[i] - best).abs() < 1e-3 * (1.0 + best.abs()));
        }
    }

    #[test]
    fn checked_norms_match_and_report_bad_rows() {
        let x = vec![3.0f32, 4.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(checked_sq_norms("x", &x, 2).unwrap(), row_sq_norms(&x, 2));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut y = x.clone();
            y[3] = bad;
            let e = checked_sq_norms("x", &y, 2).unwrap_err();
            assert_eq!(e, Error::NonFinite { arg: "x", row: 1 });
        }
        // rows of norm 1e18 or more: their squares overflow f32
        let big = vec![f32::MAX; 384];
        let e = checked_sq_norms("x", &big, 384).unwrap_err();
        assert_eq!(e, too_large("x", 0));
        let y = [1.0f32, 0.0, 7e17, 7.2e17];
        assert_eq!(checked_sq_norms("y", &y, 2).unwrap_err(), too_large("y", 1));
        assert!(checked_sq_norms("y", &[1e17f32, 1e17], 2).is_ok());
    }

    #[test]
    fn normalize_reports_zero_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        assert_eq!(normalize_rows(&mut x, 2), Some(1));
        // subnormal norms count as zero; small normal ones are scaled
        let mut s = vec![1e-18f32, 0.0, 1e-40, 1e-40];
        assert_eq!(normalize_rows(&mut s, 2), Some(1));
        assert_eq!(s[0], 1.0);
        assert!((x[0] - 0.6).abs() < 1e-7 && (x[1] - 0.8).abs() < 1e-7);
    }
}
