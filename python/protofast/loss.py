"""Symmetric InfoNCE loss with hard, pairwise and prototype soft targets.

The loss aligns IMU embeddings with text embeddings of their activity labels. Embeddings are used
as given: the loss does **not** normalise them. Pass L2-normalised embeddings (what the design
note's training script does) so that ``imu @ text.T`` are cosine similarities.

Targets (all computed without gradient):

* hard: identity (``hard_targets="identity"``), or every same-label pair in the batch
  (``hard_targets="label"``, row mass spread evenly over a row's positives);
* pairwise: ``softmax(E @ E.T / soft_target_temperature, dim=1)`` with ``E`` the text
  embeddings, or the frozen ``target_embeddings`` of the samples' labels when given;
* prototype: ``prototype_manager.get_prototype_targets(label_texts, E, temperature=...)``;
* final: ``(1 - soft_target_weight) * hard + soft_target_weight * soft`` where ``soft`` is the
  pairwise targets, the prototype targets, or their blend
  ``(1 - prototype_weight) * pairwise + prototype_weight * prototype`` in hybrid mode.

The loss is the mean of ``-sum(targets * log_softmax(logits))`` over rows for ``imu -> text``
(``imu @ text.T / temperature``) and ``text -> imu`` (``text @ imu.T / temperature``), both with
the same target matrix. Queue entries are extra negatives with zero target.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .targets import (
    LabelIndex,
    _check_temperature,
    _check_weight,
    blend_targets,
    hard_targets,
    index_labels,
    pairwise_targets_from_similarity,
)

__all__ = ["InfoNCELoss", "SemanticAlignmentLoss"]

HardTargets = Literal["identity", "label"]


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_embeddings(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N x D), got shape {tuple(value.shape)}")
    return value


def _frozen_label_embeddings(value: Any) -> tuple[dict[str, int], Tensor]:
    """Validate ``target_embeddings`` and stack it into an ``L x D`` matrix."""
    if isinstance(value, Tensor):
        raise TypeError(
            "target_embeddings must be a mapping {label: D-vector}; a batch-aligned tensor is "
            "not accepted because the loss is built once and batches change every step"
        )
    if not isinstance(value, Mapping):
        raise TypeError(
            f"target_embeddings must be a mapping {{label: D-vector}}, got {type(value).__name__}"
        )
    if len(value) == 0:
        raise ValueError("target_embeddings must not be empty")
    index: dict[str, int] = {}
    rows: list[Tensor] = []
    for label, vector in value.items():
        if not isinstance(label, str):
            raise TypeError(f"target_embeddings keys must be str, got {type(label).__name__}")
        row = torch.as_tensor(vector).detach()
        if not (row.dtype.is_floating_point or row.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"target_embeddings[{label!r}] must be numeric, got {row.dtype}")
        if row.dim() != 1 or row.numel() == 0:
            raise ValueError(
                f"target_embeddings[{label!r}] must be a non-empty 1-D vector, "
                f"got shape {tuple(row.shape)}"
            )
        if rows and row.numel() != rows[0].numel():
            raise ValueError(
                f"target_embeddings[{label!r}] has dimension {row.numel()}, "
                f"expected {rows[0].numel()} like the other labels"
            )
        index[label] = len(rows)
        rows.append(row.to(device="cpu", dtype=torch.promote_types(row.dtype, torch.float32)))
    dtype = rows[0].dtype
    for row in rows:
        dtype = torch.promote_types(dtype, row.dtype)
    matrix = torch.stack([row.to(dtype) for row in rows]).clone()
    if not torch.isfinite(matrix).all():
        raise ValueError("target_embeddings contains non-finite values")
    return index, matrix


def _symmetric_soft_cross_entropy(
    base: Tensor,
    lse_it: Tensor,
    lse_ti: Tensor,
    targets: Tensor | None,
    targets_symmetric: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The mean of the two directions' soft cross-entropies, with one target pass.

    With ``log_softmax = logits - lse``, row ``i`` of a direction costs
    ``lse_i * sum_j T_ij - sum_j T_ij * logits_ij``. The in-batch logits are ``base`` for
    ``imu -> text`` and ``base.T`` for ``text -> imu`` (queue columns have zero target), so
    both target terms together are ``<T + T.T, base>``: one dot product forward and one
    multiply backward. ``targets=None`` means the identity (the terms are the trace).

    Returns:
        ``(loss, row_sums)``; ``row_sums`` (of ``targets``) is ``None`` for the identity.
    """
    batch = base.shape[0]
    if targets is None:
        loss = 0.5 * (lse_it.mean() + lse_ti.mean()) - base.diagonal().sum() / batch
        return loss, None
    with torch.no_grad():
        row_sums = targets.sum(dim=1)
        symmetric = 2.0 * targets if targets_symmetric else targets + targets.T
    positive_term = torch.dot(symmetric.reshape(-1), base.reshape(-1))
    loss = 0.5 * (((lse_it + lse_ti) * row_sums).mean() - positive_term / batch)
    return loss, row_sums


def _long_tensor(values: list[int]) -> Tensor:
    """A CPU int64 tensor from a list of ints (several times faster than ``torch.tensor``)."""
    if not values:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(array("q", values), dtype=torch.long)


def _to_device(values: list[int], device: torch.device) -> Tensor:
    """Copy a list of ints to ``device`` without blocking the host on CUDA."""
    cpu = _long_tensor(values)
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu.to(device)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with optional pairwise and prototype soft targets.

    Args:
        temperature: Logit temperature, ``> 0``.
        use_soft_targets: Use pairwise (label-similarity) soft targets.
        soft_target_temperature: Temperature of the pairwise softmax, also passed to the
            prototype manager; ``> 0``.
        soft_target_weight: Weight of the soft targets against the hard ones, in ``[0, 1]``.
        use_prototypes: Use the prototype manager's soft targets.
        prototype_weight: Share of the prototype targets in hybrid mode, in ``[0, 1]``.
        prototype_manager: Object with ``get_prototype_targets(label_texts, embeddings,
            temperature=...)`` returning a ``B x B`` row-stochastic tensor; required when
            ``use_prototypes``. The loss only reads it: feeding it (``add_labels``) is the
            training loop's job.
        hard_targets: ``"identity"`` (sample ``i`` matches only column ``i``) or ``"label"``
            (every same-label sample of the batch is a positive; needs ``label_texts``).
        target_embeddings: Optional frozen label embeddings as a mapping
            ``{label: D_t-vector}`` (tensor, array or list; ``D_t`` may differ from the model's
            ``D``). When given, pairwise and prototype targets are computed from these
            instead of the batch's text embeddings, and ``label_texts`` must be passed to
            ``forward`` with every label present in the mapping. Stored as a non-persistent
            buffer (moves with ``.to()``, not saved in ``state_dict``).

    Raises:
        TypeError: On an argument of the wrong type.
        ValueError: On an out-of-range value, an unknown ``hard_targets``, or
            ``use_prototypes=True`` without a ``prototype_manager``.

    Notes:
        * Inputs are not normalised (see the module docstring).
        * fp16/bf16 inputs (e.g. under autocast) are upcast: the loss is computed in float32
          (float64 inputs stay float64) with autocast disabled inside.
        * Pairwise targets are computed on ``L`` distinct labels instead of ``B`` samples (the
          *dedup path*, exact) when ``label_texts`` are given and either ``target_embeddings``
          is set, or the embeddings are on the CPU and every sample's text embedding equals
          that of the first sample with the same label (checked with one ``torch.equal``). On
          other devices without ``target_embeddings`` the ``B x B`` path is used, so no
          host-device synchronisation happens.
    """

    _target_matrix: Tensor | None

    def __init__(
        self,
        temperature: float = 0.1,
        use_soft_targets: bool = True,
        soft_target_temperature: float = 0.5,
        soft_target_weight: float = 0.5,
        use_prototypes: bool = False,
        prototype_weight: float = 0.5,
        prototype_manager: Any | None = None,
        *,
        hard_targets: HardTargets = "identity",
        target_embeddings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature("temperature", temperature)
        self.use_soft_targets = _check_bool("use_soft_targets", use_soft_targets)
        self.soft_target_temperature = _check_temperature(
            "soft_target_temperature", soft_target_temperature
        )
        self.soft_target_weight = _check_weight("soft_target_weight", soft_target_weight)
        self.use_prototypes = _check_bool("use_prototypes", use_prototypes)
        self.prototype_weight = _check_weight("prototype_weight", prototype_weight)
        if use_prototypes and prototype_manager is None:
            raise ValueError("use_prototypes=True requires a prototype_manager")
        if prototype_manager is not None and not callable(
            getattr(prototype_manager, "get_prototype_targets", None)
        ):
            raise TypeError("prototype_manager must have a get_prototype_targets method")
        self.prototype_manager = prototype_manager
        if hard_targets not in ("identity", "label"):
            raise ValueError(f"hard_targets must be 'identity' or 'label', got {hard_targets!r}")
        self.hard_targets: HardTargets = hard_targets
        self._target_index: dict[str, int] | None = None
        if target_embeddings is not None:
            self._target_index, matrix = _frozen_label_embeddings(target_embeddings)
            self.register_buffer("_target_matrix", matrix, persistent=False)
        else:
            self._target_matrix = None

    def extra_repr(self) -> str:
        """Summarise the configuration for ``repr``."""
        return (
            f"temperature={self.temperature}, use_soft_targets={self.use_soft_targets}, "
            f"soft_target_temperature={self.soft_target_temperature}, "
            f"soft_target_weight={self.soft_target_weight}, "
            f"use_prototypes={self.use_prototypes}, prototype_weight={self.prototype_weight}, "
            f"hard_targets={self.hard_targets!r}, "
            f"target_embeddings={self._target_matrix is not None}"
        )

    # ------------------------------------------------------------------ validation

    def _check_inputs(
        self,
        imu: Any,
        text: Any,
        label_texts: Any,
        imu_queue: Any,
        text_queue: Any,
    ) -> LabelIndex | None:
        imu = _check_embeddings("imu_embeddings", imu)
        text = _check_embeddings("text_embeddings", text)
        if imu.shape != text.shape:
            raise ValueError(
                f"imu_embeddings and text_embeddings must have the same shape, "
                f"got {tuple(imu.shape)} and {tuple(text.shape)}"
            )
        batch, dim = imu.shape
        if batch < 1 or dim < 1:
            raise ValueError(f"embeddings must be non-empty, got shape {tuple(imu.shape)}")
        if imu.device != text.device:
            raise ValueError(
                f"imu_embeddings is on {imu.device} but text_embeddings is on {text.device}"
            )
        for name, queue in (("imu_queue", imu_queue), ("text_queue", text_queue)):
            if queue is None:
                continue
            _check_embeddings(name, queue)
            if queue.shape[1] != dim:
                raise ValueError(f"{name} must have shape (Q, {dim}), got {tuple(queue.shape)}")
            if queue.device != imu.device:
                raise ValueError(f"{name} is on {queue.device}, expected {imu.device}")

        soft = self.use_soft_targets or self.use_prototypes
        if label_texts is None:
            if self.hard_targets == "label":
                raise ValueError("hard_targets='label' requires label_texts")
            if self.use_prototypes:
                raise ValueError("use_prototypes=True requires label_texts")
            if soft and self._target_index is not None:
                raise ValueError("label_texts is required when target_embeddings is set")
            return None
        if isinstance(label_texts, str | bytes) or not isinstance(label_texts, Sequence):
            raise TypeError(
                f"label_texts must be a sequence of str, got {type(label_texts).__name__}"
            )
        if len(label_texts) != batch:
            raise ValueError(
                f"label_texts has {len(label_texts)} entries, expected {batch} (the batch size)"
            )
        needs_index = (
            self.hard_targets == "label"
            or (soft and self._target_index is not None)
            or (self.use_soft_targets and imu.device.type == "cpu")  # dedup candidate
        )
        if not needs_index:
            return None  # labels are not used beyond the manager: skip grouping them
        index = index_labels(label_texts)
        if soft and self._target_index is not None:
            missing = [label for label in index.labels if label not in self._target_index]
            if missing:
                raise ValueError(
                    f"labels missing from target_embeddings: {missing[:5]}"
                    + (" ..." if len(missing) > 5 else "")
                )
        return index

    # ------------------------------------------------------------------ targets

    def _use_dedup(self, text: Tensor, index: LabelIndex, ids: Tensor) -> bool:
        """Whether pairwise targets from ``text`` may use the per-label (dedup) path.

        Only on the CPU (the check would need a host-device sync elsewhere), only when some
        label repeats, and only when every row equals the row of its label's first sample.
        """
        if text.device.type != "cpu" or len(index.labels) == text.shape[0]:
            return False
        representative = _long_tensor(index.first).index_select(0, ids)
        # numpy's comparison is several times faster than torch.equal on the CPU; text is
        # float32/float64 here (upcast before targets are built), so .numpy() is safe
        return bool(np.array_equal(text.index_select(0, representative).numpy(), text.numpy()))

    @torch.no_grad()
    def _targets(
        self,
        text: Tensor,
        label_texts: Sequence[str] | None,
        index: LabelIndex | None,
        want_semantic: bool,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Return ``(targets or None for identity, label ids or None, semantic similarity)``."""
        batch = text.shape[0]
        device, dtype = text.device, text.dtype
        soft = self.use_soft_targets or self.use_prototypes
        text = text.detach()

        ids = counts = rows = None
        if index is not None and (self.hard_targets == "label" or soft):
            n_labels = len(index.labels)
            extra = (
                [self._target_index[label] for label in index.labels]
                if soft and self._target_index is not None
                else []
            )
            packed = _to_device(index.inverse + index.counts + extra, device)
            ids = packed[:batch]
            counts = packed[batch : batch + n_labels].to(dtype)
            rows = packed[batch + n_labels :] if extra else None

        hard = None
        if self.hard_targets == "label":
            hard = hard_targets(batch, ids, dtype=dtype)
        if not soft:
            return hard, ids, None

        label_emb: Tensor | None = None  # L x D_t, one row per distinct label
        if rows is not None:
            assert self._target_matrix is not None
            label_emb = self._target_matrix.to(device).index_select(0, rows).to(dtype)
        elif (
            self.use_soft_targets
            and index is not None
            and ids is not None
            and self._use_dedup(text, index, ids)
        ):
            label_emb = text.index_select(0, _long_tensor(index.first))

        pairwise = prototype = semantic = None
        if self.use_soft_targets:
            if label_emb is not None:
                sim = label_emb @ label_emb.T
                pairwise = pairwise_targets_from_similarity(
                    sim, self.soft_target_temperature, label_ids=ids, label_counts=counts
                )
                if want_semantic:
                    assert counts is not None
                    total = counts @ sim @ counts - (counts * sim.diagonal()).sum()
                    semantic = total / max(batch * (batch - 1), 1)
            else:
                sim = text @ text.T
                pairwise = pairwise_targets_from_similarity(sim, self.soft_target_temperature)
                if want_semantic:
                    semantic = (sim.sum() - sim.diagonal().sum()) / max(batch * (batch - 1), 1)

        if self.use_prototypes:
            assert label_texts is not None
            source = label_emb.index_select(0, ids) if rows is not None else text
            prototype = self._prototype_targets(label_texts, source, batch, device, dtype)

        targets = blend_targets(
            hard,
            pairwise,
            prototype,
            soft_target_weight=self.soft_target_weight,
            prototype_weight=self.prototype_weight,
        )
        return targets, ids, semantic

    def _prototype_targets(
        self,
        label_texts: Sequence[str],
        embeddings: Tensor,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        result = self.prototype_manager.get_prototype_targets(
            list(label_texts), embeddings, temperature=self.soft_target_temperature
        )
        result = torch.as_tensor(result)
        if result.shape != (batch, batch):
            raise ValueError(
                f"prototype_manager.get_prototype_targets returned shape "
                f"{tuple(result.shape)}, expected ({batch}, {batch})"
            )
        return result.detach().to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        imu_embeddings: Tensor,
        text_embeddings: Tensor,
        label_texts: Sequence[str] | None = None,
        return_metrics: bool = True,
        imu_queue: Tensor | None = None,
        text_queue: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Compute the loss.

        Args:
            imu_embeddings: ``B x D`` IMU embeddings (normalised by the caller).
            text_embeddings: ``B x D`` text embeddings; row ``i`` is sample ``i``'s positive.
            label_texts: ``B`` label strings. Required for ``hard_targets="label"``,
                prototypes and ``target_embeddings``; enables the dedup path.
            return_metrics: Whether to compute the metrics dict.
            imu_queue: Optional ``Q x D`` extra IMU negatives for the ``text -> imu`` direction.
            text_queue: Optional ``Q x D`` extra text negatives for the ``imu -> text``
                direction.

        Returns:
            ``(loss, metrics)``: the scalar loss and, when ``return_metrics``, a dict of
            0-dim detached tensors (not Python floats, to avoid a host-device sync; call
            ``.item()`` when logging): ``loss``, ``loss_imu_to_text``, ``loss_text_to_imu``,
            ``acc_imu_to_text``, ``acc_text_to_imu`` (share of rows whose argmax over all
            columns, queue included, is a positive: the diagonal, or any same-label column
            with ``hard_targets="label"``), ``positive_similarity`` (mean of the diagonal of
            ``imu @ text.T``), ``negative_similarity`` (mean of its off-diagonal, 0 when
            ``B == 1``), ``similarity_gap`` (positive minus negative) and, when
            ``use_soft_targets``, ``label_semantic_similarity`` (mean off-diagonal
            similarity of the label embeddings used for the pairwise targets). ``None``
            otherwise.

        Raises:
            TypeError: On a non-tensor or non-floating input, or bad ``label_texts``.
            ValueError: On mismatched shapes/devices or a missing ``label_texts``.
        """
        index = self._check_inputs(
            imu_embeddings, text_embeddings, label_texts, imu_queue, text_queue
        )
        batch = imu_embeddings.shape[0]
        dtype = torch.promote_types(
            torch.promote_types(imu_embeddings.dtype, text_embeddings.dtype), torch.float32
        )
        device = imu_embeddings.device
        with torch.autocast(device_type=device.type, enabled=False):
            imu = imu_embeddings.to(dtype)
            text = text_embeddings.to(dtype)
            targets, ids, semantic = self._targets(text, label_texts, index, return_metrics)
            soft = self.use_soft_targets or self.use_prototypes

            sim = imu @ text.T
            base = sim / self.temperature  # in-batch imu -> text logits, contiguous
            logits_it, logits_ti = base, base.T
            if text_queue is not None:
                extra = imu @ text_queue.to(dtype).T / self.temperature
                logits_it = torch.cat([logits_it, extra], dim=1)
            if imu_queue is not None:
                extra = text @ imu_queue.to(dtype).T / self.temperature
                logits_ti = torch.cat([logits_ti, extra], dim=1)
            lse_it = torch.logsumexp(logits_it, dim=1)
            lse_ti = torch.logsumexp(logits_ti, dim=1)
            symmetric = targets is not None and not soft  # same-label targets: T == T.T
            loss, row_sums = _symmetric_soft_cross_entropy(base, lse_it, lse_ti, targets, symmetric)

            if not return_metrics:
                return loss, None
            with torch.no_grad():
                # per-direction losses, only for reporting
                if targets is None:
                    trace = base.diagonal().sum() / batch
                    loss_it, loss_ti = lse_it.mean() - trace, lse_ti.mean() - trace
                else:
                    assert row_sums is not None
                    flat = base.reshape(-1)
                    loss_it = (lse_it * row_sums).mean() - targets.reshape(-1) @ flat / batch
                    loss_ti = (lse_ti * row_sums).mean() - targets.T.reshape(-1) @ flat / batch
                metrics = self._metrics(
                    loss, loss_it, loss_ti, sim, logits_it, logits_ti, ids, batch, semantic
                )
        return loss, metrics

    def _metrics(
        self,
        loss: Tensor,
        loss_it: Tensor,
        loss_ti: Tensor,
        sim: Tensor,
        logits_it: Tensor,
        logits_ti: Tensor,
        ids: Tensor | None,
        batch: int,
        semantic: Tensor | None,
    ) -> dict[str, Tensor]:
        sim = sim.detach()
        diagonal = sim.diagonal()
        positive = diagonal.mean()
        negative = (sim.sum() - diagonal.sum()) / max(batch * (batch - 1), 1)
        rows = torch.arange(batch, device=sim.device)

        def accuracy(logits: Tensor) -> Tensor:
            pred = logits.detach().max(dim=1).indices  # first maximum, like argmax
            if self.hard_targets == "label":
                assert ids is not None
                in_batch = pred < batch
                hit = in_batch & (ids[pred.clamp(max=batch - 1)] == ids)
            else:
                hit = pred == rows
            return hit.to(sim.dtype).mean()

        metrics = {
            "loss": loss.detach(),
            "loss_imu_to_text": loss_it.detach(),
            "loss_text_to_imu": loss_ti.detach(),
            "acc_imu_to_text": accuracy(logits_it),
            "acc_text_to_imu": accuracy(logits_ti),
            "positive_similarity": positive,
            "negative_similarity": negative,
            "similarity_gap": positive - negative,
        }
        if semantic is not None:
            metrics["label_semantic_similarity"] = semantic
        return metrics


class SemanticAlignmentLoss(nn.Module):
    """The design note's entry point: a thin wrapper around :class:`InfoNCELoss`.

    Takes exactly the arguments of :class:`InfoNCELoss` (see there) and its ``forward`` returns
    the same ``(loss, metrics)`` tuple. The wrapped loss is available as ``.info_nce``.

    Raises:
        TypeError: As :class:`InfoNCELoss`.
        ValueError: As :class:`InfoNCELoss`.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        use_soft_targets: bool = True,
        soft_target_temperature: float = 0.5,
        soft_target_weight: float = 0.5,
        use_prototypes: bool = False,
        prototype_weight: float = 0.5,
        prototype_manager: Any | None = None,
        *,
        hard_targets: HardTargets = "identity",
        target_embeddings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.info_nce = InfoNCELoss(
            temperature=temperature,
            use_soft_targets=use_soft_targets,
            soft_target_temperature=soft_target_temperature,
            soft_target_weight=soft_target_weight,
            use_prototypes=use_prototypes,
            prototype_weight=prototype_weight,
            prototype_manager=prototype_manager,
            hard_targets=hard_targets,
            target_embeddings=target_embeddings,
        )

    @property
    def prototype_manager(self) -> Any | None:
        """The prototype manager of the wrapped loss (``None`` when unset)."""
        return self.info_nce.prototype_manager

    def forward(
        self,
        imu_embeddings: Tensor,
        text_embeddings: Tensor,
        label_texts: Sequence[str] | None = None,
        return_metrics: bool = True,
        imu_queue: Tensor | None = None,
        text_queue: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Compute the loss; see :meth:`InfoNCELoss.forward`.

        Returns:
            ``(loss, metrics or None)`` exactly as :meth:`InfoNCELoss.forward`.
        """
        return self.info_nce(
            imu_embeddings,
            text_embeddings,
            label_texts=label_texts,
            return_metrics=return_metrics,
            imu_queue=imu_queue,
            text_queue=text_queue,
        )
