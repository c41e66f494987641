"""Plain ``B x B`` target builders, for tests only.

The library builds its targets in factored form (``protofast.targets``); these expand every
matrix, per sample, to check the factored forms against and to test the per-label formula on
its own. Not part of the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from protofast._checks import check_positive as _check_temperature
from protofast._checks import check_weight as _check_weight
from protofast.targets import group_labels
from torch import Tensor


class LabelIndex(NamedTuple):
    """Unique labels of a batch, in order of first appearance, as lists."""

    labels: list[str]
    inverse: list[int]
    counts: list[int]
    first: list[int]


def index_labels(label_texts: Sequence[str]) -> LabelIndex:
    """:func:`protofast.targets.group_labels` as lists."""
    labels, inverse, counts, first = group_labels(label_texts)
    return LabelIndex(labels, inverse.tolist(), counts.tolist(), first.tolist())


def hard_targets(
    batch_size: int,
    label_ids: Tensor | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Hard (one-hot or same-label) targets.

    Args:
        batch_size: ``B``, the number of samples.
        label_ids: Optional ``(B,)`` integer tensor of label ids. ``None`` gives the identity
            (sample ``i``'s only positive is column ``i``). Otherwise every column with the same
            id as row ``i`` is a positive and row ``i``'s mass is spread evenly over them.
        device: Device of the result when ``label_ids`` is ``None`` (otherwise its device).
        dtype: Floating dtype of the result.

    Returns:
        A ``B x B`` row-stochastic tensor.

    Raises:
        ValueError: If ``batch_size < 1`` or ``label_ids`` is not a ``(B,)`` tensor.
        TypeError: If ``label_ids`` is not an integer tensor.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if label_ids is None:
        return torch.eye(batch_size, device=device, dtype=dtype)
    if not isinstance(label_ids, Tensor) or label_ids.dtype.is_floating_point:
        raise TypeError("label_ids must be an integer tensor")
    if label_ids.shape != (batch_size,):
        raise ValueError(f"label_ids must have shape ({batch_size},), got {tuple(label_ids.shape)}")
    same = (label_ids[:, None] == label_ids[None, :]).to(dtype)
    return same / same.sum(dim=1, keepdim=True)


def pairwise_targets_from_similarity(
    similarity: Tensor,
    temperature: float,
    *,
    label_ids: Tensor | None = None,
    label_counts: Tensor | None = None,
) -> Tensor:
    """Pairwise soft targets from a precomputed similarity matrix.

    Without ``label_ids``, ``similarity`` is the ``B x B`` matrix of sample similarities and the
    result is ``softmax(similarity / temperature, dim=1)``.

    With ``label_ids``, ``similarity`` is the ``L x L`` matrix between the ``L`` distinct labels
    and sample ``i`` carries label ``label_ids[i]``. The result is exactly what the ``B x B`` path
    gives on the expanded matrix ``similarity[label_ids][:, label_ids]``: the row softmax over
    ``B`` columns equals a softmax over the ``L`` label columns with ``log(count)`` added to the
    logits, whose mass is then spread evenly over each label's ``count`` columns.

    Args:
        similarity: ``B x B`` (or ``L x L`` with ``label_ids``) floating tensor.
        temperature: Softmax temperature, ``> 0``.
        label_ids: Optional ``(B,)`` integer tensor of indices into the rows of ``similarity``.
            Values are not bounds-checked (that would need a device sync).
        label_counts: Optional ``(L,)`` tensor, the number of samples per label. Computed from
            ``label_ids`` when omitted.

    Returns:
        A ``B x B`` row-stochastic tensor with the dtype of ``similarity``.

    Raises:
        ValueError: On a non-square ``similarity``, a bad ``temperature`` or mismatched shapes.
        TypeError: If ``label_ids`` is not an integer tensor.
    """
    temperature = _check_temperature("temperature", temperature)
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square, got shape {tuple(similarity.shape)}")
    logits = similarity / temperature
    if label_ids is None:
        return torch.softmax(logits, dim=1)
    if not isinstance(label_ids, Tensor) or label_ids.dtype.is_floating_point:
        raise TypeError("label_ids must be an integer tensor")
    if label_ids.dim() != 1:
        raise ValueError(f"label_ids must be 1-D, got shape {tuple(label_ids.shape)}")
    n_labels = similarity.shape[0]
    if label_counts is None:
        label_counts = torch.zeros(n_labels, device=similarity.device, dtype=similarity.dtype)
        label_counts.index_add_(0, label_ids, torch.ones_like(label_ids, dtype=similarity.dtype))
    elif label_counts.shape != (n_labels,):
        raise ValueError(
            f"label_counts must have shape ({n_labels},), got {tuple(label_counts.shape)}"
        )
    counts = label_counts.to(device=similarity.device, dtype=similarity.dtype)
    per_label = torch.softmax(logits + counts.log()[None, :], dim=1)
    per_column = per_label / counts.clamp_min(1.0)[None, :]
    # two row/column gathers are much faster on CPU than one 2-D advanced index
    return per_column.index_select(1, label_ids).index_select(0, label_ids)


def pairwise_targets(
    embeddings: Tensor,
    temperature: float,
    *,
    label_ids: Tensor | None = None,
    label_counts: Tensor | None = None,
) -> Tensor:
    """Pairwise soft targets ``softmax(E @ E.T / temperature, dim=1)``.

    Args:
        embeddings: ``B x D`` label (text) embeddings, one per sample; or, with ``label_ids``,
            ``L x D`` embeddings, one per distinct label.
        temperature: Softmax temperature, ``> 0``.
        label_ids: Optional ``(B,)`` integer tensor mapping each sample to a row of
            ``embeddings`` (the deduplicated path, ``O(L^2 D)`` instead of ``O(B^2 D)``).
        label_counts: Optional ``(L,)`` sample counts per label; computed when omitted.

    Returns:
        A ``B x B`` row-stochastic tensor.

    Raises:
        ValueError: If ``embeddings`` is not 2-D or another argument is invalid.
        TypeError: If ``label_ids`` is not an integer tensor.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
    return pairwise_targets_from_similarity(
        embeddings @ embeddings.T,
        temperature,
        label_ids=label_ids,
        label_counts=label_counts,
    )


def blend_targets(
    hard: Tensor | None,
    pairwise: Tensor | None = None,
    prototype: Tensor | None = None,
    *,
    soft_target_weight: float = 0.5,
    prototype_weight: float = 0.5,
) -> Tensor:
    """Blend hard, pairwise and prototype targets as in the design note.

    ``soft = pairwise`` | ``prototype`` | ``(1 - prototype_weight) * pairwise +
    prototype_weight * prototype`` (whichever are given), then
    ``(1 - soft_target_weight) * hard + soft_target_weight * soft``. With neither soft matrix the
    result is ``hard`` itself. The inputs are never modified.

    Args:
        hard: ``B x B`` hard targets, or ``None`` for the identity (cheaper than passing
            ``torch.eye``; needs at least one soft matrix to know ``B``).
        pairwise: Optional ``B x B`` pairwise soft targets.
        prototype: Optional ``B x B`` prototype soft targets.
        soft_target_weight: Weight of the soft part, in ``[0, 1]``.
        prototype_weight: Share of the prototype targets in the hybrid blend, in ``[0, 1]``.

    Returns:
        The ``B x B`` blended targets (row-stochastic when the inputs are).

    Raises:
        ValueError: If a weight is outside ``[0, 1]``, the shapes differ or are not square, or
            ``hard`` is ``None`` without a soft matrix.
    """
    soft_target_weight = _check_weight("soft_target_weight", soft_target_weight)
    prototype_weight = _check_weight("prototype_weight", prototype_weight)
    named = (("hard", hard), ("pairwise", pairwise), ("prototype", prototype))
    given = [(name, matrix) for name, matrix in named if matrix is not None]
    if not given:
        raise ValueError("blend_targets needs hard targets or at least one soft matrix")
    shape = given[0][1].shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{given[0][0]} targets must be square, got shape {tuple(shape)}")
    for name, matrix in given[1:]:
        if matrix.shape != shape:
            raise ValueError(
                f"{name} targets have shape {tuple(matrix.shape)}, expected {tuple(shape)}"
            )
    if pairwise is not None and prototype is not None:
        soft = torch.lerp(pairwise, prototype, prototype_weight)
    elif pairwise is not None:
        soft = pairwise
    elif prototype is not None:
        soft = prototype
    else:
        assert hard is not None
        return hard
    if hard is not None:
        return torch.lerp(hard, soft, soft_target_weight)
    out = soft * soft_target_weight
    out.diagonal().add_(1.0 - soft_target_weight)
    return out
