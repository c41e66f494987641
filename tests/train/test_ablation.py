"""The ablation's statistics, and a short smoke version of ``--ablation`` (what CI runs).

The smoke run covers both data sets and both label regimes with two seeds and a few steps per
run; the full ablation (``make ablation``) is not run in CI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from protofast.train import ablation, main
from protofast.train.ablation import ablation_settings, compare, t_critical


def test_t_critical_values() -> None:
    assert t_critical(8) == pytest.approx(2.306)
    assert t_critical(8.9) == pytest.approx(2.306)  # rounded down
    assert t_critical(0.3) == pytest.approx(12.706)
    assert t_critical(1000) == pytest.approx(1.96)


def test_compare_separates_differences_from_noise() -> None:
    hard = [0.80, 0.81, 0.79, 0.80, 0.82]
    clear = compare([0.85, 0.86, 0.84, 0.85, 0.87], hard)
    assert clear["diff"] == pytest.approx(0.05)
    assert clear["exceeds"] is True
    assert clear["t"] > 0
    noisy = compare([0.78, 0.84, 0.80, 0.83, 0.79], hard)
    assert noisy["exceeds"] is False
    # Welch's t by hand for one case
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    got = compare(a, b)
    se = math.sqrt(1.0 / 3 + (20.0 / 3) / 4)
    assert got["t"] == pytest.approx((2.0 - 5.0) / se)
    assert compare([1.0], [2.0, 3.0])["exceeds"] is False
    assert compare([1.0, 1.0], [1.0, 1.0])["exceeds"] is False
    assert compare([2.0, 2.0], [1.0, 1.0])["exceeds"] is True


def test_settings_cover_the_note_and_the_candidates() -> None:
    names = [n for n, _ in ablation_settings()]
    assert names[0] == "hard"
    forms = {o.get("prototype_form", "note") for _, o in ablation_settings() if o["use_prototypes"]}
    assert forms == {"note", "sensor", "pcl"}


def test_ablation_smoke_both_datasets_and_regimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROTOFAST_CACHE", str(tmp_path / "cache"))  # cold: embeds every text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path / "abl"
    args = [
        "--ablation",
        "--ablation-seeds",
        "2",
        "--ablation-settings",
        "prototypes (sensor)",
        "--max-steps",
        "2",
        "--eval-episodes",
        "2",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2 * 2  # data sets x regimes x settings x seeds
    cells = {(c["dataset"], c["label_texts"]) for c in result["cells"]}
    assert cells == {(d, r) for d in ("hapt", "basicmotions") for r in ("descriptions", "captions")}
    for cell in result["cells"]:
        assert [r["setting"] for r in cell["rows"]] == ["hard", "prototypes (sensor)"]
        assert cell["rows"][1]["vs_hard"]["acc_train_texts"]["exceeds"] in (True, False)
        if cell["label_texts"] == "captions":
            assert cell["n_train_texts"] >= 200
    for run in result["runs"]:
        assert run["steps"] == 2
        assert [e["epoch"] for e in run["epoch_eval"]] == [1]
        assert 0.0 <= run["acc_train_texts"] <= 1.0
    md = (out / "ablation.md").read_text()
    assert md.count("\n## ") == 5  # four cells and the convergence section
    assert "## Convergence" in md and "| prototypes (sensor) | " in md.split("## Convergence")[1]
    assert "| prototypes (sensor) |" in md
    assert "## basicmotions, captions" in printed

    # a rerun into the same folder reuses the finished runs (nothing is trained again)
    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablation, "train", no_training)
    assert main(args) == 0
    again = json.loads((out / "ablation.json").read_text())
    assert again["runs"] == result["runs"]


def test_tuning_settings_follow_the_notes_advice() -> None:
    tuning = dict(ablation_settings(tuning=True))
    assert list(tuning)[0] == "hard"
    assert tuning["prototypes (note) k=12"]["num_clusters"] == 12
    assert tuning["prototypes (sensor) k=12"]["prototype_form"] == "sensor"
    hybrid = tuning["hybrid (note) p_proto=0.3"]
    assert hybrid["use_soft_targets"] and hybrid["use_prototypes"]
    assert hybrid["prototype_weight"] == 0.3
    assert tuning["prototypes (note) w_soft=0.25"]["soft_target_weight"] == 0.25
    assert not set(tuning) - {"hard"} & {n for n, _ in ablation_settings()}
