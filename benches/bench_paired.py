"""Paired comparison of two protofast builds on the training step's protofast part.

Times ``manager.add_labels`` + ``InfoNCELoss`` forward + backward (the part of a training step that
protofast owns) for this tree's ``protofast`` and a baseline build, **in one process, alternating
step by step** (ABAB..., the order flipped every step), on the same inputs: machine noise hits both
alike, so the ratio is meaningful on a shared machine where absolute times are not.

The baseline is another protofast build (say, the previous release), imported under another
name from ``--baseline DIR``: ``DIR/protofast`` must be its package folder with its compiled
module inside, e.g.::

    git worktree add /tmp/base <revision>
    (cd /tmp/base && maturin develop --release)        # or build and unpack its wheel
    python benches/bench_paired.py --baseline /tmp/base/python

Steps between re-clusterings only (the manager is clustered once before timing). Prints the
median step of each build and the median of the per-step ratios (this tree / baseline).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DIM = 384
VARIANTS = ("hard", "pairwise", "prototype", "hybrid")


def load_baseline(folder: Path) -> ModuleType:
    """Imports ``folder/protofast`` as the package ``protofast_baseline``."""
    source = folder / "protofast"
    if not (source / "__init__.py").exists():
        raise SystemExit(f"--baseline: no protofast package in {folder}")
    target = Path(tempfile.mkdtemp(prefix="protofast-baseline-")) / "protofast_baseline"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("train", "__pycache__"))
    spec = importlib.util.spec_from_file_location(
        "protofast_baseline", target / "__init__.py", submodule_search_locations=[str(target)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["protofast_baseline"] = module
    spec.loader.exec_module(module)
    return module


class Build:
    """One build's manager and loss for one variant, with its own trainable projections."""

    def __init__(
        self, package: Any, variant: str, num_labels: int, device: torch.device, seed: int
    ) -> None:
        use_proto = variant in ("prototype", "hybrid")
        self.manager = (
            package.PrototypeManager(num_clusters=max(5, num_labels // 100), update_interval=10**9)
            if use_proto
            else None
        )
        self.loss = package.InfoNCELoss(
            use_soft_targets=variant in ("pairwise", "hybrid"),
            use_prototypes=use_proto,
            prototype_manager=self.manager,
        )
        gen = torch.Generator().manual_seed(seed)
        self.text_proj = torch.nn.Linear(DIM, DIM).to(device)
        self.imu_proj = torch.nn.Linear(64, DIM).to(device)
        with torch.no_grad():
            for p in (*self.text_proj.parameters(), *self.imu_proj.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)

    def step(self, labels: list[str], base: torch.Tensor, raw: torch.Tensor) -> None:
        text = torch.nn.functional.normalize(self.text_proj(base), dim=1)
        imu = torch.nn.functional.normalize(self.imu_proj(raw), dim=1)
        if self.manager is not None:
            self.manager.add_labels(labels, text)
        loss, _ = self.loss(imu, text, labels)
        loss.backward()
        self.text_proj.zero_grad(set_to_none=True)
        self.imu_proj.zero_grad(set_to_none=True)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import protofast

    baseline = load_baseline(Path(args.baseline))
    device = torch.device(args.device)
    rows = []
    for batch in args.batches:
        for num_labels in args.labels:
            gen = torch.Generator().manual_seed(args.seed)
            names = [f"activity {i}" for i in range(num_labels)]
            per_label = torch.nn.functional.normalize(torch.randn(num_labels, DIM, generator=gen))
            inputs = []
            for _ in range(args.steps + args.warmup):
                ids = torch.randint(num_labels, (batch,), generator=gen)
                inputs.append(
                    (
                        [names[i] for i in ids.tolist()],
                        per_label[ids].to(device),
                        torch.randn(batch, 64, generator=gen).to(device),
                    )
                )
            for variant in args.variants:
                builds = {
                    "baseline": Build(baseline, variant, num_labels, device, args.seed),
                    "this tree": Build(protofast, variant, num_labels, device, args.seed),
                }
                for build in builds.values():  # feed, then cluster once: steady-state steps
                    for labels, base, raw in inputs[: args.warmup]:
                        build.step(labels, base, raw)
                    if build.manager is not None:
                        build.manager.update_prototypes()
                times: dict[str, list[float]] = {name: [] for name in builds}
                order = list(builds)
                for i, (labels, base, raw) in enumerate(inputs[args.warmup :]):
                    for name in order if i % 2 == 0 else order[::-1]:
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        start = time.perf_counter()
                        builds[name].step(labels, base, raw)
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        times[name].append(time.perf_counter() - start)
                ratios = [a / b for a, b in zip(times["this tree"], times["baseline"], strict=True)]
                rows.append(
                    {
                        "batch": batch,
                        "labels": num_labels,
                        "variant": variant,
                        "baseline_ms": 1e3 * statistics.median(times["baseline"]),
                        "this_tree_ms": 1e3 * statistics.median(times["this tree"]),
                        "paired_ratio": statistics.median(ratios),
                        "steps": args.steps,
                    }
                )
                r = rows[-1]
                print(
                    f"| {batch} | {num_labels} | {variant} | {r['baseline_ms']:.3f} | "
                    f"{r['this_tree_ms']:.3f} | {r['paired_ratio']:.3f} |",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--baseline", required=True, help="folder holding the baseline's protofast/")
    p.add_argument("--batches", type=common.int_list, default=[256])
    p.add_argument("--labels", type=common.int_list, default=[50, 10_000])
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300, help="timed steps per build")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    print(common.machine_summary(common.machine_info()))
    print(
        "\n| B | labels | targets | baseline median ms | this tree median ms "
        "| paired ratio (median) |"
    )
    print("|---|---|---|---|---|---|")
    run(args)


if __name__ == "__main__":
    main()
