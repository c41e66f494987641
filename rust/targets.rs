//! Soft targets over the distinct labels of a batch: the loss's per-label
//! path on the CPU, in one call instead of about fifteen small tensor
//! operations.
//!
//! When the logits of a row-softmax over the batch's `B` columns depend only
//! on each column's label, the softmax equals one over the `L` distinct label
//! columns with `log c_b` added (`c_b` samples carry label `b`), its mass
//! then spread evenly over the label's `c_b` columns. The entry for one
//! column of label `b` is `exp(x_b − m) / Σ_j c_j·exp(x_j − m)` for any shift
//! `m`; [`label_targets`] builds the `L × L` matrix of those entries, the
//! hard, pairwise and prototype parts already weighted and added.

use crate::error::{Error, Result};
use crate::linalg::dot_nt;
use crate::simd;

/// Prototype targets of the distinct labels, given as the `k` distinct rows'
/// logits over the `L` label columns and the cluster of each label.
#[derive(Debug, Clone, Copy)]
pub struct PrototypeRows<'a> {
    /// Weight of the prototype part (the row mass of its rows).
    pub weight: f32,
    /// `k × L` row-major logits: prototype `c` against label `b`, already
    /// divided by the temperature.
    pub logits: &'a [f32],
    /// Number of prototypes.
    pub k: usize,
    /// Cluster of each label; negative for a label without a prototype row
    /// (its share is handled by the caller).
    pub clusters: &'a [i64],
}

/// What [`label_targets`] blends: each part has its weight as row mass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blend<'a> {
    /// Same-label hard targets: entry `(a, a)` gains `hard / c_a` (0: none).
    pub hard: f32,
    /// Weight of the pairwise targets, `softmax(E Eᵀ / τ)` (0: none).
    pub pairwise: f32,
    /// `1 / τ` of the pairwise softmax.
    pub inv_temperature: f32,
    /// Prototype targets, if any.
    pub prototype: Option<PrototypeRows<'a>>,
}

/// The `L × L` label part of a batch's targets.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTargets {
    /// Row-major `L × L`: row `a` is what one sample of label `a` gives one
    /// column of label `b`.
    pub part: Vec<f32>,
    /// Mean off-diagonal similarity `e_i · e_j` over the batch's samples
    /// (`i ≠ j`), when asked for.
    pub semantic: Option<f64>,
}

/// The `L × L` target part of `L` distinct labels with embeddings `emb`
/// (`L × d`, row-major) and sample counts `counts`.
///
/// A NaN in `emb` or in the prototype logits propagates to the rows it
/// touches, as in the tensor formula.
///
/// No labels (`L = 0`) give an empty part (and a semantic mean of 0).
///
/// # Errors
/// [`Error`] on a shape mismatch, a count that is not a positive finite
/// number, or a cluster id `≥ k`.
pub fn label_targets(
    emb: &[f32],
    d: usize,
    counts: &[f32],
    blend: &Blend<'_>,
    want_semantic: bool,
) -> Result<LabelTargets> {
    let l = counts.len();
    if d == 0 || emb.len() != l * d {
        return Err(Error::shape(
            "emb",
            format!("{l} rows of d ≥ 1 values (one per count)"),
            format!("{} values with d = {d}", emb.len()),
        ));
    }
    if let Some(i) = counts.iter().position(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(Error::invalid("counts", format!("entry {i} is not > 0")));
    }
    if let Some(p) = blend.prototype {
        if p.k == 0 || p.logits.len() != p.k * l {
            return Err(Error::shape(
                "logits",
                format!("k × {l} values with k ≥ 1"),
                format!("{} values with k = {}", p.logits.len(), p.k),
            ));
        }
        if p.clusters.len() != l {
            return Err(Error::shape(
                "clusters",
                format!("{l} entries"),
                format!("{}", p.clusters.len()),
            ));
        }
        if let Some(i) = p.clusters.iter().position(|&c| c >= p.k as i64) {
            return Err(Error::invalid("clusters", format!("entry {i} is ≥ k")));
        }
    }

    if l == 0 {
        // no labels: an empty 0 × 0 part (and no pairs to average)
        return Ok(LabelTargets {
            part: Vec::new(),
            semantic: want_semantic.then_some(0.0),
        });
    }
    let mut part = vec![0f32; l * l];
    if blend.hard != 0.0 {
        for (a, &c) in counts.iter().enumerate() {
            part[a * l + a] += blend.hard / c;
        }
    }
    let mut semantic = None;
    if blend.pairwise != 0.0 || want_semantic {
        let mut sim = vec![0f32; l * l];
        dot_nt(emb, l, emb, l, d, &mut sim);
        if want_semantic {
            semantic = Some(mean_off_diagonal(&sim, counts));
        }
        if blend.pairwise != 0.0 {
            for (row, out) in sim.chunks_exact_mut(l).zip(part.chunks_exact_mut(l)) {
                simd::scale(row, blend.inv_temperature);
                spread_softmax(row, counts, blend.pairwise);
                simd::add_assign(out, row);
            }
        }
    }
    if let Some(p) = blend.prototype {
        let mut rows = p.logits.to_vec();
        for row in rows.chunks_exact_mut(l) {
            spread_softmax(row, counts, p.weight);
        }
        for (out, &c) in part.chunks_exact_mut(l).zip(p.clusters) {
            if let Ok(c) = usize::try_from(c) {
                simd::add_assign(out, &rows[c * l..(c + 1) * l]);
            }
        }
    }
    Ok(LabelTargets { part, semantic })
}

/// [`label_targets`] of a batch given by its `B × d` rows (one per sample)
/// and its grouping: `None` when some row differs from the row of its
/// label's first sample (the targets then depend on more than the labels,
/// and the caller builds them per sample), else the targets of the distinct
/// labels' rows. One call checks and builds, so the loss's per-label step
/// is one trip to the core.
///
/// # Errors
/// As [`crate::labels::rows_match`] and [`label_targets`].
pub fn batch_label_targets(
    rows: &[f32],
    d: usize,
    first: &[i64],
    inverse: &[i64],
    counts: &[f32],
    blend: &Blend<'_>,
    want_semantic: bool,
) -> Result<Option<LabelTargets>> {
    if first.len() != counts.len() {
        return Err(Error::shape(
            "first",
            format!("{} entries (one per count)", counts.len()),
            format!("{}", first.len()),
        ));
    }
    let n = inverse.len();
    let starts = first
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            usize::try_from(f)
                .ok()
                .filter(|&f| f < n)
                .ok_or_else(|| Error::invalid("first", format!("entry {i} is out of range")))
        })
        .collect::<Result<Vec<usize>>>()?;
    if !crate::labels::rows_match(rows, d, first, inverse)? {
        return Ok(None);
    }
    // rows_match checked that `rows` holds n rows of d values; starts are < n
    let mut emb = Vec::with_capacity(first.len() * d);
    for f in starts {
        emb.extend_from_slice(&rows[f * d..(f + 1) * d]);
    }
    label_targets(&emb, d, counts, blend, want_semantic).map(Some)
}

/// In place: `x_b ← weight · exp(x_b − m) / Σ_j c_j·exp(x_j − m)` with
/// `m = max x`.
fn spread_softmax(x: &mut [f32], counts: &[f32], weight: f32) {
    let m = simd::max(x);
    let total = simd::exp_shifted_dot(x, m, counts);
    simd::scale(x, weight / total);
}

/// `Σ_{i≠j} e_i·e_j / (B(B − 1))` over the batch's `B = Σ c` samples, from
/// the label similarities `sim` (in f64; 0 when `B = 1`).
fn mean_off_diagonal(sim: &[f32], counts: &[f32]) -> f64 {
    let l = counts.len();
    let (mut total, mut batch) = (0f64, 0f64);
    for (a, row) in sim.chunks_exact(l).enumerate() {
        let ca = f64::from(counts[a]);
        let mut r = 0f64;
        for (&s, &cb) in row.iter().zip(counts) {
            r += f64::from(s) * f64::from(cb);
        }
        total += ca * r - ca * f64::from(row[a]);
        batch += ca;
    }
    total / (batch * (batch - 1.0)).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The targets of every sample over every column, straight from the
    /// definitions, in f64: `B × B`.
    fn sample_targets(
        emb: &[f32],
        d: usize,
        inverse: &[usize],
        blend: &Blend<'_>,
        tau_inv: f64,
    ) -> Vec<f64> {
        let b = inverse.len();
        let softmax = |x: &[f64]| -> Vec<f64> {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let row = |a: usize| &emb[a * d..(a + 1) * d];
        let dot = |a: usize, c: usize| -> f64 {
            row(a)
                .iter()
                .zip(row(c))
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum()
        };
        let mut t = vec![0f64; b * b];
        for i in 0..b {
            let same: f64 = inverse.iter().filter(|&&a| a == inverse[i]).count() as f64;
            let pair: Vec<f64> = (0..b)
                .map(|j| dot(inverse[i], inverse[j]) * tau_inv)
                .collect();
            let pair = softmax(&pair);
            let proto = blend.prototype.and_then(|p| {
                usize::try_from(p.clusters[inverse[i]]).ok().map(|c| {
                    let l = p.clusters.len();
                    softmax(
                        &(0..b)
                            .map(|j| f64::from(p.logits[c * l + inverse[j]]))
                            .collect::<Vec<_>>(),
                    )
                })
            });
            for j in 0..b {
                let mut v = f64::from(blend.pairwise) * pair[j];
                if inverse[i] == inverse[j] {
                    v += f64::from(blend.hard) / same;
                }
                if let (Some(p), Some(q)) = (blend.prototype, &proto) {
                    v += f64::from(p.weight) * q[j];
                }
                t[i * b + j] = v;
            }
        }
        t
    }

    #[test]
    fn label_part_expands_to_the_per_sample_targets() {
        let mut rng = Rng::new(11);
        let (l, d, k) = (5, 7, 3);
        let emb: Vec<f32> = (0..l * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let inverse = [0usize, 1, 0, 2, 3, 0, 4, 4, 1, 2, 0];
        let mut counts = vec![0f32; l];
        for &a in &inverse {
            counts[a] += 1.0;
        }
        let logits: Vec<f32> = (0..k * l).map(|_| 3.0 * rng.next_f64() as f32).collect();
        let clusters = [2i64, 0, -1, 1, 2];
        let blend = Blend {
            hard: 0.3,
            pairwise: 0.45,
            inv_temperature: 2.0,
            prototype: Some(PrototypeRows {
                weight: 0.25,
                logits: &logits,
                k,
                clusters: &clusters,
            }),
        };
        let got = label_targets(&emb, d, &counts, &blend, true).unwrap();
        let want = sample_targets(&emb, d, &inverse, &blend, 2.0);
        let b = inverse.len();
        for i in 0..b {
            for j in 0..b {
                let g = f64::from(got.part[inverse[i] * l + inverse[j]]);
                let w = want[i * b + j];
                assert!((g - w).abs() <= 2e-6 * w.max(1e-3), "({i},{j}): {g} vs {w}");
            }
        }
        // the semantic mean, over the samples' off-diagonal pairs
        let mut total = 0f64;
        for i in 0..b {
            for j in (0..b).filter(|&j| j != i) {
                let (a, c) = (inverse[i], inverse[j]);
                total += (0..d)
                    .map(|t| f64::from(emb[a * d + t]) * f64::from(emb[c * d + t]))
                    .sum::<f64>();
            }
        }
        let semantic = got.semantic.unwrap();
        assert!((semantic - total / (b * (b - 1)) as f64).abs() < 1e-6);
    }

    #[test]
    fn rows_without_a_prototype_get_no_prototype_mass() {
        let emb = [1.0f32, 0.0, 0.0, 1.0];
        let logits = [0.5f32, -1.0];
        let blend = Blend {
            prototype: Some(PrototypeRows {
                weight: 1.0,
                logits: &logits,
                k: 1,
                clusters: &[0, -1],
            }),
            ..Blend::default()
        };
        let got = label_targets(&emb, 2, &[1.0, 3.0], &blend, false).unwrap();
        assert_eq!(&got.part[2..], &[0.0, 0.0]);
        // row 0 spreads mass 1 over 1 + 3 columns
        let row_mass = got.part[0] + 3.0 * got.part[1];
        assert!((row_mass - 1.0).abs() < 1e-6);
        assert!(got.semantic.is_none());
    }

    #[test]
    fn label_targets_reject_bad_inputs() {
        let emb = [0f32; 4];
        let ok = Blend {
            pairwise: 1.0,
            inv_temperature: 1.0,
            ..Blend::default()
        };
        assert!(label_targets(&emb, 2, &[1.0, 1.0], &ok, false).is_ok());
        assert!(label_targets(&emb, 3, &[1.0, 1.0], &ok, false).is_err());
        assert!(label_targets(&emb, 0, &[1.0, 1.0], &ok, false).is_err());
        assert!(label_targets(&emb, 2, &[1.0, 0.0], &ok, false).is_err());
        assert!(label_targets(&emb, 2, &[1.0, f32::NAN], &ok, false).is_err());
        let proto = |logits: &'static [f32], k, clusters: &'static [i64]| Blend {
            prototype: Some(PrototypeRows {
                weight: 1.0,
                logits,
                k,
                clusters,
            }),
            ..Blend::default()
        };
        assert!(label_targets(&emb, 2, &[1.0, 1.0], &proto(&[0.0; 2], 1, &[0, 0]), false).is_ok());
        assert!(label_targets(&emb, 2, &[1.0, 1.0], &proto(&[0.0; 3], 1, &[0, 0]), false).is_err());
        assert!(label_targets(&emb, 2, &[1.0, 1.0], &proto(&[0.0; 2], 1, &[0, 1]), false).is_err());
        assert!(label_targets(&emb, 2, &[1.0, 1.0], &proto(&[0.0; 2], 1, &[0]), false).is_err());
    }

    #[test]
    fn no_labels_give_an_empty_part() {
        let logits: [f32; 0] = [];
        let all = Blend {
            hard: 0.2,
            pairwise: 0.5,
            inv_temperature: 2.0,
            prototype: Some(PrototypeRows {
                weight: 0.3,
                logits: &logits,
                k: 3,
                clusters: &[],
            }),
        };
        for blend in [all, Blend::default()] {
            for want in [false, true] {
                let got = label_targets(&[], 4, &[], &blend, want).unwrap();
                assert!(got.part.is_empty());
                assert_eq!(got.semantic, want.then_some(0.0));
                let batch = batch_label_targets(&[], 4, &[], &[], &[], &blend, want)
                    .unwrap()
                    .unwrap();
                assert_eq!(batch, got);
            }
        }
        // still an error: rows without labels, no columns
        assert!(label_targets(&[1.0; 4], 4, &[], &all, false).is_err());
        assert!(label_targets(&[], 0, &[], &all, false).is_err());
    }

    #[test]
    fn nan_propagates_to_the_rows_it_touches() {
        let emb = [f32::NAN, 0.0, 0.0, 1.0];
        let blend = Blend {
            pairwise: 1.0,
            inv_temperature: 1.0,
            ..Blend::default()
        };
        let got = label_targets(&emb, 2, &[1.0, 1.0], &blend, false).unwrap();
        assert!(got.part.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn batch_targets_check_rows_then_build_from_first_rows() {
        let g = crate::labels::group(&["a", "b", "a"]);
        let counts: Vec<f32> = g.counts.iter().map(|&c| c as f32).collect();
        let blend = Blend {
            hard: 0.25,
            pairwise: 0.75,
            inv_temperature: 2.0,
            ..Blend::default()
        };
        let rows = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0];
        let got = batch_label_targets(&rows, 2, &g.first, &g.inverse, &counts, &blend, true)
            .unwrap()
            .unwrap();
        let distinct = [1.0f32, 0.0, 0.0, 1.0];
        assert_eq!(
            got,
            label_targets(&distinct, 2, &counts, &blend, true).unwrap()
        );
        let differ = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.5];
        assert!(
            batch_label_targets(&differ, 2, &g.first, &g.inverse, &counts, &blend, false)
                .unwrap()
                .is_none()
        );
        // a first row out of range, even one no sample refers to, is an error
        let first = [0i64, 1, 9];
        let counts3 = [2.0f32, 1.0, 1.0];
        assert!(
            batch_label_targets(&rows, 2, &first, &g.inverse, &counts3, &blend, false).is_err()
        );
        assert!(
            batch_label_targets(&rows, 2, &g.first, &g.inverse, &[1.0], &blend, false).is_err()
        );
    }
}
