"""The design note's re-clustering call, ``PrototypeManager.update_prototypes()``, timed alone.

At the note's scale (50 labels, D = 384, k = 5, ``n_init = 10``) and at 10 000 labels (k = 100):
protofast's manager against the plain-Python manager of the design note (``baseline_manager.py``:
dict of lists, scikit-learn ``KMeans(n_init=10)``), both fed the same batches first; plus
``protofast.kmeans`` alone on the per-label means, to separate the clustering from the rest of the
call (means, label-to-cluster mapping, logging). Median of ``--repeats`` calls after one warm-up.

Run: ``.venv/bin/python benches/bench_update.py`` (``--repeats 50``, ``--labels 50,10000``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

D = 384


def clusters_for(num_labels: int) -> int:
    """k as in ``bench_step.py``: max(5, L // 100)."""
    return max(5, num_labels // 100)


def _fed_manager(module: Any, num_labels: int, k: int, seed: int) -> Any:
    """A manager of ``module`` that has seen every label three times (no re-clustering yet)."""
    import torch

    table = common.unit_blobs(num_labels, D, max(1, num_labels // 10), seed=seed)
    labels = [f"label {i}" for i in range(num_labels)]
    manager = module.PrototypeManager(
        num_clusters=k,
        update_interval=10**9,
        min_samples_per_cluster=3,
        seed=42,
        n_init=10,
    )
    rng = np.random.default_rng(seed)
    for _ in range(3):
        order = rng.permutation(num_labels)
        for s in range(0, num_labels, 256):
            idx = order[s : s + 256]
            noise = rng.standard_normal((len(idx), D)).astype(np.float32) * 0.01
            manager.add_labels([labels[i] for i in idx], torch.from_numpy(table[idx] + noise))
    return manager


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every (labels, implementation) pair and print the table."""
    threads = common.set_threads(args.threads)
    info = common.machine_info()
    pf = common.load_protofast()
    import baseline_manager

    rows: list[dict[str, Any]] = []
    for num_labels in args.labels:
        k = clusters_for(num_labels)
        repeats = args.repeats if num_labels <= 1000 else args.repeats_large
        calls: dict[str, tuple[str, Callable[[], object]]] = {}
        if pf is not None:
            manager = _fed_manager(pf, num_labels, k, args.seed)
            calls["protofast"] = ("update_prototypes()", manager.update_prototypes)
            means = np.asarray(manager.store.means(), dtype=np.float32)
            calls["protofast kmeans"] = (
                "kmeans(means, k, n_init=10) alone",
                lambda m=means, k=k: pf.kmeans(m, k, n_init=10, seed=42),
            )
        base = _fed_manager(baseline_manager, num_labels, k, args.seed)
        calls["baseline"] = (
            "update_prototypes() (sklearn KMeans n_init=10)",
            base.update_prototypes,
        )
        timed: dict[str, common.Timing[object]] = {}
        for name, (_, fn) in calls.items():
            timed[name] = common.time_call(fn, repeats=repeats, warmup=1)
            print(
                f"  {num_labels:>6} labels  {name:17s} {common.fmt_ms(timed[name].median):>8s} ms",
                flush=True,
            )
        base_median = timed["baseline"].median
        for name, (what, _) in calls.items():
            t = timed[name]
            rows.append(
                {
                    "labels": num_labels,
                    "k": k,
                    "impl": name,
                    "call": what,
                    **t.summary(),
                    "speedup_vs_baseline": base_median / t.median,
                }
            )
    markdown = render(rows)
    return common.report(
        "update",
        "update_prototypes() (D=384, n_init=10)",
        markdown,
        args,
        info,
        threads,
        rows=rows,
    )


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The results table."""
    table = common.markdown_table(
        ["labels", "k", "impl", "call", "runs", "median ms", "best ms", "vs baseline"],
        [
            [
                r["labels"],
                r["k"],
                r["impl"],
                r["call"],
                r["runs"],
                common.fmt_ms(r["median_s"]),
                common.fmt_ms(r["min_s"]),
                common.fmt_ratio(r["speedup_vs_baseline"]),
            ]
            for r in rows
        ],
    )
    return (
        "### update_prototypes()\n\n"
        "'vs baseline' = the baseline's median / this row's median (>1: faster than the note's "
        "plain-Python manager).\n\n" + table
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of this bench."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="20 calls at ≤ 1000 labels, 2 above")
    g.add_argument("--full", action="store_true", help="the defaults (accepted for run_all.py)")
    p.add_argument("--labels", type=common.int_list, default=[50, 10000])
    p.add_argument("--repeats", type=int, default=50, help="timed calls at ≤ 1000 labels")
    p.add_argument("--repeats-large", type=int, default=3, help="timed calls above 1000 labels")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-name", default="update", help="output file stem under benches/out/")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse ``argv`` and run."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.repeats, args.repeats_large = 20, 2
    return run(args)


if __name__ == "__main__":
    main()
