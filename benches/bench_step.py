"""Training step: InfoNCE forward+backward with hard / pairwise / prototype / hybrid targets.

For each batch size B (256, 1024) and number of distinct labels L (50, 10 000), D = 384:

* text embeddings = a trainable ``nn.Linear(384, 384)`` applied to fixed per-label vectors (so the
  step has a backward pass through the text side), imu embeddings = ``nn.Linear(64, 384)`` on random
  inputs; SGD step after the backward;
* prototype and hybrid targets call ``manager.add_labels`` every step, and the manager re-clusters
  every ``update_interval`` (100) steps, inside the timed step;
* implementations: ``protofast`` (``protofast.InfoNCELoss`` + ``protofast.PrototypeManager``) and
  ``baseline`` (the plain-Python system of the design note, ``baseline_manager.py``: dict of lists,
  sklearn ``KMeans(n_init=10)``, per-sample Python loop for the targets).

Reports the median step, the mean step (re-clustering amortised), the slowest step (a re-clustering
step) and the ratios to the same implementation's hard-target step.

Run: ``.venv/bin/python benches/bench_step.py --quick``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DIM = 384
IMU_IN = 64
BATCHES = (256, 1024)
LABELS = (50, 10_000)
VARIANTS = ("hard", "pairwise", "prototype", "hybrid")
IMPLS = ("protofast", "baseline")


def clusters_for(num_labels: int, setting: str) -> int:
    """Prototype clusters: ``auto`` = max(5, L // 100) (5 for 50 labels, 100 for 10 000)."""
    if setting == "auto":
        return max(5, num_labels // 100)
    return int(setting)


def _loss_and_manager(
    impl: str, variant: str, num_clusters: int, update_interval: int
) -> tuple[Any, Any | None]:
    """Build the loss module (and manager, for prototype/hybrid) of one implementation."""
    use_soft = variant in ("pairwise", "hybrid")
    use_proto = variant in ("prototype", "hybrid")
    if impl == "protofast":
        module = common.load_protofast(quiet=True)
        assert module is not None
    else:
        import baseline_manager as module
    manager = (
        module.PrototypeManager(
            num_clusters=num_clusters,
            update_interval=update_interval,
            min_samples_per_cluster=3,
            seed=42,
            n_init=10,
        )
        if use_proto
        else None
    )
    loss = module.InfoNCELoss(
        temperature=0.1,
        use_soft_targets=use_soft,
        soft_target_temperature=0.5,
        soft_target_weight=0.5,
        use_prototypes=use_proto,
        prototype_weight=0.5,
        prototype_manager=manager,
    )
    return loss, manager


def _trainer(
    impl: str,
    variant: str,
    *,
    batch: int,
    num_labels: int,
    num_clusters: int,
    steps: int,
    args: argparse.Namespace,
) -> Callable[[int, int], Iterator[tuple[float, float, Any]]]:
    """Inputs of one (B, L) setting and a function that trains on them step by step.

    The inputs (label ids, imu inputs) are drawn from a seed shared by every variant, and the
    models start from the same weights, so every variant sees the same batches.

    Returns:
        ``train(n_steps, update_interval)``: a generator that trains a fresh model, loss and
        manager for ``n_steps`` steps and yields ``(step seconds, loss, manager)`` per step.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(args.seed)
    label_vecs_np = common.unit_blobs(num_labels, DIM, max(5, num_labels // 10), seed=args.seed + 7)
    label_vecs = torch.from_numpy(label_vecs_np)
    names = [f"activity_{i:05d}" for i in range(num_labels)]
    idx = rng.integers(0, num_labels, size=(steps, batch))
    batch_labels = [[names[j] for j in row] for row in idx]
    idx_t = torch.from_numpy(idx)
    imu_inputs = torch.from_numpy(rng.standard_normal((steps, batch, IMU_IN), dtype=np.float32))

    def train(n_steps: int, update_interval: int) -> Iterator[tuple[float, float, Any]]:
        torch.manual_seed(args.seed)
        text_proj = torch.nn.Linear(DIM, DIM)
        imu_enc = torch.nn.Linear(IMU_IN, DIM)
        params = list(text_proj.parameters()) + list(imu_enc.parameters())
        opt = torch.optim.SGD(params, lr=1e-2)
        loss_fn, manager = _loss_and_manager(impl, variant, num_clusters, update_interval)
        for s in range(n_steps):
            labels = batch_labels[s]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            text = F.normalize(text_proj(label_vecs[idx_t[s]]), dim=-1)
            imu = F.normalize(imu_enc(imu_inputs[s]), dim=-1)
            if manager is not None:
                manager.add_labels(labels, text.detach())
            loss, _ = loss_fn(imu, text, label_texts=labels, return_metrics=False)
            loss.backward()
            opt.step()
            elapsed = time.perf_counter() - t0
            yield elapsed, float(loss.detach()), manager

    return train


def _summary(
    impl: str,
    variant: str,
    *,
    batch: int,
    num_labels: int,
    num_clusters: int,
    times: list[float],
    losses: list[float],
    manager: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The result row of one (implementation, target variant) from its per-step times."""
    steps = len(times)
    slow_i = int(np.argmax(times))
    recluster_steps = [s for s in range(steps) if (s + 1) % args.update_interval == 0]
    updates = getattr(manager, "num_updates", None) if manager is not None else None
    return {
        "impl": impl,
        "variant": variant,
        "batch": batch,
        "labels": num_labels,
        "clusters": num_clusters if variant in ("prototype", "hybrid") else None,
        "steps": steps,
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "max_s": times[slow_i],
        "max_step": slow_i + 1,
        "recluster_step_s": [times[s] for s in recluster_steps],
        "num_updates": updates,
        "final_loss": losses[-1],
        "times_s": times,
    }


def run_group(
    impl: str,
    variants: Sequence[str],
    *,
    batch: int,
    num_labels: int,
    num_clusters: int,
    steps: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Train ``steps`` steps of each target variant of one implementation and time each step.

    Before the timed run of a variant, ``args.warmup_steps`` untimed steps run on a throwaway
    model and manager (whose update interval is the warm-up length, so the re-clustering path
    is warm too). Without ``args.interleave`` the variants run one after the other; with it,
    after every variant's warm-up, step ``s`` of every variant runs before step ``s + 1`` of
    any, so that all variants see the same machine load (for ratios on a shared machine).

    Returns:
        One result row per variant (per-step times and summary statistics).
    """
    trainers = {
        v: _trainer(
            impl,
            v,
            batch=batch,
            num_labels=num_labels,
            num_clusters=num_clusters,
            steps=steps,
            args=args,
        )
        for v in variants
    }
    warm = min(args.warmup_steps, steps)

    def warm_up(v: str) -> None:
        if warm > 0:  # the manager re-clusters once during the warm-up
            for _ in trainers[v](warm, max(1, warm)):
                pass

    times: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    managers: dict[str, Any] = {v: None for v in variants}

    def record(v: str, item: tuple[float, float, Any]) -> None:
        times[v].append(item[0])
        losses[v].append(item[1])
        managers[v] = item[2]

    if args.interleave:
        for v in variants:
            warm_up(v)
        runs = {v: trainers[v](steps, args.update_interval) for v in variants}
        for _ in range(steps):
            for v in variants:
                record(v, next(runs[v]))
    else:
        for v in variants:
            warm_up(v)
            for item in trainers[v](steps, args.update_interval):
                record(v, item)
    return [
        _summary(
            impl,
            v,
            batch=batch,
            num_labels=num_labels,
            num_clusters=num_clusters,
            times=times[v],
            losses=losses[v],
            manager=managers[v],
            args=args,
        )
        for v in variants
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (B, L, implementation, variant); print the table; return the JSON payload.

    Args:
        args: parsed options (see :func:`build_parser`).

    Returns:
        The payload written to ``benches/out/step.json``.
    """
    threads = common.set_threads(args.threads)
    info = common.machine_info()
    impls = [i for i in args.impls.split(",") if i]
    variants = [v for v in args.variants.split(",") if v]
    if "protofast" in impls:
        missing = [
            n for n in ("InfoNCELoss", "PrototypeManager") if common.protofast_attr(n) is None
        ]
        if missing:
            impls.remove("protofast")

    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        for num_labels in args.labels:
            k = clusters_for(num_labels, args.clusters)
            for impl in impls:
                group = run_group(
                    impl,
                    variants,
                    batch=batch,
                    num_labels=num_labels,
                    num_clusters=k,
                    steps=args.steps,
                    args=args,
                )
                for r in group:
                    print(
                        f"[step] B={batch:5d} L={num_labels:6d} {impl:9s} {r['variant']:9s} "
                        f"median {common.fmt_ms(r['median_s']):>7s} ms  "
                        f"mean {common.fmt_ms(r['mean_s']):>7s} ms  "
                        f"slowest {common.fmt_ms(r['max_s']):>7s} ms (step {r['max_step']})  "
                        f"updates={r['num_updates']}",
                        flush=True,
                    )
                hard = next((g for g in group if g["variant"] == "hard"), None)
                for g in group:
                    g["vs_hard_median"] = g["median_s"] / hard["median_s"] if hard else None
                    g["vs_hard_mean"] = g["mean_s"] / hard["mean_s"] if hard else None
                rows.extend(group)
    for r in rows:
        other = next(
            (
                o
                for o in rows
                if o["impl"] == "protofast"
                and (o["batch"], o["labels"], o["variant"])
                == (r["batch"], r["labels"], r["variant"])
            ),
            None,
        )
        r["protofast_speedup_mean"] = r["mean_s"] / other["mean_s"] if other else None

    table = render(rows, args)
    return common.report("step", "Training step", table, args, info, threads, rows=rows)


def render(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of the step rows.

    Args:
        rows: measured rows.
        args: options.

    Returns:
        Markdown text.
    """
    head = (
        f"### Training step (D={DIM}, {args.steps} steps, re-clustering every "
        f"{args.update_interval} steps, {args.threads} threads"
        f"{', variants interleaved step by step' if args.interleave else ''})\n\n"
        "Step = zero_grad + text/imu projections + add_labels (prototype/hybrid) + loss forward "
        "+ backward + SGD step. 'slowest' is the slowest step (normally a re-clustering step, its "
        "number in brackets). '×hard' = this variant's time / the same implementation's "
        "hard-target time (median and mean). 'protofast speedup' = baseline mean step / "
        "protofast mean step for the same B, L and targets.\n"
    )
    table = common.markdown_table(
        [
            "B",
            "labels",
            "k",
            "impl",
            "targets",
            "median ms",
            "mean ms",
            "slowest ms (step)",
            "×hard median",
            "×hard mean",
            "re-clusterings",
            "protofast speedup",
        ],
        [
            [
                r["batch"],
                r["labels"],
                r["clusters"] if r["clusters"] is not None else "–",
                r["impl"],
                r["variant"],
                common.fmt_ms(r["median_s"]),
                common.fmt_ms(r["mean_s"]),
                f"{common.fmt_ms(r['max_s'])} ({r['max_step']})",
                common.fmt_ratio(r["vs_hard_median"]),
                common.fmt_ratio(r["vs_hard_mean"]),
                "–" if r["num_updates"] is None else r["num_updates"],
                common.fmt_ratio(r["protofast_speedup_mean"]),
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
    g.add_argument("--quick", action="store_true", help="120 steps (one re-clustering)")
    g.add_argument("--full", action="store_true", help="300 steps (three re-clusterings)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 300, quick 120)")
    p.add_argument("--batches", type=common.int_list, default=list(BATCHES))
    p.add_argument("--labels", type=common.int_list, default=list(LABELS))
    p.add_argument("--clusters", default="auto", help="clusters, or 'auto' = max(5, labels // 100)")
    p.add_argument("--update-interval", type=int, default=100)
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps before each run")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="run the target variants in lockstep (step s of each before step s + 1 of any), "
        "so that their ratios see the same machine load",
    )
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-name", default="step", help="output file stem under benches/out/")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse options and apply the presets."""
    args = build_parser().parse_args(argv)
    if args.steps is None:
        args.steps = 120 if args.quick else 300
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse ``argv`` and run."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
