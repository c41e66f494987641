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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ._protofast import label_targets_raw, rows_match_raw
from .targets import (
    _check_temperature,
    _check_weight,
    _index_checked_labels,
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


class _BatchLabels(NamedTuple):
    """The distinct labels of a batch (see :func:`protofast.targets.index_label_arrays`)."""

    labels: list[str]
    inverse: np.ndarray  # (B,) index of each sample's label in ``labels``
    counts: np.ndarray  # (L,) samples per label
    first: np.ndarray  # (L,) first sample of each label


class _Targets:
    """A ``B x B`` target matrix in factored form, ``T = label_part[ids][:, ids] + dense +
    diag(diagonal)``, so that it is only expanded where the loss needs it.

    ``label_part`` is ``L x L``, one row and column per distinct label, with each column
    already divided by its label's sample count (a label's mass is spread evenly over its
    columns); ``dense`` is ``B x B``; ``diagonal`` is a scalar or a ``(B,)`` tensor. All
    parts are optional (``None`` / ``0.0``); none carries a gradient. Every part is added
    already weighted, together with its row mass: the weight, for parts built
    row-stochastic (softmax rows, one-hot rows, same-label rows), so their row sums are
    known without summing; ``None`` for a matrix from elsewhere, whose rows are summed.
    """

    __slots__ = ("batch", "counts", "dense", "diagonal", "ids", "label_part", "mass", "summed")

    def __init__(self, batch: int, ids: Tensor | None, counts: Tensor | None) -> None:
        self.batch = batch
        self.ids = ids
        self.counts = counts
        self.label_part: Tensor | None = None
        self.dense: Tensor | None = None
        self.diagonal: Tensor | float = 0.0
        self.mass = 0.0  # row mass of the parts built row-stochastic
        self.summed: Tensor | None = None  # row sums of the other parts

    def add_label_part(self, matrix: Tensor, mass: float) -> None:
        """Adds an ``L x L`` part (owned by this object from now on)."""
        if self.label_part is None:
            self.label_part = matrix
        else:
            self.label_part.add_(matrix)
        self.mass += mass

    def add_dense(self, matrix: Tensor, mass: float | None, scale: float = 1.0) -> None:
        """Adds ``scale`` times a ``B x B`` part (owned by this object from now on);
        ``mass=None`` sums its rows (after scaling)."""
        if self.dense is None:
            self.dense = matrix if scale == 1.0 else matrix.mul_(scale)
        else:
            self.dense.add_(matrix, alpha=scale)
        if mass is None:
            rows = matrix.sum(dim=1) if self.dense is matrix else matrix.sum(dim=1).mul_(scale)
            self.summed = rows if self.summed is None else self.summed.add_(rows)
        else:
            self.mass += mass

    def add_diagonal(self, weight: Tensor | float, mass: float) -> None:
        """Adds ``weight`` (a scalar or a ``(B,)`` tensor) to the diagonal."""
        self.diagonal = self.diagonal + weight
        self.mass += mass

    def add_unclustered(
        self, one_hot: Tensor, weight: float, *, per_label: bool, dtype: torch.dtype
    ) -> None:
        """Moves the prototype mass ``weight`` of the rows that have no prototype
        (``one_hot``: a bool per distinct label when ``per_label``, else per sample) to the
        diagonal; their row mass is already counted with the prototype part."""
        if per_label:
            assert self.ids is not None
            one_hot = one_hot.index_select(0, self.ids)
        self.add_diagonal(weight * one_hot.to(dtype), 0.0)

    def _gather(self, label_matrix: Tensor) -> Tensor:
        assert self.ids is not None
        # two row/column gathers are much faster on the CPU than one 2-D advanced index
        return label_matrix.index_select(1, self.ids).index_select(0, self.ids)

    def row_sums(self) -> Tensor | float:
        """Row sums of ``T`` (a scalar when they are all the same by construction)."""
        if self.summed is None:
            return self.mass
        return self.summed + self.mass

    def symmetric(self) -> Tensor | None:
        """``T + T.T`` as a ``B x B`` matrix; ``None`` when ``T`` is diagonal."""
        out: Tensor | None = None
        if self.label_part is not None:
            out = self._gather(self.label_part + self.label_part.T)
        if self.dense is not None:
            if out is None:
                out = self.dense + self.dense.T
            else:
                out.add_(self.dense).add_(self.dense.T)
        if out is not None and _nonzero(self.diagonal):
            out.diagonal().add_(2.0 * self.diagonal)
        return out

    def matrix(self, like: Tensor) -> Tensor:
        """``T`` as a ``B x B`` matrix (for the per-direction metrics)."""
        if self.label_part is not None:
            out = self._gather(self.label_part)
            if self.dense is not None:
                out.add_(self.dense)
        elif self.dense is not None:
            out = self.dense.clone()
        else:
            out = like.new_zeros(self.batch, self.batch)
        if _nonzero(self.diagonal):
            out.diagonal().add_(self.diagonal)
        return out


def _nonzero(value: Tensor | float) -> bool:
    """Whether a diagonal weight may be non-zero (a tensor is not inspected: no sync)."""
    return isinstance(value, Tensor) or value != 0.0


def _soft_cross_entropy(
    base: Tensor, lse_it: Tensor, lse_ti: Tensor, targets: _Targets | None
) -> tuple[Tensor, Tensor | float | None]:
    """The mean of the two directions' soft cross-entropies, with one target pass.

    With ``log_softmax = logits - lse``, row ``i`` of a direction costs
    ``lse_i * sum_j T_ij - sum_j T_ij * logits_ij``. The in-batch logits are ``base`` for
    ``imu -> text`` and ``base.T`` for ``text -> imu`` (queue columns have zero target), so
    both target terms together are ``<T + T.T, base>``: one dot product forward and one
    multiply backward (a trace when ``T`` is diagonal). ``targets=None`` means the identity.

    Returns:
        ``(loss, row_sums)``; ``row_sums`` (of the targets) is ``None`` for the identity.
    """
    batch = base.shape[0]
    if targets is None:
        loss = 0.5 * (lse_it.mean() + lse_ti.mean()) - base.diagonal().sum() / batch
        return loss, None
    with torch.no_grad():
        row_sums = targets.row_sums()
        symmetric = targets.symmetric()
    lse = lse_it + lse_ti
    if isinstance(row_sums, Tensor):
        lse_term = torch.dot(lse, row_sums)
    else:
        lse_term = lse.sum() * row_sums
    if symmetric is not None:
        positive_term = torch.dot(symmetric.reshape(-1), base.reshape(-1))
    elif isinstance(targets.diagonal, Tensor):
        positive_term = 2.0 * torch.dot(targets.diagonal, base.diagonal())
    else:
        positive_term = (2.0 * targets.diagonal) * base.diagonal().sum()
    loss = (lse_term - positive_term) * (0.5 / batch)
    return loss, row_sums


# Largest L^2 * D for which the core builds the per-label targets: its single-threaded
# L x L product overtakes torch's between L = 50 and 100 at D = 384 (2 threads), while the
# tensor path's fixed cost of about fifteen small operations matters less and less.
_CORE_TARGETS_WORK = 1 << 21


def _dedup_pays_off(distinct: int, batch: int) -> bool:
    """Whether the per-label (dedup) path is worth trying for ``distinct`` labels among
    ``batch`` samples: it shrinks the ``B^2 D`` similarity to ``L^2 D`` and the ``B x B``
    target passes to ``L x L`` but costs a label grouping, an equality check and a final
    gather, so it only pays off once ``L^2 <= B^2 / 2``."""
    return 2 * distinct * distinct <= batch * batch


def _index_tensors(arrays: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """int64 tensors on ``device`` from host arrays: no copy on the CPU, one pinned
    non-blocking copy for all of them on CUDA (no host-device synchronisation)."""
    if device.type == "cpu":
        return [torch.from_numpy(a) for a in arrays]
    packed = torch.from_numpy(np.concatenate(arrays))
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    return list(packed.split([len(a) for a in arrays]))


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
            temperature=...)`` returning a ``B x B`` row-stochastic tensor (and optionally
            ``prototype_logits``, see the notes); required when ``use_prototypes``. The loss
            only reads it: feeding it (``add_labels``) is the training loop's job.
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
        * Pairwise targets (and prototype targets with them) are computed on ``L`` distinct
          labels instead of ``B`` samples (the *dedup path*, exact) when ``label_texts`` are
          given and either ``target_embeddings`` is set, or pairwise targets are on, the
          embeddings are on the CPU, labels repeat enough for it to pay off
          (``L^2 <= B^2 / 2``) and every sample's text embedding equals that of the first
          sample with the same label (checked with one pass over the rows). On other devices
          without ``target_embeddings`` the ``B x B`` path is used, so no host-device
          synchronisation happens.
        * A ``prototype_manager`` with a ``prototype_logits`` method (like
          :class:`protofast.PrototypeManager`) gives its targets in factored form
          (``k`` distinct rows and a prototype per sample); they are then built from ``k x L``
          logits on the dedup path, or ``k x B`` otherwise, instead of a ``B x B`` matrix.
          Other managers only need ``get_prototype_targets``.
        * On the dedup path on the CPU in float32 with a small label set (``L^2 D <= 2^21``,
          ``L <= 73`` at ``D = 384``; with such a manager, or without prototypes), the whole
          ``L x L`` blend is built by the compiled core in one call instead of by about fifteen
          small tensor operations; larger label sets, float64 and other devices use tensor
          operations. Both compute the same formula and differ only in rounding (the core's
          ``exp`` is within 2 ulp).
        * Targets are kept in factored form (per-label blend, dense part, diagonal) and only
          ``T + T.T`` is expanded to ``B x B`` for the loss; row sums of parts built
          row-stochastic are their weights (the rows of a manager's ``B x B`` matrix are
          summed). Results equal the plain formula up to floating-point rounding.
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
    ) -> _BatchLabels | None:
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
        needs_index = self.hard_targets == "label" or (soft and self._target_index is not None)
        dedup_candidate = self.use_soft_targets and imu.device.type == "cpu"
        if not needs_index and not dedup_candidate:
            return None  # labels are not used beyond the manager: skip grouping them
        index = _BatchLabels(*_index_checked_labels(label_texts))  # type-checks the labels
        if not needs_index and not _dedup_pays_off(len(index.labels), batch):
            return None  # too few repeats for the per-label path to pay off
        if soft and self._target_index is not None:
            missing = [label for label in index.labels if label not in self._target_index]
            if missing:
                raise ValueError(
                    f"labels missing from target_embeddings: {missing[:5]}"
                    + (" ..." if len(missing) > 5 else "")
                )
        return index

    # ------------------------------------------------------------------ targets

    def _use_dedup(self, text: Tensor, index: _BatchLabels, ids: Tensor) -> bool:
        """Whether pairwise targets from ``text`` may use the per-label (dedup) path.

        Only on the CPU (the check would need a host-device sync elsewhere), only when some
        label repeats, and only when every row equals the row of its label's first sample.
        """
        if text.device.type != "cpu" or len(index.labels) == text.shape[0]:
            return False
        # text is float32/float64 here (upcast before targets are built), so .numpy() is
        # safe; the compiled check reads each row once and stops at the first difference
        rows = text.numpy()
        same = rows_match_raw(rows, index.first, index.inverse)
        if same is None:  # not C-contiguous
            same = bool(np.array_equal(rows[index.first[index.inverse]], rows))
        return same

    def _target_weights(self) -> tuple[float, float, float]:
        """``(hard, pairwise, prototype)`` weights of the blend (zero for unused parts)."""
        w, p = self.soft_target_weight, self.prototype_weight
        if self.use_soft_targets and self.use_prototypes:
            return 1.0 - w, w * (1.0 - p), w * p
        if self.use_soft_targets:
            return 1.0 - w, w, 0.0
        if self.use_prototypes:
            return 1.0 - w, 0.0, w
        return 1.0, 0.0, 0.0

    @torch.no_grad()
    def _targets(
        self,
        text: Tensor,
        label_texts: Sequence[str] | None,
        index: _BatchLabels | None,
        want_semantic: bool,
    ) -> tuple[_Targets | None, Tensor | None, Tensor | None]:
        """Return ``(targets or None for identity, label ids or None, semantic similarity)``.

        The targets are ``(1 - w) H + w (1 - p) P + w p Q`` (``w = soft_target_weight``,
        ``p = prototype_weight``; ``P`` or ``Q`` alone get all of ``w``), in factored form:
        on the dedup path pairwise and prototype targets are built on the ``L`` distinct
        labels (``L x L`` and ``k x L``) and only the blend is expanded to ``B x B``.
        """
        batch = text.shape[0]
        device, dtype = text.device, text.dtype
        soft = self.use_soft_targets or self.use_prototypes
        if not soft and self.hard_targets == "identity":
            return None, None, None
        text = text.detach()

        ids = counts = rows = None
        if index is not None:
            arrays = [index.inverse, index.counts]
            if soft and self._target_index is not None:
                position = self._target_index
                arrays.append(np.array([position[label] for label in index.labels], np.int64))
            tensors = _index_tensors(arrays, device)
            ids, counts = tensors[0], tensors[1].to(dtype)
            rows = tensors[2] if len(tensors) > 2 else None

        w_hard, w_pair, w_proto = self._target_weights()
        targets = _Targets(batch, ids, counts)
        label_emb: Tensor | None = None  # L x D_t, one row per distinct label
        if rows is not None:
            assert self._target_matrix is not None
            label_emb = self._target_matrix.to(device).index_select(0, rows).to(dtype)
        elif (
            self.use_soft_targets
            and index is not None
            and ids is not None
            and _dedup_pays_off(len(index.labels), batch)
            and self._use_dedup(text, index, ids)
        ):
            label_emb = torch.from_numpy(text.numpy()[index.first])  # on the CPU here
        if (
            label_emb is not None
            and label_emb.device.type == "cpu"
            and label_emb.dtype == torch.float32
            and label_emb.shape[0] ** 2 * label_emb.shape[1] <= _CORE_TARGETS_WORK
            and (not self.use_prototypes or self._prototype_logits_fn() is not None)
        ):
            assert index is not None
            semantic = self._compiled_label_targets(targets, index, label_emb, want_semantic)
            return targets, ids, semantic

        if self.hard_targets == "label":
            assert counts is not None
            targets.add_label_part(torch.diag(counts.reciprocal().mul_(w_hard)), w_hard)
        else:
            targets.add_diagonal(w_hard, w_hard)
        if not soft:
            return targets, ids, None

        semantic = None
        if self.use_soft_targets:
            if label_emb is not None:
                # per label: softmax over the B columns = softmax over the L label columns
                # with log(count) added, its mass then spread evenly over the label's columns
                assert counts is not None
                sim = label_emb @ label_emb.T
                logits = torch.add(counts.log(), sim, alpha=1.0 / self.soft_target_temperature)
                pairwise = torch.softmax(logits, dim=1).mul_(w_pair / counts)
                targets.add_label_part(pairwise, w_pair)
                if want_semantic:
                    total = counts @ sim @ counts - (counts * sim.diagonal()).sum()
                    semantic = total / max(batch * (batch - 1), 1)
            else:
                sim = text @ text.T
                if want_semantic:
                    semantic = (sim.sum() - sim.diagonal().sum()) / max(batch * (batch - 1), 1)
                pairwise = torch.softmax(sim.div_(self.soft_target_temperature), dim=1)
                targets.add_dense(pairwise.mul_(w_pair), w_pair)

        if self.use_prototypes:
            assert label_texts is not None
            self._add_prototype_targets(targets, label_texts, index, text, label_emb, w_proto)
        return targets, ids, semantic

    def _prototype_logits_fn(self) -> Callable[..., Any] | None:
        """The manager's ``prototype_logits`` method (factored prototype targets); ``None``
        when there is no manager or it only gives ``B x B`` matrices."""
        factored_fn = getattr(self.prototype_manager, "prototype_logits", None)
        return factored_fn if callable(factored_fn) else None

    def _compiled_label_targets(
        self, targets: _Targets, index: _BatchLabels, label_emb: Tensor, want_semantic: bool
    ) -> Tensor | None:
        """Adds the whole blend on the per-label path, built by the core in one call
        (CPU, float32; the tensor formula of the other paths, rounded differently).

        Returns:
            The mean off-diagonal label similarity when ``want_semantic`` and pairwise
            targets are on, else ``None``.
        """
        w_hard, w_pair, w_proto = self._target_weights()
        hard = w_hard if self.hard_targets == "label" else 0.0
        if hard == 0.0:
            targets.add_diagonal(w_hard, w_hard)
        mass = hard + w_pair
        logits = clusters = None
        factored_fn = self._prototype_logits_fn() if self.use_prototypes else None
        if factored_fn is not None:
            factored = factored_fn(
                index.labels, label_emb, temperature=self.soft_target_temperature
            )
            if factored is None:  # not clustered yet: identity targets
                targets.add_diagonal(w_proto, w_proto)
            else:
                logits_t, clusters_t, one_hot = factored
                # CPU tensors from protofast's manager; another manager's go there first
                logits = logits_t.detach().to("cpu", torch.float32).contiguous().numpy()
                clusters = clusters_t.cpu().numpy()
                mass += w_proto
                if one_hot is not None:  # these rows' mass moves to the diagonal
                    one_hot = one_hot.cpu()
                    clusters = np.where(one_hot.numpy(), -1, clusters)
                    targets.add_unclustered(one_hot, w_proto, per_label=True, dtype=torch.float32)
        part, semantic = label_targets_raw(
            label_emb.contiguous().numpy(),
            index.counts.astype(np.float32),
            hard=hard,
            pairwise=w_pair,
            inv_temperature=1.0 / self.soft_target_temperature,
            logits=logits,
            clusters=clusters,
            prototype=w_proto,
            want_semantic=want_semantic and self.use_soft_targets,
        )
        targets.add_label_part(torch.from_numpy(part), mass)
        return None if semantic is None else torch.tensor(semantic, dtype=torch.float32)

    def _add_prototype_targets(
        self,
        targets: _Targets,
        label_texts: Sequence[str],
        index: _BatchLabels | None,
        text: Tensor,
        label_emb: Tensor | None,
        weight: float,
    ) -> None:
        """Adds ``weight`` times the prototype targets to ``targets``.

        With a manager that has ``prototype_logits`` (:class:`protofast.PrototypeManager`),
        the targets are built from its ``k`` distinct rows: per distinct label when
        ``label_emb`` is given (``k x L`` logits), else per sample (``k x B``). Other managers
        give the ``B x B`` matrix of ``get_prototype_targets``.
        """
        batch, device, dtype = text.shape[0], text.device, text.dtype
        factored_fn = self._prototype_logits_fn()
        if factored_fn is None:
            source = text
            if self._target_matrix is not None and label_emb is not None:
                assert targets.ids is not None
                source = label_emb.index_select(0, targets.ids)
            matrix = self._prototype_targets(label_texts, source, batch, device, dtype)
            targets.add_dense(matrix * weight, None)  # rows summed: any manager's matrix
            return
        temperature = self.soft_target_temperature
        per_label = label_emb is not None
        if per_label:
            assert index is not None and label_emb is not None
            factored = factored_fn(index.labels, label_emb, temperature=temperature)
        else:
            labels = label_texts if type(label_texts) is list else list(label_texts)
            factored = factored_fn(labels, text, temperature=temperature)
        if factored is None:  # not clustered yet: identity targets
            targets.add_diagonal(weight, weight)
            return
        logits, clusters, one_hot = factored
        logits = logits.to(device=device, dtype=dtype)
        if one_hot is not None:
            clusters = clusters.clamp_min(0)
        if per_label:  # columns are labels: the same log(count) rule as the pairwise targets
            counts = targets.counts
            assert counts is not None
            rows = torch.softmax(logits + counts.log(), dim=1).mul_(weight / counts)
        else:
            rows = torch.softmax(logits, dim=1)  # the weight goes in with the matrix
        matrix = rows.index_select(0, clusters)  # one row per label / sample
        if one_hot is not None:  # these rows move to the diagonal
            matrix.masked_fill_(one_hot[:, None], 0.0)
            targets.add_unclustered(one_hot, weight, per_label=per_label, dtype=dtype)
        if per_label:
            targets.add_label_part(matrix, weight)
        else:
            targets.add_dense(matrix, weight, scale=weight)

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
            loss, row_sums = _soft_cross_entropy(base, lse_it, lse_ti, targets)

            if not return_metrics:
                return loss, None
            with torch.no_grad():
                # per-direction losses, only for reporting
                if targets is None:
                    trace = base.diagonal().sum() / batch
                    loss_it, loss_ti = lse_it.mean() - trace, lse_ti.mean() - trace
                else:
                    assert row_sums is not None
                    matrix = targets.matrix(base)
                    flat = base.reshape(-1)
                    loss_it = (lse_it * row_sums).mean() - matrix.reshape(-1) @ flat / batch
                    loss_ti = (lse_ti * row_sums).mean() - matrix.T.reshape(-1) @ flat / batch
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
