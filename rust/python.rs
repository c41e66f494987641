//! PyO3 bindings: convert inputs, release the GIL, call the core, convert
//! outputs. No logic lives here.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::borrow::Cow;
use std::sync::{Mutex, MutexGuard};

use crate::error::Error;
use crate::kmeans::{Init, KMeansParams};
use crate::lookup::LookupMetric;
use crate::store::{LabelStore, StoreState};
use crate::targets::{self, Blend, PrototypeRows};
use crate::{kmeans, kmeans_plusplus, label_hash, labels, matching, nearest_prototype, parallel};

create_exception!(
    protofast,
    ProtofastError,
    PyValueError,
    "Invalid input to protofast. The message names the argument and the problem."
);

/// The one conversion of core errors to Python exceptions.
impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        ProtofastError::new_err(e.to_string())
    }
}

/// Borrows a 2-D array as a row-major slice (copying only if it is not
/// C-contiguous) with its shape.
fn matrix<'a>(a: &'a PyReadonlyArray2<'_, f32>) -> (Cow<'a, [f32]>, usize, usize) {
    let (rows, cols) = a.as_array().dim();
    // `as_slice` also accepts Fortran order, whose slice is not row-major
    match a.as_slice().ok().filter(|_| a.is_c_contiguous()) {
        Some(s) => (Cow::Borrowed(s), rows, cols),
        None => (
            Cow::Owned(a.as_array().iter().copied().collect()),
            rows,
            cols,
        ),
    }
}

fn vector<'a, T: numpy::Element + Copy>(a: &'a PyReadonlyArray1<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

fn to_matrix(py: Python<'_>, data: Vec<f32>, rows: usize, cols: usize) -> Bound<'_, PyArray2<f32>> {
    Array2::from_shape_vec((rows, cols), data)
        .expect("the core returns rows×cols values")
        .into_pyarray(py)
}

fn ids_to_py(py: Python<'_>, ids: Vec<u32>) -> Bound<'_, PyArray1<i64>> {
    ids.into_iter()
        .map(i64::from)
        .collect::<Vec<_>>()
        .into_pyarray(py)
}

/// k-means; see `protofast.kmeans` for the documented wrapper.
#[pyfunction]
#[pyo3(signature = (x, k, *, n_init, max_iter, tol, seed, init, init_centroids, spherical, n_local_trials=None, reassign=true))]
#[allow(clippy::too_many_arguments)]
fn kmeans_raw<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    n_init: usize,
    max_iter: usize,
    tol: f64,
    seed: u64,
    init: &str,
    init_centroids: Option<PyReadonlyArray2<'py, f32>>,
    spherical: bool,
    n_local_trials: Option<usize>,
    reassign: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let (data, n, d) = matrix(&x);
    let init = match (init, &init_centroids) {
        (_, Some(c)) => {
            let (c, ck, cd) = matrix(c);
            if cd != d || ck != k {
                return Err(Error::shape("init", format!("{k}×{d}"), format!("{ck}×{cd}")).into());
            }
            Init::Given(c.into_owned())
        }
        ("k-means++", None) => Init::KMeansPlusPlus,
        ("random", None) => Init::Random,
        (other, None) => {
            return Err(Error::invalid(
                "init",
                format!("expected 'k-means++', 'random' or a k×D array, got {other:?}"),
            )
            .into())
        }
    };
    let params = KMeansParams {
        k,
        n_init,
        max_iter,
        tol,
        seed,
        init,
        spherical,
        n_local_trials,
        reassign,
    };
    // restarts side by side need the whole pool, however small each step is
    let work = if kmeans::parallel_restarts(n, d, k, n_init) {
        parallel::SERIAL_WORK
    } else {
        n.saturating_mul(d).saturating_mul(k)
    };
    let r = py.detach(|| parallel::install_for(work, || kmeans(&data, n, d, &params)))??;
    let centroids = to_matrix(py, r.centroids, k, d);
    let labels = ids_to_py(py, r.labels);
    (centroids, labels, r.inertia, r.n_iter, r.converged).into_pyobject(py)
}

/// k-means++ seeds (row indices); see `protofast.kmeans_plusplus`.
#[pyfunction]
#[pyo3(signature = (x, k, *, seed, n_local_trials=None))]
fn kmeans_plusplus_raw<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    seed: u64,
    n_local_trials: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (data, n, d) = matrix(&x);
    let idx = py.detach(|| {
        parallel::install_for(n.saturating_mul(d).saturating_mul(k), || {
            kmeans_plusplus(&data, n, d, k, seed, n_local_trials)
        })
    })??;
    Ok(idx
        .into_iter()
        .map(|i| i as i64)
        .collect::<Vec<_>>()
        .into_pyarray(py))
}

/// `(ids, scores)` of a lookup.
type IdsAndScores<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>);

/// Nearest-prototype lookup; see `protofast.nearest_prototype`.
#[pyfunction]
#[pyo3(signature = (queries, centroids, metric))]
fn nearest_prototype_raw<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
    metric: &str,
) -> PyResult<IdsAndScores<'py>> {
    let metric: LookupMetric = metric.parse()?;
    let (q, nq, dq) = matrix(&queries);
    let (c, k, d) = matrix(&centroids);
    if dq != d {
        return Err(Error::shape(
            "queries",
            format!("{d} columns (as centroids)"),
            format!("{dq} columns"),
        )
        .into());
    }
    let (ids, scores) = py.detach(|| {
        parallel::install_for(nq.saturating_mul(d).saturating_mul(k), || {
            nearest_prototype(&q, nq, &c, k, d, metric)
        })
    })??;
    Ok((ids_to_py(py, ids), scores.into_pyarray(py)))
}

/// `(first, inverse, counts)` of [`group_labels_raw`].
type Grouping<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

/// The first position, number and count of each distinct label of a batch;
/// see `protofast.targets.index_label_arrays`. Small work: the GIL is kept.
#[pyfunction]
fn group_labels_raw<'py>(py: Python<'py>, labels: Vec<PyBackedStr>) -> Grouping<'py> {
    grouping_to_py(py, labels::group(&labels))
}

/// A [`labels::Grouping`] as numpy arrays.
fn grouping_to_py(py: Python<'_>, g: labels::Grouping) -> Grouping<'_> {
    (
        g.first.into_pyarray(py),
        g.inverse.into_pyarray(py),
        g.counts.into_pyarray(py),
    )
}

/// Whether each row of the C-contiguous float32 or float64 matrix `rows`
/// equals the row of its label's first sample; `None` for another dtype or
/// layout (the caller then checks another way). Small work: the GIL is kept.
#[pyfunction]
fn rows_match_raw(
    rows: &Bound<'_, PyAny>,
    first: PyReadonlyArray1<'_, i64>,
    inverse: PyReadonlyArray1<'_, i64>,
) -> PyResult<Option<bool>> {
    let (first, inverse) = (vector(&first), vector(&inverse));
    let (first, inverse) = (&*first, &*inverse);
    if let Ok(a) = rows.cast::<PyArray2<f32>>() {
        return rows_match_of(a, first, inverse);
    }
    if let Ok(a) = rows.cast::<PyArray2<f64>>() {
        return rows_match_of(a, first, inverse);
    }
    Ok(None)
}

/// [`rows_match_raw`] for one dtype.
fn rows_match_of<T: numpy::Element + Copy + PartialEq>(
    rows: &Bound<'_, PyArray2<T>>,
    first: &[i64],
    inverse: &[i64],
) -> PyResult<Option<bool>> {
    let a = rows.readonly();
    let d = a.as_array().ncols();
    // `as_slice` also accepts Fortran order, whose slice is not row-major
    Ok(match a.as_slice().ok().filter(|_| a.is_c_contiguous()) {
        Some(r) => Some(labels::rows_match(r, d, first, inverse)?),
        None => None,
    })
}

/// `(L × L part, mean off-diagonal similarity)` of [`label_targets_raw`].
type LabelPart<'py> = (Bound<'py, PyArray2<f32>>, Option<f64>);

/// The `L × L` target part of a batch's distinct labels (hard, pairwise and
/// prototype parts weighted and added) and, when asked, the mean
/// off-diagonal label similarity; see `rust/targets.rs`. With `first` and
/// `inverse`, `emb` holds the batch's `B` rows: they are checked first
/// (`None` when a row differs from its label's first row), then the
/// distinct labels' rows are used. Small work: the GIL is kept.
#[pyfunction]
#[pyo3(signature = (emb, counts, *, hard, pairwise, inv_temperature, logits=None, clusters=None, prototype=0.0, want_semantic=false, first=None, inverse=None))]
#[allow(clippy::too_many_arguments)]
fn label_targets_raw<'py>(
    py: Python<'py>,
    emb: PyReadonlyArray2<'py, f32>,
    counts: PyReadonlyArray1<'py, f32>,
    hard: f32,
    pairwise: f32,
    inv_temperature: f32,
    logits: Option<PyReadonlyArray2<'py, f32>>,
    clusters: Option<PyReadonlyArray1<'py, i64>>,
    prototype: f32,
    want_semantic: bool,
    first: Option<PyReadonlyArray1<'py, i64>>,
    inverse: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Option<LabelPart<'py>>> {
    let (emb, _, d) = matrix(&emb);
    let counts = vector(&counts);
    let proto = match (&logits, &clusters) {
        (Some(lg), Some(cl)) => Some((matrix(lg), vector(cl))),
        (None, None) => None,
        _ => {
            return Err(Error::invalid("logits", "logits and clusters go together").into());
        }
    };
    let blend = Blend {
        hard,
        pairwise,
        inv_temperature,
        prototype: proto.as_ref().map(|((lg, k, _), cl)| PrototypeRows {
            weight: prototype,
            logits: lg,
            k: *k,
            clusters: cl,
        }),
    };
    let out = match (&first, &inverse) {
        (Some(f), Some(i)) => {
            let (f, i) = (vector(f), vector(i));
            targets::batch_label_targets(&emb, d, &f, &i, &counts, &blend, want_semantic)?
        }
        (None, None) => Some(targets::label_targets(
            &emb,
            d,
            &counts,
            &blend,
            want_semantic,
        )?),
        _ => return Err(Error::invalid("first", "first and inverse go together").into()),
    };
    let l = counts.len();
    Ok(out.map(|t| (to_matrix(py, t.part, l, l), t.semantic)))
}

/// The stable hash of each label; see `protofast.label_hashes`. Reads each
/// `str` in place (no copy); a string with no UTF-8 form (a lone surrogate)
/// is hashed from its `surrogatepass` encoding. Small work: the GIL is kept.
#[pyfunction]
fn label_hashes_raw<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let mut out = Vec::with_capacity(labels.len());
    for (i, item) in labels.iter().enumerate() {
        let Ok(text) = item.cast::<PyString>() else {
            let kind = item.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "labels: item {i} is {kind}, expected str"
            )));
        };
        out.push(match text.to_str() {
            Ok(t) => label_hash::label_hash(t.as_bytes()),
            Err(_) => {
                // str.encode itself, not an override of a subclass
                let encode = py.get_type::<PyString>().getattr("encode")?;
                let bytes = encode.call1((text, "utf-8", "surrogatepass"))?;
                label_hash::label_hash(bytes.cast::<PyBytes>()?.as_bytes())
            }
        });
    }
    Ok(out.into_pyarray(py))
}

/// The renumbering of `current`'s clusters that best matches `previous`'s;
/// see `protofast.match_clusters`.
#[pyfunction]
fn match_clusters_raw<'py>(
    py: Python<'py>,
    previous: PyReadonlyArray1<'py, i64>,
    current: PyReadonlyArray1<'py, i64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (previous, current) = (vector(&previous), vector(&current));
    let perm = py.detach(|| matching::match_clusters(&previous, &current, k))?;
    Ok(perm
        .into_iter()
        .map(|c| c as i64)
        .collect::<Vec<_>>()
        .into_pyarray(py))
}

/// Sets the number of threads of protofast's pool (≥ 1).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    Ok(parallel::set_num_threads(n)?)
}

/// The number of threads protofast's parallel routines use.
#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// Turns k-means' integer screen on the CPU's tile unit (AMX) on or off;
/// returns whether it now runs.
#[pyfunction]
fn set_amx(enabled: bool) -> bool {
    crate::set_amx(enabled)
}

/// Whether k-means' integer screen on the CPU's tile unit (AMX) runs.
#[pyfunction]
fn get_amx() -> bool {
    crate::amx_enabled()
}

/// The embeddings of a batch have one row per label.
fn one_row_per_label(labels: usize, rows: usize) -> Result<(), Error> {
    if rows != labels {
        return Err(Error::shape(
            "embeddings",
            format!("{labels} rows (one per label)"),
            format!("{rows} rows"),
        ));
    }
    Ok(())
}

/// Label interning with per-label running statistics. Thread-safe: calls
/// from several threads are serialised.
#[pyclass(frozen, module = "protofast._protofast", name = "LabelStore")]
struct PyLabelStore {
    inner: Mutex<LabelStore>,
}

impl PyLabelStore {
    fn lock(&self) -> MutexGuard<'_, LabelStore> {
        // Every mutation validates before it writes, so a panic cannot leave
        // a half-written store behind: a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyLabelStore {
    #[new]
    #[pyo3(signature = (max_samples_per_label=None))]
    fn new(max_samples_per_label: Option<usize>) -> PyResult<Self> {
        Ok(PyLabelStore {
            inner: Mutex::new(LabelStore::new(max_samples_per_label)?),
        })
    }

    fn add<'py>(
        &self,
        py: Python<'py>,
        labels: Vec<PyBackedStr>,
        embeddings: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let (data, rows, dim) = matrix(&embeddings);
        one_row_per_label(labels.len(), rows)?;
        let ids = py.detach(|| self.lock().add(&labels, &data, dim))?;
        Ok(ids_to_py(py, ids))
    }

    /// `add`, then the batch grouped by store id: `(ids, first, inverse,
    /// counts)` in one call.
    fn add_grouped<'py>(
        &self,
        py: Python<'py>,
        labels: Vec<PyBackedStr>,
        embeddings: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Grouping<'py>)> {
        let (data, rows, dim) = matrix(&embeddings);
        one_row_per_label(labels.len(), rows)?;
        let (ids, g) = py.detach(|| -> Result<_, Error> {
            let ids = self.lock().add(&labels, &data, dim)?;
            let g = labels::group_ids(&ids);
            Ok((ids, g))
        })?;
        Ok((ids_to_py(py, ids), grouping_to_py(py, g)))
    }

    /// `intern`, then the batch grouped by store id: `(ids, first, inverse,
    /// counts)` in one call.
    fn intern_grouped<'py>(
        &self,
        py: Python<'py>,
        labels: Vec<PyBackedStr>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Grouping<'py>)> {
        let (ids, g) = py.detach(|| -> Result<_, Error> {
            let ids = self.lock().intern(&labels)?;
            let g = labels::group_ids(&ids);
            Ok((ids, g))
        })?;
        Ok((ids_to_py(py, ids), grouping_to_py(py, g)))
    }

    fn intern<'py>(
        &self,
        py: Python<'py>,
        labels: Vec<PyBackedStr>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = py.detach(|| self.lock().intern(&labels))?;
        Ok(ids_to_py(py, ids))
    }

    fn lookup<'py>(&self, py: Python<'py>, labels: Vec<PyBackedStr>) -> Bound<'py, PyArray1<i64>> {
        let ids = py.detach(|| self.lock().lookup(&labels));
        ids.into_pyarray(py)
    }

    fn add_sums(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, i64>,
        sums: PyReadonlyArray2<'_, f32>,
        counts: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        let ids: Vec<u32> = vector(&ids)
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| Error::invalid("ids", format!("invalid id {i}")))
            })
            .collect::<Result<_, _>>()?;
        let counts: Vec<u64> = vector(&counts)
            .iter()
            .map(|&c| {
                u64::try_from(c)
                    .map_err(|_| Error::invalid("counts", format!("negative count {c}")))
            })
            .collect::<Result<_, _>>()?;
        let (data, _, dim) = matrix(&sums);
        py.detach(|| self.lock().add_sums(&ids, &data, &counts, dim))?;
        Ok(())
    }

    fn means<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        let (m, rows, dim) = py.detach(|| {
            let s = self.lock();
            (s.means(), s.len(), s.dim().unwrap_or(0))
        });
        to_matrix(py, m, rows, dim)
    }

    fn labels(&self) -> Vec<String> {
        self.lock().names().into_iter().map(str::to_owned).collect()
    }

    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let c: Vec<i64> = self.lock().counts().iter().map(|&c| c as i64).collect();
        c.into_pyarray(py)
    }

    fn __len__(&self) -> usize {
        self.lock().len()
    }

    #[getter]
    fn dim(&self) -> Option<usize> {
        self.lock().dim()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.lock().nbytes()
    }

    #[getter]
    fn max_samples_per_label(&self) -> Option<usize> {
        self.lock().max_samples_per_label()
    }

    fn __repr__(&self) -> String {
        let s = self.lock();
        format!(
            "LabelStore(labels={}, dim={}, max_samples_per_label={}, nbytes={})",
            s.len(),
            s.dim().map_or("None".into(), |d| d.to_string()),
            s.max_samples_per_label()
                .map_or("None".into(), |d| d.to_string()),
            s.nbytes()
        )
    }

    /// The whole state as a dict of plain values and numpy arrays.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = py.detach(|| self.lock().to_state());
        let d = PyDict::new(py);
        d.set_item("max_samples_per_label", st.max_samples_per_label)?;
        d.set_item("dim", st.dim)?;
        let rows = st.data.len() / st.dim.unwrap_or(1).max(1);
        d.set_item("labels", st.labels)?;
        let counts: Vec<i64> = st.counts.iter().map(|&c| c as i64).collect();
        d.set_item("counts", counts.into_pyarray(py))?;
        let data = Array2::from_shape_vec((rows, st.dim.unwrap_or(0)), st.data)
            .expect("to_state gives rows × dim values");
        d.set_item("data", data.into_pyarray(py))?;
        let wr: Vec<i64> = st.window_rows.iter().map(|&r| r as i64).collect();
        d.set_item("window_rows", wr.into_pyarray(py))?;
        Ok(d)
    }

    /// Replaces the contents with a state from `state()` (validated first).
    #[allow(clippy::too_many_arguments)]
    fn load_state(
        &self,
        py: Python<'_>,
        max_samples_per_label: Option<usize>,
        dim: Option<usize>,
        labels: Vec<String>,
        counts: PyReadonlyArray1<'_, i64>,
        data: PyReadonlyArray2<'_, f64>,
        window_rows: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        let nonneg = |arg: &'static str, v: &[i64]| -> PyResult<Vec<u64>> {
            v.iter()
                .map(|&c| {
                    u64::try_from(c)
                        .map_err(|_| Error::invalid(arg, format!("negative value {c}")).into())
                })
                .collect()
        };
        let counts = nonneg("state.counts", &vector(&counts))?;
        let window_rows = nonneg("state.window_rows", &vector(&window_rows))?
            .into_iter()
            .map(|r| r as usize)
            .collect();
        let data = data.as_array().iter().copied().collect();
        let state = StoreState {
            max_samples_per_label,
            dim,
            labels,
            counts,
            data,
            window_rows,
        };
        let store = py.detach(|| LabelStore::from_state(state))?;
        *self.lock() = store;
        Ok(())
    }
}

#[pymodule]
fn _protofast(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ProtofastError", m.py().get_type::<ProtofastError>())?;
    m.add_class::<PyLabelStore>()?;
    m.add_function(wrap_pyfunction!(kmeans_raw, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_plusplus_raw, m)?)?;
    m.add_function(wrap_pyfunction!(nearest_prototype_raw, m)?)?;
    m.add_function(wrap_pyfunction!(group_labels_raw, m)?)?;
    m.add_function(wrap_pyfunction!(rows_match_raw, m)?)?;
    m.add_function(wrap_pyfunction!(label_targets_raw, m)?)?;
    m.add_function(wrap_pyfunction!(label_hashes_raw, m)?)?;
    m.add_function(wrap_pyfunction!(match_clusters_raw, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_amx, m)?)?;
    m.add_function(wrap_pyfunction!(get_amx, m)?)?;
    Ok(())
}
