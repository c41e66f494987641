//! The label-embedding store: interns label strings to dense ids (first-seen
//! order) and keeps per label its sample count and the statistic for its
//! mean embedding.
//!
//! Two modes:
//! - running mean (default): per label the sum of all its samples (f32, each
//!   batch pre-summed in f64) and the count. Sums and counts, not means, so
//!   that stores of different processes can be merged exactly in a fixed order
//!   ([`LabelStore::add_sums`]).
//! - window (`max_samples_per_label = N`): per label a ring buffer of its last
//!   N samples; the mean is taken over the window.
//!
//! Every mutating call validates its whole input first: a rejected batch leaves
//! the store unchanged.

use hashbrown::hash_map::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;

use crate::error::{check_finite, check_matrix, Error, Result};
use crate::simd;

/// Labels per block of the sum matrix. Blocks never move once allocated, so
/// growth copies nothing and wastes at most one partly filled block.
const SUM_BLOCK: usize = 16;

#[derive(Debug, Clone)]
struct Window {
    /// Up to N rows of `dim` values; once full, a ring starting at `head`.
    buf: Vec<f32>,
    head: usize,
}

#[derive(Debug, Clone)]
enum Stats {
    Mean { blocks: Vec<Vec<f32>> },
    Window { cap: usize, windows: Vec<Window> },
}

/// The serialisable state of a [`LabelStore`] (see [`LabelStore::to_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreState {
    /// `max_samples_per_label`, or `None` for the running mean.
    pub max_samples_per_label: Option<usize>,
    /// The embedding dimension, once fixed.
    pub dim: Option<usize>,
    /// Label names in id order.
    pub labels: Vec<String>,
    /// Samples seen per label.
    pub counts: Vec<u64>,
    /// Mean mode: the L×dim sums. Window mode: every label's window rows,
    /// oldest first, labels in id order.
    pub data: Vec<f32>,
    /// Window mode: rows held per label (empty in mean mode).
    pub window_rows: Vec<usize>,
}

/// Label interning plus per-label running statistics. See the module docs.
#[derive(Debug, Clone)]
pub struct LabelStore {
    dim: Option<usize>,
    hasher: DefaultHashBuilder,
    table: HashTable<u32>,
    /// All names, concatenated; label i is `name_bytes[ends[i-1]..ends[i]]`.
    name_bytes: String,
    ends: Vec<usize>,
    counts: Vec<u64>,
    stats: Stats,
}

/// Hints the CPU to load `data` into cache (a no-op off x86-64).
#[inline]
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: prefetching is only a hint; it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

impl LabelStore {
    /// An empty store; `max_samples_per_label = Some(N)` keeps a window of the
    /// last N samples per label instead of the running mean.
    pub fn new(max_samples_per_label: Option<usize>) -> Result<Self> {
        let stats = match max_samples_per_label {
            None => Stats::Mean { blocks: Vec::new() },
            Some(0) => {
                return Err(Error::invalid(
                    "max_samples_per_label",
                    "must be at least 1 (or None for the running mean)",
                ))
            }
            Some(cap) => Stats::Window {
                cap,
                windows: Vec::new(),
            },
        };
        Ok(LabelStore {
            dim: None,
            hasher: DefaultHashBuilder::default(),
            table: HashTable::new(),
            name_bytes: String::new(),
            ends: Vec::new(),
            counts: Vec::new(),
            stats,
        })
    }

    /// `max_samples_per_label`, or `None` in running-mean mode.
    pub fn max_samples_per_label(&self) -> Option<usize> {
        match self.stats {
            Stats::Mean { .. } => None,
            Stats::Window { cap, .. } => Some(cap),
        }
    }

    /// Number of distinct labels.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no label has been seen.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The embedding dimension, fixed by the first batch.
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    /// The name of label `id` (`id < len()`).
    pub fn name(&self, id: usize) -> &str {
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.name_bytes[start..self.ends[id]]
    }

    /// All label names in id order.
    pub fn names(&self) -> Vec<&str> {
        (0..self.len()).map(|i| self.name(i)).collect()
    }

    /// Samples seen per label, in id order.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The id of `label`, if known.
    pub fn get(&self, label: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(label);
        self.table
            .find(hash, |&id| self.name(id as usize) == label)
            .copied()
    }

    /// Ids of `labels`, -1 for labels never seen. Changes nothing.
    pub fn lookup<S: AsRef<str>>(&self, labels: &[S]) -> Vec<i64> {
        labels
            .iter()
            .map(|l| self.get(l.as_ref()).map_or(-1, i64::from))
            .collect()
    }

    fn intern_one(&mut self, label: &str) -> u32 {
        let hash = self.hasher.hash_one(label);
        let LabelStore {
            hasher,
            table,
            name_bytes,
            ends,
            ..
        } = self;
        let name_of = |id: u32| {
            let i = id as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &name_bytes[start..ends[i]]
        };
        if let Some(&id) = table.find(hash, |&id| name_of(id) == label) {
            return id;
        }
        let id = ends.len() as u32;
        table.insert_unique(hash, id, |&other| hasher.hash_one(name_of(other)));
        name_bytes.push_str(label);
        ends.push(name_bytes.len());
        self.counts.push(0);
        match &mut self.stats {
            Stats::Mean { blocks } => {
                if (id as usize).is_multiple_of(SUM_BLOCK) {
                    blocks.push(vec![0.0; SUM_BLOCK * self.dim.unwrap_or(0)]);
                }
            }
            Stats::Window { windows, .. } => windows.push(Window {
                buf: Vec::new(),
                head: 0,
            }),
        }
        id
    }

    fn check_capacity(&self, extra: usize) -> Result<()> {
        if self.len() + extra > u32::MAX as usize {
            return Err(Error::invalid(
                "labels",
                format!("the store holds at most {} distinct labels", u32::MAX),
            ));
        }
        Ok(())
    }

    /// Interns `labels` (adding unseen ones with no samples) and returns their
    /// ids. A label with no sample has a NaN row in [`means`](Self::means).
    pub fn intern<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<Vec<u32>> {
        self.check_capacity(labels.len())?;
        Ok(labels.iter().map(|l| self.intern_one(l.as_ref())).collect())
    }

    fn check_dim(&self, arg: &'static str, dim: usize) -> Result<()> {
        if dim == 0 {
            return Err(Error::invalid(arg, "must have at least one column"));
        }
        match self.dim {
            Some(d) if d != dim => Err(Error::shape(
                arg,
                format!("{d} columns (the store's dimension)"),
                format!("{dim} columns"),
            )),
            _ => Ok(()),
        }
    }

    fn fix_dim(&mut self, dim: usize) {
        if self.dim.is_none() {
            self.dim = Some(dim);
            if let Stats::Mean { blocks } = &mut self.stats {
                for b in blocks.iter_mut() {
                    b.resize(SUM_BLOCK * dim, 0.0);
                }
            }
        }
    }

    fn sum_row_mut(&mut self, id: usize) -> &mut [f32] {
        let d = self.dim.expect("dimension fixed");
        match &mut self.stats {
            Stats::Mean { blocks } => {
                let off = (id % SUM_BLOCK) * d;
                &mut blocks[id / SUM_BLOCK][off..off + d]
            }
            Stats::Window { .. } => unreachable!("sum rows exist in mean mode only"),
        }
    }

    /// Adds a batch: `labels[i]` has embedding row i of the `labels.len()×dim`
    /// row-major `embeddings`. Returns the labels' ids. The whole batch is
    /// validated first (dimension, length, finite values): on error the store
    /// is unchanged.
    pub fn add<S: AsRef<str>>(
        &mut self,
        labels: &[S],
        embeddings: &[f32],
        dim: usize,
    ) -> Result<Vec<u32>> {
        self.check_dim("embeddings", dim)?;
        check_matrix("embeddings", embeddings, labels.len(), dim)?;
        check_finite("embeddings", embeddings, dim)?;
        self.check_capacity(labels.len())?;
        self.fix_dim(dim);
        let ids: Vec<u32> = labels.iter().map(|l| self.intern_one(l.as_ref())).collect();
        let rows = embeddings.chunks_exact(dim);
        match &mut self.stats {
            Stats::Mean { .. } => {
                // Pre-sum the batch per label in f64 (rows in batch order), then
                // add the sum once. The rows of each label are chained in a
                // linked list so that one D-sized f64 buffer serves every label.
                let n = ids.len();
                let mut slot_of: HashMap<u32, usize> = HashMap::with_capacity(n);
                let mut first_row: Vec<usize> = Vec::with_capacity(n);
                let mut last_row: Vec<usize> = Vec::with_capacity(n);
                let mut next_row = vec![usize::MAX; n];
                for (r, &id) in ids.iter().enumerate() {
                    match slot_of.entry(id) {
                        Entry::Occupied(e) => {
                            let s = *e.get();
                            next_row[last_row[s]] = r;
                            last_row[s] = r;
                        }
                        Entry::Vacant(e) => {
                            e.insert(first_row.len());
                            first_row.push(r);
                            last_row.push(r);
                        }
                    }
                }
                let row = |r: usize| &embeddings[r * dim..(r + 1) * dim];
                let mut acc = vec![0f64; dim];
                for (s, &r0) in first_row.iter().enumerate() {
                    // The sums of a large store are mostly out of cache: ask for the
                    // next label's row while this one is being added.
                    if let Some(&next) = first_row.get(s + 1) {
                        prefetch(self.sum_row_mut(ids[next] as usize));
                    }
                    acc.fill(0.0);
                    let mut r = r0;
                    while r != usize::MAX {
                        simd::add_row(&mut acc, row(r));
                        r = next_row[r];
                    }
                    simd::add_into_f32(self.sum_row_mut(ids[r0] as usize), &acc);
                }
            }
            Stats::Window { cap, windows } => {
                let cap = *cap;
                for (&id, row) in ids.iter().zip(rows) {
                    let w = &mut windows[id as usize];
                    if w.buf.len() < cap * dim {
                        if w.buf.len() == w.buf.capacity() {
                            let want = (w.buf.capacity() * 2).clamp(dim, cap * dim);
                            w.buf.reserve_exact(want - w.buf.len());
                        }
                        w.buf.extend_from_slice(row);
                    } else {
                        w.buf[w.head * dim..(w.head + 1) * dim].copy_from_slice(row);
                        w.head = (w.head + 1) % cap;
                    }
                }
            }
        }
        for &id in &ids {
            self.counts[id as usize] += 1;
        }
        Ok(ids)
    }

    /// Merges pre-summed statistics (running-mean mode only): label `ids[i]`
    /// gains `counts[i]` samples whose sum is row i of the `ids.len()×dim`
    /// matrix `sums`. Validated whole first: on error the store is unchanged.
    pub fn add_sums(
        &mut self,
        ids: &[u32],
        sums: &[f32],
        counts: &[u64],
        dim: usize,
    ) -> Result<()> {
        if !matches!(self.stats, Stats::Mean { .. }) {
            return Err(Error::invalid(
                "add_sums",
                "only a running-mean store (max_samples_per_label=None) merges sums",
            ));
        }
        self.check_dim("sums", dim)?;
        check_matrix("sums", sums, ids.len(), dim)?;
        check_finite("sums", sums, dim)?;
        if counts.len() != ids.len() {
            return Err(Error::shape(
                "counts",
                format!("{} values (one per id)", ids.len()),
                format!("{} values", counts.len()),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.len()) {
            return Err(Error::invalid(
                "ids",
                format!(
                    "id {bad} is not a label of this store ({} labels)",
                    self.len()
                ),
            ));
        }
        self.fix_dim(dim);
        for ((&id, row), &c) in ids.iter().zip(sums.chunks_exact(dim)).zip(counts) {
            for (o, &v) in self.sum_row_mut(id as usize).iter_mut().zip(row) {
                *o += v;
            }
            self.counts[id as usize] += c;
        }
        Ok(())
    }

    /// The L×dim matrix of mean embeddings in id order (row-major). A label
    /// with no sample yet has a row of NaN. Empty before the first batch.
    pub fn means(&self) -> Vec<f32> {
        let Some(d) = self.dim else {
            return Vec::new();
        };
        let mut out = vec![0f32; self.len() * d];
        for (id, row) in out.chunks_exact_mut(d).enumerate() {
            match &self.stats {
                Stats::Mean { blocks } => {
                    let c = self.counts[id];
                    let off = (id % SUM_BLOCK) * d;
                    let src = &blocks[id / SUM_BLOCK][off..off + d];
                    for (o, &s) in row.iter_mut().zip(src) {
                        *o = if c == 0 {
                            f32::NAN
                        } else {
                            (s as f64 / c as f64) as f32
                        };
                    }
                }
                Stats::Window { windows, .. } => {
                    let buf = &windows[id].buf;
                    let rows = buf.len() / d;
                    let mut acc = vec![0f64; d];
                    for r in buf.chunks_exact(d) {
                        for (a, &v) in acc.iter_mut().zip(r) {
                            *a += v as f64;
                        }
                    }
                    for (o, a) in row.iter_mut().zip(&acc) {
                        *o = if rows == 0 {
                            f32::NAN
                        } else {
                            (a / rows as f64) as f32
                        };
                    }
                }
            }
        }
        out
    }

    /// Bytes held by the store (allocated capacity, not only what is used).
    pub fn nbytes(&self) -> usize {
        let table = self.table.allocation_size();
        let names = self.name_bytes.capacity() + self.ends.capacity() * size_of::<usize>();
        let counts = self.counts.capacity() * size_of::<u64>();
        let stats = match &self.stats {
            Stats::Mean { blocks } => {
                blocks.capacity() * size_of::<Vec<f32>>()
                    + blocks.iter().map(|b| b.capacity() * 4).sum::<usize>()
            }
            Stats::Window { windows, .. } => {
                windows.capacity() * size_of::<Window>()
                    + windows.iter().map(|w| w.buf.capacity() * 4).sum::<usize>()
            }
        };
        size_of::<Self>() + table + names + counts + stats
    }

    /// The whole state, for checkpoints and pickling.
    pub fn to_state(&self) -> StoreState {
        let d = self.dim.unwrap_or(0);
        let (data, window_rows) = match &self.stats {
            Stats::Mean { blocks } => {
                let mut data = Vec::with_capacity(self.len() * d);
                for id in 0..self.len() {
                    let off = (id % SUM_BLOCK) * d;
                    data.extend_from_slice(&blocks[id / SUM_BLOCK][off..off + d]);
                }
                (data, Vec::new())
            }
            Stats::Window { windows, .. } => {
                let mut data = Vec::new();
                let mut rows = Vec::with_capacity(windows.len());
                for w in windows {
                    // Oldest first: the ring from `head` on, then before it.
                    let split = w.head * d;
                    data.extend_from_slice(&w.buf[split..]);
                    data.extend_from_slice(&w.buf[..split]);
                    rows.push(w.buf.len().checked_div(d).unwrap_or(0));
                }
                (data, rows)
            }
        };
        StoreState {
            max_samples_per_label: self.max_samples_per_label(),
            dim: self.dim,
            labels: self.names().into_iter().map(str::to_owned).collect(),
            counts: self.counts.clone(),
            data,
            window_rows,
        }
    }

    /// Rebuilds a store from [`to_state`](Self::to_state)'s output, checking
    /// its consistency.
    pub fn from_state(state: StoreState) -> Result<Self> {
        let bad = |msg: String| Error::invalid("state", msg);
        let mut store = LabelStore::new(state.max_samples_per_label)?;
        let n = state.labels.len();
        if state.counts.len() != n {
            return Err(bad(format!("{n} labels but {} counts", state.counts.len())));
        }
        if state.dim == Some(0) {
            return Err(bad("dim must be at least 1".into()));
        }
        let d = state.dim.unwrap_or(0);
        if state.dim.is_none() && (n > 0 || !state.data.is_empty()) {
            return Err(bad("labels or data without a dimension".into()));
        }
        check_finite("state", &state.data, d.max(1))?;
        match state.max_samples_per_label {
            None => {
                check_matrix("state.data", &state.data, n, d)?;
                if !state.window_rows.is_empty() {
                    return Err(bad("window_rows given for a running-mean store".into()));
                }
            }
            Some(cap) => {
                if state.window_rows.len() != n {
                    return Err(bad(format!(
                        "{n} labels but {} window lengths",
                        state.window_rows.len()
                    )));
                }
                if state.window_rows.iter().any(|&r| r > cap) {
                    return Err(bad(format!("a window holds more than {cap} rows")));
                }
                let total: usize = state.window_rows.iter().sum();
                check_matrix("state.data", &state.data, total, d)?;
            }
        }
        if let Some(d) = state.dim {
            store.fix_dim(d);
        }
        for (i, label) in state.labels.iter().enumerate() {
            if store.intern_one(label) as usize != i {
                return Err(bad(format!("label {label:?} appears twice")));
            }
        }
        store.counts = state.counts;
        let mut offset = 0;
        for id in 0..n {
            match &mut store.stats {
                Stats::Mean { .. } => {
                    let src = &state.data[id * d..(id + 1) * d];
                    store.sum_row_mut(id).copy_from_slice(src);
                }
                Stats::Window { windows, .. } => {
                    let len = state.window_rows[id] * d;
                    windows[id].buf = state.data[offset..offset + len].to_vec();
                    offset += len;
                }
            }
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn interns_in_first_seen_order() {
        let mut s = LabelStore::new(None).unwrap();
        let ids = s
            .add(&["walk", "run", "walk"], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2)
            .unwrap();
        assert_eq!(ids, vec![0, 1, 0]);
        let ids = s.add(&["sit", "run"], &[0.0; 4], 2).unwrap();
        assert_eq!(ids, vec![2, 1]);
        assert_eq!(s.names(), vec!["walk", "run", "sit"]);
        assert_eq!(s.counts(), &[2, 2, 1]);
        assert_eq!(s.lookup(&["sit", "fly"]), vec![2, -1]);
        assert!(close(&s.means(), &[3.0, 4.0, 1.5, 2.0, 0.0, 0.0]));
    }

    #[test]
    fn batch_is_presummed_in_f64_per_label() {
        // In f32, 1e8 + 1 rounds back to 1e8: only an f64 pre-sum of the
        // label's rows (in batch order) keeps the 1. Labels interleave so
        // that every label's rows are scattered over the batch.
        let mut s = LabelStore::new(None).unwrap();
        let labels = ["a", "b", "a", "c", "a", "b"];
        let emb = [1e8f32, 5.0, 1.0, 7.0, -1e8, -5.0];
        s.add(&labels, &emb, 1).unwrap();
        let state = s.to_state();
        assert_eq!(state.data, vec![1.0, 0.0, 7.0]);
        assert_eq!(s.counts(), &[3, 2, 1]);
        // a second batch adds its own f64 sum to the stored f32 sum
        s.add(&["c", "a", "c"], &[0.5, 2.0, 0.25], 1).unwrap();
        assert_eq!(s.to_state().data, vec![3.0, 0.0, 7.75]);
    }

    #[test]
    fn many_labels_cross_blocks() {
        let mut s = LabelStore::new(None).unwrap();
        let labels: Vec<String> = (0..100).map(|i| format!("label {i}")).collect();
        let emb: Vec<f32> = (0..100 * 3).map(|i| i as f32).collect();
        s.add(&labels, &emb, 3).unwrap();
        s.add(&labels, &emb, 3).unwrap();
        assert_eq!(s.len(), 100);
        assert!(close(&s.means(), &emb));
        assert_eq!(s.get("label 57"), Some(57));
    }

    #[test]
    fn window_mode_keeps_last_n() {
        let mut s = LabelStore::new(Some(2)).unwrap();
        for v in [1.0f32, 2.0, 3.0, 10.0] {
            s.add(&["a"], &[v], 1).unwrap();
        }
        assert!(close(&s.means(), &[6.5]));
        assert_eq!(s.counts(), &[4]);
        let back = LabelStore::from_state(s.to_state()).unwrap();
        assert!(close(&back.means(), &[6.5]));
        // The restored window drops the same sample next.
        let mut a = s.clone();
        let mut b = back;
        a.add(&["a"], &[20.0], 1).unwrap();
        b.add(&["a"], &[20.0], 1).unwrap();
        assert_eq!(a.means(), b.means());
        assert_eq!(a.to_state(), b.to_state());
    }

    #[test]
    fn rejected_batch_leaves_store_unchanged() {
        let mut s = LabelStore::new(None).unwrap();
        s.add(&["a"], &[1.0, 2.0], 2).unwrap();
        let before = s.to_state();
        let e = s
            .add(&["b", "c"], &[1.0, f32::NAN, 0.0, 0.0], 2)
            .unwrap_err();
        assert_eq!(
            e,
            Error::NonFinite {
                arg: "embeddings",
                row: 0
            }
        );
        assert!(s.add(&["b"], &[1.0, 2.0, 3.0], 3).is_err());
        assert!(s.add(&["b", "c"], &[1.0, 2.0], 2).is_err());
        assert_eq!(s.to_state(), before);
        assert_eq!(s.lookup(&["b", "c"]), vec![-1, -1]);
    }

    #[test]
    fn add_sums_merges_like_add() {
        let mut a = LabelStore::new(None).unwrap();
        a.add(&["x", "y", "x"], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2)
            .unwrap();
        let mut b = LabelStore::new(None).unwrap();
        let ids = b.intern(&["x", "y"]).unwrap();
        assert!(b.means().is_empty());
        b.add_sums(&ids, &[6.0, 8.0, 3.0, 4.0], &[2, 1], 2).unwrap();
        assert_eq!(a.means(), b.means());
        assert_eq!(a.counts(), b.counts());
        assert!(b.add_sums(&[5], &[0.0, 0.0], &[1], 2).is_err());
        assert!(b.add_sums(&[0], &[0.0, 0.0], &[1, 2], 2).is_err());
        let mut w = LabelStore::new(Some(3)).unwrap();
        assert!(w.add_sums(&[], &[], &[], 2).is_err());
    }

    #[test]
    fn unsampled_label_has_nan_mean() {
        let mut s = LabelStore::new(None).unwrap();
        s.add(&["a"], &[1.0], 1).unwrap();
        s.intern(&["b"]).unwrap();
        let m = s.means();
        assert_eq!(m[0], 1.0);
        assert!(m[1].is_nan());
    }

    #[test]
    fn state_round_trip_and_validation() {
        let mut s = LabelStore::new(None).unwrap();
        s.add(&["é", "b"], &[1.0, 2.0, 3.0, 4.0], 2).unwrap();
        let st = s.to_state();
        let back = LabelStore::from_state(st.clone()).unwrap();
        assert_eq!(back.to_state(), st);
        let mut dup = st.clone();
        dup.labels = vec!["a".into(), "a".into()];
        assert!(LabelStore::from_state(dup).is_err());
        let mut short = st;
        short.data.pop();
        assert!(LabelStore::from_state(short).is_err());
        assert!(LabelStore::new(Some(0)).is_err());
    }

    #[test]
    fn memory_per_label_is_small() {
        let d = 384;
        let mut s = LabelStore::new(None).unwrap();
        let labels: Vec<String> = (0..1000).map(|i| format!("activity {i}")).collect();
        s.add(&labels, &vec![0.5; 1000 * d], d).unwrap();
        let per_label = s.nbytes() as f64 / 1000.0;
        assert!(per_label < (d * 4 + 64) as f64 * 1.05, "{per_label}");
    }
}
