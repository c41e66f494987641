"""PNG figures of a training run: ``training_curves.png`` and ``text_clusters.png``.

matplotlib is imported (with the ``Agg`` backend) only when the figures are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .prepare import PreparedData

__all__ = ["prototypes_ready", "write_figures"]


def prototypes_ready(manager: Any) -> bool:
    """Whether ``manager`` has clustered at least once (so it can colour the text figure).

    Args:
        manager: A :class:`protofast.PrototypeManager`.

    Returns:
        ``manager.is_initialized`` (``False`` when it has no such attribute).
    """
    return bool(getattr(manager, "is_initialized", False))


def _as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a torch tensor is detached and copied to the CPU first)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_figures(
    out_dir: Path,
    history: dict[str, list[Any]],
    data: PreparedData,
    manager: Any | None,
) -> dict[str, str]:
    """Write ``training_curves.png`` and, given a clustered manager, ``text_clusters.png``.

    Args:
        out_dir: Output directory.
        history: Training history (``step``, ``loss``, ``acc``, ``epoch_eval``, ``other_mass``).
        data: Prepared texts and embeddings.
        manager: Prototype manager whose clusters colour the text figure (or ``None``).

    Returns:
        ``{figure name: path}`` of the files written.
    """
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

    if manager is not None and prototypes_ready(manager):
        paths["text_clusters"] = str(_cluster_figure(out_dir, data, manager, plt))
    return paths


def _cluster_figure(out_dir: Path, data: PreparedData, manager: Any, plt: Any) -> Path:
    texts = data.train_texts + data.heldout_texts
    emb = np.concatenate([data.train_text_emb, data.heldout_text_emb])
    cls = np.concatenate([data.train_text_class, data.heldout_text_class])
    n_train = len(data.train_texts)
    protos_np = _as_numpy(manager.prototypes)
    clusters = _as_numpy(manager.assign(texts, torch.from_numpy(emb))).astype(int)
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
