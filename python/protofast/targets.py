"""The targets of a batch: one owner for label grouping, the blend's weights, the plan and the
factored target matrix.

:class:`protofast.InfoNCELoss` asks :func:`build_targets` for the targets of each step;
evaluation code asks the loss (``loss.get_targets(...).dense()``), so every formula below exists
once in torch, and the per-label blend once more in Rust (``rust/targets.rs``), used where it
pays (see :class:`Plan`).

The targets are ``T = (1 - w) H + w (1 - p) P + w p Q`` (``w = soft_target_weight``,
``p = prototype_weight``; ``P`` or ``Q`` alone get all of ``w``) with ``H`` the hard targets
(identity, or every same-label pair), ``P = softmax(E E^T / tau)`` the pairwise targets and
``Q`` the prototype targets (row ``i`` is ``softmax(prototype[cluster(i)] E^T / tau)``).

When the text embedding of a sample depends only on its label, a row softmax over the ``B``
batch columns equals one over the ``L`` distinct label columns with ``log(count)`` added, its
mass spread evenly over the label's columns. The per-label plans use that to build ``L x L``
(and ``k x L``) matrices instead of ``B x B``; only ``T + T^T`` is ever expanded to ``B x B``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._checks import check_labels
from ._core import group_labels_raw, label_targets_raw, rows_match_raw

__all__ = [
    "BatchLabels",
    "FactoredTargets",
    "FrozenLabels",
    "HardTargets",
    "Plan",
    "TargetSpec",
    "build_targets",
    "group_labels",
]

HardTargets = Literal["identity", "label"]

# Largest L^2 * D for which the core builds the per-label targets: its single-threaded L x L
# product overtakes torch's between L = 50 and 100 at D = 384 (2 threads), while the torch
# plan's fixed cost of about fifteen small operations matters less and less.
CORE_TARGETS_WORK = 1 << 21


class Plan(enum.Enum):
    """How one step's targets are built (chosen once per step by :func:`build_targets`).

    * ``IDENTITY``: hard identity targets and no soft part: no matrix at all.
    * ``SAMPLE``: per sample, ``B x B`` tensor operations. Taken when labels are not given,
      when the per-label plans cannot be used (GPU tensors without ``target_embeddings``: the
      row check would synchronise), when labels repeat too little for them to pay
      (``2 L^2 > B^2``) or when two samples of one label have different text embeddings.
    * ``LABEL``: per distinct label, ``L x L`` tensor operations.
    * ``LABEL_CORE``: per distinct label, built by the compiled core in one call (CPU,
      float32, ``L^2 D <= 2^21``, and a manager that gives factored prototype targets when
      prototypes are on): the row check and the whole blend in one trip.
    """

    IDENTITY = "identity"
    SAMPLE = "sample"
    LABEL = "label"
    LABEL_CORE = "label_core"


class BatchLabels(NamedTuple):
    """The distinct labels of a batch, in order of first appearance.

    Attributes:
        labels: The ``L`` distinct labels.
        inverse: ``(B,)`` int64, the index of each sample's label in ``labels``.
        counts: ``(L,)`` int64, how many samples carry each label.
        first: ``(L,)`` int64, the first sample that carries each label.
    """

    labels: list[str]
    inverse: np.ndarray
    counts: np.ndarray
    first: np.ndarray


def group_labels(label_texts: Sequence[str]) -> BatchLabels:
    """Groups a batch's labels (one hash per label, in the core).

    Args:
        label_texts: One label per sample, a sequence of ``str``.

    Returns:
        The :class:`BatchLabels` of the batch.

    Raises:
        TypeError: ``label_texts`` is a bare string or holds a non-``str``.
    """
    if isinstance(label_texts, str | bytes):
        check_labels("label_texts", label_texts)  # raises
    texts = label_texts if type(label_texts) is list else list(label_texts)
    try:
        first, inverse, counts = group_labels_raw(texts)
    except (TypeError, UnicodeError):
        # a label that is not a str raises here; lone surrogates (no UTF-8 form) are
        # grouped in Python with the same result
        check_labels("label_texts", texts)
        return _group_in_python(texts)
    return BatchLabels([texts[i] for i in first.tolist()], inverse, counts, first)


def _group_in_python(texts: list[str]) -> BatchLabels:
    """:func:`group_labels` with a dict of first appearances."""
    position: dict[str, int] = {}
    inverse = np.fromiter(
        [position.setdefault(label, len(position)) for label in texts],
        dtype=np.int64,
        count=len(texts),
    )
    counts = np.bincount(inverse, minlength=len(position)).astype(np.int64, copy=False)
    # ids are numbered by first appearance: the running maximum reaches j where j first appears
    first = np.searchsorted(np.maximum.accumulate(inverse), np.arange(len(position)))
    return BatchLabels(list(position), inverse, counts, first.astype(np.int64, copy=False))


class TargetSpec(NamedTuple):
    """What the targets blend (the loss's settings, read once per step).

    Attributes:
        hard: ``"identity"`` or ``"label"`` hard targets.
        use_soft: Pairwise soft targets.
        use_prototypes: Prototype soft targets.
        soft_weight: ``w``, the weight of the soft part.
        prototype_weight: ``p``, the share of the prototype targets in hybrid mode.
        temperature: Temperature of the soft softmaxes.
    """

    hard: HardTargets
    use_soft: bool
    use_prototypes: bool
    soft_weight: float
    prototype_weight: float
    temperature: float

    @property
    def soft(self) -> bool:
        """Whether there is a soft part."""
        return self.use_soft or self.use_prototypes

    def weights(self) -> tuple[float, float, float]:
        """``(hard, pairwise, prototype)`` weights of the blend (zero for unused parts)."""
        w, p = self.soft_weight, self.prototype_weight
        if self.use_soft and self.use_prototypes:
            return 1.0 - w, w * (1.0 - p), w * p
        if self.use_soft:
            return 1.0 - w, w, 0.0
        if self.use_prototypes:
            return 1.0 - w, 0.0, w
        return 1.0, 0.0, 0.0


class FrozenLabels:
    """Frozen label embeddings (the loss's ``target_embeddings``): an index and a matrix.

    Args:
        mapping: ``{label: D_t-vector}`` (tensor, array or list), non-empty, finite, one
            dimension for all.

    Raises:
        TypeError: Not a mapping (a batch-aligned tensor is refused), a non-str key or a
            non-numeric vector.
        ValueError: Empty, a vector that is not 1-D, mixed dimensions or non-finite values.
    """

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        if isinstance(mapping, Tensor):
            raise TypeError(
                "target_embeddings must be a mapping {label: D-vector}; a batch-aligned tensor "
                "is not accepted because the loss is built once and batches change every step"
            )
        if not isinstance(mapping, Mapping):
            raise TypeError(
                "target_embeddings must be a mapping {label: D-vector}, "
                f"got {type(mapping).__name__}"
            )
        if len(mapping) == 0:
            raise ValueError("target_embeddings must not be empty")
        self.index: dict[str, int] = {}
        rows: list[Tensor] = []
        for label, vector in mapping.items():
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
            self.index[label] = len(rows)
            rows.append(row.to(device="cpu", dtype=torch.promote_types(row.dtype, torch.float32)))
        dtype = rows[0].dtype
        for row in rows:
            dtype = torch.promote_types(dtype, row.dtype)
        self.matrix = torch.stack([row.to(dtype) for row in rows]).clone()
        if not torch.isfinite(self.matrix).all():
            raise ValueError("target_embeddings contains non-finite values")

    def positions(self, labels: Sequence[str]) -> np.ndarray:
        """Row of each label in :attr:`matrix`.

        Raises:
            ValueError: A label is missing from the mapping.
        """
        index = self.index
        missing = [label for label in labels if label not in index]
        if missing:
            raise ValueError(
                f"labels missing from target_embeddings: {missing[:5]}"
                + (" ..." if len(missing) > 5 else "")
            )
        return np.fromiter((index[label] for label in labels), np.int64, count=len(labels))


class FactoredTargets:
    """A ``B x B`` target matrix in factored form, ``T = label_part[ids][:, ids] + dense +
    diag(diagonal)``, expanded only where needed.

    ``label_part`` is ``L x L``, one row and column per distinct label, each column already
    divided by its label's count (a label's mass is spread evenly over its columns); ``dense``
    is ``B x B``; ``diagonal`` a scalar or a ``(B,)`` tensor. Every part is added already
    weighted, with its row mass: the weight for parts built row-stochastic, so row sums are
    known without summing; ``None`` for a matrix from elsewhere, whose rows are summed. No part
    carries a gradient.

    Attributes:
        plan: The :class:`Plan` that built these targets.
        graph: Whether the parts carry a gradient (``build_targets(..., detach=False)``).
        batch: ``B``.
        ids: ``(B,)`` int64 label number of each sample (``None`` when labels were not grouped).
        semantic: Mean off-diagonal similarity of the samples' label embeddings (0-dim), when
            pairwise targets were built and it was asked for; else ``None``.
    """

    __slots__ = (
        "batch",
        "counts",
        "dense_part",
        "diagonal",
        "dtype",
        "device",
        "graph",
        "ids",
        "label_part",
        "mass",
        "plan",
        "semantic",
        "summed",
    )

    def __init__(
        self,
        plan: Plan,
        batch: int,
        ids: Tensor | None,
        counts: Tensor | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.plan = plan
        self.batch = batch
        self.ids = ids
        self.counts = counts
        self.device, self.dtype = device, dtype
        self.label_part: Tensor | None = None
        self.dense_part: Tensor | None = None
        self.diagonal: Tensor | float = 0.0
        self.mass = 0.0  # row mass of the parts built row-stochastic
        self.summed: Tensor | None = None  # row sums of the other parts
        self.semantic: Tensor | None = None
        self.graph = False  # whether the parts carry a gradient (see build_targets' detach)

    def add(self, matrix: Tensor, mass: float | None) -> None:
        """Adds an ``L x L`` part on the per-label plans, a ``B x B`` one otherwise."""
        if self.plan is Plan.SAMPLE:
            self.add_dense(matrix, mass)
        else:
            assert mass is not None
            self.add_label_part(matrix, mass)

    def add_label_part(self, matrix: Tensor, mass: float) -> None:
        """Adds an ``L x L`` part (owned by this object from now on)."""
        if self.label_part is None:
            self.label_part = matrix
        else:
            self.label_part.add_(matrix)
        self.mass += mass

    def add_dense(self, matrix: Tensor, mass: float | None, scale: float = 1.0) -> None:
        """Adds ``scale`` times a ``B x B`` part (owned by this object from now on; the scale
        goes in with the addition, no pass of its own); ``mass=None`` sums its rows."""
        if self.dense_part is None:
            if scale != 1.0:
                matrix = matrix * scale if matrix.requires_grad else matrix.mul_(scale)
            self.dense_part = matrix
        elif self.dense_part.requires_grad or matrix.requires_grad:
            self.dense_part = self.dense_part.add(matrix, alpha=scale)  # a softmax output may
            # be kept for the backward pass: no in-place update
        else:
            self.dense_part.add_(matrix, alpha=scale)
        if mass is None:
            rows = matrix.sum(dim=1) if self.dense_part is matrix else matrix.sum(dim=1) * scale
            rows = rows.detach()
            self.summed = rows if self.summed is None else self.summed.add_(rows)
        else:
            self.mass += mass

    def add_diagonal(self, weight: Tensor | float, mass: float) -> None:
        """Adds ``weight`` (a scalar or a ``(B,)`` tensor) to the diagonal."""
        self.diagonal = self.diagonal + weight
        self.mass += mass

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
        """``T + T^T`` as a ``B x B`` matrix; ``None`` when ``T`` is diagonal."""
        out: Tensor | None = None
        if self.label_part is not None:
            out = self._gather(self.label_part + self.label_part.T)
        if self.dense_part is not None:
            if out is None:
                out = self.dense_part + self.dense_part.T
            else:
                out.add_(self.dense_part).add_(self.dense_part.T)
        if out is not None and _nonzero(self.diagonal):
            out.diagonal().add_(2.0 * self.diagonal)
        return out

    def dense(self) -> Tensor:
        """``T`` as a ``B x B`` matrix."""
        if self.label_part is not None:
            out = self._gather(self.label_part)
            if self.dense_part is not None:
                out.add_(self.dense_part)
        elif self.dense_part is not None:
            out = self.dense_part.clone()
        else:
            out = torch.zeros(self.batch, self.batch, device=self.device, dtype=self.dtype)
        if _nonzero(self.diagonal):
            out.diagonal().add_(self.diagonal)
        return out

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of ``T`` as a dense ``(stop - start) x B`` matrix (a rank's rows
        of a gathered batch's targets); carries the parts' gradient when they have one.

        Args:
            start: The first row.
            stop: One past the last row (``0 <= start <= stop <= B``).
        """
        count = stop - start
        out = torch.zeros(count, self.batch, device=self.device, dtype=self.dtype)
        if self.label_part is not None:
            assert self.ids is not None
            part = self.label_part.index_select(0, self.ids[start:stop])
            out = out + part.index_select(1, self.ids)
        if self.dense_part is not None:
            out = out + self.dense_part[start:stop]
        if _nonzero(self.diagonal):
            weight = self.diagonal
            if isinstance(weight, Tensor):
                weight = weight[start:stop]
            positions = torch.arange(count, device=self.device)
            diagonal = torch.zeros_like(out)
            diagonal[positions, positions + start] = weight
            out = out + diagonal
        return out


def _nonzero(value: Tensor | float) -> bool:
    """Whether a diagonal weight may be non-zero (a tensor is not inspected: no sync)."""
    return isinstance(value, Tensor) or value != 0.0


def _pays_off(distinct: int, batch: int) -> bool:
    """Whether a per-label plan is worth trying: it shrinks the ``B^2 D`` similarity to
    ``L^2 D`` and the ``B x B`` passes to ``L x L`` but costs a grouping, a row check and a
    gather, so it only pays once ``L^2 <= B^2 / 2``."""
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


# ---------------------------------------------------------------------------- the formulas


def _spread_softmax(logits: Tensor, counts: Tensor | None, weight: float) -> Tensor:
    """``weight * softmax(logits)`` per sample column, or, with the ``counts`` of label
    columns, the same softmax over the samples spread evenly over each label's columns."""
    if counts is None:
        rows = torch.softmax(logits, dim=1)
        if weight == 1.0:
            return rows
        # softmax keeps its output for the backward pass: scale a copy when there is one
        return rows * weight if rows.requires_grad else rows.mul_(weight)
    return torch.softmax(logits + counts.log(), dim=1).mul_(weight / counts)


def _mean_off_diagonal(sim: Tensor, counts: Tensor | None, batch: int) -> Tensor:
    """Mean of ``e_i . e_j`` over the batch's samples ``i != j``, from the sample or label
    similarity matrix ``sim``."""
    if counts is None:
        total = sim.sum() - sim.diagonal().sum()
    else:
        total = counts @ sim @ counts - (counts * sim.diagonal()).sum()
    return total / max(batch * (batch - 1), 1)


# ---------------------------------------------------------------------------- the plan


def _grouping(
    spec: TargetSpec,
    text: Tensor,
    label_texts: Sequence[str] | None,
    manager: Any,
    frozen: FrozenLabels | None,
) -> BatchLabels | None:
    """The batch's labels grouped when some target needs them (``None`` otherwise); the
    manager's grouping of the batch it was just given is reused."""
    if label_texts is None:
        return None
    needs_labels = spec.hard == "label" or (spec.soft and frozen is not None)
    if not needs_labels and not (spec.use_soft and text.device.type == "cpu"):
        return None  # labels are not used beyond the manager
    known = getattr(manager, "batch_labels", None)
    batch = known(label_texts) if callable(known) else None
    if batch is None:
        batch = group_labels(label_texts)
    if not needs_labels and not _pays_off(len(batch.labels), text.shape[0]):
        return None  # too few repeats for a per-label plan to pay
    return batch


def _choose_plan(
    spec: TargetSpec,
    text: Tensor,
    batch: BatchLabels | None,
    frozen: FrozenLabels | None,
    factored_manager: bool,
) -> Plan:
    """The plan before the row check (which may still turn a per-label plan into SAMPLE);
    identity targets never get here (``build_targets`` returns them first)."""
    if batch is None or not spec.soft:
        return Plan.SAMPLE
    distinct, size = len(batch.labels), text.shape[0]
    if frozen is not None:
        dim, dtype, device = frozen.matrix.shape[1], text.dtype, text.device
    elif (
        spec.use_soft
        and text.device.type == "cpu"
        and distinct < size
        and _pays_off(distinct, size)
    ):
        dim, dtype, device = text.shape[1], text.dtype, text.device
    else:
        return Plan.SAMPLE
    if (
        device.type == "cpu"
        and dtype == torch.float32
        and distinct * distinct * dim <= CORE_TARGETS_WORK
        and (not spec.use_prototypes or factored_manager)
    ):
        return Plan.LABEL_CORE
    return Plan.LABEL


def _label_rows(text: Tensor, batch: BatchLabels) -> Tensor | None:
    """The text embedding of each distinct label (its first sample's row), when every sample's
    row equals its label's and ``text`` is on the CPU; ``None`` otherwise."""
    if text.device.type != "cpu":
        return None  # the check would synchronise
    rows = text.numpy()  # float32 / float64 here
    same = rows_match_raw(rows, batch.first, batch.inverse)
    if same is None:  # not C-contiguous
        same = bool(np.array_equal(rows[batch.first[batch.inverse]], rows))
    return torch.from_numpy(rows[batch.first]) if same else None


# ---------------------------------------------------------------------------- building


def build_targets(
    spec: TargetSpec,
    text: Tensor,
    label_texts: Sequence[str] | None,
    *,
    manager: Any = None,
    frozen: FrozenLabels | None = None,
    frozen_matrix: Tensor | None = None,
    want_semantic: bool = False,
    plan: Plan | None = None,
    detach: bool = True,
) -> FactoredTargets:
    """The targets of one step, without gradient (by default).

    Args:
        spec: What to blend.
        text: ``B x D`` text embeddings (float32 or float64; detached here).
        label_texts: ``B`` labels (``None``: no label-aware part may be asked for).
        manager: The prototype manager when ``spec.use_prototypes``: an object with
            ``prototype_logits`` (factored targets, like :class:`protofast.PrototypeManager`)
            or only ``get_prototype_targets`` (a ``B x B`` matrix).
        frozen: Frozen label embeddings to take the soft targets from, with
            ``frozen_matrix`` its matrix on the right device (default ``frozen.matrix``).
        want_semantic: Also compute :attr:`FactoredTargets.semantic`.
        plan: Force a plan (tests and comparisons); ``None`` chooses. A forced per-label plan
            falls back to ``SAMPLE`` where it cannot be used.
        detach: ``False`` keeps the graph from ``text`` to the soft targets (the design note's
            code backpropagates through its targets): the targets are then built per sample
            with tensor operations (``SAMPLE``), unless they come from ``frozen`` embeddings,
            which carry no gradient anyway; protofast's manager is asked for its prototype
            logits with ``keep_graph=True``.

    Returns:
        The :class:`FactoredTargets`; its ``plan`` says how they were built and its
        ``graph`` whether they carry a gradient.

    Raises:
        ValueError: A label is missing from ``frozen``, or a manager's matrix has the wrong
            shape.
    """
    if not spec.soft and spec.hard == "identity":  # no matrix at all: the most common step
        targets = FactoredTargets(
            Plan.IDENTITY, text.shape[0], None, None, device=text.device, dtype=text.dtype
        )
        targets.add_diagonal(1.0, 1.0)
        return targets
    graph = not detach and frozen is None and text.requires_grad and torch.is_grad_enabled()
    with contextlib.nullcontext() if graph else torch.no_grad():
        if not graph:
            text = text.detach()
        batch = _grouping(spec, text, label_texts, manager, frozen)
        factored_fn = getattr(manager, "prototype_logits", None) if spec.use_prototypes else None
        if not callable(factored_fn):
            factored_fn = None
        elif graph:
            factored_fn = functools.partial(factored_fn, keep_graph=True)
        chosen = _choose_plan(spec, text, batch, frozen, factored_fn is not None)
        if plan is not None and plan is not Plan.IDENTITY:
            if plan is Plan.SAMPLE or chosen is not Plan.SAMPLE:
                chosen = plan
        if graph and chosen in (Plan.LABEL, Plan.LABEL_CORE):
            chosen = Plan.SAMPLE  # the per-label plans gather rows on the host: no graph
        builder = _Builder(
            spec, text, label_texts, batch, manager, factored_fn, frozen, frozen_matrix
        )
        targets = builder.build(chosen, want_semantic)
        targets.graph = graph
        return targets


class _Builder:
    """Builds one step's targets along one plan."""

    def __init__(
        self,
        spec: TargetSpec,
        text: Tensor,
        label_texts: Sequence[str] | None,
        batch: BatchLabels | None,
        manager: Any,
        factored_fn: Any,
        frozen: FrozenLabels | None,
        frozen_matrix: Tensor | None,
    ) -> None:
        self.spec, self.text, self.label_texts, self.batch = spec, text, label_texts, batch
        self.manager = manager
        self.factored_fn = factored_fn  # the manager's prototype_logits, if it has one
        self.frozen = frozen
        self.size, self.device, self.dtype = text.shape[0], text.device, text.dtype
        self.ids = self.counts = None
        self.label_emb: Tensor | None = None  # L x D_t, one row per distinct label
        if batch is not None:
            arrays = [batch.inverse, batch.counts]
            if frozen is not None and spec.soft:
                arrays.append(frozen.positions(batch.labels))
            tensors = _index_tensors(arrays, self.device)
            self.ids, self.counts = tensors[0], tensors[1].to(self.dtype)
            if len(tensors) > 2:
                assert frozen is not None
                matrix = frozen.matrix if frozen_matrix is None else frozen_matrix
                self.label_emb = matrix.to(self.device).index_select(0, tensors[2]).to(self.dtype)

    def new(self, plan: Plan) -> FactoredTargets:
        return FactoredTargets(
            plan, self.size, self.ids, self.counts, device=self.device, dtype=self.dtype
        )

    def build(self, plan: Plan, want_semantic: bool) -> FactoredTargets:
        if plan is Plan.LABEL_CORE:
            built = self.label_core(want_semantic)
            if built is not None:
                return built
            plan = Plan.SAMPLE  # two samples of one label have different embeddings
        if plan is Plan.LABEL and self.label_emb is None:
            assert self.batch is not None
            self.label_emb = _label_rows(self.text, self.batch)
            if self.label_emb is None:
                plan = Plan.SAMPLE
        return self.tensors(plan, want_semantic)

    # ---------------------------------------------------------------- the torch formulas

    def tensors(self, plan: Plan, want_semantic: bool) -> FactoredTargets:
        """``LABEL`` or ``SAMPLE``: the blend with tensor operations."""
        spec, targets = self.spec, self.new(plan)
        w_hard, w_pair, w_proto = spec.weights()
        if spec.hard == "label":
            assert self.counts is not None
            targets.add_label_part(torch.diag(self.counts.reciprocal().mul_(w_hard)), w_hard)
        else:
            targets.add_diagonal(w_hard, w_hard)
        per_label = plan is Plan.LABEL
        emb = self.label_emb if per_label else self._sample_emb()
        assert emb is not None
        counts = self.counts if per_label else None
        if spec.use_soft:
            sim = emb @ emb.T
            if want_semantic:
                targets.semantic = _mean_off_diagonal(sim, counts, self.size)
            targets.add(_spread_softmax(sim.div_(spec.temperature), counts, w_pair), w_pair)
        if spec.use_prototypes:
            self.prototypes(targets, emb, counts, w_proto)
        return targets

    def _sample_emb(self) -> Tensor:
        """Per-sample embeddings of the soft targets: the text, or the frozen rows."""
        if self.label_emb is not None and self.ids is not None:
            return self.label_emb.index_select(0, self.ids)
        return self.text

    def prototypes(
        self, targets: FactoredTargets, emb: Tensor, counts: Tensor | None, weight: float
    ) -> None:
        """Adds ``weight`` times the prototype targets of the rows of ``emb`` (distinct
        labels when ``counts`` is given, else samples)."""
        if self.factored_fn is None:
            targets.add_dense(self._manager_matrix().mul_(weight), None)
            return
        factored = self.factored_fn(
            self._unit_labels(counts), emb, temperature=self.spec.temperature
        )
        if factored is None or factored.logits.shape[0] == 0:  # not clustered: identity
            targets.add_diagonal(weight, weight)
            return
        logits, clusters, one_hot = factored
        # per sample, the weight goes in with the addition to the dense part (no pass of its own)
        scale = 1.0 if counts is None else weight
        rows = _spread_softmax(logits.to(self.device, self.dtype), counts, scale)
        if one_hot is not None:
            clusters = clusters.clamp_min(0)
        matrix = rows.index_select(0, clusters)  # one row per label / sample
        if one_hot is not None:  # rows without a prototype: their mass goes to the diagonal
            matrix.masked_fill_(one_hot[:, None], 0.0)
            self._unclustered(targets, one_hot, weight, per_label=counts is not None)
        if counts is None:
            targets.add_dense(matrix, weight, scale=weight)
        else:
            targets.add_label_part(matrix, weight)

    def _unit_labels(self, counts: Tensor | None) -> list[str]:
        if counts is not None:
            assert self.batch is not None
            return self.batch.labels
        labels = self.label_texts
        assert labels is not None
        return labels if type(labels) is list else list(labels)

    def _unclustered(
        self, targets: FactoredTargets, one_hot: Tensor, weight: float, *, per_label: bool
    ) -> None:
        """Moves the prototype mass ``weight`` of rows without a prototype (``one_hot``, per
        distinct label or per sample) to the diagonal; their mass is counted with the
        prototype part."""
        if per_label:
            assert self.ids is not None
            one_hot = one_hot.index_select(0, self.ids)
        targets.add_diagonal(weight * one_hot.to(self.dtype), 0.0)

    def _manager_matrix(self) -> Tensor:
        """The ``B x B`` matrix of a manager that only has ``get_prototype_targets``."""
        result = self.manager.get_prototype_targets(
            list(self._unit_labels(None)), self._sample_emb(), temperature=self.spec.temperature
        )
        result = torch.as_tensor(result)
        if result.shape != (self.size, self.size):
            raise ValueError(
                f"prototype_manager.get_prototype_targets returned shape "
                f"{tuple(result.shape)}, expected ({self.size}, {self.size})"
            )
        return result.detach().to(device=self.device, dtype=self.dtype)

    # ---------------------------------------------------------------- the core

    def label_core(self, want_semantic: bool) -> FactoredTargets | None:
        """``LABEL_CORE``: the row check and the whole ``L x L`` blend in one core call (with
        prototypes, the row check first, then the manager's logits, then the blend); ``None``
        when the rows do not match (the caller then builds per sample)."""
        spec, batch = self.spec, self.batch
        assert batch is not None and self.counts is not None
        targets = self.new(Plan.LABEL_CORE)
        w_hard, w_pair, w_proto = spec.weights()
        hard = w_hard if spec.hard == "label" else 0.0
        if hard == 0.0:
            targets.add_diagonal(w_hard, w_hard)
        mass = hard + w_pair
        label_emb: Tensor | None = self.label_emb
        if label_emb is not None:  # frozen embeddings: nothing to check
            emb, first, inverse = label_emb.contiguous().numpy(), None, None
        elif spec.use_prototypes:
            # the manager's logits come before the core call: check the rows first, so that a
            # batch whose rows differ costs no per-label work
            label_emb = _label_rows(self.text, batch)
            if label_emb is None:
                return None
            emb, first, inverse = label_emb.numpy(), None, None
        else:  # the row check and the blend in one call
            emb = np.ascontiguousarray(self.text.numpy())
            first, inverse = batch.first, batch.inverse
        logits = clusters = None
        if spec.use_prototypes:
            factored = self.factored_fn(batch.labels, label_emb, temperature=spec.temperature)
            if factored is None or factored.logits.shape[0] == 0:  # not clustered: identity
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
                    self._unclustered(targets, one_hot, w_proto, per_label=True)
        built = label_targets_raw(
            emb,
            batch.counts.astype(np.float32),
            hard=hard,
            pairwise=w_pair,
            inv_temperature=1.0 / spec.temperature,
            logits=logits,
            clusters=clusters,
            prototype=w_proto,
            want_semantic=want_semantic and spec.use_soft,
            first=first,
            inverse=inverse,
        )
        if built is None:
            return None
        part, semantic = built
        targets.add_label_part(torch.from_numpy(part), mass)
        if semantic is not None:
            targets.semantic = torch.tensor(semantic, dtype=torch.float32)
        return targets
