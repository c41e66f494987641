"""Zero-shot evaluation of a trained IMU encoder, and the target-mass diagnostic.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protofast import InfoNCELoss, compute_retrieval_metrics

from .data.hapt import WindowSet
from .prepare import PreparedData
from .text_head import TextHead

__all__ = ["class_embeddings", "evaluate", "other_activity_target_mass"]


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


def class_embeddings(
    text_emb: torch.Tensor, text_class: np.ndarray, n_classes: int
) -> torch.Tensor:
    """Class embeddings: the normalised mean of each class's text embeddings.

    Args:
        text_emb: ``(T, D)`` text embeddings.
        text_class: Class index of each of the ``T`` texts.
        n_classes: Number of classes (every class needs at least one text).

    Returns:
        ``(n_classes, D)`` unit-norm embeddings.
    """
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
        class_emb = class_embeddings(text, cls, n_classes)
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


@torch.no_grad()
def other_activity_target_mass(
    loss_fn: InfoNCELoss,
    texts: Sequence[str],
    text: torch.Tensor,
    cls: torch.Tensor,
) -> float:
    """Share of the loss's target mass on batch columns of other activities.

    The targets are the loss's own (``loss_fn.get_targets``), built exactly as in the step.

    Args:
        loss_fn: The training loss (its settings, manager and frozen label embeddings).
        texts: The batch's label texts.
        text: ``(B, D)`` text embeddings of the batch, as given to the loss.
        cls: ``(B,)`` class index of each sample.

    Returns:
        The mean over rows of the target mass on columns of another class.
    """
    with torch.no_grad():
        targets = loss_fn.get_targets(text.detach().float(), list(texts)).dense()
    other = (cls[:, None] != cls[None, :]).to(targets.dtype)
    return float((targets * other).sum(dim=1).mean())
