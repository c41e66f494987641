"""protofast.nearest_prototype against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from protofast import ProtofastError, nearest_prototype


@given(st.integers(0, 300), st.integers(1, 20), st.integers(1, 9), st.integers(0, 10**6))
def test_matches_brute_force(q: int, k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(q, d)).astype(np.float32)
    cents = rng.normal(size=(k, d)).astype(np.float32)
    ids, scores = nearest_prototype(queries, cents)
    dist = ((queries[:, None].astype(np.float64) - cents[None]) ** 2).sum(-1)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (q,)
    if q:
        assert np.all(dist[np.arange(q), ids] <= dist.min(1) + 1e-4)
        np.testing.assert_allclose(scores, dist.min(1), rtol=1e-4, atol=1e-4)
    ids, scores = nearest_prototype(queries + 0.1, cents, metric="cosine")
    qn = (queries + 0.1) / np.linalg.norm(queries + 0.1, axis=1, keepdims=True)
    cos = qn @ (cents / np.linalg.norm(cents, axis=1, keepdims=True)).T
    if q:
        assert np.all(cos[np.arange(q), ids] >= cos.max(1) - 1e-5)
        np.testing.assert_allclose(scores, cos.max(1), atol=1e-5)


def test_ties_go_to_lowest_index_and_torch_inputs() -> None:
    cents = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ids, _ = nearest_prototype(torch.tensor([[2.0, 0.0]]), cents)
    assert ids.tolist() == [0]


def test_errors() -> None:
    with pytest.raises(ProtofastError, match="queries: expected 3 columns"):
        nearest_prototype(np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ProtofastError, match="metric"):
        nearest_prototype(np.zeros((2, 3)), np.ones((2, 3)), metric="dot")
    with pytest.raises(ProtofastError, match="centroids: must have at least one row"):
        nearest_prototype(np.zeros((2, 3)), np.zeros((0, 3)))
    with pytest.raises(ProtofastError, match="zero norm"):
        nearest_prototype(np.zeros((2, 3)), np.ones((2, 3)), metric="cosine")
    with pytest.raises(ProtofastError, match="non-finite"):
        nearest_prototype(np.full((2, 3), np.inf), np.ones((2, 3)))


@pytest.mark.parametrize("k", [1, 5, 16, 17])
@pytest.mark.parametrize("d", [45, 384])
def test_small_and_large_k_match_brute_force(k: int, d: int) -> None:
    # k <= 16 takes the fused per-row kernel, k = 17 the blockwise products.
    rng = np.random.default_rng(k * 1000 + d)
    queries = rng.normal(size=(1000, d)).astype(np.float32)
    cents = rng.normal(size=(k, d)).astype(np.float32)
    dist = ((queries[:, None].astype(np.float64) - cents[None]) ** 2).sum(-1)
    ids, scores = nearest_prototype(queries, cents)
    assert np.mean(ids == dist.argmin(1)) > 0.999
    np.testing.assert_allclose(scores, dist.min(1), rtol=1e-4)
    ids, scores = nearest_prototype(queries, cents, metric="cosine")
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cos = qn @ (cents / np.linalg.norm(cents, axis=1, keepdims=True)).T
    assert np.mean(ids == cos.argmax(1)) > 0.999
    np.testing.assert_allclose(scores, cos.max(1), atol=1e-5)


@pytest.mark.parametrize("k", [3, 40])
def test_first_bad_row_is_reported(k: int) -> None:
    queries = np.ones((700, 8), dtype=np.float32)
    queries[650, 2] = np.nan
    queries[300, 7] = -np.inf
    with pytest.raises(ProtofastError, match="queries: contains a non-finite value .* row 300"):
        nearest_prototype(queries, np.ones((k, 8)))
    queries[300, 7] = 1.0
    queries[650, 2] = 1.0
    queries[500] = 0.0
    with pytest.raises(ProtofastError, match="queries: row 500 has zero norm"):
        nearest_prototype(queries, np.ones((k, 8)), metric="cosine")


def test_raw_binding_reads_fortran_order_as_rows() -> None:
    from protofast import _protofast

    rng = np.random.default_rng(4)
    q = rng.standard_normal((40, 6)).astype(np.float32)
    c = rng.standard_normal((5, 6)).astype(np.float32)
    ids, scores = _protofast.nearest_prototype_raw(q, c, "l2")
    f_ids, f_scores = _protofast.nearest_prototype_raw(np.asfortranarray(q), c, "l2")
    assert np.array_equal(ids, f_ids) and np.array_equal(scores, f_scores)
    # the row check must not read a Fortran-ordered matrix as rows either
    first, inverse, _ = _protofast.group_labels_raw(["a", "b", "a"])
    rows = np.asfortranarray(np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]], np.float32))
    assert _protofast.rows_match_raw(rows, first, inverse) is None
    assert _protofast.rows_match_raw(np.ascontiguousarray(rows), first, inverse) is True
