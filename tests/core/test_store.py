"""protofast.LabelStore: ids, means in both modes, atomic rejection, state."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from protofast import LabelStore, ProtofastError

LABELS = ["walking", "running", "sitting", "lying", "cycling"]


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[list[str], np.ndarray]]:
    dim = draw(st.integers(1, 8))
    out = []
    for _ in range(draw(st.integers(1, 6))):
        b = draw(st.integers(0, 12))
        labels = draw(st.lists(st.sampled_from(LABELS), min_size=b, max_size=b))
        emb = draw(
            st.lists(
                st.floats(-100, 100, allow_nan=False, width=32), min_size=b * dim, max_size=b * dim
            )
        )
        out.append((labels, np.array(emb, dtype=np.float32).reshape(b, dim)))
    return out


@given(batches())
def test_ids_and_running_means_match_numpy(data) -> None:
    store = LabelStore()
    rows: dict[str, list[np.ndarray]] = {}
    order: list[str] = []
    for labels, emb in data:
        ids = store.add(labels, emb)
        for label, row, i in zip(labels, emb, ids, strict=True):
            if label not in rows:
                order.append(label)
                rows[label] = []
            rows[label].append(row)
            assert order[i] == label
    assert store.labels() == order
    assert store.counts().tolist() == [len(rows[lbl]) for lbl in order]
    if order:
        want = np.stack([np.mean(np.stack(rows[lbl]).astype(np.float64), 0) for lbl in order])
        np.testing.assert_allclose(store.means(), want, rtol=1e-5, atol=1e-4)


@given(batches(), st.integers(1, 4))
def test_window_means_match_numpy(data, window: int) -> None:
    store = LabelStore(max_samples_per_label=window)
    rows: dict[str, list[np.ndarray]] = {}
    for labels, emb in data:
        store.add(labels, emb)
        for label, row in zip(labels, emb, strict=True):
            rows.setdefault(label, []).append(row)
    order = store.labels()
    if order:
        want = np.stack([np.mean(np.stack(rows[lbl][-window:]), 0) for lbl in order])
        np.testing.assert_allclose(store.means(), want, rtol=1e-5, atol=1e-4)
        assert store.counts().tolist() == [len(rows[lbl]) for lbl in order]


def test_ids_are_stable_and_lookup_changes_nothing() -> None:
    store = LabelStore()
    assert store.add(["a", "b"], np.zeros((2, 3))).tolist() == [0, 1]
    assert store.lookup(["b", "zzz"]).tolist() == [1, -1]
    assert len(store) == 2
    assert store.add(["c", "a"], np.ones((2, 3))).tolist() == [2, 0]
    assert store.intern(["d", "b"]).tolist() == [3, 1]
    assert np.isnan(store.means()[3]).all()
    assert store.dim == 3


@pytest.mark.parametrize(
    "labels,emb,exc,match",
    [
        (["x"], np.array([[np.nan, 0.0, 0.0]]), ProtofastError, "non-finite"),
        (["x"], np.array([[np.inf, 0.0, 0.0]]), ProtofastError, "non-finite"),
        (["x"], np.zeros((1, 4)), ProtofastError, "expected 3 columns"),
        (["x", "y"], np.zeros((1, 3)), ProtofastError, "expected 2 rows"),
        ("x", np.zeros((1, 3)), TypeError, "single str"),
        ([1], np.zeros((1, 3)), TypeError, "item 0 is int"),
        (["x"], np.zeros(3), ProtofastError, "2-D"),
    ],
)
def test_rejected_batch_leaves_store_unchanged(labels, emb, exc, match) -> None:
    store = LabelStore()
    store.add(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    before = pickle.dumps(store)
    with pytest.raises(exc, match=match):
        store.add(labels, emb)
    assert pickle.dumps(store) == before
    assert store.lookup(["x", "y"]).tolist() == [-1, -1]


def test_first_batch_fixes_dimension_and_rejects_zero_columns() -> None:
    store = LabelStore()
    with pytest.raises(ProtofastError, match="at least one column"):
        store.add([], np.zeros((0, 0)))
    assert store.dim is None and store.means().shape == (0, 0)


@pytest.mark.parametrize("window", [None, 3])
def test_pickle_and_state_round_trip(window) -> None:
    store = LabelStore(window)
    rng = np.random.default_rng(0)
    for _ in range(5):
        store.add(list(rng.choice(LABELS, 7)), rng.normal(size=(7, 4)))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.labels() == store.labels()
    np.testing.assert_array_equal(clone.means(), store.means())
    np.testing.assert_array_equal(clone.counts(), store.counts())
    assert clone.max_samples_per_label == window
    # Both evolve identically afterwards (window order restored too).
    extra = rng.normal(size=(7, 4))
    labels = list(rng.choice(LABELS, 7))
    store.add(labels, extra)
    clone.add(labels, extra)
    np.testing.assert_array_equal(clone.means(), store.means())
    state = {
        k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v)
        for k, v in store.state().items()
    }
    np.testing.assert_array_equal(LabelStore.from_state(state).means(), store.means())


def test_inconsistent_state_is_rejected() -> None:
    store = LabelStore()
    store.add(["a", "b"], np.zeros((2, 2)))
    state = store.state()
    state["labels"] = ["a", "a"]
    with pytest.raises(ProtofastError, match="appears twice"):
        LabelStore.from_state(state)
    state = store.state()
    state["counts"] = np.array([1])
    with pytest.raises(ProtofastError, match="counts"):
        LabelStore.from_state(state)


def test_add_sums_equals_add() -> None:
    rng = np.random.default_rng(1)
    labels = list(rng.choice(LABELS, 20))
    emb = rng.normal(size=(20, 5)).astype(np.float32)
    a = LabelStore()
    a.add(labels, emb)
    b = LabelStore()
    ids = b.intern(labels)
    uniq = np.unique(ids)
    sums = np.stack([emb[ids == i].sum(0) for i in uniq])
    counts = np.array([(ids == i).sum() for i in uniq])
    b.add_sums(uniq, sums, counts)
    np.testing.assert_allclose(a.means(), b.means(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ProtofastError, match="negative"):
        b.add_sums(uniq[:1], sums[:1], -counts[:1])
    with pytest.raises(ProtofastError, match="only a running-mean store"):
        LabelStore(2).add_sums([], np.zeros((0, 5)), [])


def test_accepts_torch_embeddings_and_reports_memory() -> None:
    store = LabelStore()
    store.add(["a", "b"], torch.randn(2, 384, dtype=torch.float16))
    assert store.nbytes > 2 * 384 * 8
    labels = [f"label {i}" for i in range(1000)]
    store.add(labels, np.zeros((1000, 384), np.float32))
    # a float64 sum row per label (the running mean stays precise over 1e7 additions)
    assert store.nbytes / len(store) <= 384 * 8 + 128
    with pytest.raises(ProtofastError):
        LabelStore(0)


def test_threads_adding_together_lose_nothing() -> None:
    store = LabelStore()
    store.add(["seed"], np.zeros((1, 4)))

    def work(t: int) -> None:
        for i in range(50):
            store.add([f"t{t}-{i % 5}", "shared"], np.ones((2, 4)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = dict(zip(store.labels(), store.counts().tolist(), strict=True))
    assert counts["shared"] == 200
    assert sum(counts.values()) == 1 + 400
