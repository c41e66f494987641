"""Settings of one ``protofast-train`` run (the CLI flags; defaults are the design note's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .text import DEFAULT_TEXT_MODEL

__all__ = ["TrainConfig"]


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
        prototype_form: How prototypes are formed (with ``use_prototypes``): ``"note"`` (the
            design note's: k-means of the label-text embeddings, :class:`protofast.
            PrototypeManager`), ``"sensor"`` (clusters of the per-label means of the IMU
            embeddings; prototypes are the mean text embedding of each cluster's labels) or
            ``"pcl"`` (text clusters at three granularities, ``num_clusters`` x 1, 2 and 4,
            each with a per-cluster concentration as in Prototypical Contrastive Learning;
            the targets are the mean of the three). See :mod:`protofast.train.prototypes`.
        dataset: ``"hapt"`` (UCI HAPT) or ``"basicmotions"`` (UEA BasicMotions).
        label_texts: ``"descriptions"`` (a few natural descriptions per activity) or
            ``"captions"`` (a few hundred captions composed from description, manner and
            context; :mod:`protofast.train.data.captions`).
        text_head: ``"frozen"`` (MiniLM embeddings as they are) or ``"linear"``.
        text_model: Text encoder name or local directory.
        include_transitions: Use the six postural transitions as well (12 activities).
        data_path: Explicit HAPT file, or BasicMotions folder (default: located
            automatically).
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
    prototype_form: str = "note"
    text_head: str = "frozen"
    dataset: str = "hapt"
    label_texts: str = "descriptions"
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
