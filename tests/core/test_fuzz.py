"""Property-based fuzzing of the core through its Python API: whatever the arguments, a call
returns or raises ``TypeError`` / ``ValueError`` (``ProtofastError`` is one), never a panic
(``PanicException`` is a ``BaseException``) or an abort, and a store refusing a call is left
unchanged.

CI runs a few dozen examples per test; ``make fuzz`` runs many more (``PROTOFAST_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protofast import LabelStore, kmeans, kmeans_plusplus, nearest_prototype

FUZZ = settings(
    max_examples=int(os.environ.get("PROTOFAST_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# values that probe overflow, rounding and validation
FLOATS = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-38, 1e19, -3e38, 3.4e38, np.nan, np.inf, -np.inf, 0.5]
)
INTS = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63)]),
)
DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "bool"])


@st.composite
def matrices(draw: Any, max_rows: int = 40, max_cols: int = 6) -> Any:
    rows = draw(st.integers(0, max_rows))
    cols = draw(st.integers(0, max_cols))
    shape: tuple[int, ...] = (rows, cols)
    if draw(st.booleans()) and rows:
        shape = draw(st.sampled_from([(rows,), (rows, cols, 1), ()]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e-40, 1e18, 1e30]))
    if x.size and draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = draw(FLOATS)
    if draw(st.booleans()) and x.ndim == 2 and rows > 1:
        x[1] = x[0]  # duplicate rows
    with np.errstate(all="ignore"):
        return x.astype(draw(DTYPES))


LABELS = st.lists(
    st.one_of(st.sampled_from(["a", "b", "c", "", "é", "\ud800", "a" * 300]), st.text(max_size=3)),
    max_size=12,
)


def _snapshot(store: LabelStore) -> Any:
    means = store.means()
    return (store.labels(), store.counts().tolist(), means.tobytes(), means.shape, store.dim)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError):
        return None


@FUZZ
@given(
    x=matrices(),
    k=INTS,
    n_init=INTS,
    max_iter=st.integers(-1, 5),
    tol=FLOATS,
    seed=INTS,
    init=st.sampled_from(["k-means++", "random", "bogus", "array"]),
    spherical=st.booleans(),
    trials=st.one_of(st.none(), INTS),
)
def test_kmeans_never_panics(
    x: Any,
    k: int,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
    init: str,
    spherical: bool,
    trials: int | None,
) -> None:
    init_arg: Any = init
    if init == "array":
        init_arg = np.ones((max(min(k, 5), 0), 3), np.float32)
    result = _call(
        kmeans,
        x,
        k,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        init=init_arg,
        spherical=spherical,
        n_local_trials=trials,
    )
    if result is not None:
        assert result.centroids.shape[0] == k
        assert result.labels.shape == (np.asarray(x).shape[0],)
        assert result.labels.min() >= 0 and result.labels.max() < k
    _call(kmeans_plusplus, x, k, seed=seed, n_local_trials=trials)


@FUZZ
@given(
    queries=matrices(), centroids=matrices(max_rows=20), metric=st.sampled_from(["l2", "cosine"])
)
def test_lookup_never_panics(queries: Any, centroids: Any, metric: str) -> None:
    result = _call(nearest_prototype, queries, centroids, metric=metric)
    if result is not None:
        ids, scores = result
        assert ids.shape == (np.asarray(queries).shape[0],)
        assert ((ids >= 0) & (ids < np.asarray(centroids).shape[0])).all()


@FUZZ
@given(
    window=st.one_of(st.none(), st.integers(1, 4), st.sampled_from([0, 2**40, 2**62, 2**64])),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "add_grouped", "intern", "lookup", "add_sums", "state"]),
            LABELS,
            matrices(max_rows=12),
            st.lists(INTS, max_size=4),
        ),
        max_size=8,
    ),
)
def test_store_never_panics_and_refusals_change_nothing(window: Any, ops: list[Any]) -> None:
    store = _call(LabelStore, window)
    if store is None:
        return
    for op, labels, emb, ints in ops:
        before = _snapshot(store)
        try:
            if op == "add":
                store.add(labels, emb)
            elif op == "add_grouped":
                store.add_grouped(labels, emb)
            elif op == "intern":
                store.intern(labels)
            elif op == "lookup":
                store.lookup(labels)
            elif op == "add_sums":
                store.add_sums(ints, emb, ints[::-1])
            else:
                state = store.state()
                restored = LabelStore.from_state(state)
                assert _snapshot(restored) == before  # every reachable state round-trips
        except (TypeError, ValueError):
            assert _snapshot(store) == before
        if op in ("lookup", "state"):
            assert _snapshot(store) == before


@FUZZ
@given(
    field=st.sampled_from(["counts", "data", "window_rows", "dim", "labels"]),
    value=st.one_of(
        matrices(max_rows=6),
        st.lists(INTS, max_size=6).map(lambda v: np.array(v, dtype=object)),
        st.none(),
        INTS,
    ),
    window=st.one_of(st.none(), st.integers(1, 3)),
)
def test_state_import_never_panics(field: str, value: Any, window: int | None) -> None:
    store = LabelStore(window)
    store.add(["a", "b", "a"], np.arange(12, dtype=np.float32).reshape(3, 4))
    state = {**store.state(), field: value}
    restored = _call(LabelStore.from_state, state)
    if restored is not None:
        assert len(restored.labels()) == len(restored.counts())
