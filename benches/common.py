"""Shared helpers for the protofast benchmark scripts.

Timing (``time.perf_counter``, warm-up, median), thread pinning for every tool, machine information,
synthetic data, the float32 matrix-product reference rate, a markdown table printer and a JSON
writer (``benches/out/<name>.json``).

Every bench script in this folder imports this module as ``common`` (the scripts put their own
folder on ``sys.path`` when run as ``python benches/bench_x.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"
DEFAULT_THREADS = 2

T = TypeVar("T")

# Kept alive for the whole process: threadpoolctl limits last as long as the controller object.
_THREADPOOL_LIMITS: Any = None
_PROTOFAST: ModuleType | None = None
_PROTOFAST_TRIED = False


# --------------------------------------------------------------------------------------------------
# Optional imports
# --------------------------------------------------------------------------------------------------


def load_protofast(*, quiet: bool = False) -> ModuleType | None:
    """Import protofast once; return the module or ``None`` (with a printed note) if it is missing.

    Args:
        quiet: do not print the note when the import fails.

    Returns:
        The ``protofast`` module, or ``None`` when ``import protofast`` fails.
    """
    global _PROTOFAST, _PROTOFAST_TRIED
    if not _PROTOFAST_TRIED:
        _PROTOFAST_TRIED = True
        try:
            _PROTOFAST = importlib.import_module("protofast")
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip protofast rows"
            _PROTOFAST = None
            if not quiet:
                print(
                    f"NOTE: `import protofast` failed ({type(exc).__name__}: {exc}); "
                    "protofast rows are skipped. Build it with `make develop`.",
                    flush=True,
                )
    return _PROTOFAST


def protofast_attr(name: str) -> Any | None:
    """Return ``protofast.<name>`` if protofast imports and has it, else ``None`` (with a note).

    Args:
        name: attribute name, e.g. ``"kmeans"`` or ``"InfoNCELoss"``.

    Returns:
        The attribute, or ``None``.
    """
    pf = load_protofast()
    if pf is None:
        return None
    obj = getattr(pf, name, None)
    if obj is None:
        print(f"NOTE: protofast has no `{name}` yet; those protofast rows are skipped.", flush=True)
    return obj


def optional_import(name: str) -> ModuleType | None:
    """Import a module by name, returning ``None`` if it is not installed.

    Args:
        name: module name.

    Returns:
        The module or ``None``.
    """
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------


def set_threads(n: int = DEFAULT_THREADS) -> dict[str, Any]:
    """Set one thread count for every tool: BLAS/OpenMP (threadpoolctl), faiss, torch, protofast.

    Must be called before timing anything. The threadpoolctl limit is kept for the process lifetime.

    Args:
        n: number of threads for every library.

    Returns:
        What was set, per library (``None`` where the library is absent).
    """
    global _THREADPOOL_LIMITS
    done: dict[str, Any] = {"threads": n}
    tpc = optional_import("threadpoolctl")
    if tpc is not None:
        _THREADPOOL_LIMITS = tpc.threadpool_limits(limits=n)
        done["threadpoolctl"] = n
    else:
        done["threadpoolctl"] = None
    faiss = optional_import("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)
        done["faiss"] = n
    torch = optional_import("torch")
    if torch is not None:
        torch.set_num_threads(n)
        done["torch"] = torch.get_num_threads()
    pf = load_protofast(quiet=True)
    if pf is not None and hasattr(pf, "set_num_threads"):
        pf.set_num_threads(n)
        done["protofast"] = pf.get_num_threads() if hasattr(pf, "get_num_threads") else n
    else:
        done["protofast"] = None
    return done


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing(Generic[T]):
    """Wall-clock times of repeated calls (seconds) and the last call's result."""

    times: list[float]
    warmup: int
    result: T

    @property
    def median(self) -> float:
        """Median time in seconds."""
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """Fastest time in seconds."""
        return min(self.times)

    @property
    def runs(self) -> int:
        """Number of timed runs (warm-up excluded)."""
        return len(self.times)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no result)."""
        return {
            "median_s": self.median,
            "min_s": self.best,
            "max_s": max(self.times),
            "runs": self.runs,
            "warmup": self.warmup,
            "times_s": self.times,
        }


def time_call(
    fn: Callable[[], T],
    *,
    repeats: int = 5,
    warmup: int = 1,
    warmup_fn: Callable[[], object] | None = None,
) -> Timing[T]:
    """Time ``fn`` with ``time.perf_counter``: ``warmup`` untimed calls, then ``repeats`` timed.

    Args:
        fn: the zero-argument call to time.
        repeats: number of timed calls (at least 1).
        warmup: number of untimed warm-up calls before timing.
        warmup_fn: if given, called instead of ``fn`` for the warm-up (e.g. the same tool on a
            small slice of the data when one full call takes minutes).

    Returns:
        A :class:`Timing` with every timed duration and the last result.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        (warmup_fn or fn)()
    times: list[float] = []
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return Timing(times=times, warmup=warmup, result=result)


# --------------------------------------------------------------------------------------------------
# Reference rate and data
# --------------------------------------------------------------------------------------------------


def gemm_gflops(
    m: int = 16384, k: int = 384, n: int = 1024, repeats: int = 7
) -> dict[str, float | int]:
    """Measure numpy float32 matrix-product throughput at one representative shape.

    ``(m×k) @ (k×n)`` counts ``2·m·k·n`` flops; the median of ``repeats`` calls after two warm-ups.
    Call :func:`set_threads` first so the rate uses the same thread count as the tools.

    Args:
        m: rows of the left operand (points in a block).
        k: inner dimension (embedding dimension).
        n: columns of the right operand (centroids).
        repeats: timed repeats.

    Returns:
        ``{"gflops": ..., "m": m, "k": k, "n": n, "median_s": ...}``.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    t = time_call(lambda: np.matmul(a, b, out=out), repeats=repeats, warmup=2)
    return {
        "gflops": 2.0 * m * k * n / t.median / 1e9,
        "m": m,
        "k": k,
        "n": n,
        "median_s": t.median,
    }


def unit_blobs(
    n: int,
    d: int,
    n_centers: int,
    *,
    seed: int = 0,
    noise: float = 1.0,
    return_centers: bool = False,
) -> Any:
    """Unit-norm clustered vectors: gaussian blobs around random unit centres, then normalised.

    Each point is ``normalise(c_j + noise/sqrt(d) · g)`` with ``g`` standard normal, so ``noise=1``
    puts a point at cosine ≈ 0.71 to its centre (the noise vector has norm ≈ ``noise``).
    Generated in float32 blocks to bound memory for large ``n``.

    Args:
        n: number of points.
        d: dimension.
        n_centers: number of blob centres.
        seed: RNG seed (fixed for reproducible data).
        noise: noise norm relative to the unit centre.
        return_centers: also return the ``(n_centers, d)`` centres.

    Returns:
        ``x`` (``n×d`` float32, C-contiguous), or ``(x, centres)`` if ``return_centers``.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    scale = np.float32(noise / np.sqrt(d))
    block = 65536
    for s in range(0, n, block):
        e = min(n, s + block)
        assign = rng.integers(0, n_centers, e - s)
        xb = rng.standard_normal((e - s, d), dtype=np.float32)
        xb *= scale
        xb += centers[assign]
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        x[s:e] = xb
    if return_centers:
        return x, centers
    return x


def nearest_l2(x: np.ndarray, c: np.ndarray, block: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by squared L2 distance, blockwise float32 GEMM (the numpy reference).

    Args:
        x: ``n×d`` float32 points.
        c: ``k×d`` float32 centroids.
        block: rows per block (bounds the ``block×k`` distance buffer).

    Returns:
        ``(ids int64, squared distances float32)``.
    """
    n = x.shape[0]
    ids = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    c_norm = np.einsum("ij,ij->i", c, c)
    ct = np.ascontiguousarray(c.T)
    for s in range(0, n, block):
        e = min(n, s + block)
        xb = x[s:e]
        d = xb @ ct
        d *= -2.0
        d += c_norm
        lab = d.argmin(axis=1)
        ids[s:e] = lab
        dist[s:e] = d[np.arange(e - s), lab] + np.einsum("ij,ij->i", xb, xb)
    np.maximum(dist, 0.0, out=dist)
    return ids, dist


def inertia_f64(x: np.ndarray, centroids: np.ndarray, block: int = 32768) -> float:
    """k-means objective of ``centroids`` on ``x``, recomputed identically for every tool.

    Every point is assigned to its nearest centroid (float32 GEMM, as :func:`nearest_l2`), then the
    squared distance to that centroid is summed in float64 from the float64 difference vectors.

    Args:
        x: ``n×d`` points.
        centroids: ``k×d`` centroids returned by a tool.
        block: rows per block.

    Returns:
        The sum of squared distances (float64).
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    c32 = np.ascontiguousarray(centroids, dtype=np.float32)
    c64 = c32.astype(np.float64)
    ids, _ = nearest_l2(x32, c32, block=block)
    total = 0.0
    for s in range(0, x32.shape[0], block):
        e = min(x32.shape[0], s + block)
        diff = x32[s:e].astype(np.float64) - c64[ids[s:e]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


# --------------------------------------------------------------------------------------------------
# Machine info
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def mem_available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (``None`` if unknown)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, library versions and BLAS/OpenMP pools (threadpoolctl).

    Returns:
        A JSON-friendly dict.
    """
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "env": {
            k: os.environ[k]
            for k in (
                "OPENBLAS_CORETYPE",
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
            )
            if k in os.environ
        },
    }
    versions: dict[str, str | None] = {}
    for name in ("numpy", "scipy", "torch", "sklearn", "faiss", "threadpoolctl", "protofast"):
        mod = optional_import(name) if name != "protofast" else load_protofast(quiet=True)
        versions[name] = getattr(mod, "__version__", "?") if mod is not None else None
    info["versions"] = versions
    pf = load_protofast(quiet=True)
    # whether k-means' plain steps run the integer screen on the CPU's tile unit
    get_amx = getattr(pf, "get_amx", None)
    info["protofast_amx"] = bool(get_amx()) if get_amx is not None else None
    tpc = optional_import("threadpoolctl")
    if tpc is not None:
        pools = []
        for p in tpc.threadpool_info():
            pools.append(
                {
                    "api": p.get("internal_api"),
                    "version": p.get("version"),
                    "threads": p.get("num_threads"),
                    "arch": p.get("architecture"),
                    "lib": Path(str(p.get("filepath", ""))).name,
                }
            )
        info["threadpools"] = pools
    return info


def machine_summary(info: dict[str, Any]) -> str:
    """One short markdown paragraph describing the machine and versions.

    Args:
        info: output of :func:`machine_info`.

    Returns:
        Text for the top of a report.
    """
    v = info["versions"]
    vs = ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
    missing = [k for k, val in v.items() if val is None]
    pools = []
    for p in info.get("threadpools", []):
        desc = " ".join(str(v) for v in (p["api"], p["version"], p["arch"]) if v)
        pools.append(f"{p['lib']} ({desc}, {p['threads']} threads)")
    blas = "; ".join(pools)
    lines = [
        f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, "
        f"{info['mem_total_gib']:.0f} GiB; Python {info['python']}.",
        f"Versions: {vs}" + (f" (not installed: {', '.join(missing)})" if missing else "") + ".",
    ]
    if blas:
        lines.append(f"Thread pools: {blas}.")
    if info.get("protofast_amx") is not None:
        lines.append(f"protofast AMX screen: {'on' if info['protofast_amx'] else 'off'}.")
    load = info.get("loadavg")
    cores = info.get("logical_cores") or 1
    if load:
        lines.append(
            f"Load average at start (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
        )
        if load[0] > cores:
            lines.append(
                f"WARNING: load average {load[0]:.1f} > {cores} cores: other processes were "
                "competing for the CPUs, so timings are inflated and noisy."
            )
    if info.get("env"):
        lines.append("Env: " + ", ".join(f"{k}={val}" for k, val in info["env"].items()) + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub markdown table with padded columns.

    Args:
        headers: column titles.
        rows: cell values (converted with ``str``).

    Returns:
        The table text (no trailing newline).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benches/out/<name>.json`` (the folder is git-ignored).

    Args:
        name: file stem, e.g. ``"kmeans"``.
        payload: JSON-friendly data (numpy scalars/arrays are converted).

    Returns:
        The path written.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def report(
    bench: str,
    title: str,
    markdown: str,
    args: Any,
    info: dict[str, Any],
    threads: dict[str, Any],
    **data: Any,
) -> dict[str, Any]:
    """Print a bench's header and tables, and write its JSON (``args.json_name``).

    Args:
        bench: the bench's name (the JSON's ``"bench"`` field).
        title: heading printed above the tables.
        markdown: the rendered tables.
        args: the parsed options (an ``argparse.Namespace`` with ``json_name``).
        info: :func:`machine_info`.
        threads: the thread settings from :func:`set_threads`.
        **data: the bench's rows and other results, stored as given.

    Returns:
        The JSON payload.
    """
    print(header(title, info) + "\n\n" + markdown, flush=True)
    payload = {
        "bench": bench,
        "args": vars(args),
        "machine": info,
        "threads": threads,
        **data,
        "markdown": markdown,
    }
    path = write_json(args.json_name, payload)
    print(f"\n(wrote {path})", flush=True)
    return payload


def fmt_ms(seconds: float) -> str:
    """Format seconds as milliseconds with 3 significant-ish digits."""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: float | None) -> str:
    """Format a ratio as ``1.23×`` (``–`` when missing)."""
    if r is None or not np.isfinite(r):
        return "–"
    return f"{r:.2f}×" if r < 100 else f"{r:.0f}×"


def fmt_count(n: float) -> str:
    """Format a large count compactly: 4096, 1M, 2.5k."""
    if n >= 1e6 and n % 1e6 == 0:
        return f"{int(n // 1e6)}M"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return f"{int(n)}"


def fmt_bytes(n: float) -> str:
    """Format a byte count with a binary unit."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def int_list(text: str) -> list[int]:
    """Parse ``"50,10000"`` (or ``"1e4"``) into ints, for ``argparse`` ``type=``."""
    return [int(float(v)) for v in text.split(",") if v]


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """Parse ``"50x384x5,1000x384x20"`` (or ``;``-separated, ``:`` or ``x`` inside) into tuples.

    Args:
        text: the ``--sizes`` argument.

    Returns:
        A list of integer tuples.
    """
    out: list[tuple[int, ...]] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.replace(":", "x").replace("*", "x").split("x")
        out.append(tuple(int(float(f)) for f in fields))
    return out


def header(title: str, info: dict[str, Any], extra: str = "") -> str:
    """Markdown heading + machine paragraph for one bench's printed report.

    Args:
        title: the bench title.
        info: :func:`machine_info` output.
        extra: more lines to append.

    Returns:
        The text.
    """
    text = f"## {title}\n\n{machine_summary(info)}"
    if extra:
        text += "\n" + extra
    return text
