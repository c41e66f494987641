"""Run every protofast benchmark and print all markdown tables together.

``.venv/bin/python benches/run_all.py [--quick | --full] [--only kmeans,lookup,step,memory,update]``

Each bench also writes its own ``benches/out/<name>.json``; this script adds ``benches/out/all.md``
(the combined report) and ``benches/out/all.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kmeans  # noqa: E402
import bench_lookup  # noqa: E402
import bench_memory  # noqa: E402
import bench_step  # noqa: E402
import bench_update  # noqa: E402
import common  # noqa: E402

BENCHES: dict[str, Callable[[Sequence[str] | None], dict[str, Any]]] = {
    "kmeans": bench_kmeans.main,
    "lookup": bench_lookup.main,
    "step": bench_step.main,
    "memory": bench_memory.main,
    "update": bench_update.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benches with the chosen preset; print and save the combined report.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit status (0).
    """
    p = argparse.ArgumentParser(description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="quick preset of every bench")
    g.add_argument("--full", action="store_true", help="full preset (1M sizes; long)")
    p.add_argument("--only", default=",".join(BENCHES), help="comma list of benches to run")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    args = p.parse_args(argv)

    selected = [b for b in args.only.split(",") if b]
    unknown = [b for b in selected if b not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benches {unknown}; choose from {list(BENCHES)}")
    preset = ["--quick"] if args.quick else ["--full"] if args.full else []
    common.load_protofast()

    results: dict[str, Any] = {}
    durations: dict[str, float] = {}
    for name in selected:
        print(f"\n===== {name} {' '.join(preset)} =====", flush=True)
        t0 = time.perf_counter()
        results[name] = BENCHES[name]([*preset, "--threads", str(args.threads)])
        durations[name] = time.perf_counter() - t0

    info = common.machine_info()
    preset_name = preset[0].lstrip("-") if preset else "default"
    parts = [common.header(f"protofast benchmarks ({preset_name} preset)", info)]
    for name in selected:
        parts.append(results[name]["markdown"])
        parts.append(f"\n_{name}: {durations[name]:.0f} s wall time._")
    report = "\n\n".join(parts)
    print("\n\n" + report, flush=True)

    common.OUT_DIR.mkdir(parents=True, exist_ok=True)
    (common.OUT_DIR / "all.md").write_text(report + "\n", encoding="utf-8")
    common.write_json(
        "all",
        {
            "preset": preset_name,
            "machine": info,
            "durations_s": durations,
            "results": results,
        },
    )
    print(f"\n(wrote {common.OUT_DIR / 'all.md'} and all.json)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
