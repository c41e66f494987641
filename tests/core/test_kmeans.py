"""protofast.kmeans: clustering invariants, determinism, inputs and errors."""

from __future__ import annotations

import os
import threading

import numpy as np
import protofast
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from protofast import ProtofastError, kmeans, kmeans_plusplus


def sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact float64 squared distances, point by point (the reference)."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    return ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)


def blobs(n_per: int, centers: int, dim: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mus = rng.normal(size=(centers, dim)) * 10
    x = np.concatenate([mu + spread * rng.normal(size=(n_per, dim)) for mu in mus])
    return x.astype(np.float32)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    n = draw(st.integers(2, 120))
    d = draw(st.integers(1, 6))
    k = draw(st.integers(1, min(n, 8)))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x, k, seed


@given(datasets())
def test_converged_points_sit_with_their_nearest_centroid(data) -> None:
    x, k, seed = data
    r = kmeans(x, k, seed=seed, tol=0.0, max_iter=1000)
    assert r.converged
    d = sq_dists(x, r.centroids)
    assigned = d[np.arange(len(x)), r.labels]
    assert np.all(assigned <= d.min(axis=1) + 1e-4 * (1 + d.min(axis=1)))


@given(datasets(), st.booleans())
def test_centroids_are_member_means_at_convergence(data, spherical: bool) -> None:
    x, k, seed = data
    if spherical:
        x = x + np.sign(x.sum(1, keepdims=True) + 0.5) * 0.1  # no zero rows
        x[np.linalg.norm(x, axis=1) == 0] = 1.0
    r = kmeans(x, k, seed=seed, tol=0.0, max_iter=1000, spherical=spherical)
    assert r.converged
    pts = x.astype(np.float64)
    if spherical:
        pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    for j in range(k):
        members = pts[r.labels == j]
        if len(members) == 0:
            continue
        mean = members.mean(0)
        if spherical:
            if np.linalg.norm(mean) < 1e-6:
                continue
            mean = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(r.centroids[j], mean, atol=1e-5)


@given(datasets(), st.booleans())
def test_inertia_is_the_recomputed_sum_of_squares(data, spherical: bool) -> None:
    x, k, seed = data
    x = x + 0.01  # keep rows non-zero for spherical mode
    r = kmeans(x, k, seed=seed, spherical=spherical)
    pts = x / np.linalg.norm(x, axis=1, keepdims=True) if spherical else x
    expected = sq_dists(pts, r.centroids)[np.arange(len(x)), r.labels].sum()
    assert r.inertia == pytest.approx(expected, rel=1e-6, abs=1e-6)


@given(datasets())
def test_inertia_never_increases_from_one_iteration_to_the_next(data) -> None:
    x, k, seed = data
    init = kmeans(x, k, seed=seed, max_iter=0).centroids
    previous = np.inf
    for it in range(6):
        r = kmeans(x, k, init=init, max_iter=it, tol=0.0)
        assert r.inertia <= previous * (1 + 1e-6) + 1e-9
        previous = r.inertia


def test_same_seed_same_result_with_one_and_two_threads() -> None:
    x = blobs(3000, 12, 16, 2.0, 0)
    before = protofast.get_num_threads()
    try:
        protofast.set_num_threads(1)
        a = kmeans(x, 12, seed=5, n_init=3)
        protofast.set_num_threads(2)
        b = kmeans(x, 12, seed=5, n_init=3)
    finally:
        protofast.set_num_threads(before)
    assert a.centroids.tobytes() == b.centroids.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter


def test_seed_changes_initialisation_and_is_reproducible() -> None:
    x = blobs(200, 6, 4, 3.0, 1)
    a, b = kmeans(x, 6, seed=1, max_iter=0), kmeans(x, 6, seed=1, max_iter=0)
    c = kmeans(x, 6, seed=2, max_iter=0)
    assert np.array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)


@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 1000))
def test_k_equal_to_distinct_points_gives_zero_inertia(k: int, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    distinct = rng.normal(size=(k, 3)).astype(np.float32)
    x = np.repeat(distinct, reps, axis=0)
    rng.shuffle(x)
    assert kmeans(x, k, seed=seed).inertia == 0.0


@given(datasets())
def test_permuting_rows_permutes_labels_for_a_given_init(data) -> None:
    x, k, seed = data
    init = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    perm = np.random.default_rng(seed + 1).permutation(len(x))
    a = kmeans(x, k, init=init, tol=0.0)
    b = kmeans(x[perm], k, init=init, tol=0.0)
    assert np.array_equal(a.labels[perm], b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-6)


@pytest.mark.parametrize("n_per,centers,dim", [(100, 5, 8), (400, 20, 32)])
def test_inertia_agrees_with_sklearn_on_separated_blobs(n_per: int, centers: int, dim: int) -> None:
    from sklearn.cluster import KMeans

    x = blobs(n_per, centers, dim, 0.5, 3)
    ours = kmeans(x, centers, n_init=10, seed=0)
    theirs = KMeans(centers, n_init=10, random_state=0).fit(x)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=0.01)


def test_same_init_same_iterations_as_sklearn_lloyd() -> None:
    from sklearn.cluster import KMeans

    x = blobs(300, 8, 16, 4.0, 4)
    init = x[:8].copy()
    ours = kmeans(x, 8, init=init, max_iter=20, tol=0.0)
    theirs = KMeans(8, init=init, n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(x)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-4)
    assert np.array_equal(ours.labels, theirs.labels_)


def test_reassign_false_keeps_the_partition_the_centroids_average() -> None:
    from sklearn.cluster import KMeans

    x = blobs(300, 8, 16, 4.0, 4)
    init = x[:8].copy()
    differed = False
    for iters in (1, 2, 3, 5):
        nearest = kmeans(x, 8, init=init, max_iter=iters, tol=0.0)
        last = kmeans(x, 8, init=init, max_iter=iters, tol=0.0, reassign=False)
        np.testing.assert_array_equal(nearest.centroids, last.centroids)
        assert nearest.n_iter == last.n_iter == iters
        # the default: scikit-learn's labels (nearest final centroid)
        theirs = KMeans(8, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
        np.testing.assert_array_equal(nearest.labels, theirs.labels_)
        # reassign=False: every centroid is the mean of its members
        for j in np.unique(last.labels):
            mean = x[last.labels == j].astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(last.centroids[j], mean, rtol=1e-5, atol=1e-5)
        assert last.inertia == pytest.approx(
            sq_dists(x, last.centroids)[np.arange(len(x)), last.labels].sum(), rel=1e-9
        )
        differed |= not np.array_equal(nearest.labels, last.labels)
    assert differed, "the labellings never differed: the test cannot fail"


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize(("k", "d", "n_init"), [(256, 256, 1), (100, 384, 3)])
def test_the_amx_screen_changes_no_bit(spherical: bool, k: int, d: int, n_init: int) -> None:
    # Both sizes are in the screen's range (k = 100 only with the rows quantized once per call,
    # kept for every step and restart); unit rows near k centres with heavy noise (many near
    # ties between centroids)
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(k, d))
    x = centres[rng.integers(0, k, 3000)] + 1.5 * rng.normal(size=(3000, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    before = protofast.get_amx()
    try:
        runs = []
        for enabled in (False, True):
            assert protofast.set_amx(enabled) is (enabled and protofast.get_amx())
            runs.append(
                kmeans(x, k, max_iter=5, tol=0.0, spherical=spherical, seed=2, n_init=n_init)
            )
    finally:
        protofast.set_amx(before)
    off, on = runs
    np.testing.assert_array_equal(off.labels, on.labels)
    np.testing.assert_array_equal(off.centroids, on.centroids)
    assert off.inertia == on.inertia
    assert off.n_iter == 5


def test_set_amx_takes_a_bool_only() -> None:
    before = protofast.get_amx()
    with pytest.raises(TypeError, match="enabled"):
        protofast.set_amx(1)  # type: ignore[arg-type]
    assert protofast.get_amx() is before
    assert protofast.set_amx(False) is False
    assert protofast.get_amx() is False
    protofast.set_amx(before)
    assert protofast.get_amx() is before


@pytest.mark.parametrize("trials", [1, 3])
def test_fewer_local_trials_give_a_comparable_clustering(trials: int) -> None:
    x = blobs(200, 12, 16, 2.0, 6)
    greedy = kmeans(x, 12, seed=3)
    fast = kmeans(x, 12, seed=3, n_local_trials=trials)
    again = kmeans(x, 12, seed=3, n_local_trials=trials)
    assert np.array_equal(fast.centroids, again.centroids)
    assert fast.inertia == again.inertia
    assert fast.inertia == pytest.approx(greedy.inertia, rel=0.05)
    seeds = kmeans(x, 12, seed=3, n_local_trials=trials, max_iter=0).centroids
    assert not np.array_equal(seeds, kmeans(x, 12, seed=3, max_iter=0).centroids)
    # Seeds are distinct points of x.
    assert len({row.tobytes() for row in seeds}) == 12
    assert all((x == row).all(axis=1).any() for row in seeds)


@pytest.mark.parametrize("trials", [None, 1])
def test_kmeans_plusplus_gives_the_seeds_of_kmeans(trials: int | None) -> None:
    x = blobs(100, 8, 12, 1.0, 7)
    centers, indices = kmeans_plusplus(x, 8, seed=5, n_local_trials=trials)
    assert centers.dtype == np.float32 and centers.shape == (8, 12)
    assert indices.dtype == np.int64 and len(set(indices.tolist())) == 8
    np.testing.assert_array_equal(centers, x[indices])
    seeds = kmeans(x, 8, seed=5, max_iter=0, n_local_trials=trials).centroids
    np.testing.assert_array_equal(centers, seeds)
    other, _ = kmeans_plusplus(torch.from_numpy(x).double(), 8, seed=6, n_local_trials=trials)
    assert not np.array_equal(other, centers)


def test_kmeans_plusplus_matches_sklearn_quality() -> None:
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

    # Median over seeds: either misses a blob now and then (a few % of seeds).
    x = blobs(100, 10, 16, 2.0, 8)
    ours = [sq_dists(x, kmeans_plusplus(x, 10, seed=s)[0]).min(1).sum() for s in range(21)]
    theirs = [
        sq_dists(x, sk_kmeans_plusplus(x, 10, random_state=s)[0]).min(1).sum() for s in range(21)
    ]
    assert np.median(ours) == pytest.approx(np.median(theirs), rel=0.15)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ProtofastError, "k: must be at least 1"),
        ({"k": 11}, ProtofastError, "k: k=11 exceeds"),
        ({"seed": -1}, ProtofastError, "seed"),
        ({"n_local_trials": 0}, ProtofastError, "n_local_trials"),
        ({"n_local_trials": "2"}, TypeError, "n_local_trials"),
    ],
)
def test_kmeans_plusplus_bad_arguments(kwargs, exc, match) -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    args = {"k": 2, **kwargs}
    k = args.pop("k")
    with pytest.raises(exc, match=match):
        kmeans_plusplus(x, k, **args)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ProtofastError, match="x: contains a non-finite value .* in row 4"):
        kmeans_plusplus(bad, 2)


def test_given_init_and_max_iter_zero_returns_init() -> None:
    x = blobs(50, 3, 2, 0.1, 5)
    init = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    r = kmeans(x, 3, init=init, max_iter=0)
    assert np.array_equal(r.centroids, init) and r.n_iter == 0 and not r.converged
    expected = sq_dists(x, init).argmin(1)
    assert np.array_equal(r.labels, expected)


def test_random_init_and_result_types() -> None:
    x = blobs(50, 3, 2, 0.1, 6)
    r = kmeans(x, 3, init="random", seed=3)
    assert r.centroids.dtype == np.float32 and r.centroids.shape == (3, 2)
    assert r.labels.dtype == np.int64 and r.labels.shape == (150,)
    assert isinstance(r.inertia, float) and isinstance(r.n_iter, int)


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(np.float64),
        lambda a: np.asfortranarray(a),
        lambda a: np.repeat(a, 2, axis=1)[:, ::2],
        lambda a: a.astype(np.int32),
        lambda a: torch.from_numpy(a),
        lambda a: torch.from_numpy(a).double().requires_grad_(),
        lambda a: torch.from_numpy(a).t().contiguous().t(),
        lambda a: torch.from_numpy(a).to(torch.bfloat16),
    ],
    ids=["f64", "fortran", "strided", "int32", "torch", "torch-grad", "torch-T", "bf16"],
)
def test_accepts_any_real_array(convert) -> None:
    x = np.round(blobs(40, 3, 4, 1.0, 7))
    ref = kmeans(x, 3, seed=2)
    got = kmeans(convert(x), 3, seed=2)
    assert np.array_equal(ref.labels, got.labels)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ProtofastError, "k: must be at least 1"),
        ({"k": 11}, ProtofastError, "k: k=11 exceeds the number of points"),
        ({"k": 2.5}, TypeError, "k: expected an int"),
        ({"k": True}, TypeError, "k: expected an int"),
        ({"n_init": 0}, ProtofastError, "n_init"),
        ({"max_iter": -1}, ProtofastError, "max_iter"),
        ({"tol": -1.0}, ProtofastError, "tol"),
        ({"tol": "x"}, TypeError, "tol"),
        ({"seed": -1}, ProtofastError, "seed"),
        ({"init": "kmeans"}, ProtofastError, "init: expected 'k-means\\+\\+'"),
        ({"init": np.zeros((3, 2))}, ProtofastError, "init: expected 2×3"),
        ({"n_local_trials": 0}, ProtofastError, "n_local_trials: must be at least 1"),
        ({"n_local_trials": 1.0}, TypeError, "n_local_trials: expected an int"),
        ({"reassign": 1}, TypeError, "reassign"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match) -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    args = {"k": 2, **kwargs}
    k = args.pop("k")
    with pytest.raises(exc, match=match):
        kmeans(x, k, **args)


def test_bad_data_raises() -> None:
    with pytest.raises(ProtofastError, match="x: contains a non-finite value .* row 1"):
        kmeans(np.array([[0.0, 1.0], [np.nan, 0.0]]), 1)
    with pytest.raises(ProtofastError, match="x: expected a 2-D array"):
        kmeans(np.zeros(5), 1)
    with pytest.raises(ProtofastError, match="x: must have at least one row"):
        kmeans(np.zeros((0, 3)), 1)
    with pytest.raises(TypeError, match="x: expected real numbers"):
        kmeans(np.array([["a"], ["b"]]), 1)
    with pytest.raises(ProtofastError, match="zero norm"):
        kmeans(np.zeros((3, 2)), 1, spherical=True)
    assert issubclass(ProtofastError, ValueError)


def test_threads_setting() -> None:
    before = protofast.get_num_threads()
    try:
        protofast.set_num_threads(1)
        assert protofast.get_num_threads() == 1
        with pytest.raises(ProtofastError):
            protofast.set_num_threads(0)
    finally:
        protofast.set_num_threads(before)


def test_concurrent_calls_from_python_threads() -> None:
    x = blobs(500, 5, 8, 1.0, 8)
    expected = kmeans(x, 5, seed=1)
    results: list = [None] * 4

    def work(i: int) -> None:
        results[i] = kmeans(x, 5, seed=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert np.array_equal(r.labels, expected.labels)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_can_cluster_after_parent_used_the_pool() -> None:
    x = blobs(500, 5, 8, 1.0, 9)
    expected = kmeans(x, 5, seed=1).inertia  # the parent's pool is running now
    pid = os.fork()
    if pid == 0:  # child
        ok = kmeans(x, 5, seed=1).inertia == expected
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
