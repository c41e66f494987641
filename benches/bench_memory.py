"""Memory per label: protofast.LabelStore vs the plain-Python store of the design note.

Every label receives ``samples`` (default 10, as the note sizes it) embeddings of D=384 float32,
fed in batches of 256 rows. Measured for 1 000 and 1 000 000 labels (and 10 000, the base of any
extrapolation):

* ``protofast.LabelStore()`` (mean mode: running sums and counts) and
  ``protofast.LabelStore(max_samples_per_label=10)`` (window of the last 10 samples): ``.nbytes``;
* baseline, torch: ``baseline_manager.PrototypeManager.add_labels`` (a ``dict`` of lists of
  per-sample torch tensors, views of each batch tensor) sized with a deep ``sys.getsizeof`` walk
  plus each distinct tensor storage; the C++ TensorImpl behind each Python tensor is invisible, so
  this is a lower bound;
* baseline, numpy: the same ``dict`` of lists holding per-sample numpy copies, measured with
  ``tracemalloc`` (numpy reports its buffers to tracemalloc).

A configuration whose estimated footprint exceeds ``--mem-limit-gib`` (default 4 GiB) is not built:
its bytes per label are extrapolated linearly from the 10 000-label measurement and the output
says so. The 1M-label baselines (~18 GB) are always extrapolated on a 24 GiB machine.

Run: ``.venv/bin/python benches/bench_memory.py --quick``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DIM = 384
LABEL_COUNTS = (1000, 1_000_000)
BASE = 10_000
BATCH = 256


def embedding_pool(dim: int, seed: int = 0) -> np.ndarray:
    """A fixed ``4096×dim`` float32 pool the batches are sliced from (content does not matter)."""
    return np.random.default_rng(seed).standard_normal((4096, dim), dtype=np.float32)


def batches(
    num_labels: int, samples: int, pool: np.ndarray, seed: int = 0
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(labels, embeddings)`` batches of 256 rows so every label gets ``samples`` rows.

    Pass ``s`` visits every label once, in a shuffled order. Label strings are built per batch (as a
    data loader would hand them over), so a store that keeps them as keys owns them.
    """
    rng = np.random.default_rng(seed)
    pos = 0
    for _ in range(samples):
        order = rng.permutation(num_labels)
        for s in range(0, num_labels, BATCH):
            ids = order[s : s + BATCH]
            n = ids.shape[0]
            if pos + n > pool.shape[0]:
                pos = 0
            yield [f"activity_{i:07d}" for i in ids], pool[pos : pos + n]
            pos += n


def measure_protofast(
    num_labels: int, samples: int, dim: int, window: int | None
) -> dict[str, Any]:
    """Fill a ``protofast.LabelStore`` and read ``.nbytes``."""
    pf = common.load_protofast(quiet=True)
    assert pf is not None
    store = pf.LabelStore(max_samples_per_label=window)
    pool = embedding_pool(dim)
    t0 = time.perf_counter()
    for labels, emb in batches(num_labels, samples, pool):
        store.add(labels, emb)
    elapsed = time.perf_counter() - t0
    assert len(store) == num_labels
    nbytes = int(store.nbytes)
    del store
    gc.collect()
    return {"bytes": nbytes, "add_s": elapsed}


def measure_baseline_torch(num_labels: int, samples: int, dim: int) -> dict[str, Any]:
    """Fill the note's ``dict`` of lists of torch tensors (baseline ``add_labels``); deep size."""
    import baseline_manager as bm
    import torch

    mgr = bm.PrototypeManager(update_interval=1 << 62)  # never re-cluster here
    pool = embedding_pool(dim)
    t0 = time.perf_counter()
    for labels, emb in batches(num_labels, samples, pool):
        mgr.add_labels(labels, torch.from_numpy(emb.copy()))
    elapsed = time.perf_counter() - t0
    assert len(mgr.label_embeddings) == num_labels
    size = bm.deep_sizeof_label_dict(mgr.label_embeddings)
    del mgr
    gc.collect()
    return {"bytes": size["total"], "breakdown": size, "add_s": elapsed}


def measure_baseline_numpy(num_labels: int, samples: int, dim: int) -> dict[str, Any]:
    """Fill a ``dict`` of lists of per-sample numpy arrays; bytes traced by ``tracemalloc``."""
    pool = embedding_pool(dim)
    gc.collect()
    tracemalloc.start()
    base_current, _ = tracemalloc.get_traced_memory()
    store: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for labels, emb in batches(num_labels, samples, pool):
        for label, row in zip(labels, emb, strict=True):
            store.setdefault(label, []).append(row.copy())
    elapsed = time.perf_counter() - t0
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(store) == num_labels
    del store
    gc.collect()
    return {"bytes": current - base_current, "add_s": elapsed}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every store at every label count; print the table; return the JSON payload.

    Args:
        args: parsed options (see :func:`build_parser`).

    Returns:
        The payload written to ``benches/out/memory.json``.
    """
    threads = common.set_threads(args.threads)
    info = common.machine_info()
    limit = args.mem_limit_gib * 2**30
    samples = args.samples
    payload_per_label = samples * args.dim * 4

    stores: dict[str, Callable[[int], dict[str, Any]]] = {}
    if common.protofast_attr("LabelStore") is not None:
        stores["protofast LabelStore (mean)"] = lambda n: measure_protofast(
            n, samples, args.dim, None
        )
        stores[f"protofast LabelStore (max_samples_per_label={samples})"] = lambda n: (
            measure_protofast(n, samples, args.dim, samples)
        )
    stores["baseline dict of lists, torch (deep getsizeof)"] = lambda n: measure_baseline_torch(
        n, samples, args.dim
    )
    stores["baseline dict of lists, numpy (tracemalloc)"] = lambda n: measure_baseline_numpy(
        n, samples, args.dim
    )

    counts = sorted(set(args.labels) | {BASE})
    rows: list[dict[str, Any]] = []
    for name, fn in stores.items():
        base_bpl: float | None = None
        for n in counts:
            est_bytes = base_bpl * n if base_bpl is not None else None
            if n > BASE and (est_bytes is None or est_bytes > limit):
                if base_bpl is None:
                    base = fn(BASE)
                    base_bpl = base["bytes"] / BASE
                rows.append(
                    {
                        "store": name,
                        "labels": n,
                        "bytes": base_bpl * n,
                        "bytes_per_label": base_bpl,
                        "estimated": True,
                        "note": f"extrapolated from {BASE} labels "
                        f"(would need ~{common.fmt_bytes(base_bpl * n)})",
                        "add_s": None,
                    }
                )
                print(f"[memory] {name}: {n} labels extrapolated from {BASE}", flush=True)
                continue
            r = fn(n)
            if n == BASE:
                base_bpl = r["bytes"] / n
            row = {
                "store": name,
                "labels": n,
                "bytes": r["bytes"],
                "bytes_per_label": r["bytes"] / n,
                "estimated": False,
                "note": "",
                "add_s": r["add_s"],
                "rows_per_s": n * samples / r["add_s"] if r["add_s"] else None,
                **({"breakdown": r["breakdown"]} if "breakdown" in r else {}),
            }
            rows.append(row)
            print(
                f"[memory] {name}: {n} labels -> {common.fmt_bytes(r['bytes'])} "
                f"({r['bytes'] / n:.0f} B/label, add {r['add_s']:.2f} s)",
                flush=True,
            )
    shown = [r for r in rows if r["labels"] in set(args.labels) or args.show_base]
    table = render(shown, args, payload_per_label)
    return common.report(
        "memory",
        "Memory per label",
        table,
        args,
        info,
        threads,
        payload_bytes_per_label=payload_per_label,
        rows=rows,
    )


def render(rows: Sequence[dict[str, Any]], args: argparse.Namespace, payload_per_label: int) -> str:
    """Markdown table of the memory rows.

    Args:
        rows: measured (or extrapolated) rows.
        args: options.
        payload_per_label: ``samples · D · 4`` bytes (the note's sizing).

    Returns:
        Markdown text.
    """
    head = (
        f"### Memory per label (D={args.dim}, {args.samples} samples per label)\n\n"
        f"Raw payload of {args.samples} float32 samples: {payload_per_label} B per label "
        "(the note's "
        "'50 labels × 384 × 4 B × 10 = 768 KB'). '× payload' = bytes per label / that figure. "
        "'est.' rows are extrapolated linearly from the 10 000-label measurement.\n"
    )
    table = common.markdown_table(
        ["store", "labels", "total", "B / label", "× payload", "ingest rows/s", "measured"],
        [
            [
                r["store"],
                common.fmt_count(r["labels"]),
                common.fmt_bytes(r["bytes"]),
                f"{r['bytes_per_label']:.0f}",
                f"{r['bytes_per_label'] / payload_per_label:.2f}",
                "–" if not r.get("rows_per_s") else f"{r['rows_per_s'] / 1e6:.2f} M",
                "est. (from 10k)" if r["estimated"] else "yes",
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
    g.add_argument(
        "--quick", action="store_true", help="1 000 and 1M labels (1M from limits as usual)"
    )
    g.add_argument("--full", action="store_true", help="same as default; kept for run_all")
    p.add_argument("--labels", type=common.int_list, default=list(LABEL_COUNTS))
    p.add_argument("--samples", type=int, default=10, help="samples per label (default 10)")
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument(
        "--mem-limit-gib",
        type=float,
        default=4.0,
        help="build a store only if its estimated size is below this; else extrapolate (default 4)",
    )
    p.add_argument("--show-base", action="store_true", help="also show the 10 000-label rows")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--json-name", default="memory", help="output file stem under benches/out/")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse options."""
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse ``argv`` and run."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
