"""``protofast-train --ablation``: when do prototypes help? Target settings over several seeds.

The grid is *data set* (UCI HAPT, UEA BasicMotions) x *label regime* (a few natural
descriptions per activity, the regime the design note advises against prototypes for; a few
hundred composed captions that cluster into categories, the regime it recommends them for) x
*setting* (:func:`ablation_settings`: hard, label-aware hard, pairwise, the note's prototypes and
hybrid, and the candidate forms ``sensor`` and ``pcl`` of :mod:`protofast.train.prototypes`) x
*seed*. Each cell is trained once per seed on the same prepared data (without figures or
checkpoints).

``ablation.json`` holds every run and, per cell, the mean ± std over seeds and the difference
of each metric against hard targets with a two-sided Welch t-test over the seeds (the
difference counts as exceeding the seed-to-seed spread when ``|t|`` exceeds the 97.5 %
quantile of Student's t at the Welch-Satterthwaite degrees of freedom); ``ablation.md`` shows
them as tables. Finished runs are kept in ``ablation.json`` as they complete, and a rerun into
the same folder with the same settings reuses them (an interrupted ablation continues).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .loop import jsonable, train
from .prepare import DATASETS, LABEL_TEXTS, prepare_data

__all__ = [
    "ABLATION_EPOCHS",
    "METRICS",
    "ablation_markdown",
    "ablation_settings",
    "compare",
    "run_ablation",
    "t_critical",
]

logger = logging.getLogger("protofast")

#: Epochs per ablation run for each data set (about 270 optimiser steps each at batch 128:
#: HAPT has 68 steps per epoch, BasicMotions 14), so that with the note's update interval
#: (100) prototypes are re-clustered twice and act for about two thirds of the run.
ABLATION_EPOCHS: dict[str, int] = {"hapt": 4, "basicmotions": 20}

#: The metrics compared (keys of a run in ``ablation.json``).
METRICS: tuple[str, ...] = (
    "acc_train_texts",
    "macro_f1_train_texts",
    "acc_heldout_texts",
    "macro_f1_heldout_texts",
    "recall@1_train_texts",
    "recall@5_train_texts",
    "recall@1_heldout_texts",
)

# 97.5 % quantiles of Student's t for 1..30 degrees of freedom (two-sided 5 % test)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_critical(df: float) -> float:
    """The 97.5 % quantile of Student's t (two-sided 5 % test).

    Args:
        df: Degrees of freedom (rounded down; at least 1; 1.96 beyond 30).

    Returns:
        The quantile.
    """
    d = max(1, int(math.floor(df)))
    return _T975[d - 1] if d <= len(_T975) else 1.96


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float | bool]:
    """Welch's two-sample comparison of ``a`` against ``b`` (the seeds of two settings).

    Args:
        a: Metric values of a setting, one per seed.
        b: Metric values of the reference (hard targets), one per seed.

    Returns:
        ``{"diff": mean(a) - mean(b), "t": t statistic, "df": Welch-Satterthwaite degrees of
        freedom, "exceeds": whether |t| exceeds the two-sided 5 % critical value}``;
        ``exceeds`` is ``False`` with fewer than two values on a side, and, when both spreads
        are zero, ``True`` exactly when the means differ.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
    if len(x) < 2 or len(y) < 2:
        return {"diff": diff, "t": float("nan"), "df": float("nan"), "exceeds": False}
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se2 = va + vb
    if se2 <= 0:
        return {"diff": diff, "t": float("inf"), "df": float("inf"), "exceeds": diff != 0.0}
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    return {"diff": diff, "t": t, "df": df, "exceeds": bool(abs(t) > t_critical(df))}


def ablation_settings(tuning: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The settings compared by ``--ablation`` (in every data set and label regime).

    Args:
        tuning: Instead of the main settings, the design note's own tuning advice for
            prototypes (``--ablation-tuning``): as many clusters as activities (12 on HAPT) for
            the note's and the sensor form, hybrid mode with ``prototype_weight=0.3`` (the
            note's "try hybrid mode (PROTOTYPE_WEIGHT=0.3)"), and prototypes at a lower soft
            weight (0.25); hard targets stay as the reference.

    Returns:
        ``[(name, overrides of TrainConfig)]``: hard, label-aware hard, pairwise (the note's
        soft-target temperature 0.5, and 0.25), the note's prototypes alone and in hybrid mode,
        and the candidate forms ``sensor`` and ``pcl`` alone; or hard and the tuning settings.
    """
    off = {"use_soft_targets": False, "use_prototypes": False}
    proto = {"use_soft_targets": False, "use_prototypes": True}
    hard = ("hard", {**off, "hard_targets": "identity"})
    if tuning:
        return [
            hard,
            ("prototypes (note) k=12", {**proto, "prototype_form": "note", "num_clusters": 12}),
            (
                "prototypes (sensor) k=12",
                {**proto, "prototype_form": "sensor", "num_clusters": 12},
            ),
            (
                "hybrid (note) p_proto=0.3",
                {"use_soft_targets": True, "use_prototypes": True, "prototype_weight": 0.3},
            ),
            ("prototypes (note) w_soft=0.25", {**proto, "soft_target_weight": 0.25}),
        ]
    return [
        hard,
        ("label-aware hard", {**off, "hard_targets": "label"}),
        ("pairwise", {"use_soft_targets": True, "use_prototypes": False}),
        (
            "pairwise T_soft=0.25",
            {"use_soft_targets": True, "use_prototypes": False, "soft_target_temperature": 0.25},
        ),
        ("prototypes (note)", {**proto, "prototype_form": "note"}),
        ("hybrid (note)", {"use_soft_targets": True, "use_prototypes": True}),
        ("prototypes (sensor)", {**proto, "prototype_form": "sensor"}),
        ("prototypes (pcl)", {**proto, "prototype_form": "pcl"}),
    ]


def _run_key(dataset: str, labels: str, setting: str, seed: int) -> str:
    return f"{dataset}|{labels}|{setting}|{seed}"


def _previous_runs(path: Path, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Runs of an earlier ablation into the same folder with the same base settings."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("base_config") != base:
        return {}
    return {
        _run_key(r["dataset"], r["label_texts"], r["setting"], r["seed"]): r
        for r in old.get("runs", [])
        if {"dataset", "label_texts", "setting", "seed"} <= set(r)
    }


def run_ablation(
    base: TrainConfig,
    seeds: Sequence[int],
    *,
    datasets: Sequence[str] = DATASETS,
    label_regimes: Sequence[str] = LABEL_TEXTS,
    epochs: dict[str, int] | None = None,
    settings: Sequence[str] | None = None,
    tuning: bool = False,
) -> dict[str, Any]:
    """Run every setting for every seed, data set and label regime; write the results.

    Args:
        base: Shared settings (batch size, temperatures, ...); each setting overrides a few
            fields, and ``dataset``, ``label_texts``, ``epochs`` and ``seed`` are set per run.
        seeds: Seeds to repeat each setting with.
        datasets: Data sets of the grid.
        label_regimes: Label regimes of the grid.
        epochs: Epochs per data set (default :data:`ABLATION_EPOCHS`).
        settings: Names of :func:`ablation_settings` to run (default: all; ``"hard"`` is always
            run, as the reference).
        tuning: Run the note's tuning settings (``ablation_settings(tuning=True)``) instead of
            the main ones.

    Returns:
        The content of ``ablation.json``: ``base_config``, ``seeds``, ``epochs``, ``cells``
        (per data set and regime: data sizes and rows with mean ± std and the comparison
        against hard targets), ``runs`` and ``total_seconds``.

    Raises:
        ValueError: On an unknown data set, regime or setting name.
    """
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown data set {d!r}")
    for r in label_regimes:
        if r not in LABEL_TEXTS:
            raise ValueError(f"unknown label regime {r!r}")
    chosen = ablation_settings(tuning)
    if settings is not None:
        known = {name for name, _ in chosen}
        unknown = [s for s in settings if s not in known]
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
        chosen = [(n, o) for n, o in chosen if n == "hard" or n in settings]
    epochs = {**ABLATION_EPOCHS, **(epochs or {})}
    out_dir = Path(base.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "ablation.json"
    base_dict = jsonable(base.to_dict())
    previous = _previous_runs(json_path, base_dict)
    runs: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for dataset in datasets:
        for regime in label_regimes:
            data = prepare_data(dataclasses.replace(base, dataset=dataset, label_texts=regime))
            cell_runs: list[dict[str, Any]] = []
            for i, (name, overrides) in enumerate(chosen):
                for seed in seeds:
                    key = _run_key(dataset, regime, name, seed)
                    if key in previous:
                        cell_runs.append(previous[key])
                        continue
                    cfg = dataclasses.replace(
                        base,
                        **overrides,
                        dataset=dataset,
                        label_texts=regime,
                        epochs=epochs[dataset],
                        seed=seed,
                        resume=None,
                        figures=False,
                        checkpoint=False,
                        output_dir=str(out_dir / "runs" / f"{dataset}-{regime}-{i:02d}-seed{seed}"),
                    )
                    t_run = time.perf_counter()
                    s = train(cfg, data, progress=False)
                    m = s["metrics"]
                    run = {
                        "dataset": dataset,
                        "label_texts": regime,
                        "setting": name,
                        "seed": seed,
                        "overrides": overrides,
                        "steps": s["steps"],
                        "epoch_eval": [
                            {k: e[k] for k in ("epoch", "acc_train_texts", "acc_heldout_texts")}
                            for e in s.get("epoch_eval", [])
                        ],
                        "other_activity_target_mass": s["other_activity_target_mass"],
                        "seconds": time.perf_counter() - t_run,
                    }
                    for k in METRICS:
                        src = k.replace("recall@1_", "recall@1_avg_").replace(
                            "recall@5_", "recall@5_avg_"
                        )
                        run[k] = m.get(src)
                    cell_runs.append(run)
                    previous[key] = run
                    logger.info(
                        "ablation %s/%s %s seed %d: acc %.3f / held-out %.3f / R@1 %.3f (%.0fs)",
                        dataset,
                        regime,
                        name,
                        seed,
                        run["acc_train_texts"],
                        run["acc_heldout_texts"],
                        run["recall@1_train_texts"] or 0.0,
                        run["seconds"],
                    )
                    partial = {"base_config": base_dict, "runs": list(previous.values())}
                    json_path.write_text(json.dumps(jsonable(partial), indent=2))
            runs.extend(cell_runs)
            cells.append(_cell(dataset, regime, data, chosen, cell_runs, epochs[dataset]))
    result = {
        "base_config": base_dict,
        "seeds": list(seeds),
        "epochs": {d: epochs[d] for d in datasets},
        "total_seconds": time.perf_counter() - t0,
        "run_seconds": float(sum(r["seconds"] for r in runs)),
        "cells": cells,
        "runs": runs,
    }
    json_path.write_text(json.dumps(jsonable(result), indent=2))
    (out_dir / "ablation.md").write_text(ablation_markdown(result, base))
    return result


def _cell(
    dataset: str,
    regime: str,
    data: Any,
    settings: Sequence[tuple[str, dict[str, Any]]],
    runs: Sequence[dict[str, Any]],
    epochs: int,
) -> dict[str, Any]:
    """Mean ± std per setting and the comparison against hard targets, for one cell."""
    keys = (*METRICS, "other_activity_target_mass", "seconds")
    hard = [r for r in runs if r["setting"] == "hard"]
    rows = []
    for name, overrides in settings:
        sel = [r for r in runs if r["setting"] == name]
        row: dict[str, Any] = {"setting": name, "overrides": overrides, "n": len(sel)}
        for k in keys:
            vals = np.array([r[k] for r in sel if r.get(k) is not None], dtype=float)
            if len(vals) == 0:
                row[k] = None
                continue
            row[k] = [float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0]
        if name != "hard":
            row["vs_hard"] = {
                k: compare(
                    [r[k] for r in sel if r.get(k) is not None],
                    [r[k] for r in hard if r.get(k) is not None],
                )
                for k in METRICS
            }
        rows.append(row)
    return {
        "dataset": dataset,
        "label_texts": regime,
        "epochs": epochs,
        "n_train_windows": len(data.split.train),
        "n_test_windows": len(data.split.test),
        "n_activities": len(data.activities),
        "n_train_texts": len(data.train_texts),
        "n_heldout_texts": len(data.heldout_texts),
        "rows": rows,
    }


def _ms(v: list[float] | None, pct: bool = True) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100.0 * v[0]:.1f} ± {100.0 * v[1]:.1f}"
    return f"{v[0]:.3f} ± {v[1]:.3f}"


def _delta(c: dict[str, Any] | None) -> str:
    if c is None or not math.isfinite(float(c["diff"])):
        return "–"
    mark = " *" if c["exceeds"] else ""
    return f"{100.0 * float(c['diff']):+.1f}{mark}"


def _convergence_markdown(result: dict[str, Any]) -> list[str]:
    """Mean test accuracy after selected epochs, per cell and setting (from ``epoch_eval``)."""
    runs = [r for r in result["runs"] if r.get("epoch_eval")]
    if not runs:
        return []
    lines = [
        "",
        "## Convergence",
        "",
        "Mean zero-shot test accuracy over seeds after selected epochs (training texts / "
        "held-out texts, %): the note says prototypes may improve convergence.",
    ]
    for cell in result["cells"]:
        sel = [
            r
            for r in runs
            if r["dataset"] == cell["dataset"] and r["label_texts"] == cell["label_texts"]
        ]
        if not sel:
            continue
        n_ep = min(len(r["epoch_eval"]) for r in sel)
        epochs = sorted({1, max(1, n_ep // 4), max(1, n_ep // 2), max(1, 3 * n_ep // 4), n_ep})
        lines += [
            "",
            f"### {cell['dataset']}, {cell['label_texts']}",
            "",
            "| setting | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
            "|---|" + "---|" * len(epochs),
        ]
        for row in cell["rows"]:
            mine = [r for r in sel if r["setting"] == row["setting"]]
            if not mine:
                continue
            cols = []
            for e in epochs:
                a = np.mean([r["epoch_eval"][e - 1]["acc_train_texts"] for r in mine])
                h = np.mean([r["epoch_eval"][e - 1]["acc_heldout_texts"] for r in mine])
                cols.append(f"{100 * a:.1f} / {100 * h:.1f}")
            lines.append(f"| {row['setting']} | " + " | ".join(cols) + " |")
    return lines


def ablation_markdown(result: dict[str, Any], base: TrainConfig) -> str:
    """The markdown report of an ablation (one table per data set and label regime).

    Args:
        result: What :func:`run_ablation` returns.
        base: The shared settings.

    Returns:
        The markdown text.
    """
    seeds = result["seeds"]
    lines = [
        "# protofast ablation: when do prototypes help?",
        "",
        f"{len(seeds)} seeds per setting ({', '.join(map(str, seeds))}); batch "
        f"{base.batch_size}, temperature {base.temperature}, soft_target_temperature="
        f"{base.soft_target_temperature}, soft_target_weight={base.soft_target_weight}, "
        f"num_clusters={base.num_clusters}, update_interval={base.update_interval}, "
        f"prototype_weight={base.prototype_weight}, text head {base.text_head}. Epochs: "
        + ", ".join(f"{d} {e}" for d, e in result["epochs"].items())
        + f". Total {result['total_seconds'] / 60:.1f} min.",
        "",
        "Mean ± std over seeds, in %. Δ: difference of the means against hard targets, in "
        "points; * marks a difference that exceeds the seed-to-seed spread (two-sided Welch "
        "t-test over the seeds, 5 %).",
    ]
    for cell in result["cells"]:
        lines += [
            "",
            f"## {cell['dataset']}, {cell['label_texts']}",
            "",
            f"{cell['n_activities']} activities; {cell['n_train_texts']} training and "
            f"{cell['n_heldout_texts']} held-out label texts; {cell['n_train_windows']} "
            f"training and {cell['n_test_windows']} test windows; {cell['epochs']} epochs.",
            "",
            "| setting | acc | macro-F1 | acc (held-out texts) | recall@1 | target mass on "
            "other activities | Δ acc | Δ macro-F1 | Δ acc held-out | Δ recall@1 | s/run |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cell["rows"]:
            vs = r.get("vs_hard") or {}
            lines.append(
                f"| {r['setting']} | {_ms(r['acc_train_texts'])} "
                f"| {_ms(r['macro_f1_train_texts'])} | {_ms(r['acc_heldout_texts'])} "
                f"| {_ms(r['recall@1_train_texts'])} "
                f"| {_ms(r['other_activity_target_mass'], pct=False)} "
                f"| {_delta(vs.get('acc_train_texts'))} "
                f"| {_delta(vs.get('macro_f1_train_texts'))} "
                f"| {_delta(vs.get('acc_heldout_texts'))} "
                f"| {_delta(vs.get('recall@1_train_texts'))} "
                f"| {r['seconds'][0]:.0f} |"
            )
    lines += _convergence_markdown(result)
    lines += [
        "",
        "acc/macro-F1: zero-shot classification of the test windows (held-out people for "
        "HAPT, the archive's TEST recordings for BasicMotions) by the nearest activity (mean "
        "of its training label texts' embeddings). acc (held-out texts): the same with label "
        "texts never trained on. recall@1: IMU<->text retrieval over episodes of one window "
        "and one training label text per activity (average of both directions). target mass: "
        "share of the loss's target distribution on batch columns of other activities (0 for "
        "hard targets).",
        "",
    ]
    return "\n".join(lines)
