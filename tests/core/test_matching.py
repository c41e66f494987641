"""protofast.match_clusters against brute force over all permutations (k <= 6) and against
scipy's linear_sum_assignment (totals), plus its errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from protofast import ProtofastError, match_clusters


def overlaps(previous: np.ndarray, current: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts: row = current cluster, column = previous cluster; -1 skipped."""
    keep = (previous >= 0) & (current >= 0)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (current[keep], previous[keep]), 1)
    return counts


def brute_force(counts: np.ndarray) -> list[int]:
    """The documented rule: the largest total overlap, then the most fixed points, then the
    lexicographically smallest (permutations come in lexicographic order: the first best)."""
    k = len(counts)
    best_key, best = None, None
    for perm in itertools.permutations(range(k)):
        key = (
            sum(int(counts[c, perm[c]]) for c in range(k)),
            sum(perm[c] == c for c in range(k)),
        )
        if best_key is None or key > best_key:
            best_key, best = key, list(perm)
    assert best is not None
    return best


@st.composite
def clusterings(draw: st.DrawFn, max_k: int) -> tuple[np.ndarray, np.ndarray, int]:
    k = draw(st.integers(1, max_k))
    n = draw(st.integers(0, 40))
    ids = st.integers(-1, k - 1)
    previous = np.array(draw(st.lists(ids, min_size=n, max_size=n)), np.int64)
    current = np.array(draw(st.lists(ids, min_size=n, max_size=n)), np.int64)
    return previous, current, k


@given(clusterings(max_k=6))
def test_equals_brute_force(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    previous, current, k = case
    perm = match_clusters(previous, current, k)
    assert perm.dtype == np.int64 and perm.shape == (k,)
    assert perm.tolist() == brute_force(overlaps(previous, current, k))


def test_equals_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        k = int(rng.integers(2, 7))
        n = int(rng.integers(0, 3 * k))  # few items: many zero and equal overlaps
        previous, current = rng.integers(-1, k, n), rng.integers(-1, k, n)
        want = brute_force(overlaps(previous, current, k))
        assert match_clusters(previous, current, k).tolist() == want


@pytest.mark.parametrize(("k", "n"), [(7, 50), (30, 200), (120, 3000), (400, 2000)])
def test_total_equals_scipy(k: int, n: int) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(k)
    for _ in range(5):
        previous = rng.integers(-1, k, n)
        current = rng.integers(-1, k, n)
        counts = overlaps(previous, current, k)
        perm = match_clusters(previous, current, k)
        assert sorted(perm.tolist()) == list(range(k))
        rows, cols = optimize.linear_sum_assignment(counts, maximize=True)
        assert counts[np.arange(k), perm].sum() == counts[rows, cols].sum()


def test_undoes_a_renaming_and_keeps_an_unchanged_clustering() -> None:
    rng = np.random.default_rng(1)
    k, n = 500, 20_000
    previous = rng.integers(0, k, n)
    renamed = rng.permutation(k)
    current = renamed[previous]
    perm = match_clusters(previous, current, k)
    assert perm.tolist() == np.argsort(renamed).tolist()
    assert np.array_equal(perm[current], previous)
    # 10 % of the items moved at random: the renaming still dominates every cluster
    noisy = current.copy()
    moved = rng.random(n) < 0.1
    noisy[moved] = rng.integers(0, k, int(moved.sum()))
    assert match_clusters(previous, noisy, k).tolist() == perm.tolist()
    assert match_clusters(previous, previous, k).tolist() == list(range(k))
    # nothing to go by: every cluster keeps its number
    absent = np.full(n, -1)
    assert match_clusters(absent, current, k).tolist() == list(range(k))
    assert match_clusters([], [], 3).tolist() == [0, 1, 2]


def test_accepts_lists_torch_and_any_integer_dtype() -> None:
    previous, current = [0, 0, 1, 1, 2], [1, 1, 2, 2, 0]
    want = [2, 0, 1]
    assert match_clusters(previous, current, 3).tolist() == want
    assert match_clusters(torch.tensor(previous), torch.tensor(current), 3).tolist() == want
    for dtype in (np.int8, np.uint16, np.int32, np.uint64):
        assert match_clusters(np.array(previous, dtype), current, 3).tolist() == want
    strided = np.repeat(np.array(current), 2)[::2]
    assert match_clusters(np.array(previous), strided, 3).tolist() == want


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([0, 1], [0, 1], 0), ProtofastError, "k: must be at least 1"),
        (([0, 1], [0, 1], 2.0), TypeError, "k: expected an int"),
        (([0, 1], [0, 1], True), TypeError, "k: expected an int"),
        (([0.0, 1.0], [0, 1], 2), TypeError, "previous: expected integers"),
        (([0, 1], [True, False], 2), TypeError, "current: expected integers"),
        (([0, 1], ["a", "b"], 2), TypeError, "current: expected integers"),
        (([0, 1], [0], 2), ProtofastError, "current: expected 2 entries"),
        (([0, 2], [0, 1], 2), ProtofastError, "previous: entry 1 is 2"),
        (([0, 1], [0, -2], 2), ProtofastError, "current: a value is less than -1"),
        (([[0, 1]], [[0, 1]], 2), ProtofastError, "previous: expected a 1-D array"),
        ((0, [0], 2), ProtofastError, "previous: expected a 1-D array"),
        (([0, 1], [0, 2**70], 2), ProtofastError, "current: a value does not fit"),
        (([], [], 2**40), ProtofastError, "k:"),
    ],
)
def test_errors(args: tuple[object, object, object], error: type, message: str) -> None:
    previous, current = (np.array(a) if isinstance(a, list) else a for a in args[:2])
    before = [a.copy() for a in (previous, current) if isinstance(a, np.ndarray)]
    with pytest.raises(error, match=message):
        match_clusters(previous, current, args[2])  # type: ignore[arg-type]
    after = [a for a in (previous, current) if isinstance(a, np.ndarray)]
    assert all(np.array_equal(b, a) for b, a in zip(before, after, strict=True))
