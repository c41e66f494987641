"""The loss's target plans against each other: is each one worth its place?

For one batch (B samples over L distinct labels, equal labels sharing a text embedding, D = 384,
CPU, float32), times ``InfoNCELoss`` forward + backward with its targets built along each plan
that applies (``SAMPLE``: per sample, ``LABEL``: per label with tensor operations,
``LABEL_CORE``: per label in one call of the compiled core), the plans interleaved call by call.
The loss picks ``LABEL_CORE`` where it applies; this bench says by how much that pays.

Run: ``python benches/bench_targets.py`` (``--labels 30,50,70,100`` to see the size gate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DIM = 384


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--labels", type=common.int_list, default=[50, 70])
    p.add_argument("--variants", default="pairwise,hybrid")
    p.add_argument("--repeats", type=int, default=1000)
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    protofast = common.load_protofast(quiet=True)
    assert protofast is not None
    from protofast.targets import Plan

    print(common.machine_summary(common.machine_info()))
    print(
        f"\n### Loss forward + backward by target plan (B = {args.batch}, D = {DIM}, CPU, float32, "
        f"median of {args.repeats} interleaved calls)\n"
    )
    print("| targets | labels | SAMPLE ms | LABEL ms | LABEL_CORE ms | LABEL_CORE / LABEL |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        for num_labels in args.labels:
            gen = torch.Generator().manual_seed(0)
            per_label = torch.nn.functional.normalize(torch.randn(num_labels, DIM, generator=gen))
            ids = torch.randint(num_labels, (args.batch,), generator=gen)
            labels = [f"activity {i}" for i in ids.tolist()]
            text = per_label[ids].contiguous()
            imu = torch.nn.functional.normalize(torch.randn(args.batch, DIM, generator=gen))
            manager = None
            if variant == "hybrid":
                manager = protofast.PrototypeManager(update_interval=10**9)
                manager.add_labels(labels, text)
                manager.update_prototypes()
            loss_fn = protofast.InfoNCELoss(
                use_prototypes=manager is not None, prototype_manager=manager
            )
            chosen = loss_fn.get_targets(text, labels).plan
            plans = [Plan.SAMPLE, Plan.LABEL, Plan.LABEL_CORE]
            times: dict[Any, list[float]] = {plan: [] for plan in plans}

            def step(
                plan: Any,
                imu: torch.Tensor = imu,
                text: torch.Tensor = text,
                labels: list[str] = labels,
                loss_fn: Any = loss_fn,
            ) -> None:
                x = imu.clone().requires_grad_(True)
                targets = loss_fn.get_targets(text, labels, want_semantic=True, plan=plan)
                assert targets.plan is plan
                logits = loss_fn.get_logits(x, text)
                loss = protofast.loss.soft_cross_entropy(logits, targets)[0]
                loss.backward()

            for plan in plans:  # warm up
                step(plan)
            for i in range(args.repeats):
                for plan in plans if i % 2 == 0 else plans[::-1]:
                    start = time.perf_counter()
                    step(plan)
                    times[plan].append(time.perf_counter() - start)
            ms = {plan: 1e3 * statistics.median(t) for plan, t in times.items()}
            print(
                f"| {variant} | {num_labels} | {ms[Plan.SAMPLE]:.3f} | {ms[Plan.LABEL]:.3f} | "
                f"{ms[Plan.LABEL_CORE]:.3f} | {ms[Plan.LABEL_CORE] / ms[Plan.LABEL]:.3f} "
                f"(the loss picks {chosen.name}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
