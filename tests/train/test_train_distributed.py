"""The training job on two CPU processes (torchrun, gloo) against one process.

A step of the two-process run computes the loss of one process on the global batch (gathered
loss, averaged gradients, one prototype store): the runs differ only by floating-point rounding
and by batch norm, whose statistics are per rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from protofast.train import main

ARGS = [
    "--use-prototypes",
    "--update-interval",
    "3",
    "--epochs",
    "1",
    "--max-steps",
    "12",
    "--batch-size",
    "64",
    "--eval-episodes",
    "2",
    "--device",
    "cpu",
    "--no-figures",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_follow_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROTOFAST_CACHE", str(cache))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*ARGS, "--output-dir", str(one)]) == 0
    # faulthandler: a rank that dies of a signal prints every thread's Python stack
    env = {
        **os.environ,
        "PROTOFAST_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "protofast.train",
        *ARGS,
        "--output-dir",
        str(two),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "terminate called" not in done.stderr
    assert done.stdout.count("=== protofast-train summary ===") == 1  # rank 0 reports
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((two / "summary.json").read_text())
    assert a["steps"] == b["steps"] == 12
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=0.02)
    ka = torch.load(one / "checkpoint.pt", weights_only=True)
    kb = torch.load(two / "checkpoint.pt", weights_only=True)
    la, lb = ka["history"]["loss"], kb["history"]["loss"]
    assert len(la) == len(lb) == 12
    assert lb[0] == pytest.approx(la[0], rel=0.01)  # the first step: same model, same batch
    # one store on both ranks, fed the same global batches: the same labels and counts
    sa, sb = ka["manager"]["store"], kb["manager"]["store"]
    counts_a = dict(zip(sa["labels"], sa["counts"].tolist(), strict=True))
    counts_b = dict(zip(sb["labels"], sb["counts"].tolist(), strict=True))
    assert counts_a == counts_b
    assert kb["manager"]["counters"]["num_updates"] == ka["manager"]["counters"]["num_updates"]


@pytest.mark.parametrize("several", [False, True])
def test_leave_ends_with_the_status_and_flushes(several: bool) -> None:
    # a rank of several ends by os._exit: what it printed and logged must still come out
    code = (
        "import logging, sys\n"
        "from protofast.train import ddp\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "print('printed', end='')\n"
        "logging.getLogger('x').warning('logged')\n"
        f"ddp.leave(3, {several})\n"
        "print('never')\n"
    )
    # block-buffered stdout (a pipe, PYTHONUNBUFFERED unset): lost at os._exit unless flushed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 3
    assert done.stdout == "printed"
    assert "logged" in done.stderr
