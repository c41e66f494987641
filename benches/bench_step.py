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
from collections.abc import Sequence
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


def run_variant(
    impl: str,
    variant: str,
    *,
    batch: int,
    num_labels: int,
    num_clusters: int,
    steps: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Train ``steps`` steps of one (implementation, target variant) and time each step.

    The inputs (label ids, imu inputs) are drawn before timing from a seed shared by every variant,
    and the models start from the same weights, so every variant sees the same batches. Before
    the timed run, ``args.warmup_steps`` untimed steps run on a throwaway model and manager (whose
    update interval is the warm-up length, so the re-clustering path is warm too).

    Returns:
        Per-step times and summary statistics.
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

    def train(n_steps: int, update_interval: int) -> tuple[list[float], list[float], Any]:
        torch.manual_seed(args.seed)
        text_proj = torch.nn.Linear(DIM, DIM)
        imu_enc = torch.nn.Linear(IMU_IN, DIM)
        params = list(text_proj.parameters()) + list(imu_enc.parameters())
        opt = torch.optim.SGD(params, lr=1e-2)
        loss_fn, manager = _loss_and_manager(impl, variant, num_clusters, update_interval)
        times: list[float] = []
        losses: list[float] = []
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
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        return times, losses, manager

    # Untimed warm-up on throwaway model and manager; the manager re-clusters once during it.
    if args.warmup_steps > 0:
        train(min(args.warmup_steps, steps), max(1, min(args.warmup_steps, steps)))
    times, losses, manager = train(steps, args.update_interval)

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
                group: list[dict[str, Any]] = []
                for variant in variants:
                    r = run_variant(
                        impl,
                        variant,
                        batch=batch,
                        num_labels=num_labels,
                        num_clusters=k,
                        steps=args.steps,
                        args=args,
                    )
                    group.append(r)
                    print(
                        f"[step] B={batch:5d} L={num_labels:6d} {impl:9s} {variant:9s} "
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
        f"{args.update_interval} steps, {args.threads} threads)\n\n"
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


def _int_list(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of this bench."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="120 steps (one re-clustering)")
    g.add_argument("--full", action="store_true", help="300 steps (three re-clusterings)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 300, quick 120)")
    p.add_argument("--batches", type=_int_list, default=list(BATCHES))
    p.add_argument("--labels", type=_int_list, default=list(LABELS))
    p.add_argument("--clusters", default="auto", help="clusters, or 'auto' = max(5, labels // 100)")
    p.add_argument("--update-interval", type=int, default=100)
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps before each run")
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
