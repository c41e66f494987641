"""GPU training step: no host-device synchronisation, and hybrid ≤ 1.02× pairwise.

Run on a machine with a CUDA GPU: ``.venv/bin/python benches/bench_gpu.py``. Two parts:

1. **No sync.** With ``torch.cuda.set_sync_debug_mode("error")``, steps that do not re-cluster
   (``manager.add_labels`` + ``InfoNCELoss`` forward/backward with prototype and hybrid targets)
   must not synchronise: any synchronising call raises, and the script reports it and exits 1.
2. **Step time.** Median step (CUDA events) of the InfoNCE step with hard, pairwise, prototype and
   hybrid targets at B = 256 and 1 024, D = 384, ``--labels`` distinct labels (default 50), for
   two models (``--models``): ``linear``, one linear layer per side, so that the loss is most of
   the step, and ``imu``, the training example's CNN with Adam. The four variants run in
   lockstep; ratios to hard and to pairwise. The table names the card. ``--device cpu`` runs
   part 2 on the CPU (part 1 needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import protofast
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import int_list  # noqa: E402

DIM = 384
LABELS = 50
VARIANTS = ("hard", "pairwise", "prototype", "hybrid")
NOTE = "note hybrid"  # the design note's manager and loss (benches/baseline_manager.py)


def make_step(
    variant: str,
    batch: int,
    device: torch.device,
    seed: int = 0,
    labels: int = LABELS,
    model: str = "linear",
):
    """One training step closure for ``variant`` plus its manager (or ``None``).

    ``model="linear"``: one linear layer per side, so that the loss is most of the step (the
    worst case for the targets' share). ``model="imu"``: the training example's model, the
    1-D CNN :class:`protofast.train.model.IMUEncoder` on 6×128 windows with Adam.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    names = [f"activity {i}" for i in range(labels)]
    base = torch.randn(labels, DIM, generator=g).to(device)
    text_proj = torch.nn.Linear(DIM, DIM).to(device)
    if model == "imu":
        try:
            from protofast.train.model import IMUEncoder
        except ModuleNotFoundError:  # releases before the training job had its own subpackage
            from protofast.model import IMUEncoder  # type: ignore[no-redef]

        imu_proj: torch.nn.Module = IMUEncoder(embed_dim=DIM).to(device)
        shape: tuple[int, ...] = (batch, 6, 128)
        params = [*text_proj.parameters(), *imu_proj.parameters()]
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=1e-3)
    else:
        imu_proj = torch.nn.Linear(64, DIM).to(device)
        shape = (batch, 64)
        opt = torch.optim.SGD([*text_proj.parameters(), *imu_proj.parameters()], lr=1e-3)
    use_proto = variant in ("prototype", "hybrid", NOTE)
    if variant == NOTE:  # the design note's plain-Python system, written in benches/
        import baseline_manager

        manager: Any = baseline_manager.PrototypeManager(
            num_clusters=5, update_interval=100, device=device
        )
        loss_fn: Any = baseline_manager.InfoNCELoss(
            use_soft_targets=True, use_prototypes=True, prototype_manager=manager
        )
    else:
        manager = (
            protofast.PrototypeManager(num_clusters=5, update_interval=100) if use_proto else None
        )
        loss_fn = protofast.InfoNCELoss(
            use_soft_targets=variant in ("pairwise", "hybrid"),
            use_prototypes=use_proto,
            prototype_manager=manager,
        )
    batches = []
    for _ in range(8):  # a few pre-built batches: data loading is not what is timed
        idx = torch.randint(labels, (batch,), generator=g)
        x = torch.randn(shape, generator=g).to(device)
        batches.append(([names[i] for i in idx.tolist()], idx.to(device), x))
    state = {"i": 0}

    def step() -> None:
        names_b, idx, x = batches[state["i"] % len(batches)]
        state["i"] += 1
        text = torch.nn.functional.normalize(text_proj(base[idx]), dim=1)
        imu = torch.nn.functional.normalize(imu_proj(x), dim=1)
        if manager is not None:
            manager.add_labels(names_b, text)
        loss, _ = loss_fn(imu, text, names_b, return_metrics=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, manager


def check_no_sync(device: torch.device) -> bool:
    """Part 1: steps between re-clusterings under sync debug mode "error"."""
    ok = True
    for variant in ("prototype", "hybrid"):
        step, manager = make_step(variant, 256, device)
        assert manager is not None
        for _ in range(100):  # the 100th call re-clusters: synchronising is allowed there
            step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(50):  # steps 101..150: none re-clusters
                step()
            print(f"no-sync {variant}: ok (50 steps without a host-device synchronisation)")
        except RuntimeError as e:
            ok = False
            print(f"no-sync {variant}: FAILED: {e}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return ok


def time_steps(
    device: torch.device,
    steps: int,
    warmup: int,
    label_counts: list[int],
    models: list[str],
    note_steps: int = 0,
) -> list[dict[str, object]]:
    """Part 2: median step time per variant, batch size and label count.

    Every variant first runs 100 steps, so that its manager has clustered once (before that
    the prototype targets are the identity, and cheaper). The variants then run in lockstep
    (one step of each per round), so a change of load or clock shifts all of them alike.
    With ``note_steps > 0`` the note's hybrid system joins the first ``note_steps`` timed
    rounds, for the linear model and the first label count (its per-sample loop is slow).
    """
    rows = []
    configs = [(m, n, b) for m in models for n in label_counts for b in (256, 1024)]
    for model, labels, batch in configs:
        with_note = note_steps > 0 and model == "linear" and labels == label_counts[0]
        variants = VARIANTS + ((NOTE,) if with_note else ())
        runs = {v: make_step(v, batch, device, labels=labels, model=model)[0] for v in variants}
        for step in runs.values():
            for _ in range(100):  # the 100th call clusters
                step()
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(warmup + steps):
            for variant, step in runs.items():
                if variant == NOTE and i >= warmup + note_steps:
                    continue
                if (i + 1) % 100 == 0:
                    step()  # re-clustering step: not in the median
                    continue
                if device.type == "cuda":
                    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                    start.record()
                    step()
                    end.record()
                    end.synchronize()
                    elapsed = start.elapsed_time(end) / 1000
                else:
                    t = time.perf_counter()
                    step()
                    elapsed = time.perf_counter() - t
                if i >= warmup:
                    times[variant].append(elapsed)
        medians = {v: statistics.median(t) for v, t in times.items()}
        for variant in variants:
            rows.append(
                {
                    "model": model,
                    "labels": labels,
                    "batch": batch,
                    "variant": variant,
                    "steps": len(times[variant]),
                    "median_ms": medians[variant] * 1000,
                    "x_hard": medians[variant] / medians["hard"],
                    "x_pairwise": medians[variant] / medians["pairwise"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--labels", type=int_list, default=[LABELS], help="distinct labels, e.g. 50,1000"
    )
    parser.add_argument(
        "--models",
        default="linear,imu",
        help="comma list: linear (the loss is most of the step), imu (the example's CNN)",
    )
    parser.add_argument(
        "--note-steps",
        type=int,
        default=30,
        help="timed steps of the note's hybrid system (linear model, first label count); 0: off",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for the timing part only")
        return 2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# GPU training step ({card}, torch {torch.__version__}, protofast "
        f"{protofast.__version__})\n"
    )
    ok = check_no_sync(device) if device.type == "cuda" else True
    models = [m for m in args.models.split(",") if m]
    rows = time_steps(device, args.steps, args.warmup, args.labels, models, args.note_steps)
    print("\n| model | labels | B | targets | median step (ms) | steps | × hard | × pairwise |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['labels']} | {r['batch']} | {r['variant']} | "
            f"{r['median_ms']:.3f} | {r['steps']} | {r['x_hard']:.3f} | {r['x_pairwise']:.3f} |"
        )
    if args.json:
        meta = {"card": card, "torch": torch.__version__, "protofast": protofast.__version__}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "no_sync_ok": ok, "rows": rows}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
