"""Bad input to every public entry point of the core: the right error, naming the argument, and
nothing changed. Also: a process forked while another thread is inside a store call."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from protofast import LabelStore, ProtofastError, kmeans, kmeans_plusplus, nearest_prototype

X = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
MASKED = np.ma.masked_array
ONES = np.ones((2, 4))


def _store() -> LabelStore:
    store = LabelStore()
    store.add(["a", "b", "a"], np.ones((3, 4), np.float32))
    return store


def _snapshot(store: LabelStore) -> tuple[Any, ...]:
    return (store.labels(), store.counts().tolist(), store.means().tolist(), store.dim)


# (name, call on a fresh store, exception type, text the message must contain)
CASES: list[tuple[str, Callable[[LabelStore], Any], type[Exception], str]] = [
    ("complex tensor", lambda s: kmeans(torch.ones(4, 2, dtype=torch.cfloat), 2), TypeError, "x:"),
    ("bool tensor", lambda s: kmeans(torch.ones(4, 2, dtype=torch.bool), 2), TypeError, "x:"),
    ("bool array", lambda s: kmeans(np.ones((4, 2), bool), 2), TypeError, "x:"),
    ("complex array", lambda s: kmeans(np.ones((4, 2), complex), 2), TypeError, "x:"),
    ("masked array", lambda s: kmeans(MASKED(X, mask=X > 0), 2), TypeError, "x:"),
    ("spherical str", lambda s: kmeans(X, 2, spherical="no"), TypeError, "spherical"),
    ("seed too large", lambda s: kmeans(X, 2, seed=2**64), ProtofastError, "seed"),
    ("n_init too large", lambda s: kmeans(X, 2, n_init=2**64), ProtofastError, "n_init"),
    ("k too large", lambda s: kmeans(X, 2**70), ProtofastError, "k:"),
    ("k float", lambda s: kmeans(X, 2.0), TypeError, "k:"),
    (
        "trials too large",
        lambda s: kmeans_plusplus(X, 2, n_local_trials=2**64),
        ProtofastError,
        "n_local_trials",
    ),
    ("metric", lambda s: nearest_prototype(X, X[:2], metric="dot"), ValueError, "metric"),
    (
        "queries masked",
        lambda s: nearest_prototype(np.ma.masked_array(X), X[:2]),
        TypeError,
        "queries",
    ),
    (
        "surrogate label",
        lambda s: s.add(["a", "\ud800"], np.ones((2, 4))),
        ProtofastError,
        "labels",
    ),
    ("surrogate intern", lambda s: s.intern(["\ud800"]), ProtofastError, "labels"),
    ("surrogate lookup", lambda s: s.lookup(["\ud800"]), ProtofastError, "labels"),
    ("int label", lambda s: s.add(["a", 3], np.ones((2, 4))), TypeError, "labels: item 1"),
    ("bare str", lambda s: s.add("ab", np.ones((2, 4))), TypeError, "single str"),
    ("float ids", lambda s: s.add_sums([0.7], np.ones((1, 4)), [1]), TypeError, "ids"),
    ("float counts", lambda s: s.add_sums([0], np.ones((1, 4)), [1.5]), TypeError, "counts"),
    ("bool counts", lambda s: s.add_sums([0], np.ones((1, 4)), [True]), TypeError, "counts"),
    ("negative counts", lambda s: s.add_sums([0], np.ones((1, 4)), [-1]), ProtofastError, "counts"),
    ("huge counts", lambda s: s.add_sums([0], np.ones((1, 4)), [2**64]), ProtofastError, "counts"),
    ("huge ids", lambda s: s.add_sums([2**70], np.ones((1, 4)), [1]), ProtofastError, "ids"),
    (
        "masked ids",
        lambda s: s.add_sums(np.ma.masked_array([0]), np.ones((1, 4)), [1]),
        TypeError,
        "ids",
    ),
    ("unknown id", lambda s: s.add_sums([9], np.ones((1, 4)), [1]), ProtofastError, "ids"),
    ("nan sums", lambda s: s.add_sums([0], np.full((1, 4), np.nan), [1]), ProtofastError, "sums"),
    ("complex sums", lambda s: s.add_sums([0], np.ones((1, 4), complex), [1]), TypeError, "sums"),
    (
        "window too small",
        lambda s: LabelStore(max_samples_per_label=0),
        ProtofastError,
        "max_samples_per_label",
    ),
    (
        "window too large",
        lambda s: LabelStore(max_samples_per_label=2**64),
        ProtofastError,
        "max_samples_per_label",
    ),
    (
        "state counts float",
        lambda s: LabelStore.from_state({**s.state(), "counts": np.array([2.5, 1.0])}),
        TypeError,
        "state.counts",
    ),
    (
        "state counts negative",
        lambda s: LabelStore.from_state({**s.state(), "counts": np.array([-2, 1])}),
        ProtofastError,
        "state.counts",
    ),
    (
        "state dim float",
        lambda s: LabelStore.from_state({**s.state(), "dim": 4.0}),
        TypeError,
        "state.dim",
    ),
]


@pytest.mark.parametrize("call,exc,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name_and_changes_nothing(
    call: Callable[[LabelStore], Any], exc: type[Exception], text: str
) -> None:
    store = _store()
    before = _snapshot(store)
    with pytest.raises(exc, match=text.replace("[", r"\[")):
        call(store)
    assert _snapshot(store) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_is_inside_a_store_call() -> None:
    """The child of a fork taken while another thread is inside ``LabelStore.add`` can use the
    store (before: it inherited the store's lock held and hung on first use)."""
    store = LabelStore()
    labels = [f"label {i % 5000}" for i in range(20_000)]
    emb = np.ones((len(labels), 64), np.float32)
    stop = threading.Event()
    calls = []

    def feed() -> None:
        while not stop.is_set():
            store.add(labels, emb)
            calls.append(1)

    worker = threading.Thread(target=feed)
    worker.start()
    try:
        while not calls:  # the worker is running its adds
            time.sleep(0.001)
        outcomes = []
        for _ in range(3):
            time.sleep(0.002)
            pid = os.fork()
            if pid == 0:  # the child: one store call, then leave at once
                try:
                    store.add(["child"], np.ones((1, 64), np.float32))
                    code = 0 if "child" in store.labels() else 3
                except BaseException:
                    code = 2
                os._exit(code)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    outcomes.append(os.waitstatus_to_exitcode(status))
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    outcomes.append("hung")
                    break
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert outcomes == [0, 0, 0]
    assert "child" not in store.labels()  # the parent's store is its own


def test_stores_are_still_picklable_and_safe_to_share() -> None:
    import pickle

    store = _store()
    copy = pickle.loads(pickle.dumps(store))
    assert _snapshot(copy) == _snapshot(store)
    copy.add(["c"], np.ones((1, 4), np.float32))  # the copy has a working lock of its own
    assert "c" in copy.labels() and "c" not in store.labels()
    errors: list[BaseException] = []

    def work(tag: int) -> None:
        try:
            for i in range(200):
                store.add([f"t{tag} {i % 7}"], np.ones((1, 4), np.float32))
                store.means()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert int(store.counts().sum()) == 3 + 4 * 200
    assert sys.getrefcount(store) > 0
