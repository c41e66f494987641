//! Nearest-prototype lookup: for each query, the nearest centroid and its
//! score, parallel over blocks of queries.

use std::borrow::Cow;

use crate::error::{check_matrix, Error, Result};
use crate::linalg::{checked_sq_norms, nearest, normalize_rows, Metric};

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

fn normalized<'a>(arg: &'static str, x: &'a [f32], d: usize) -> Result<Cow<'a, [f32]>> {
    let mut owned = x.to_vec();
    if let Some(row) = normalize_rows(&mut owned, d) {
        return Err(Error::invalid(
            arg,
            format!("row {row} has zero norm; cosine similarity is undefined"),
        ));
    }
    Ok(Cow::Owned(owned))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
