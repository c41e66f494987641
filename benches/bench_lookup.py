"""Nearest-prototype lookup: protofast.nearest_prototype vs faiss IndexFlatL2 (k=1) vs numpy.

Q queries (4096 and 1 000 000) against k centroids (5, 100, 1000), D=384, squared-L2 metric.
Reports the median time, queries/s, the speed relative to numpy and to faiss, and the fraction of
ids that agree with numpy's (ties and float rounding can differ in the last place).

The faiss timing includes building the ``IndexFlatL2`` from the centroids (as a training loop does
after every re-clustering); adding k ≤ 1000 vectors costs microseconds.

Run: ``.venv/bin/python benches/bench_lookup.py --quick``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DIM = 384
QUERIES = (4096, 1_000_000)
CENTROIDS = (5, 100, 1000)
TOOLS = ("protofast", "faiss", "numpy")


def numpy_lookup(q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise numpy nearest centroid (float32 GEMM, ``‖c‖² − 2 q·c`` + ``‖q‖²``)."""
    return common.nearest_l2(q, c, block=16384)


def faiss_lookup(q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faiss ``IndexFlatL2`` built from ``c``, ``search(q, 1)``."""
    import faiss

    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    dist, ids = index.search(q, 1)
    return ids[:, 0], dist[:, 0]


def protofast_lookup(q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``protofast.nearest_prototype(q, c, metric="l2")``."""
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    ids, scores = pf.nearest_prototype(q, c, metric="l2")
    return np.asarray(ids), np.asarray(scores)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the lookup grid, print the markdown table, return the JSON payload.

    Args:
        args: parsed options (see :func:`build_parser`).

    Returns:
        The payload written to ``benches/out/lookup.json``.
    """
    threads = common.set_threads(args.threads)
    info = common.machine_info()
    tools = [t for t in args.tools.split(",") if t]
    if "protofast" in tools and common.protofast_attr("nearest_prototype") is None:
        tools.remove("protofast")
    if "faiss" in tools and common.optional_import("faiss") is None:
        print("NOTE: faiss not installed; faiss rows skipped.", flush=True)
        tools.remove("faiss")
    fns: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
        "protofast": protofast_lookup,
        "faiss": faiss_lookup,
        "numpy": numpy_lookup,
    }

    rows: list[dict[str, Any]] = []
    for nq in args.queries:
        reps = args.repeats if nq < 100_000 else min(args.repeats, args.big_repeats)
        for k in args.centroids:
            q, c = common.unit_blobs(
                nq, args.dim, k, seed=args.seed, noise=2.0, return_centers=True
            )
            c = np.ascontiguousarray(c, dtype=np.float32)
            ref_ids, _ = numpy_lookup(q, c)
            group: list[dict[str, Any]] = []
            for tool in tools:
                fn = fns[tool]
                t = common.time_call(functools.partial(fn, q, c), repeats=reps, warmup=1)
                ids = np.asarray(t.result[0]).astype(np.int64, copy=False)
                row = {
                    "queries": nq,
                    "k": k,
                    "d": args.dim,
                    "tool": tool,
                    "qps": nq / t.median,
                    "agree": float(np.mean(ids == ref_ids)),
                    **t.summary(),
                }
                group.append(row)
                print(
                    f"[lookup] Q={common.fmt_count(nq):>5s} k={k:5d} {tool:10s} "
                    f"{common.fmt_ms(t.median):>8s} ms  {row['qps'] / 1e6:8.2f} M q/s",
                    flush=True,
                )
            base = next((r for r in group if r["tool"] == "numpy"), None)
            fa = next((r for r in group if r["tool"] == "faiss"), None)
            pfr = next((r for r in group if r["tool"] == "protofast"), None)
            for r in group:
                r["vs_numpy"] = base["median_s"] / r["median_s"] if base else None
                r["vs_faiss"] = fa["median_s"] / r["median_s"] if fa else None
                r["protofast_speedup"] = r["median_s"] / pfr["median_s"] if pfr else None
            rows.extend(group)
            del q, c

    table = render(rows, args)
    return common.report(
        "lookup", "Nearest-prototype lookup", table, args, info, threads, rows=rows
    )


def render(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of the lookup rows.

    Args:
        rows: measured rows.
        args: options (dimension, threads).

    Returns:
        Markdown text.
    """
    head = (
        f"### Nearest-prototype lookup (D={args.dim}, squared L2, {args.threads} threads)\n\n"
        "Speed columns are time ratios: >1 means this row is faster than numpy / faiss; "
        "'protofast speedup' is this row's time divided by protofast's. "
        "'agree' = ids equal to numpy's.\n"
    )
    table = common.markdown_table(
        [
            "Q",
            "k",
            "tool",
            "runs",
            "ms",
            "queries/s",
            "vs numpy",
            "vs faiss",
            "protofast speedup",
            "agree",
        ],
        [
            [
                common.fmt_count(r["queries"]),
                r["k"],
                r["tool"],
                r["runs"],
                common.fmt_ms(r["median_s"]),
                f"{r['qps'] / 1e6:.2f} M",
                common.fmt_ratio(r["vs_numpy"]),
                common.fmt_ratio(r["vs_faiss"]),
                common.fmt_ratio(r["protofast_speedup"]),
                f"{100 * r['agree']:.2f}%",
            ]
            for r in rows
        ],
    )
    return head + "\n" + table


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of this bench."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="3 runs (2 for 1M queries)")
    g.add_argument("--full", action="store_true", help="7 runs (5 for 1M queries)")
    p.add_argument("--queries", type=common.int_list, default=list(QUERIES))
    p.add_argument("--centroids", type=common.int_list, default=list(CENTROIDS))
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs (default 5, quick 3, full 7)"
    )
    p.add_argument("--big-repeats", type=int, default=None, help="timed runs for Q >= 100k")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma list from {','.join(TOOLS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-name", default="lookup", help="output file stem under benches/out/")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse options and apply the presets."""
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7 if args.full else 5
    if args.big_repeats is None:
        args.big_repeats = 2 if args.quick else 5 if args.full else 3
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse ``argv`` and run."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
