"""Plain-Python baseline: the prototype system as the design note (PROTOTYPES_README.md) has it.

This is the reference the benchmarks compare protofast against. It follows the note step by step,
with no optimisation:

* ``PrototypeManager.label_embeddings`` is a ``dict`` of Python lists of per-sample torch tensors.
* ``add_labels`` appends each sample's embedding and re-clusters every ``update_interval`` batches.
* ``update_prototypes`` averages each label's list, then runs scikit-learn ``KMeans(n_init=10)``
  on the label means (only once ``min_samples_per_cluster * num_clusters`` labels have been seen).
* ``get_prototype_targets`` loops over the batch in Python: for each sample, its cluster prototype's
  similarity to every text embedding in the batch, softmax with ``temperature``; identity rows for
  labels not clustered yet (and the identity matrix before the first clustering).
* ``InfoNCELoss`` blends hard (identity), pairwise (softmax of text-text similarity) and prototype
  targets exactly as the note's "Hybrid Mode" section writes, and takes the symmetric soft-target
  cross-entropy of the imu-text logits.

It is a benchmark baseline, not part of the protofast package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PrototypeManager:
    """Accumulate label embeddings, cluster the label means, and build prototype soft targets.

    Args:
        num_clusters: number of k-means clusters (prototypes).
        update_interval: re-cluster every this many ``add_labels`` calls (batches).
        min_samples_per_cluster: need ``num_clusters * min_samples_per_cluster`` distinct labels
            before clustering.
        device: device of the prototypes and targets (default CPU).
        seed: k-means ``random_state``.
        n_init: k-means restarts (the note's sklearn default of 10).
        max_samples_per_label: keep at most this many embeddings per label (oldest dropped);
            ``None`` keeps every sample, as the note's ``dict`` of lists does.
    """

    def __init__(
        self,
        num_clusters: int = 5,
        update_interval: int = 100,
        min_samples_per_cluster: int = 3,
        device: str | torch.device | None = None,
        *,
        seed: int = 42,
        n_init: int = 10,
        max_samples_per_label: int | None = None,
    ) -> None:
        self.num_clusters = num_clusters
        self.update_interval = update_interval
        self.min_samples_per_cluster = min_samples_per_cluster
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seed = seed
        self.n_init = n_init
        self.max_samples_per_label = max_samples_per_label

        self.label_embeddings: dict[str, list[torch.Tensor]] = {}
        self.prototypes: torch.Tensor | None = None
        self.label_to_cluster: dict[str, int] = {}
        self.cluster_labels: dict[int, list[str]] = {}
        self.batch_count = 0
        self.num_updates = 0

    @property
    def is_initialized(self) -> bool:
        """True once a clustering has produced prototypes."""
        return self.prototypes is not None

    def add_labels(self, label_texts: Sequence[str], text_embeddings: torch.Tensor) -> None:
        """Store every row under its label; re-cluster every ``update_interval`` calls.

        Args:
            label_texts: one label per row.
            text_embeddings: ``B×D`` tensor (detached and moved to CPU here).
        """
        emb = text_embeddings.detach().cpu()
        for label, e in zip(label_texts, emb, strict=True):
            lst = self.label_embeddings.setdefault(label, [])
            lst.append(e)
            if self.max_samples_per_label is not None and len(lst) > self.max_samples_per_label:
                lst.pop(0)
        self.batch_count += 1
        if self.batch_count % self.update_interval == 0:
            self.update_prototypes()

    def update_prototypes(self) -> bool:
        """k-means (sklearn, ``n_init`` restarts) on the per-label mean embeddings.

        Returns:
            True if prototypes were (re)computed, False if there are too few labels.
        """
        from sklearn.cluster import KMeans

        labels = list(self.label_embeddings.keys())
        if len(labels) < self.num_clusters * self.min_samples_per_cluster:
            return False
        label_means = {
            label: torch.stack(self.label_embeddings[label]).mean(dim=0) for label in labels
        }
        means = torch.stack([label_means[label] for label in labels]).numpy()
        kmeans = KMeans(n_clusters=self.num_clusters, n_init=self.n_init, random_state=self.seed)
        assignments = kmeans.fit_predict(means)
        self.prototypes = torch.tensor(
            kmeans.cluster_centers_, dtype=torch.float32, device=self.device
        )
        self.label_to_cluster = {
            label: int(c) for label, c in zip(labels, assignments, strict=True)
        }
        self.cluster_labels = {}
        for label, c in self.label_to_cluster.items():
            self.cluster_labels.setdefault(c, []).append(label)
        self.num_updates += 1
        return True

    def get_prototype_targets(
        self,
        label_texts: Sequence[str],
        text_embeddings: torch.Tensor,
        temperature: float = 0.5,
    ) -> torch.Tensor:
        """Soft targets from each sample's cluster prototype (per-sample Python loop).

        Args:
            label_texts: one label per row.
            text_embeddings: ``B×D`` batch text embeddings.
            temperature: softmax temperature.

        Returns:
            ``B×B`` row-stochastic targets (identity before the first clustering).
        """
        batch_size = len(label_texts)
        device = text_embeddings.device
        if self.prototypes is None:
            return torch.eye(batch_size, device=device)
        text = text_embeddings.detach()
        targets = torch.zeros(batch_size, batch_size, device=device)
        for i, label in enumerate(label_texts):
            cluster_id = self.label_to_cluster.get(label)
            if cluster_id is None:
                targets[i, i] = 1.0
                continue
            prototype = self.prototypes[cluster_id].to(device)
            similarities = prototype @ text.T
            targets[i] = F.softmax(similarities / temperature, dim=0)
        return targets

    def get_statistics(self) -> dict[str, Any]:
        """Counts for logging."""
        return {
            "num_labels": len(self.label_embeddings),
            "num_samples": sum(len(v) for v in self.label_embeddings.values()),
            "num_updates": self.num_updates,
            "is_initialized": self.is_initialized,
        }


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with hard / pairwise / prototype / hybrid targets, as the note blends them.

    ``targets = (1 − soft_target_weight)·I + soft_target_weight·blended`` where ``blended`` is the
    pairwise targets, the prototype targets, or ``(1 − prototype_weight)·pairwise +
    prototype_weight·prototype`` in hybrid mode; with neither, targets are the identity.

    Args:
        temperature: logit temperature.
        use_soft_targets: pairwise soft targets (``softmax(text·textᵀ / soft_target_temperature)``).
        soft_target_temperature: temperature of the soft targets.
        soft_target_weight: weight of the soft part against the identity.
        use_prototypes: prototype soft targets from ``prototype_manager``.
        prototype_weight: weight of the prototype targets in hybrid mode.
        prototype_manager: a :class:`PrototypeManager`.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        use_soft_targets: bool = True,
        soft_target_temperature: float = 0.5,
        soft_target_weight: float = 0.5,
        use_prototypes: bool = False,
        prototype_weight: float = 0.5,
        prototype_manager: PrototypeManager | None = None,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.use_soft_targets = use_soft_targets
        self.soft_target_temperature = soft_target_temperature
        self.soft_target_weight = soft_target_weight
        self.use_prototypes = use_prototypes
        self.prototype_weight = prototype_weight
        self.prototype_manager = prototype_manager

    def forward(
        self,
        imu_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        label_texts: Sequence[str] | None = None,
        return_metrics: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float] | None]:
        """Loss of one batch.

        Args:
            imu_embeddings: ``B×D`` sensor embeddings (normalised by the caller).
            text_embeddings: ``B×D`` text embeddings (normalised by the caller).
            label_texts: batch labels (needed for prototype targets).
            return_metrics: also return a small metrics dict.

        Returns:
            ``(loss, metrics or None)``.
        """
        imu = imu_embeddings
        text = text_embeddings
        batch_size = imu.shape[0]
        logits = imu @ text.T / self.temperature
        hard = torch.eye(batch_size, device=imu.device)

        text_d = text.detach()
        pairwise: torch.Tensor | None = None
        prototype: torch.Tensor | None = None
        if self.use_soft_targets:
            pairwise = F.softmax(text_d @ text_d.T / self.soft_target_temperature, dim=1)
        if (
            self.use_prototypes
            and self.prototype_manager is not None
            and label_texts is not None
            and self.prototype_manager.is_initialized
        ):
            prototype = self.prototype_manager.get_prototype_targets(
                label_texts, text_d, temperature=self.soft_target_temperature
            )

        if pairwise is not None and prototype is not None:
            blended: torch.Tensor | None = (
                1 - self.prototype_weight
            ) * pairwise + self.prototype_weight * prototype
        elif pairwise is not None:
            blended = pairwise
        elif prototype is not None:
            blended = prototype
        else:
            blended = None

        if blended is None:
            targets = hard
        else:
            targets = (1 - self.soft_target_weight) * hard + self.soft_target_weight * blended

        loss_i2t = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        loss_t2i = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
        loss = (loss_i2t + loss_t2i) / 2
        if not return_metrics:
            return loss, None
        with torch.no_grad():
            acc = (
                (logits.argmax(dim=1) == torch.arange(batch_size, device=imu.device)).float().mean()
            )
        return loss, {"loss": float(loss.detach()), "acc_i2t": float(acc)}


def deep_sizeof_label_dict(label_embeddings: dict[str, list[Any]]) -> dict[str, int]:
    """Deep size of a ``dict[str, list[tensor | ndarray]]`` (the note's storage), in bytes.

    Counts the dict, its key strings, each list, each array/tensor object header (``sys.getsizeof``)
    and each distinct data buffer once (torch storages shared by views of one batch count once).
    For torch the C++ ``TensorImpl`` behind each Python tensor object is not visible to Python, so
    the torch figure is a lower bound.

    Args:
        label_embeddings: the store to measure.

    Returns:
        ``{"total": ..., "containers": ..., "objects": ..., "buffers": ...}`` bytes.
    """
    import sys

    containers = sys.getsizeof(label_embeddings)
    objects = 0
    buffers = 0
    seen: set[int] = set()
    for key, lst in label_embeddings.items():
        containers += sys.getsizeof(key) + sys.getsizeof(lst)
        for e in lst:
            objects += sys.getsizeof(e)
            if isinstance(e, torch.Tensor):
                st = e.untyped_storage()
                ptr = st.data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    buffers += st.nbytes()
            elif isinstance(e, np.ndarray):
                base = e if e.base is None else e.base
                if id(base) not in seen:
                    seen.add(id(base))
                    buffers += base.nbytes if isinstance(base, np.ndarray) else e.nbytes
                # ndarray getsizeof includes the data when it owns it
                if e.base is None:
                    objects -= e.nbytes
    return {
        "total": containers + objects + buffers,
        "containers": containers,
        "objects": objects,
        "buffers": buffers,
    }
