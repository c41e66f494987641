//! The distinct labels of one batch, for the loss's per-label targets.
//!
//! [`group`] numbers a batch's labels by first appearance; [`rows_match`]
//! checks that rows of the same label are equal, which is what lets the loss
//! build its targets over the distinct labels instead of over the batch.

use hashbrown::HashMap;

use crate::error::{Error, Result};

/// The labels of a batch grouped by value, in order of first appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// For each distinct label, the position of its first sample.
    pub first: Vec<i64>,
    /// For each sample, the number of its label (an index into `first`).
    pub inverse: Vec<i64>,
    /// For each distinct label, how many samples carry it.
    pub counts: Vec<i64>,
}

/// Groups `labels` by value, numbering the distinct values in order of first
/// appearance.
pub fn group<S: AsRef<str>>(labels: &[S]) -> Grouping {
    let mut ids: HashMap<&str, i64> = HashMap::with_capacity(labels.len());
    let mut g = Grouping {
        first: Vec::new(),
        inverse: Vec::with_capacity(labels.len()),
        counts: Vec::new(),
    };
    for (i, label) in labels.iter().enumerate() {
        let next = g.first.len() as i64;
        let id = *ids.entry(label.as_ref()).or_insert(next);
        if id == next {
            g.first.push(i as i64);
            g.counts.push(0);
        }
        g.counts[id as usize] += 1;
        g.inverse.push(id);
    }
    g
}

/// Groups a batch by the store ids of its labels (one id per sample), in
/// order of first appearance: the same [`Grouping`] as [`group`] on the
/// labels themselves, since the store gives equal labels equal ids, without
/// hashing the strings a second time.
pub fn group_ids(ids: &[u32]) -> Grouping {
    let mut numbers: HashMap<u32, i64> = HashMap::with_capacity(ids.len());
    let mut g = Grouping {
        first: Vec::new(),
        inverse: Vec::with_capacity(ids.len()),
        counts: Vec::new(),
    };
    for (i, &id) in ids.iter().enumerate() {
        let next = g.first.len() as i64;
        let number = *numbers.entry(id).or_insert(next);
        if number == next {
            g.first.push(i as i64);
            g.counts.push(0);
        }
        g.counts[number as usize] += 1;
        g.inverse.push(number);
    }
    g
}

/// Whether every row of the row-major `rows` (rows of `d` values) equals,
/// element by element (`==`, so `-0.0 == 0.0` and a NaN matches nothing, not
/// even itself), the row `first[inverse[i]]` of its label. Stops comparing at
/// the first row that differs.
///
/// # Errors
/// [`Error`] if `rows` is not a whole number of rows, `inverse` does not have
/// one entry per row, or an index is out of range.
pub fn rows_match<T: Copy + PartialEq>(
    rows: &[T],
    d: usize,
    first: &[i64],
    inverse: &[i64],
) -> Result<bool> {
    let n = inverse.len();
    if d == 0 || rows.len() != n * d {
        return Err(Error::invalid(
            "rows",
            format!("expected {n} rows of {d} values, got {} values", rows.len()),
        ));
    }
    let mut ok = true;
    for (i, &label) in inverse.iter().enumerate() {
        let f = usize::try_from(label)
            .ok()
            .and_then(|l| first.get(l))
            .and_then(|&f| usize::try_from(f).ok())
            .filter(|&f| f < n)
            .ok_or_else(|| Error::invalid("inverse", format!("entry {i} is out of range")))?;
        if ok {
            ok = equal(&rows[i * d..(i + 1) * d], &rows[f * d..(f + 1) * d]);
        }
    }
    Ok(ok)
}

/// `a == b` element by element, without stopping inside the slices: a
/// branch-free fold compiles to vector compares, where slice `==` on floats
/// compares one element at a time.
fn equal<T: Copy + PartialEq>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(true, |ok, (x, y)| ok & (x == y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_in_order_of_first_appearance() {
        let g = group(&["b", "a", "b", "c", "a", "b"]);
        assert_eq!(g.first, vec![0, 1, 3]);
        assert_eq!(g.inverse, vec![0, 1, 0, 2, 1, 0]);
        assert_eq!(g.counts, vec![3, 2, 1]);
        let empty = group::<&str>(&[]);
        assert!(empty.first.is_empty() && empty.inverse.is_empty() && empty.counts.is_empty());
        let one = group(&["x"; 4]);
        assert_eq!((one.first, one.counts), (vec![0], vec![4]));
    }

    #[test]
    fn grouping_by_ids_equals_grouping_by_labels() {
        let labels = ["b", "a", "b", "c", "a", "b"];
        let ids = [7u32, 2, 7, 0, 2, 7];
        assert_eq!(group_ids(&ids), group(&labels));
        assert!(group_ids(&[]).first.is_empty());
    }

    #[test]
    fn rows_match_compares_each_row_with_its_labels_first() {
        let g = group(&["a", "b", "a"]);
        let same = [1.0f32, 2.0, 5.0, 6.0, 1.0, 2.0];
        assert!(rows_match(&same, 2, &g.first, &g.inverse).unwrap());
        let differ = [1.0f32, 2.0, 5.0, 6.0, 1.0, 2.5];
        assert!(!rows_match(&differ, 2, &g.first, &g.inverse).unwrap());
        let signed_zero = [0.0f64, -0.0];
        let g1 = group(&["a", "a"]);
        assert!(rows_match(&signed_zero, 1, &g1.first, &g1.inverse).unwrap());
        let nan = [f32::NAN, f32::NAN];
        assert!(!rows_match(&nan, 1, &g1.first, &g1.inverse).unwrap());
        // a NaN row does not even match itself (as numpy's array_equal)
        let g2 = group(&["a", "b"]);
        assert!(!rows_match(&[1.0f32, f32::NAN], 1, &g2.first, &g2.inverse).unwrap());
    }

    #[test]
    fn rows_match_sees_a_difference_anywhere_in_a_long_row() {
        let d = 41;
        let g = group(&["a", "b", "a"]);
        let mut rows: Vec<f64> = (0..3 * d).map(|v| (v % d) as f64).collect();
        assert!(rows_match(&rows, d, &g.first, &g.inverse).unwrap());
        for t in [0, 16, d - 1] {
            let mut differ = rows.clone();
            differ[2 * d + t] += 1e-9;
            assert!(
                !rows_match(&differ, d, &g.first, &g.inverse).unwrap(),
                "t={t}"
            );
        }
        rows[d + 20] = f64::NAN; // label "b" has one row: NaN fails even there
        assert!(!rows_match(&rows, d, &g.first, &g.inverse).unwrap());
    }

    #[test]
    fn rows_match_rejects_bad_shapes_and_indices() {
        assert!(rows_match(&[1.0f32; 5], 2, &[0], &[0, 0, 0]).is_err());
        assert!(rows_match(&[1.0f32; 4], 2, &[0], &[0, 1]).is_err());
        assert!(rows_match(&[1.0f32; 4], 2, &[7], &[0, 0]).is_err());
        assert!(rows_match(&[1.0f32; 4], 2, &[-1], &[0, 0]).is_err());
        assert!(rows_match(&[1.0f32; 4], 0, &[0], &[0, 0]).is_err());
    }
}
