"""k-means: protofast vs scikit-learn (lloyd, elkan) vs faiss vs numpy, side by side in one run.

Three sections, all on the same unit-norm clustered data (fixed seed):

1. Fixed iterations. Every tool starts from the same initial centroids ``C0`` (k distinct data
   points) and runs ``max_iter`` (default 20) iterations with ``tol=0``: time per iteration, final
   inertia (recomputed in float64 for every tool from its returned centroids), and the per-iteration
   rate (``2·N·D·k`` flops) as a fraction of the numpy float32 GEMM rate measured in the same run.
2. End to end: each tool's own initialisation and convergence rule (library defaults).
3. Initialisation only: k-means++ seeding (protofast and sklearn ``kmeans_plusplus``,
   faiss ``niter=0`` with its k-means++ / AFK-MC² init methods).
4. Short runs (``--short-runs 3,5,20``): the first iteration of protofast against numpy's one-call
   float32 product of the same shapes (``N×D @ D×k``), and the time per iteration of runs of 3, 5
   and 20 iterations from the same ``C0`` as ratios to faiss's and scikit-learn's, all in one run.

Every timed block of calls (one tool, one size) starts after a pause of ``SETTLE_S``: OpenBLAS's
idle threads spin for about 2**28 cycles after each call before they sleep, and on a machine with
few cores they take the cores from whichever tool runs next (measured here: a protofast call right
after numpy's product took 2.3× its time after a pause of 0.2 s).

Run: ``.venv/bin/python benches/bench_kmeans.py --quick`` (``--full`` adds 1M×384×1000).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

ALL_SIZES: list[tuple[int, int, int]] = [
    (50, 384, 5),
    (1000, 384, 20),
    (10000, 384, 100),
    (100000, 384, 256),
    (1000000, 384, 1000),
]
QUICK_SIZES = ALL_SIZES[:4]
DEFAULT_SIZES = ALL_SIZES[:4]
FULL_SIZES = ALL_SIZES
BIG_N = 1_000_000
FAISS_ALL_POINTS = 1 << 30  # max_points_per_centroid: never subsample
TOOLS = ("protofast", "sklearn-lloyd", "sklearn-elkan", "faiss", "numpy")
# Pause before each timed block: longer than OpenBLAS's idle spin (2**28 cycles, about 0.1 s here),
# so no other library's threads still hold the cores when a tool's calls start.
SETTLE_S = 0.25


@dataclasses.dataclass
class KMOut:
    """What a k-means call returned: centroids and the number of iterations it ran."""

    centroids: np.ndarray
    n_iter: int


# --------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------


def numpy_lloyd(x: np.ndarray, c0: np.ndarray, iters: int, block: int = 32768) -> KMOut:
    """Plain Lloyd iterations: blockwise float32 GEMM distances, sparse one-hot sum for the update.

    Runs exactly ``iters`` assignment+update iterations (no convergence test). An empty cluster
    keeps its previous centroid.

    Args:
        x: ``N×D`` float32 points.
        c0: ``k×D`` initial centroids.
        iters: number of iterations.
        block: rows per distance block.

    Returns:
        Final centroids and ``iters``.
    """
    import scipy.sparse as sp

    n = x.shape[0]
    k = c0.shape[0]
    c = np.array(c0, dtype=np.float32, copy=True)
    labels = np.empty(n, dtype=np.int64)
    ones = np.ones(n, dtype=np.float32)
    indptr = np.arange(n + 1)
    for _ in range(iters):
        c_norm = np.einsum("ij,ij->i", c, c)
        ct = np.ascontiguousarray(c.T)
        for s in range(0, n, block):
            e = min(n, s + block)
            d = x[s:e] @ ct
            d *= -2.0
            d += c_norm
            labels[s:e] = d.argmin(axis=1)
        onehot = sp.csr_matrix((ones, labels, indptr), shape=(n, k))
        sums = np.asarray(onehot.T @ x)
        counts = np.bincount(labels, minlength=k)
        nz = counts > 0
        c[nz] = sums[nz] / counts[nz, None].astype(np.float32)
    return KMOut(c, iters)


def _faiss_kmeans(d: int, k: int, **params: Any) -> Any:
    import faiss

    km = faiss.Kmeans(d, k, **params)
    return km


def faiss_fixed(x: np.ndarray, c0: np.ndarray, iters: int) -> KMOut:
    """faiss.Kmeans from ``c0`` for exactly ``iters`` iterations on all points (no subsampling).

    Sets ``early_stop_threshold=-1`` where the attribute exists (faiss >= 1.15 otherwise stops when
    the objective stops improving), ``max_points_per_centroid`` huge and
    ``min_points_per_centroid=1`` (silences the too-few-points warning; it only warns).
    """
    k, d = c0.shape
    km = _faiss_kmeans(
        d,
        k,
        niter=iters,
        nredo=1,
        max_points_per_centroid=FAISS_ALL_POINTS,
        min_points_per_centroid=1,
        verbose=False,
    )
    if hasattr(km.cp, "early_stop_threshold"):
        km.cp.early_stop_threshold = -1.0
    km.train(x, init_centroids=c0)
    return KMOut(np.asarray(km.centroids), len(km.obj))


def faiss_default(x: np.ndarray, k: int) -> KMOut:
    """faiss.Kmeans with defaults (niter=25, random init, subsample to 256·k, early stop)."""
    km = _faiss_kmeans(x.shape[1], k)
    km.train(x)
    return KMOut(np.asarray(km.centroids), len(km.obj))


def faiss_init_only(x: np.ndarray, k: int, method: str) -> KMOut:
    """faiss seeding only: ``niter=0`` with ``init_method`` k-means++ or AFK-MC², all points."""
    import faiss

    init = {
        "k-means++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        "afk-mc2": faiss.ClusteringInitMethod_AFK_MC2,
    }[method]
    km = _faiss_kmeans(
        x.shape[1],
        k,
        niter=0,
        nredo=1,
        init_method=init,
        max_points_per_centroid=FAISS_ALL_POINTS,
        min_points_per_centroid=1,
    )
    km.train(x)
    return KMOut(np.asarray(km.centroids), 0)


def sklearn_fixed(x: np.ndarray, c0: np.ndarray, iters: int, algorithm: str) -> KMOut:
    """sklearn KMeans from ``c0``, ``n_init=1``, ``max_iter=iters``, ``tol=0``.

    sklearn still stops early on *strict convergence* (labels unchanged between iterations) even
    with ``tol=0``; the returned ``n_iter`` is ``n_iter_``.
    """
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=c0.shape[0],
        init=c0,
        n_init=1,
        max_iter=iters,
        tol=0.0,
        algorithm=algorithm,
        random_state=0,
    ).fit(x)
    return KMOut(km.cluster_centers_.astype(np.float32), int(km.n_iter_))


def sklearn_default(x: np.ndarray, k: int) -> KMOut:
    """sklearn KMeans defaults (greedy k-means++, n_init='auto' = 1, max_iter=300, tol=1e-4)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, random_state=0).fit(x)
    return KMOut(km.cluster_centers_.astype(np.float32), int(km.n_iter_))


def sklearn_init_only(x: np.ndarray, k: int) -> KMOut:
    """sklearn ``kmeans_plusplus`` (greedy k-means++, 2+ln k local trials per centre)."""
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(x, k, random_state=0)
    return KMOut(centers.astype(np.float32), 0)


def protofast_fixed(x: np.ndarray, c0: np.ndarray, iters: int, reassign: bool = True) -> KMOut:
    """protofast.kmeans from ``c0``: ``n_init=1, max_iter=iters, tol=0``.

    ``reassign=False`` keeps the last assignment step's labels (``iters`` distance passes, as
    faiss's training) instead of one more pass for the nearest returned centroid (scikit-learn's
    labels, ``iters + 1`` passes).
    """
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    r = pf.kmeans(x, c0.shape[0], init=c0, n_init=1, max_iter=iters, tol=0.0, reassign=reassign)
    return KMOut(np.asarray(r.centroids), int(r.n_iter))


def protofast_without_amx(x: np.ndarray, c0: np.ndarray, iters: int) -> KMOut:
    """:func:`protofast_fixed` with the AMX screen of the plain steps off (then restored)."""
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    before = pf.get_amx()
    pf.set_amx(False)
    try:
        return protofast_fixed(x, c0, iters)
    finally:
        pf.set_amx(before)


def protofast_first_iteration(x: np.ndarray, c0: np.ndarray, repeats: int) -> tuple[float, float]:
    """protofast's first iteration: median of ``max_iter=1`` calls less median of ``max_iter=0``.

    Both calls validate ``x``, take the norms, label the points against the returned centroids and
    compute the inertia; the difference is the first assignment step (its full distance pass, with
    whatever bounds it sets up) and the first update.

    Returns:
        ``(first_iteration_s, zero_iteration_call_s)``.
    """
    t1 = _timed(lambda: protofast_fixed(x, c0, 1), repeats=repeats, warmup_fn=None)
    t0 = _timed(lambda: protofast_fixed(x, c0, 0), repeats=repeats, warmup_fn=lambda: None)
    return t1.median - t0.median, t0.median


def _one_product(x: np.ndarray, c0: np.ndarray) -> Callable[[], np.ndarray]:
    """numpy's float32 ``x @ c0.T`` as one call, into a preallocated output."""
    ct = np.ascontiguousarray(c0.T)
    out = np.empty((x.shape[0], c0.shape[0]), dtype=np.float32)
    return lambda: np.matmul(x, ct, out=out)


def numpy_one_product(x: np.ndarray, c0: np.ndarray, repeats: int) -> float:
    """Median time of numpy's float32 ``x @ c0.T`` as one call (output buffer preallocated)."""
    time.sleep(SETTLE_S)
    t = common.time_call(_one_product(x, c0), repeats=repeats, warmup=1)
    return t.median


def short_section(ctx: SizeContext, iters_list: Sequence[int]) -> list[dict[str, Any]]:
    """Short-run rows of one size: first iteration vs numpy's product, per-iteration ratios.

    One row per iteration count: every tool runs ``it`` iterations from ``C0`` (``tol=0``), time
    per iteration = median total / iterations run; ratios are protofast's time per iteration over
    faiss's and scikit-learn's (lloyd), and that of protofast with ``reassign=False`` (as many
    distance passes as faiss) over faiss's; where the CPU has AMX, protofast's time with its
    screen on over off. The first-iteration figures are repeated on every row.
    """
    x, c0 = ctx.x, ctx.c0
    n, d = x.shape
    k = c0.shape[0]
    # a difference of two medians: small sizes get more runs (their noise is a larger part)
    first_runs = ctx.repeats if n * d * k >= 10**10 else max(ctx.repeats, 15)
    # calls of a few milliseconds swing by a third from one to the next (the same code run as
    # two tools read 0.77-1.30 at 10k×384×100 with 5 rounds): below 10⁹ multiply-adds per pass,
    # at least 15 rounds
    rounds = ctx.repeats if n * d * k >= 10**9 else max(ctx.repeats, 15)
    first = zero = None
    if ctx.interleave:
        calls: dict[str, Callable[[], Any]] = {"numpy": _one_product(x, c0)}
        if "protofast" in ctx.tools:
            calls["one"] = lambda: protofast_fixed(x, c0, 1)
            calls["zero"] = lambda: protofast_fixed(x, c0, 0)
        firsts = _interleaved(calls, rounds=first_runs)
        gemm_s = firsts["numpy"].median
        if "protofast" in ctx.tools:
            zero = firsts["zero"].median
            first = firsts["one"].median - zero
    else:
        gemm_s = numpy_one_product(x, c0, ctx.repeats)
        if "protofast" in ctx.tools:
            first, zero = protofast_first_iteration(x, c0, first_runs)
    if first is not None:
        print(
            f"  short first iteration {common.fmt_ms(first)} ms, numpy {d}-deep product "
            f"{common.fmt_ms(gemm_s)} ms: {first / gemm_s:.2f}×",
            flush=True,
        )
    runners: dict[str, Callable[[np.ndarray, int], KMOut]] = {
        "protofast": lambda data, it: protofast_fixed(data, c0, it),
        # as many distance passes as faiss (no final reassignment)
        "protofast-last": lambda data, it: protofast_fixed(data, c0, it, reassign=False),
        "protofast-noamx": lambda data, it: protofast_without_amx(data, c0, it),
        "sklearn-lloyd": lambda data, it: sklearn_fixed(data, c0, it, "lloyd"),
        "faiss": lambda data, it: faiss_fixed(data, c0, it),
    }
    pf_mod = common.load_protofast(quiet=True)
    amx = pf_mod is not None and pf_mod.get_amx()
    xw = ctx.warm_x
    rows: list[dict[str, Any]] = []
    for it in iters_list:
        per: dict[str, float] = {}
        iters_run: dict[str, int] = {}
        tools = [t for t in ctx.tools if t in runners]
        if "protofast" in tools:
            tools.insert(tools.index("protofast") + 1, "protofast-last")
            if amx:
                tools.insert(tools.index("protofast") + 2, "protofast-noamx")
        timed: dict[str, common.Timing[KMOut]] = {}
        if ctx.interleave:
            timed = _interleaved(
                {tool: functools.partial(runners[tool], x, it) for tool in tools},
                rounds=rounds,
                warmups=(
                    {tool: functools.partial(runners[tool], xw, it) for tool in tools}
                    if xw is not None
                    else None
                ),
            )
        for tool in tools:
            t = timed.get(tool) or _timed(
                functools.partial(runners[tool], x, it),
                repeats=ctx.repeats,
                warmup_fn=functools.partial(runners[tool], xw, it) if xw is not None else None,
            )
            iters_run[tool] = t.result.n_iter
            per[tool] = t.median / max(t.result.n_iter, 1)
            print(
                f"  short {it:3d} it {tool:14s} {common.fmt_ms(per[tool]):>8s} ms/iter "
                f"(iters run {t.result.n_iter})",
                flush=True,
            )
        pf = per.get("protofast")
        pf_last = per.get("protofast-last")
        pf_off = per.get("protofast-noamx")
        rows.append(
            {
                "size": ctx.label,
                "n": n,
                "d": d,
                "k": k,
                "iters": it,
                "per_iter_s": per,
                "iters_run": iters_run,
                "numpy_product_s": gemm_s,
                "first_iter_s": first,
                "zero_iter_call_s": zero,
                "first_vs_product": first / gemm_s if first is not None else None,
                "vs_faiss": pf / per["faiss"] if pf and "faiss" in per else None,
                "vs_sklearn": pf / per["sklearn-lloyd"] if pf and "sklearn-lloyd" in per else None,
                "last_vs_faiss": pf_last / per["faiss"] if pf_last and "faiss" in per else None,
                "amx": amx,
                "amx_on_vs_off": pf / pf_off if pf and pf_off else None,
            }
        )
    return rows


def protofast_default(x: np.ndarray, k: int) -> KMOut:
    """protofast.kmeans with its defaults (k-means++, n_init=1, max_iter=300, tol=1e-4, seed=0)."""
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    r = pf.kmeans(x, k, init="k-means++", seed=0)
    return KMOut(np.asarray(r.centroids), int(r.n_iter))


def protofast_init_only(x: np.ndarray, k: int, n_local_trials: int | None = None) -> KMOut:
    """protofast k-means++ seeding only (``kmeans_plusplus``); greedy unless ``n_local_trials``."""
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    centers, _ = pf.kmeans_plusplus(x, k, seed=0, n_local_trials=n_local_trials)
    return KMOut(np.asarray(centers), 0)


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------


def make_data(
    n: int, d: int, k: int, *, seed: int, noise: float, centers_per_k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors and the shared initial centroids ``C0`` (k distinct data points).

    Args:
        n: points.
        d: dimension.
        k: clusters to fit.
        seed: data seed.
        noise: blob noise norm (see :func:`common.unit_blobs`).
        centers_per_k: number of true blob centres per fitted cluster.

    Returns:
        ``(x, C0)`` float32.
    """
    x = common.unit_blobs(n, d, max(1, round(k * centers_per_k)), seed=seed, noise=noise)
    rng = np.random.default_rng(seed + 1)
    c0 = np.ascontiguousarray(x[rng.choice(n, size=k, replace=False)])
    return x, c0


def _size_label(n: int, d: int, k: int) -> str:
    return f"{common.fmt_count(n)}×{d}×{k}"


def _timed(
    fn: Callable[[], KMOut],
    *,
    repeats: int,
    warmup_fn: Callable[[], object] | None,
) -> common.Timing[KMOut]:
    """``common.time_call`` after a pause of ``SETTLE_S`` (see the module docstring)."""
    time.sleep(SETTLE_S)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return common.time_call(fn, repeats=repeats, warmup=1, warmup_fn=warmup_fn)


def _interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, common.Timing[Any]]:
    """Times the calls ``fns`` in ``rounds`` rounds: one untimed warm-up call each (``warmups``
    where given), then in every round each call once, in an order rotated by one per round, each
    after a pause of ``SETTLE_S``. Every call thus meets the same machine, round after round,
    which blocks of calls per tool do not on a shared machine whose speed drifts."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            time.sleep(SETTLE_S)
            ((warmups or {}).get(name) or fns[name])()
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                results[name] = fns[name]()
                times[name].append(time.perf_counter() - t0)
    return {
        name: common.Timing(times=times[name], warmup=1, result=results[name]) for name in names
    }


@dataclasses.dataclass
class SizeContext:
    """Data and settings shared by the sections of one (N, D, k)."""

    x: np.ndarray
    c0: np.ndarray
    label: str
    repeats: int
    warm_x: np.ndarray | None  # a slice used for the warm-up when N is large
    tools: list[str]
    iters: int
    interleave: bool = False  # short runs: rounds of every tool, not blocks per tool


def fixed_section(ctx: SizeContext, gemm_rate: float) -> list[dict[str, Any]]:
    """Fixed-iteration rows of one size (same ``C0``, ``tol=0``, ``ctx.iters`` iterations)."""
    x, c0, it, xw = ctx.x, ctx.c0, ctx.iters, ctx.warm_x
    n, d = x.shape
    k = c0.shape[0]
    runners: dict[str, Callable[[np.ndarray], KMOut]] = {
        "protofast": lambda data: protofast_fixed(data, c0, it),
        "sklearn-lloyd": lambda data: sklearn_fixed(data, c0, it, "lloyd"),
        "sklearn-elkan": lambda data: sklearn_fixed(data, c0, it, "elkan"),
        "faiss": lambda data: faiss_fixed(data, c0, it),
        "numpy": lambda data: numpy_lloyd(data, c0, it),
    }
    flops_iter = 2.0 * n * d * k
    rows: list[dict[str, Any]] = []
    for tool in ctx.tools:
        runner = runners[tool]
        t = _timed(
            functools.partial(runner, x),
            repeats=ctx.repeats,
            warmup_fn=functools.partial(runner, xw) if xw is not None else None,
        )
        out = t.result
        per_iter = t.median / max(out.n_iter, 1)
        row = {
            "size": ctx.label,
            "n": n,
            "d": d,
            "k": k,
            "tool": tool,
            "n_iter": out.n_iter,
            "per_iter_s": per_iter,
            "gflops": flops_iter / per_iter / 1e9,
            "frac_gemm": flops_iter / per_iter / 1e9 / gemm_rate,
            "inertia": common.inertia_f64(x, out.centroids),
            **t.summary(),
        }
        rows.append(row)
        print(
            f"  fixed {tool:14s} {common.fmt_ms(per_iter):>8s} ms/iter  iters={out.n_iter:3d}  "
            f"inertia={row['inertia']:.6g}",
            flush=True,
        )
    ref = next((r for r in rows if r["tool"] == "numpy"), None)
    pfr = next((r for r in rows if r["tool"] == "protofast"), None)
    for r in rows:
        r["inertia_vs_numpy"] = (r["inertia"] / ref["inertia"] - 1.0) if ref else None
        r["protofast_speedup"] = (r["per_iter_s"] / pfr["per_iter_s"]) if pfr else None
    return rows


def e2e_section(ctx: SizeContext) -> list[dict[str, Any]]:
    """End-to-end rows of one size: each tool's own initialisation and convergence."""
    x = ctx.x
    n = x.shape[0]
    k = ctx.c0.shape[0]
    fns: dict[str, tuple[str, Callable[[], KMOut]]] = {}
    if "protofast" in ctx.tools:
        fns["protofast"] = (
            "k-means++, n_init=1, max_iter=300, tol=1e-4",
            lambda: protofast_default(x, k),
        )
    if "sklearn-lloyd" in ctx.tools or "sklearn-elkan" in ctx.tools:
        fns["sklearn"] = (
            "defaults: greedy k-means++, n_init=auto(1), lloyd, max_iter=300, tol=1e-4",
            lambda: sklearn_default(x, k),
        )
    if "faiss" in ctx.tools:
        sub = " (subsampled)" if n > 256 * k else ""
        fns["faiss"] = (
            f"defaults: random init, niter=25, ≤256·k points{sub}, early stop",
            lambda: faiss_default(x, k),
        )
    rows: list[dict[str, Any]] = []
    for tool, (desc, fn) in fns.items():
        t = _timed(fn, repeats=ctx.repeats, warmup_fn=None)
        row = {
            "size": ctx.label,
            "tool": tool,
            "settings": desc,
            "n_iter": t.result.n_iter,
            "inertia": common.inertia_f64(x, t.result.centroids),
            **t.summary(),
        }
        rows.append(row)
        print(
            f"  e2e   {tool:14s} {common.fmt_ms(t.median):>8s} ms  iters={row['n_iter']}",
            flush=True,
        )
    best = min((r["inertia"] for r in rows), default=None)
    for r in rows:
        r["inertia_vs_best"] = r["inertia"] / best - 1.0 if best else None
    return rows


def protofast_init_error() -> str | None:
    """``None`` if ``protofast.kmeans_plusplus`` works here, else the error text."""
    x = common.unit_blobs(200, 8, 5, seed=0)
    try:
        protofast_init_only(x, 5)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def init_section(ctx: SizeContext, pf_init_ok: bool) -> list[dict[str, Any]]:
    """Initialisation-only rows of one size (k-means++ seeding)."""
    x = ctx.x
    k = ctx.c0.shape[0]
    fns: dict[str, tuple[str, Callable[[], KMOut]]] = {}
    if "protofast" in ctx.tools and pf_init_ok:
        fns["protofast"] = ("greedy k-means++ (kmeans_plusplus)", lambda: protofast_init_only(x, k))
        fns["protofast 1-trial"] = (
            "k-means++, one draw per centre (n_local_trials=1)",
            lambda: protofast_init_only(x, k, 1),
        )
    if "sklearn-lloyd" in ctx.tools or "sklearn-elkan" in ctx.tools:
        fns["sklearn"] = (
            "kmeans_plusplus (greedy, 2+ln k trials)",
            lambda: sklearn_init_only(x, k),
        )
    if "faiss" in ctx.tools:
        fns["faiss"] = ("k-means++ (niter=0)", lambda: faiss_init_only(x, k, "k-means++"))
        fns["faiss afk-mc2"] = (
            "AFK-MC² chain 50 (niter=0)",
            lambda: faiss_init_only(x, k, "afk-mc2"),
        )
    rows: list[dict[str, Any]] = []
    for tool, (desc, fn) in fns.items():
        t = _timed(fn, repeats=ctx.repeats, warmup_fn=None)
        row = {
            "size": ctx.label,
            "tool": tool,
            "method": desc,
            "inertia": common.inertia_f64(x, t.result.centroids),
            **t.summary(),
        }
        rows.append(row)
        print(f"  init  {tool:14s} {common.fmt_ms(t.median):>8s} ms", flush=True)
    pfi = next((r for r in rows if r["tool"] == "protofast"), None)
    for r in rows:
        r["protofast_speedup"] = r["median_s"] / pfi["median_s"] if pfi else None
    return rows


def available_tools(requested: str) -> list[str]:
    """The requested tools that can run here (protofast and faiss are optional)."""
    tools = [t for t in requested.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools {unknown}; choose from {TOOLS}")
    if "protofast" in tools and common.protofast_attr("kmeans") is None:
        tools.remove("protofast")
    if "faiss" in tools and common.optional_import("faiss") is None:
        print("NOTE: faiss not installed; faiss rows skipped.", flush=True)
        tools.remove("faiss")
    return tools


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section for every size; print markdown tables; return the JSON payload.

    Args:
        args: parsed command-line options (see :func:`build_parser`).

    Returns:
        The payload written to ``benches/out/kmeans.json``.
    """
    threads = common.set_threads(args.threads)
    info = common.machine_info()
    tools = available_tools(args.tools)
    faiss = common.optional_import("faiss")
    faiss_has_early_stop = bool(
        faiss is not None and hasattr(faiss.ClusteringParameters(), "early_stop_threshold")
    )

    gemm = common.gemm_gflops()
    gemm_rate = float(gemm["gflops"])
    print(
        f"float32 GEMM reference: {gemm_rate:.1f} GFLOP/s "
        f"({gemm['m']}×{gemm['k']} @ {gemm['k']}×{gemm['n']}, numpy, {args.threads} threads)",
        flush=True,
    )

    fixed_rows: list[dict[str, Any]] = []
    short_rows: list[dict[str, Any]] = []
    e2e_rows: list[dict[str, Any]] = []
    init_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    pf_init_ok = False
    if "protofast" in tools and args.init:
        err = protofast_init_error()
        pf_init_ok = err is None
        if err is not None:
            notes.append(f"protofast init-only (kmeans_plusplus) not supported: {err}")

    for n, d, k in args.sizes:
        x, c0 = make_data(
            n, d, k, seed=args.seed, noise=args.noise, centers_per_k=args.centers_per_k
        )
        big = n >= BIG_N
        ctx = SizeContext(
            x=x,
            c0=c0,
            label=_size_label(n, d, k),
            repeats=min(args.repeats, args.big_repeats) if big else args.repeats,
            warm_x=x[: min(n, max(20000, 20 * k))] if big else None,
            tools=tools,
            iters=args.iters,
            interleave=args.interleave,
        )
        warm = " (warm-up on a 20k-row slice)" if big else ""
        print(f"\n[kmeans] {ctx.label}: {ctx.repeats} runs per tool{warm}", flush=True)
        if args.fixed:
            fixed_rows.extend(fixed_section(ctx, gemm_rate))
        if args.short_runs:
            short_rows.extend(short_section(ctx, args.short_runs))
        heavy = n * k > args.heavy_limit
        if heavy and (args.e2e or args.init):
            notes.append(
                f"{ctx.label}: end-to-end and init-only runs skipped "
                f"(N·k > {args.heavy_limit:.0e}; raise --heavy-limit)."
            )
        if args.e2e and not heavy:
            e2e_rows.extend(e2e_section(ctx))
        if args.init and not heavy:
            init_rows.extend(init_section(ctx, pf_init_ok))

    if faiss is not None:
        notes.append(
            "faiss early_stop_threshold: "
            + (
                "set to -1 (its default 0 stops as soon as the objective stops improving)"
                if faiss_has_early_stop
                else "attribute absent (older faiss, no early stop)"
            )
            + ". Empty clusters: faiss splits a big one, sklearn relocates far points, "
            "numpy keeps the old centroid."
        )
    if any(r["tool"] != "faiss" and r["n_iter"] < args.iters for r in fixed_rows):
        notes.append(
            "sklearn and protofast stop on strict convergence (no label changed) even with tol=0, "
            "so some rows ran fewer iterations; ms/iter divides by the iterations actually run."
        )
    notes.append(
        f"Each timed block of calls starts after a {SETTLE_S} s pause, so that no library's idle "
        "threads still spin on the cores (OpenBLAS's spin about 0.1 s after each call)."
    )
    if any(s[0] >= BIG_N for s in args.sizes):
        big = min(args.repeats, args.big_repeats)
        fewer = f" (not {args.repeats})" if big < args.repeats else ""
        notes.append(f"N ≥ 1M: {big} timed runs{fewer}, warm-up on a 20k-row slice.")

    tables = render(fixed_rows, e2e_rows, init_rows, args=args, gemm=gemm, notes=notes)
    if short_rows:
        tables = render_short(short_rows, args) + "\n\n" + tables
    return common.report(
        "kmeans",
        "k-means",
        tables,
        args,
        info,
        threads,
        gemm=gemm,
        fixed=fixed_rows,
        short_runs=short_rows,
        end_to_end=e2e_rows,
        init_only=init_rows,
        notes=notes,
    )


def render(
    fixed: Sequence[dict[str, Any]],
    e2e: Sequence[dict[str, Any]],
    init: Sequence[dict[str, Any]],
    *,
    args: argparse.Namespace,
    gemm: dict[str, Any],
    notes: Sequence[str],
) -> str:
    """Markdown tables for the three sections (the fixed-iteration one when it ran).

    Args:
        fixed: fixed-iteration rows.
        e2e: end-to-end rows.
        init: initialisation-only rows.
        args: options (for the iteration count).
        gemm: the GEMM reference measurement.
        notes: lines printed under the tables.

    Returns:
        Markdown text.
    """
    parts: list[str] = []
    if fixed:
        parts += [
            f"### k-means, fixed {args.iters} iterations from the same initial centroids (tol=0)\n",
            f"GEMM reference: {gemm['gflops']:.1f} GFLOP/s (numpy float32, "
            f"{gemm['m']}×{gemm['k']} @ {gemm['k']}×{gemm['n']}, {args.threads} threads). "
            "One iteration = 2·N·D·k flops. "
            "Inertia recomputed in float64 from each tool's centroids; Δ relative to numpy.\n",
        ]
        parts.append(
            common.markdown_table(
                [
                    "N×D×k",
                    "tool",
                    "runs",
                    "iters",
                    "total ms",
                    "ms/iter",
                    "GFLOP/s",
                    "% GEMM",
                    "inertia",
                    "Δ inertia",
                    "protofast speedup",
                ],
                [
                    [
                        r["size"],
                        r["tool"],
                        r["runs"],
                        r["n_iter"],
                        common.fmt_ms(r["median_s"]),
                        common.fmt_ms(r["per_iter_s"]),
                        f"{r['gflops']:.1f}",
                        f"{100 * r['frac_gemm']:.0f}%",
                        f"{r['inertia']:.6g}",
                        "–"
                        if r["inertia_vs_numpy"] is None
                        else f"{100 * r['inertia_vs_numpy']:+.3f}%",
                        common.fmt_ratio(r["protofast_speedup"]),
                    ]
                    for r in fixed
                ],
            )
        )
    if e2e:
        parts.append("\n### k-means end to end (each tool's own initialisation and convergence)\n")
        parts.append(
            common.markdown_table(
                ["N×D×k", "tool", "settings", "runs", "total ms", "iters", "inertia", "vs best"],
                [
                    [
                        r["size"],
                        r["tool"],
                        r["settings"],
                        r["runs"],
                        common.fmt_ms(r["median_s"]),
                        r["n_iter"],
                        f"{r['inertia']:.6g}",
                        f"{100 * r['inertia_vs_best']:+.2f}%",
                    ]
                    for r in e2e
                ],
            )
        )
    if init:
        parts.append("\n### k-means initialisation only\n")
        parts.append(
            common.markdown_table(
                ["N×D×k", "tool", "method", "runs", "ms", "inertia of seeds", "protofast speedup"],
                [
                    [
                        r["size"],
                        r["tool"],
                        r["method"],
                        r["runs"],
                        common.fmt_ms(r["median_s"]),
                        f"{r['inertia']:.6g}",
                        common.fmt_ratio(r["protofast_speedup"]),
                    ]
                    for r in init
                ],
            )
        )
    if notes:
        parts.append("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))
    return "\n".join(parts)


def render_short(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of the short-run section."""

    def ms(v: float | None) -> str:
        return "–" if v is None else common.fmt_ms(v)

    def ratio(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    head = (
        f"### k-means short runs (same C0, tol=0, noise {args.noise})\n\n"
        "First iteration = protofast `max_iter=1` call less its `max_iter=0` call (the first "
        "assignment pass and update); numpy product = `x @ C0.T` in float32 as one call. "
        "Ratios: protofast's time per iteration over the peer's (below 1: protofast faster). "
        "protofast returns each point's nearest final centroid, as scikit-learn (n iterations: "
        "n + 1 distance passes); `reassign=False` keeps the last step's labels, as many passes as "
        "faiss's training (n), compared with faiss. Last column: protofast's time with its AMX "
        "screen over its time without (– where the CPU has no AMX).\n"
    )
    return head + common.markdown_table(
        [
            "N×D×k",
            "iters",
            "numpy product ms",
            "first iter ms",
            "first / product",
            "protofast ms/iter",
            "faiss ms/iter",
            "sklearn ms/iter",
            "vs faiss",
            "vs sklearn",
            "reassign=False ms/iter",
            "reassign=False vs faiss",
            "AMX screen on / off",
        ],
        [
            [
                r["size"],
                r["iters"],
                ms(r["numpy_product_s"]),
                ms(r["first_iter_s"]),
                ratio(r["first_vs_product"]),
                ms(r["per_iter_s"].get("protofast")),
                ms(r["per_iter_s"].get("faiss")),
                ms(r["per_iter_s"].get("sklearn-lloyd")),
                ratio(r["vs_faiss"]),
                ratio(r["vs_sklearn"]),
                ms(r["per_iter_s"].get("protofast-last")),
                ratio(r.get("last_vs_faiss")),
                ratio(r.get("amx_on_vs_off")),
            ]
            for r in rows
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of this bench."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="first three sizes + 100k×384×256, 3 runs")
    g.add_argument("--full", action="store_true", help="all five sizes incl. 1M×384×1000")
    p.add_argument(
        "--sizes", type=common.parse_sizes, default=None, help='e.g. "10000x384x100,50x384x5"'
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per tool (default 5, quick 3)"
    )
    p.add_argument("--big-repeats", type=int, default=3, help="timed runs for N >= 1M (default 3)")
    p.add_argument("--iters", type=int, default=20, help="fixed iteration count (default 20)")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma list from {','.join(TOOLS)}")
    p.add_argument(
        "--short-runs",
        type=lambda s: [int(v) for v in s.split(",") if v],
        default=[],
        help="iteration counts of the short-run section, e.g. 3,5,20 (default: section skipped)",
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="short runs: time the tools in rounds (each once per round, order rotated, a pause "
        "before every call) instead of one block of calls per tool",
    )
    p.add_argument(
        "--no-fixed", dest="fixed", action="store_false", help="skip the fixed-iteration section"
    )
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end section")
    p.add_argument(
        "--no-init", dest="init", action="store_false", help="skip the init-only section"
    )
    p.add_argument(
        "--heavy-limit",
        type=float,
        default=1e8,
        help="skip end-to-end and init-only sections when N·k exceeds this "
        "(default 1e8: skips 1M×1000)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=2.0, help="blob noise norm (default 2.0)")
    p.add_argument(
        "--centers-per-k", type=float, default=4.0, help="true blob centres per cluster (default 4)"
    )
    p.add_argument("--json-name", default="kmeans", help="output file stem under benches/out/")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse options and apply the ``--quick`` / ``--full`` presets."""
    args = build_parser().parse_args(argv)
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else FULL_SIZES if args.full else DEFAULT_SIZES
    args.sizes = [tuple(s) for s in args.sizes]
    for s in args.sizes:
        if len(s) != 3:
            raise SystemExit(f"--sizes entries are N x D x k, got {s}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse ``argv`` and run."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
