"""``protofast-train --ablation``: compare the design note's target settings over several seeds.

Every setting of :func:`ablation_settings` is trained once per seed on the same prepared data
(without figures or checkpoints); the per-run metrics and their mean ± std over seeds are
written to ``ablation.json`` and as a markdown table to ``ablation.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .loop import jsonable, train
from .prepare import prepare_data

__all__ = ["ablation_settings", "run_ablation"]

logger = logging.getLogger("protofast")


def ablation_settings() -> list[tuple[str, dict[str, Any]]]:
    """The settings compared by ``--ablation``.

    Returns:
        ``[(name, overrides of TrainConfig)]``: hard, label-aware hard, pairwise, prototypes,
        hybrid, and a sweep of ``soft_target_temperature`` and ``soft_target_weight`` around
        the note's defaults (pairwise targets).
    """
    off = {"use_soft_targets": False, "use_prototypes": False}
    settings: list[tuple[str, dict[str, Any]]] = [
        ("hard", {**off, "hard_targets": "identity"}),
        ("label-aware hard", {**off, "hard_targets": "label"}),
        ("pairwise", {"use_soft_targets": True, "use_prototypes": False}),
        ("prototypes", {"use_soft_targets": False, "use_prototypes": True}),
        ("hybrid", {"use_soft_targets": True, "use_prototypes": True}),
    ]
    for t in (0.1, 0.25, 1.0):
        settings.append(
            (
                f"pairwise T_soft={t}",
                {"use_soft_targets": True, "use_prototypes": False, "soft_target_temperature": t},
            )
        )
    for w in (0.25, 0.75):
        settings.append(
            (
                f"pairwise w_soft={w}",
                {"use_soft_targets": True, "use_prototypes": False, "soft_target_weight": w},
            )
        )
    return settings


def run_ablation(base: TrainConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Run every ablation setting for every seed and write ``ablation.md`` / ``ablation.json``.

    Args:
        base: Shared settings (epochs, batch size, ...); each setting overrides a few fields.
        seeds: Seeds to repeat each setting with.

    Returns:
        ``{"rows": [...], "runs": [...]}`` as written to ``ablation.json``.
    """
    out_dir = Path(base.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(base)
    runs: list[dict[str, Any]] = []
    settings = ablation_settings()
    t0 = time.perf_counter()
    for i, (name, overrides) in enumerate(settings):
        for seed in seeds:
            cfg = dataclasses.replace(
                base,
                **overrides,
                seed=seed,
                resume=None,
                figures=False,
                checkpoint=False,
                output_dir=str(out_dir / "runs" / f"{i:02d}-seed{seed}"),
            )
            t_run = time.perf_counter()
            s = train(cfg, data, progress=False)
            m = s["metrics"]
            runs.append(
                {
                    "setting": name,
                    "seed": seed,
                    "overrides": overrides,
                    "acc_train_texts": m["acc_train_texts"],
                    "macro_f1_train_texts": m["macro_f1_train_texts"],
                    "acc_heldout_texts": m["acc_heldout_texts"],
                    "macro_f1_heldout_texts": m["macro_f1_heldout_texts"],
                    "recall@1_train_texts": m.get("recall@1_avg_train_texts"),
                    "recall@5_train_texts": m.get("recall@5_avg_train_texts"),
                    "other_activity_target_mass": s["other_activity_target_mass"],
                    "seconds": time.perf_counter() - t_run,
                }
            )
            logger.info(
                "ablation %s seed %d: acc %.3f / held-out %.3f / mass %.3f (%.0fs)",
                name,
                seed,
                m["acc_train_texts"],
                m["acc_heldout_texts"],
                s["other_activity_target_mass"] or 0.0,
                runs[-1]["seconds"],
            )
            (out_dir / "ablation.json").write_text(json.dumps({"runs": runs}, indent=2))
    rows = []
    keys = (
        "acc_train_texts",
        "macro_f1_train_texts",
        "acc_heldout_texts",
        "recall@1_train_texts",
        "other_activity_target_mass",
        "seconds",
    )
    for name, overrides in settings:
        sel = [r for r in runs if r["setting"] == name]
        row: dict[str, Any] = {"setting": name, "overrides": overrides, "n": len(sel)}
        for k in keys:
            vals = np.array([r[k] for r in sel if r[k] is not None], dtype=float)
            row[k] = [float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0]
        rows.append(row)
    result = {
        "base_config": base.to_dict(),
        "seeds": list(seeds),
        "n_train_windows": len(data.split.train),
        "n_test_windows": len(data.split.test),
        "total_seconds": time.perf_counter() - t0,
        "rows": rows,
        "runs": runs,
    }
    (out_dir / "ablation.json").write_text(json.dumps(jsonable(result), indent=2))
    (out_dir / "ablation.md").write_text(_ablation_markdown(result, base))
    return result


def _ablation_markdown(result: dict[str, Any], base: TrainConfig) -> str:
    def ms(v: list[float], pct: bool = True) -> str:
        if pct:
            return f"{100.0 * v[0]:.1f} ± {100.0 * v[1]:.1f}"
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = [
        "# protofast ablation on UCI HAPT",
        "",
        f"{len(result['seeds'])} seeds each ({', '.join(map(str, result['seeds']))}); "
        f"{base.epochs} epochs, batch {base.batch_size}, temperature {base.temperature}, "
        f"defaults soft_target_temperature={base.soft_target_temperature}, "
        f"soft_target_weight={base.soft_target_weight}, num_clusters={base.num_clusters}, "
        f"update_interval={base.update_interval}, prototype_weight={base.prototype_weight}, "
        f"text head {base.text_head}. {result['n_train_windows']} training windows, "
        f"{result['n_test_windows']} test windows from held-out people. Mean ± std over seeds; "
        "accuracy/F1/recall in %.",
        "",
        "| setting | acc (train texts) | macro-F1 (train texts) | acc (held-out texts) "
        "| recall@1 | target mass on other activities | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['setting']} | {ms(r['acc_train_texts'])} | {ms(r['macro_f1_train_texts'])} "
            f"| {ms(r['acc_heldout_texts'])} | {ms(r['recall@1_train_texts'])} "
            f"| {ms(r['other_activity_target_mass'], pct=False)} "
            f"| {r['seconds'][0]:.0f} |"
        )
    lines += [
        "",
        "acc/macro-F1: zero-shot classification of held-out people's windows by the nearest "
        "activity (mean of its description embeddings). held-out texts: descriptions never "
        "trained on. recall@1: IMU<->text retrieval over episodes of one window and one "
        "training description per activity (average of both directions). target mass: share "
        "of the loss's target distribution on batch columns of other activities (0 for hard "
        "targets).",
        "",
    ]
    return "\n".join(lines)
