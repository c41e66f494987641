//! Renumbering clusters by maximum overlap: an exact assignment (Hungarian
//! method, in the shortest-augmenting-path form of Jonker and Volgenant) on
//! the `k × k` overlap matrix of two clusterings, with a fixed rule for ties.
//!
//! Current cluster `c` is renamed `perm[c]`. The result is, in this order of
//! preference:
//!
//! 1. a permutation of the largest total overlap
//!    `Σ_c |{i : previous[i] = perm[c], current[i] = c}|`;
//! 2. among those, one that keeps the most clusters at their own number
//!    (`perm[c] = c`): a clustering that did not change keeps its numbers,
//!    and clusters that overlap nothing keep theirs where they can;
//! 3. among those, the lexicographically smallest `perm`.
//!
//! That is one well-defined permutation, whatever the algorithm's internals:
//! the result depends on the input alone. Rules 1 and 2 are one integer
//! weight, `overlap · (k + 1) + [c = p]` (the identity bonus adds at most `k`,
//! less than one unit of overlap); rule 3 is a second pass over the edges
//! that are tight under the optimal dual potentials: every optimal assignment
//! uses only those, so the lexicographically smallest perfect matching among
//! them is found greedily, row by row, by alternating-path searches.
//!
//! Time: `O(k²)` to build the weights plus `O(k²)` per row that the greedy
//! start leaves unmatched (`O(k³)` at worst), plus the tie pass (nothing to do
//! when no row has a second tight edge to a smaller column). Memory: the
//! `k × k` counts as `u32` (64 MB for `k = 4000`) and the tight edges.

use std::collections::VecDeque;

use crate::error::{Error, Result};

const NONE: usize = usize::MAX;

/// The `k × k` overlap counts, row-major: entry `(c, p)` counts the items with
/// `current[i] == c` and `previous[i] == p`. Entries `-1` (an item absent
/// from that clustering) are skipped.
///
/// # Errors
/// [`Error`] when `k < 1`, the lengths differ, there are more than
/// `u32::MAX` items, an id is outside `-1..k`, or the `k × k` counts cannot
/// be allocated. Nothing is allocated before the inputs are checked.
pub fn overlap(previous: &[i64], current: &[i64], k: usize) -> Result<Vec<u32>> {
    if k == 0 {
        return Err(Error::invalid("k", "must be at least 1, got 0"));
    }
    if current.len() != previous.len() {
        return Err(Error::shape(
            "current",
            format!("{} entries (as previous)", previous.len()),
            format!("{} entries", current.len()),
        ));
    }
    if u32::try_from(previous.len()).is_err() {
        return Err(Error::invalid(
            "previous",
            format!("at most {} items, got {}", u32::MAX, previous.len()),
        ));
    }
    check_ids("previous", previous, k)?;
    check_ids("current", current, k)?;
    let cells = k
        .checked_mul(k)
        .ok_or_else(|| Error::invalid("k", format!("{k} × {k} overlaps do not fit in memory")))?;
    let mut counts: Vec<u32> = Vec::new();
    counts
        .try_reserve_exact(cells)
        .map_err(|_| Error::invalid("k", format!("{k} × {k} overlaps do not fit in memory")))?;
    counts.resize(cells, 0);
    for (&p, &c) in previous.iter().zip(current) {
        if p >= 0 && c >= 0 {
            // in range (checked above); at most u32::MAX items, so no overflow
            counts[c as usize * k + p as usize] += 1;
        }
    }
    Ok(counts)
}

/// Checks that every entry of `ids` is `-1` or in `0..k`.
fn check_ids(arg: &'static str, ids: &[i64], k: usize) -> Result<()> {
    let k_i = i64::try_from(k).unwrap_or(i64::MAX);
    match ids.iter().position(|&v| v < -1 || v >= k_i) {
        None => Ok(()),
        Some(i) => Err(Error::invalid(
            arg,
            format!(
                "entry {i} is {}; cluster ids must be -1 (absent) or in 0..{k}",
                ids[i]
            ),
        )),
    }
}

/// The renumbering of `current`'s clusters that best matches `previous`'s:
/// `perm[c]` is the new number of current cluster `c` (see the module
/// documentation for the rule, ties included). Callers relabel with
/// `perm[current[i]]`.
///
/// # Errors
/// As [`overlap`].
pub fn match_clusters(previous: &[i64], current: &[i64], k: usize) -> Result<Vec<usize>> {
    let counts = overlap(previous, current, k)?;
    max_weight_assignment(&counts, k)
}

/// The permutation `perm` maximising `Σ_r weights[r·k + perm[r]]` over the
/// row-major `k × k` `weights`; ties as in the module documentation (most
/// `perm[r] = r`, then lexicographically smallest).
///
/// # Errors
/// [`Error`] when `weights` does not hold `k × k` values, or a weight is so
/// large (above about `2⁶¹ / (k + 1)`) that the exact integer arithmetic
/// could overflow.
pub fn max_weight_assignment(weights: &[u32], k: usize) -> Result<Vec<usize>> {
    crate::error::check_matrix("weights", weights, k, k)?;
    if k == 0 {
        return Ok(Vec::new());
    }
    let costs = Costs::new(weights, k)?;
    let mut a = Assignment::greedy(&costs);
    for r in 0..k {
        if a.col_of[r] == NONE {
            a.augment(&costs, r);
        }
    }
    a.smallest_among_tight(&costs);
    Ok(a.col_of)
}

/// The costs to minimise, `top − (weight · (k + 1) + [r = c])`, all in
/// `0..=top`: read from the counts on the fly (the `i64` matrix would take
/// twice the memory).
struct Costs<'a> {
    weights: &'a [u32],
    k: usize,
    scale: i64,
    top: i64,
}

impl<'a> Costs<'a> {
    fn new(weights: &'a [u32], k: usize) -> Result<Self> {
        let max = u128::from(weights.iter().copied().max().unwrap_or(0));
        let top = max * (k as u128 + 1) + 1;
        // potentials stay in [-top, top] and path lengths below 3·top
        if top.saturating_mul(4) > i64::MAX as u128 {
            return Err(Error::invalid(
                "weights",
                format!("a weight of {max} with k = {k} is too large to match exactly"),
            ));
        }
        Ok(Costs {
            weights,
            k,
            scale: k as i64 + 1,
            top: top as i64,
        })
    }

    /// The row `r` of the weights.
    #[inline]
    fn row(&self, r: usize) -> &'a [u32] {
        &self.weights[r * self.k..(r + 1) * self.k]
    }

    #[inline]
    fn cost(&self, r: usize, c: usize) -> i64 {
        self.top - i64::from(self.weights[r * self.k + c]) * self.scale - i64::from(r == c)
    }
}

/// A partial assignment with its dual potentials: `cost(r, c) − u[r] − v[c]`
/// is never negative, and zero on every assigned pair.
struct Assignment {
    u: Vec<i64>,
    v: Vec<i64>,
    col_of: Vec<usize>,
    row_of: Vec<usize>,
}

impl Assignment {
    /// `u[r]` the smallest cost of row `r`, `v = 0`; row `r` takes the first
    /// free column where its minimum is reached, when there is one.
    fn greedy(costs: &Costs<'_>) -> Self {
        let k = costs.k;
        let mut a = Assignment {
            u: vec![0; k],
            v: vec![0; k],
            col_of: vec![NONE; k],
            row_of: vec![NONE; k],
        };
        for r in 0..k {
            let (mut best, mut at) = (i64::MAX, NONE);
            for c in 0..k {
                let cost = costs.cost(r, c);
                // the smallest cost; among equals the first free column
                let free_instead = cost == best && a.row_of[at] != NONE && a.row_of[c] == NONE;
                if cost < best || free_instead {
                    (best, at) = (cost, c);
                }
            }
            a.u[r] = best;
            if a.row_of[at] == NONE {
                a.row_of[at] = r;
                a.col_of[r] = at;
            }
        }
        a
    }

    /// Assigns the free row `r` along a shortest augmenting path (Dijkstra on
    /// the reduced costs), then moves the potentials so that the path's edges
    /// are tight and none becomes negative.
    fn augment(&mut self, costs: &Costs<'_>, r: usize) {
        let k = costs.k;
        let mut dist = vec![i64::MAX; k];
        let mut pred = vec![NONE; k];
        let mut todo: Vec<usize> = (0..k).collect();
        let mut scanned: Vec<usize> = Vec::new();
        let (mut row, mut reached) = (r, 0i64);
        let sink = loop {
            // relax the edges of `row`, reached at distance `reached`
            let base = reached + costs.top - self.u[row];
            let w = costs.row(row);
            let (mut best, mut best_at) = ((i64::MAX, true, NONE), NONE);
            for (idx, &c) in todo.iter().enumerate() {
                let d = base - i64::from(w[c]) * costs.scale - i64::from(row == c) - self.v[c];
                if d < dist[c] {
                    dist[c] = d;
                    pred[c] = row;
                }
                // nearest first; among equals a free column, then the lowest
                let key = (dist[c], self.row_of[c] != NONE, c);
                if key < best {
                    (best, best_at) = (key, idx);
                }
            }
            let c = todo.swap_remove(best_at);
            reached = dist[c];
            if self.row_of[c] == NONE {
                break c;
            }
            scanned.push(c);
            row = self.row_of[c];
        };
        // potentials: reached rows gain, scanned columns lose, what they lack
        // of the path's length
        self.u[r] += reached;
        for &c in &scanned {
            let slack = reached - dist[c];
            self.u[self.row_of[c]] += slack;
            self.v[c] -= slack;
        }
        // flip the path
        let mut c = sink;
        loop {
            let row = pred[c];
            let previous = self.col_of[row];
            self.row_of[c] = row;
            self.col_of[row] = c;
            if row == r {
                break;
            }
            c = previous;
        }
    }

    /// Turns the (optimal, complete) assignment into the lexicographically
    /// smallest among those using only tight edges, which are all the optimal
    /// ones: row by row, the smallest tight column that an alternating path
    /// through the later rows can free.
    fn smallest_among_tight(&mut self, costs: &Costs<'_>) {
        let k = costs.k;
        let tight = |r: usize, c: usize| costs.cost(r, c) - self.u[r] - self.v[c] == 0;
        // rows with a tight column left of their own, the only ones that can move
        let movable: Vec<bool> = (0..k)
            .map(|r| (0..self.col_of[r]).any(|c| tight(r, c)))
            .collect();
        if !movable.contains(&true) {
            return;
        }
        // the tight rows of each column, ascending
        let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); k];
        for r in 0..k {
            for (c, rows) in rows_of.iter_mut().enumerate() {
                if tight(r, c) {
                    rows.push(r as u32);
                }
            }
        }
        let mut seen = vec![usize::MAX; k];
        let mut next = vec![NONE; k];
        let mut queue = VecDeque::new();
        for r in 0..k {
            let target = self.col_of[r];
            // columns r could take: tight, smaller, held by a later row
            let candidates: Vec<usize> = (0..target)
                .filter(|&c| self.row_of[c] > r && tight(r, c))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // the columns whose holder can be moved, along tight edges of
            // later rows, so that `target` ends up free
            seen[target] = r;
            queue.clear();
            queue.push_back(target);
            'search: while let Some(q) = queue.pop_front() {
                for &s in &rows_of[q] {
                    let s = s as usize;
                    if s <= r {
                        continue;
                    }
                    let p = self.col_of[s];
                    if seen[p] != r {
                        seen[p] = r;
                        next[p] = q;
                        if p == candidates[0] {
                            break 'search;
                        }
                        queue.push_back(p);
                    }
                }
            }
            let Some(&take) = candidates.iter().find(|&&c| seen[c] == r) else {
                continue;
            };
            // r takes `take`; each displaced row moves one step towards `target`
            let (mut row, mut c) = (r, take);
            loop {
                let displaced = self.row_of[c];
                self.row_of[c] = row;
                self.col_of[row] = c;
                if c == target {
                    break;
                }
                (row, c) = (displaced, next[c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The rule by brute force: the best (total, fixed points) over all
    /// permutations, the lexicographically smallest among equals.
    fn brute_force(weights: &[u32], k: usize) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..k).collect();
        let mut best: Option<((u64, usize), Vec<usize>)> = None;
        loop {
            let total: u64 = (0..k).map(|r| u64::from(weights[r * k + perm[r]])).sum();
            let fixed = (0..k).filter(|&r| perm[r] == r).count();
            // permutations come in lexicographic order: only strictly better wins
            if best.as_ref().is_none_or(|(key, _)| (total, fixed) > *key) {
                best = Some(((total, fixed), perm.clone()));
            }
            if !next_permutation(&mut perm) {
                return best.expect("k >= 1").1;
            }
        }
    }

    fn next_permutation(p: &mut [usize]) -> bool {
        let Some(i) = (1..p.len()).rev().find(|&i| p[i - 1] < p[i]) else {
            return false;
        };
        let j = (i..p.len())
            .rev()
            .find(|&j| p[j] > p[i - 1])
            .expect("exists");
        p.swap(i - 1, j);
        p[i..].reverse();
        true
    }

    fn total(weights: &[u32], k: usize, perm: &[usize]) -> u64 {
        (0..k).map(|r| u64::from(weights[r * k + perm[r]])).sum()
    }

    #[test]
    fn equals_brute_force_on_small_matrices_with_many_ties() {
        let mut rng = Rng::new(7);
        for case in 0..3000 {
            let k = 1 + case % 6;
            // few distinct values: ties everywhere
            let top = [1, 2, 3, 10][case % 4];
            let weights: Vec<u32> = (0..k * k).map(|_| rng.below(top + 1) as u32).collect();
            let got = max_weight_assignment(&weights, k).unwrap();
            assert_eq!(got, brute_force(&weights, k), "k={k} weights={weights:?}");
        }
    }

    #[test]
    fn keeps_numbers_without_overlap_and_finds_a_planted_permutation() {
        let k = 300;
        assert_eq!(
            max_weight_assignment(&vec![0; k * k], k).unwrap(),
            (0..k).collect::<Vec<_>>()
        );
        let mut rng = Rng::new(3);
        let mut planted: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            planted.swap(i, rng.below(i + 1));
        }
        // the planted pairs dominate, with noise elsewhere
        let mut weights: Vec<u32> = (0..k * k).map(|_| rng.below(3) as u32).collect();
        for r in 0..k {
            weights[r * k + planted[r]] = 50;
        }
        assert_eq!(max_weight_assignment(&weights, k).unwrap(), planted);
    }

    #[test]
    fn optimal_on_larger_random_matrices() {
        // no brute force here: the total must match the dual bound, and the
        // tie pass must not lose any of it
        let mut rng = Rng::new(11);
        for &k in &[7, 40, 150] {
            let weights: Vec<u32> = (0..k * k).map(|_| rng.below(20) as u32).collect();
            let perm = max_weight_assignment(&weights, k).unwrap();
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..k).collect::<Vec<_>>());
            // an independent bound: the assignment's total reaches the
            // weight of some feasible dual (u_r + v_c >= w_rc), so it is optimal
            let costs = Costs::new(&weights, k).unwrap();
            let mut a = Assignment::greedy(&costs);
            for r in 0..k {
                if a.col_of[r] == NONE {
                    a.augment(&costs, r);
                }
            }
            for r in 0..k {
                for c in 0..k {
                    assert!(costs.cost(r, c) - a.u[r] - a.v[c] >= 0);
                }
            }
            let dual: i64 = a.u.iter().sum::<i64>() + a.v.iter().sum::<i64>();
            let primal: i64 = (0..k).map(|r| costs.cost(r, a.col_of[r])).sum();
            assert_eq!(dual, primal, "k={k}");
            assert_eq!(total(&weights, k, &perm), total(&weights, k, &a.col_of));
        }
    }

    #[test]
    fn match_clusters_counts_overlaps_and_skips_absent_items() {
        // current = previous renamed 0->2, 1->0, 2->1, plus noise and absences
        let previous = [0, 0, 0, 1, 1, 2, 2, 2, -1, 1];
        let current = [2, 2, 1, 0, 0, 1, 1, 1, 0, -1];
        assert_eq!(match_clusters(&previous, &current, 3).unwrap(), [1, 2, 0]);
        let counts = overlap(&previous, &current, 3).unwrap();
        assert_eq!(counts, [0, 2, 0, 1, 0, 3, 2, 0, 0]);
        assert_eq!(match_clusters(&[], &[], 4).unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn errors() {
        let msg = |r: Result<Vec<usize>>| r.unwrap_err().to_string();
        assert!(msg(match_clusters(&[0], &[0], 0)).starts_with("k:"));
        assert!(msg(match_clusters(&[0, 1], &[0], 2)).starts_with("current:"));
        assert!(msg(match_clusters(&[0, 2], &[0, 1], 2)).contains("entry 1 is 2"));
        assert!(msg(match_clusters(&[0, 1], &[-2, 1], 2)).starts_with("current: entry 0"));
        assert!(msg(match_clusters(&[], &[], usize::MAX)).starts_with("k:"));
        assert!(max_weight_assignment(&[1, 2, 3], 2).is_err());
        // weights whose scaled costs could overflow are refused (a k this large
        // cannot be allocated, so the check is reached only directly)
        assert!(Costs::new(&[u32::MAX], 1 << 30).is_err());
        assert!(Costs::new(&[u32::MAX], 1 << 20).is_ok());
        let huge = [u32::MAX; 1];
        assert_eq!(max_weight_assignment(&huge, 1).unwrap(), [0]);
    }
}
