"""Several processes and re-clustering without stalls: what torch.distributed support costs.

Four measurements, each a ratio taken in one run:

* ``merge``: the store merge of a re-clustering step (labels new to the store exchanged as text,
  sums and counts as tensors) with 10 000 and 100 000 labels at D = 384, on 2 and 4 CPU ranks
  (gloo); half of the labels are new to the store, each rank holds its share.
* ``gather``: the loss step (forward and backward, B = 256 per rank, D = 384) with global
  negatives (``InfoNCELoss(gather=True)``, a global batch of B x ranks) against the local loss,
  on 2 CPU ranks, for hard, pairwise and hybrid targets.
* ``stall``: a run of steps (``add_labels`` of B = 256 captions drawn from 100 000, and the
  hybrid loss forward and backward) that re-clusters every 100 steps, with and without
  ``async_update``: the median and the slowest step.
* ``warm``: re-clustering after drift from the previous prototypes (``warm_start=True``) against
  the note's restarts (``n_init=10``), at 10 000 and 100 000 labels (k = 100, rows moved by
  about 1 % of their norm): time and inertia.

Run: ``.venv/bin/python benches/bench_distributed.py`` (``--only merge,warm``, ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

D = 384


# ------------------------------------------------------------------------------------ ranks
def _entry(rank: int, size: int, folder: str, fn_name: str, kwargs: dict) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size
    )
    result = globals()[fn_name](rank, size, **kwargs)
    with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    dist.destroy_process_group()


def _world(fn_name: str, size: int, **kwargs: Any) -> list[Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _entry, args=(size, folder, fn_name, kwargs), nprocs=size, start_method="spawn"
        )
        out = []
        for rank in range(size):
            with open(os.path.join(folder, f"rank{rank}.pkl"), "rb") as f:
                out.append(pickle.load(f))
        return out


def _merge_rank(rank: int, size: int, num_labels: int, repeats: int) -> list[float]:
    import torch.distributed as dist
    from protofast import LabelStore
    from protofast._distributed import merge_store, ranks

    ctx = ranks()
    rng = np.random.default_rng(rank)
    names = [f"a caption of label {i}" for i in range(num_labels)]
    mine = names[rank::size]
    sums = rng.normal(size=(len(mine), D)).astype(np.float32)
    counts = np.ones(len(mine), dtype=np.int64)
    times = []
    for _ in range(repeats + 1):
        store = LabelStore()
        store.intern(names[: num_labels // 2])
        dist.barrier()
        start = time.perf_counter()
        merge_store(store, mine, sums, counts, ctx)
        times.append(time.perf_counter() - start)
    return times[1:]


def _gather_rank(rank: int, size: int, steps: int, batch: int) -> dict[str, list[float]]:
    import torch
    from protofast import InfoNCELoss, PrototypeManager

    g = torch.Generator().manual_seed(rank)
    labels = [f"activity {int(i)}" for i in torch.randint(0, 50, (batch,), generator=g)]
    table = torch.nn.functional.normalize(torch.randn(50, D, generator=g), dim=1)
    text = table[[int(label.split()[1]) for label in labels]]
    imu = torch.nn.functional.normalize(torch.randn(batch, D, generator=g), dim=1)
    manager = PrototypeManager(num_clusters=5, update_interval=1, min_samples_per_cluster=1)
    manager.add_labels(labels, text)
    settings = {
        "hard": {"use_soft_targets": False},
        "pairwise": {},
        "hybrid": {"use_prototypes": True, "prototype_manager": manager},
    }
    times: dict[str, list[float]] = {}
    for name, kwargs in settings.items():
        for gather in (False, True):
            loss_fn = InfoNCELoss(gather=gather, **kwargs)
            key = f"{name}/{'gather' if gather else 'local'}"
            times[key] = []
            for _ in range(steps + 3):
                x = imu.clone().requires_grad_(True)
                torch.distributed.barrier()
                start = time.perf_counter()
                loss, _ = loss_fn(x, text, labels, return_metrics=False)
                loss.backward()
                times[key].append(time.perf_counter() - start)
            times[key] = times[key][3:]
    return times


def bench_merge(args: argparse.Namespace) -> list[list[Any]]:
    rows = []
    for num_labels in args.labels:
        for size in args.ranks:
            per_rank = _world("_merge_rank", size, num_labels=num_labels, repeats=args.repeats)
            slowest = [max(t) for t in zip(*per_rank, strict=True)]
            median = statistics.median(slowest)
            rows.append(
                [
                    f"{num_labels:,}",
                    size,
                    common.fmt_ms(median),
                    f"{median / num_labels * 1e6:.2f}",
                ]
            )
            print(f"merge {num_labels} labels, {size} ranks: {median:.4f} s", flush=True)
    return rows


def bench_gather(args: argparse.Namespace) -> list[list[Any]]:
    per_rank = _world("_gather_rank", 2, steps=args.steps, batch=256)
    rows = []
    for name in ("hard", "pairwise", "hybrid"):
        local = statistics.median(
            max(t) for t in zip(*(r[f"{name}/local"] for r in per_rank), strict=True)
        )
        gathered = statistics.median(
            max(t) for t in zip(*(r[f"{name}/gather"] for r in per_rank), strict=True)
        )
        rows.append(
            [
                name,
                common.fmt_ms(local),
                common.fmt_ms(gathered),
                common.fmt_ratio(gathered / local),
            ]
        )
    return rows


# ------------------------------------------------------------------------------------ stall
def _stall_run(
    num_labels: int,
    steps: int,
    background: bool,
    k: int,
    swap_after: int | None,
    model: bool = False,
) -> list[float]:
    import torch
    from protofast import InfoNCELoss, PrototypeManager

    # one torch thread, as the training job: a core is left to the worker (two OpenMP threads
    # spinning next to a busy worker on two cores make every torch operation slow)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, D))

    rng = np.random.default_rng(0)
    table = common.unit_blobs(num_labels, D, 200, seed=0)
    names = [f"caption {i}" for i in range(num_labels)]
    manager = PrototypeManager(
        num_clusters=k,
        update_interval=100,
        min_samples_per_cluster=1,
        n_init=3,
        async_update=background,
        swap_after=swap_after,
    )
    for start in range(0, num_labels, 4096):  # every caption seen once before the run
        manager.store.add(names[start : start + 4096], table[start : start + 4096])
    loss_fn = InfoNCELoss(use_prototypes=True, prototype_manager=manager)
    times = []
    for _ in range(steps):
        idx = rng.integers(0, num_labels, 256)
        labels = [names[i] for i in idx]
        text = torch.from_numpy(table[idx])
        x = torch.randn(256, D)
        start = time.perf_counter()
        imu = torch.nn.functional.normalize(net(x) if model else x.requires_grad_(True), dim=1)
        manager.add_labels(labels, text)
        loss, _ = loss_fn(imu, text, labels, return_metrics=False)
        loss.backward()
        times.append(time.perf_counter() - start)
    if background and manager._incoming is not None:  # noqa: SLF001 - let it finish
        manager.state_dict()
    return times


def bench_stall(args: argparse.Namespace) -> list[list[Any]]:
    rows = []
    for model in (False, True):
        for background in (False, True):
            times = _stall_run(
                args.stall_labels,
                args.stall_steps,
                background,
                k=args.stall_k,
                swap_after=None,
                model=model,
            )
            median, worst = statistics.median(times), max(times)
            slowest = sorted(range(len(times)), key=times.__getitem__)[-3:][::-1]
            rows.append(
                [
                    "protofast and a 2-layer MLP" if model else "protofast alone",
                    "async_update=True" if background else "synchronous",
                    common.fmt_ms(median),
                    common.fmt_ms(worst),
                    common.fmt_ratio(worst / median),
                    ", ".join(str(i + 1) for i in slowest),
                ]
            )
            print(f"stall model={model} async={background}: {median:.4f} / {worst:.4f} s")
    return rows


# ------------------------------------------------------------------------------------ warm
def bench_warm(args: argparse.Namespace) -> list[list[Any]]:
    from protofast import kmeans

    rows = []
    for num_labels in args.labels:
        k = args.warm_k
        before = common.unit_blobs(num_labels, D, k, seed=1)
        rng = np.random.default_rng(2)
        drift = before + rng.normal(size=before.shape).astype(np.float32) * 0.01
        first = kmeans(before, k, n_init=10, seed=42)
        restart = common.time_call(
            lambda drift=drift, k=k: kmeans(drift, k, n_init=10, seed=42),
            repeats=args.repeats,
            warmup=0,
        )
        warm = common.time_call(
            lambda drift=drift, k=k, first=first: kmeans(drift, k, init=first.centroids, seed=42),
            repeats=args.repeats,
            warmup=0,
        )
        rows.append(
            [
                f"{num_labels:,}",
                k,
                common.fmt_ms(restart.median),
                common.fmt_ms(warm.median),
                common.fmt_ratio(warm.median / restart.median),
                f"{restart.result.n_iter} / {warm.result.n_iter}",
                f"{warm.result.inertia / restart.result.inertia:.5f}",
            ]
        )
        print(f"warm {num_labels}: restart {restart.median:.3f} s, warm {warm.median:.3f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="merge,gather,stall,warm")
    parser.add_argument("--labels", type=common.int_list, default=[10_000, 100_000])
    parser.add_argument("--ranks", type=common.int_list, default=[2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="loss steps per variant")
    parser.add_argument("--stall-labels", type=int, default=100_000)
    parser.add_argument("--stall-steps", type=int, default=300)
    parser.add_argument("--stall-k", type=int, default=100)
    parser.add_argument("--warm-k", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--json-name", default="distributed")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.stall_steps = 2, 15, 250
    only = set(args.only.split(","))
    threads = common.set_threads()
    info = common.machine_info()
    tables, data = [], {}
    if "merge" in only:
        rows = bench_merge(args)
        data["merge"] = rows
        tables.append(
            "### Store merge (slowest rank, median)\n\n"
            + common.markdown_table(["labels", "ranks", "merge ms", "µs per label"], rows)
        )
    if "gather" in only:
        rows = bench_gather(args)
        data["gather"] = rows
        tables.append(
            "### Loss step, 2 CPU ranks, B = 256 per rank (slowest rank, median)\n\n"
            + common.markdown_table(
                ["targets", "local ms", "gathered ms", "gathered / local"], rows
            )
        )
    if "stall" in only:
        rows = bench_stall(args)
        data["stall"] = rows
        tables.append(
            f"### Steps of a run at {args.stall_labels:,} labels, re-clustering every 100 steps "
            f"(k = {args.stall_k}, n_init = 3, {args.stall_steps} steps; "
            "async: `swap_after=None`)\n\n"
            + common.markdown_table(
                ["step", "re-clustering", "median ms", "slowest ms", "ratio", "slowest steps"],
                rows,
            )
        )
    if "warm" in only:
        rows = bench_warm(args)
        data["warm"] = rows
        tables.append(
            "### Re-clustering after drift: warm start against 10 restarts (median)\n\n"
            + common.markdown_table(
                [
                    "labels",
                    "k",
                    "restarts ms",
                    "warm ms",
                    "warm / restarts",
                    "iterations",
                    "inertia warm / restarts",
                ],
                rows,
            )
        )
    common.report(
        "distributed",
        "Several processes and re-clustering",
        "\n\n".join(tables),
        args,
        info,
        threads,
        **data,
    )


if __name__ == "__main__":
    main()
