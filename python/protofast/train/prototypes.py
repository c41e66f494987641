"""Candidate forms of prototypes beyond the design note's (``--prototype-form sensor|pcl``).

The note clusters the *text* embeddings of the labels (k-means on per-label means, one cluster
count) and turns a sample's cluster into the soft target row
``softmax(prototype[cluster] @ E^T / tau)`` over the batch's label embeddings ``E``. Two
alternatives are measured against it, both built on the public
:class:`protofast.PrototypeManager` (storage and k-means) and given to
:class:`protofast.InfoNCELoss` as a ``prototype_manager`` with ``get_prototype_targets``:

* ``sensor``: the clusters come from the **sensor side**. The manager is fed the batch's IMU
  embeddings (detached) under each sample's label, so it clusters the per-label means of the
  IMU embeddings (over each label's last ``sensor_window`` samples, so that the random
  embeddings of the first steps are forgotten). Paraphrases of one movement then share a
  cluster even when their words differ, and labels whose words are close but whose movements
  differ (``"sitting down"``, ``"sitting"``) need not. The prototype of a cluster is the mean
  *text* embedding of its labels, so the target formula is the note's; only the grouping
  differs.
* ``pcl``: several granularities with a per-cluster concentration, after Prototypical
  Contrastive Learning (J. Li, P. Zhou, C. Xiong, S. C. H. Hoi, "Prototypical Contrastive
  Learning of Unsupervised Representations", ICLR 2021). Text clusters at ``num_clusters`` x
  1, 2 and 4; each cluster ``c`` gets the concentration
  ``phi_c = sum_l ||e_l - p_c|| / (n_c log(n_c + alpha))`` (``alpha = 10``; clusters of one
  label take the largest ``phi``), rescaled so that the mean over clusters is the soft-target
  temperature: tight clusters give sharp target rows, loose ones broad rows. A sample's target
  is the mean of its rows at the three granularities.

Before a granularity's first clustering (and for a label it has not clustered yet) its row is
one-hot, as the note's manager does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from protofast import PrototypeManager

__all__ = ["PCL_ALPHA", "PROTOTYPE_FORMS", "ClusterPrototypes", "make_prototypes"]

#: The forms of ``--prototype-form``.
PROTOTYPE_FORMS: tuple[str, ...] = ("note", "sensor", "pcl")

#: PCL's smoothing constant of the concentration estimate.
PCL_ALPHA = 10.0


class ClusterPrototypes:
    """Prototype soft targets from sensor-side clusters or several text-side granularities.

    Args:
        label_embeddings: ``{label: D-vector}`` frozen text embeddings of every label that
            can occur (the prototypes are means of these).
        source: ``"text"`` (cluster the label-text embeddings) or ``"sensor"`` (cluster the
            per-label means of the IMU embeddings given to :meth:`add_labels`).
        cluster_counts: One k-means per count (one: a single granularity).
        concentration: Per-cluster temperature as in PCL (``False``: one temperature).
        update_interval: Re-cluster every this many :meth:`add_labels` calls.
        seed: Seed of every k-means.
        device: Device of the targets' computations.
        sensor_window: With ``source="sensor"``, each label's mean is over its last this many
            IMU embeddings.

    Raises:
        ValueError: On an unknown ``source`` or an empty ``cluster_counts``.
    """

    def __init__(
        self,
        label_embeddings: Mapping[str, Any],
        *,
        source: str = "text",
        cluster_counts: Sequence[int] = (5,),
        concentration: bool = False,
        update_interval: int = 100,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sensor_window: int = 32,
    ) -> None:
        if source not in ("text", "sensor"):
            raise ValueError(f"source must be 'text' or 'sensor', got {source!r}")
        if not cluster_counts:
            raise ValueError("cluster_counts must not be empty")
        self.source = source
        self.concentration = concentration
        self.device = torch.device(device)
        self.labels = list(label_embeddings)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.text = torch.stack(
            [
                torch.as_tensor(np.asarray(label_embeddings[t]), dtype=torch.float32)
                for t in self.labels
            ]
        ).to(self.device)
        window = sensor_window if source == "sensor" else None
        self.managers = [
            PrototypeManager(
                num_clusters=k,
                update_interval=update_interval,
                device=self.device,
                seed=seed,
                max_samples_per_label=window,
            )
            for k in cluster_counts
        ]
        # per manager: (num_updates, cluster of each label or -1, prototypes, temperature scale)
        self._cache: list[tuple[int, Tensor, Tensor, Tensor] | None] = [None] * len(self.managers)

    # ------------------------------------------------------------------ state
    @property
    def is_initialized(self) -> bool:
        """Whether every granularity has clustered at least once."""
        return all(m.is_initialized for m in self.managers)

    @property
    def num_updates(self) -> int:
        """Clusterings of the first granularity."""
        return int(self.managers[0].num_updates)

    @property
    def cluster_labels(self) -> dict[int, list[str]]:
        """Labels of each cluster of the first granularity."""
        return dict(self.managers[0].cluster_labels)

    def state_dict(self) -> dict[str, Any]:
        """The managers' states (for checkpoints).

        Returns:
            ``{"managers": [state, ...]}``.
        """
        return {"managers": [m.state_dict() for m in self.managers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the managers' states saved by :meth:`state_dict`.

        Args:
            state: The saved state.

        Raises:
            ValueError: If the number of granularities differs.
        """
        states = list(state["managers"])
        if len(states) != len(self.managers):
            raise ValueError(f"{len(states)} saved granularities, {len(self.managers)} here")
        for m, s in zip(self.managers, states, strict=True):
            m.load_state_dict(s)
        self._cache = [None] * len(self.managers)

    # ----------------------------------------------------------------- ingest
    def add_labels(self, label_texts: Sequence[str], embeddings: Tensor) -> None:
        """Feed one batch: its labels with their text embeddings (``source="text"``) or their
        IMU embeddings (``source="sensor"``; detached here).

        Args:
            label_texts: ``B`` labels.
            embeddings: ``(B, D)`` embeddings.
        """
        emb = embeddings.detach()
        for m in self.managers:
            m.add_labels(label_texts, emb)

    # ---------------------------------------------------------------- targets
    def _clusters(self, i: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(cluster of each label (-1: none), text-space prototypes, temperature scale)``
        of granularity ``i``, recomputed after each of its clusterings."""
        m = self.managers[i]
        if not m.is_initialized:
            return None
        cached = self._cache[i]
        if cached is not None and cached[0] == m.num_updates:
            return cached[1], cached[2], cached[3]
        k = m.num_clusters
        assign = torch.tensor(
            [m.label_to_cluster.get(label, -1) for label in self.labels],
            dtype=torch.int64,
            device=self.device,
        )
        protos = torch.zeros(k, self.text.shape[1], device=self.device)
        counts = torch.zeros(k, device=self.device)
        ok = assign >= 0
        protos.index_add_(0, assign[ok], self.text[ok])
        counts.index_add_(0, assign[ok], torch.ones(int(ok.sum()), device=self.device))
        protos = protos / counts.clamp_min(1.0)[:, None]
        scale = torch.ones(k, device=self.device)
        if self.concentration:
            dist = torch.zeros(k, device=self.device)
            dist.index_add_(0, assign[ok], (self.text[ok] - protos[assign[ok]]).norm(dim=1))
            n = counts.clamp_min(1.0)
            phi = dist / (n * torch.log(n + PCL_ALPHA))
            single = counts <= 1
            if bool((~single & (counts > 0)).any()):
                phi = torch.where(single, phi[~single & (counts > 0)].max(), phi)
            used = counts > 0
            mean_phi = phi[used].mean() if bool(used.any()) else torch.tensor(1.0)
            if float(mean_phi) > 0:
                scale = (phi / mean_phi).clamp(0.1, 10.0)
        self._cache[i] = (m.num_updates, assign, protos, scale)
        return assign, protos, scale

    def get_prototype_targets(
        self, label_texts: Sequence[str], text_embeddings: Tensor, temperature: float = 0.5
    ) -> Tensor:
        """Prototype soft targets of a batch (the mean over granularities).

        Row ``i`` of a granularity is ``softmax(p[c_i] @ E^T / (temperature * s[c_i]))`` with
        ``c_i`` the cluster of label ``i``, ``p`` the text-space prototypes and ``s`` the
        concentration scale (1 without concentration); one-hot where the label has no cluster.

        Args:
            label_texts: ``B`` labels.
            text_embeddings: ``(B, D)`` the batch's (frozen) label embeddings ``E``.
            temperature: Soft-target temperature.

        Returns:
            ``(B, B)`` row-stochastic targets on ``text_embeddings``' device.
        """
        temperature = _check_temperature(temperature)
        b = len(label_texts)
        emb = text_embeddings.detach().float().to(self.device)
        rows = torch.tensor([self.index.get(t, -1) for t in label_texts], device=self.device)
        eye = torch.eye(b, device=self.device)
        total = torch.zeros(b, b, device=self.device)
        for i in range(len(self.managers)):
            got = self._clusters(i)
            if got is None:
                total += eye
                continue
            assign, protos, scale = got
            cl = torch.where(rows >= 0, assign[rows.clamp_min(0)], torch.full_like(rows, -1))
            c = cl.clamp_min(0)
            logits = (protos[c] @ emb.T) / (temperature * scale[c])[:, None]
            soft = torch.softmax(logits, dim=1)
            total += torch.where((cl >= 0)[:, None], soft, eye)
        return (total / len(self.managers)).to(text_embeddings.device)


def make_prototypes(
    form: str,
    *,
    num_clusters: int,
    update_interval: int,
    seed: int,
    device: torch.device,
    label_embeddings: Mapping[str, Any],
) -> Any:
    """The prototype manager of a ``--prototype-form``.

    Args:
        form: ``"note"``, ``"sensor"`` or ``"pcl"``.
        num_clusters: The note's ``num_clusters`` (PCL: the finest of its three counts is
            ``4 * num_clusters``).
        update_interval: Batches between re-clusterings.
        seed: Seed of the k-means.
        device: Device of the targets.
        label_embeddings: ``{label: frozen text embedding}`` of every training label.

    Returns:
        A :class:`protofast.PrototypeManager` (``"note"``) or a :class:`ClusterPrototypes`.

    Raises:
        ValueError: On an unknown form.
    """
    if form == "note":
        return PrototypeManager(
            num_clusters=num_clusters, update_interval=update_interval, device=device, seed=seed
        )
    if form == "sensor":
        return ClusterPrototypes(
            label_embeddings,
            source="sensor",
            cluster_counts=(num_clusters,),
            update_interval=update_interval,
            seed=seed,
            device=device,
        )
    if form == "pcl":
        counts = tuple(dict.fromkeys(max(1, num_clusters * f) for f in (1, 2, 4)))
        return ClusterPrototypes(
            label_embeddings,
            source="text",
            cluster_counts=counts,
            concentration=True,
            update_interval=update_interval,
            seed=seed,
            device=device,
        )
    raise ValueError(f"prototype form must be one of {PROTOTYPE_FORMS}, got {form!r}")


def _check_temperature(temperature: float) -> float:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature
