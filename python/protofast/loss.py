"""Symmetric InfoNCE loss with hard, pairwise and prototype soft targets.

The loss aligns IMU embeddings with text embeddings of their activity labels. Embeddings are used
as given: the loss does **not** normalise them. Pass L2-normalised embeddings (what the design
note's training script does) so that ``imu @ text.T`` are cosine similarities.

The targets (hard, pairwise, prototype and their blend, all without gradient) come from
:mod:`protofast.targets`; this module holds the logits and the loss. The loss is the mean of
``-sum(targets * log_softmax(logits))`` over rows for ``imu -> text`` (``imu @ text.T /
temperature``) and ``text -> imu`` (``text @ imu.T / temperature``), both with the same target
matrix. Queue entries are extra negatives with zero target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import _distributed
from ._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_pair,
    check_positive,
    check_weight,
)
from .targets import FactoredTargets, FrozenLabels, HardTargets, Plan, TargetSpec, build_targets

__all__ = ["InfoNCELoss", "Logits", "SemanticAlignmentLoss"]


class Logits(NamedTuple):
    """The logits of one step (see :meth:`InfoNCELoss.get_logits`).

    Attributes:
        similarity: ``B x B`` ``imu @ text.T``.
        base: ``similarity / temperature``, the in-batch ``imu -> text`` logits.
        imu_to_text: ``B x (B + Q)``: ``base`` and the text queue's columns.
        text_to_imu: ``B x (B + Q)``: ``base.T`` and the IMU queue's columns.
    """

    similarity: Tensor
    base: Tensor
    imu_to_text: Tensor
    text_to_imu: Tensor


def soft_cross_entropy(logits: Logits, targets: FactoredTargets) -> tuple[Tensor, Tensor, Tensor]:
    """The mean of the two directions' soft cross-entropies, with one target pass.

    With ``log_softmax = logits - lse``, row ``i`` of a direction costs
    ``lse_i * sum_j T_ij - sum_j T_ij * logits_ij``. The in-batch logits are ``base`` for
    ``imu -> text`` and ``base.T`` for ``text -> imu`` (queue columns have zero target), so
    both target terms together are ``<T + T.T, base>``: one dot product forward and one
    multiply backward (a trace when ``T`` is diagonal).

    Returns:
        ``(loss, lse_imu_to_text, lse_text_to_imu)``.
    """
    base = logits.base
    batch = base.shape[0]
    lse_it = torch.logsumexp(logits.imu_to_text, dim=1)
    lse_ti = torch.logsumexp(logits.text_to_imu, dim=1)
    if targets.plan is Plan.IDENTITY:
        loss = 0.5 * (lse_it.mean() + lse_ti.mean()) - base.diagonal().sum() / batch
        return loss, lse_it, lse_ti
    with contextlib.nullcontext() if targets.graph else torch.no_grad():
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
    return (lse_term - positive_term) * (0.5 / batch), lse_it, lse_ti


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
        detach_targets: ``True`` (default): the soft targets carry no gradient; they are the
            distribution the logits are pulled towards, and a gradient through them would let
            the model move the targets towards its own predictions. ``False`` restores the
            design note's code, which keeps the graph from the text embeddings to its pairwise
            and prototype targets (only the targets of trainable text embeddings differ; frozen
            ``target_embeddings`` carry no gradient either way). The targets are then built per
            sample with tensor operations, and a manager's ``prototype_logits`` is called with
            ``keep_graph=True``.
        gather: With torch.distributed initialised and several ranks, use every rank's batch
            as negatives (global negatives): the embeddings are gathered from all ranks with
            their gradient, the targets (hard, pairwise, prototype, label-aware) are built over
            the global batch and its labels, and each rank computes the loss of its own rows
            against the global batch (open_clip's ``gather_with_grad=True, local_loss=True``).
            The mean over ranks of the loss and, under DDP, the averaged gradients equal those
            of one process on the concatenated batch. Every rank needs the same batch size.
            Labels travel as 64-bit hashes; a label's text only the first time it is sent. Alone
            (no process group, or one rank) it changes nothing. Prototype targets need the same
            prototypes on every rank: a :class:`protofast.PrototypeManager` shares them by
            default. See the notes.
        process_group: The group of ranks for ``gather`` (``None``: the default group).

    Raises:
        TypeError: On an argument of the wrong type.
        ValueError: On an out-of-range value, an unknown ``hard_targets``, or
            ``use_prototypes=True`` without a ``prototype_manager``.

    Notes:
        * Inputs are not normalised (see the module docstring).
        * fp16/bf16 inputs (e.g. under autocast) are upcast: the loss is computed in float32
          (float64 inputs stay float64) with autocast disabled inside.
        * How targets are built is chosen once per step (:class:`protofast.targets.Plan`, seen
          as ``loss.get_targets(text, labels).plan``). Pairwise targets (and prototype targets
          with them) are computed on ``L`` distinct labels instead of ``B`` samples (the
          per-label plans, exact) when ``label_texts`` are
          given and either ``target_embeddings`` is set, or pairwise targets are on, the
          embeddings are on the CPU, labels repeat enough for it to pay off
          (``L^2 <= B^2 / 2``) and every sample's text embedding equals that of the first
          sample with the same label (checked with one pass over the rows). On other devices
          without ``target_embeddings`` the ``B x B`` path is used, so no host-device
          synchronisation happens.
        * A ``prototype_manager`` with a ``prototype_logits`` method (like
          :class:`protofast.PrototypeManager`) gives its targets in factored form
          (``k`` distinct rows and a prototype per sample); they are then built from ``k x L``
          logits on the per-label plans, or ``k x B`` otherwise, instead of a ``B x B`` matrix.
          Other managers only need ``get_prototype_targets``.
        * On the per-label plan on the CPU in float32 with a small label set (``L^2 D <= 2^21``,
          ``L <= 73`` at ``D = 384``; with such a manager, or without prototypes), the whole
          ``L x L`` blend is built by the compiled core in one call instead of by about fifteen
          small tensor operations; larger label sets, float64 and other devices use tensor
          operations. Both compute the same formula and differ only in rounding (the core's
          ``exp`` is within 2 ulp).
        * Targets are kept in factored form (per-label blend, dense part, diagonal) and only
          ``T + T.T`` is expanded to ``B x B`` for the loss; row sums of parts built
          row-stochastic are their weights (the rows of a manager's ``B x B`` matrix are
          summed). Results equal the plain formula up to floating-point rounding.
        * With ``gather``, a bad input on one rank (wrong shape, bad labels) raises on that rank
          and a :class:`protofast._distributed.DistributedError` naming it on every other rank,
          at the same step, instead of a hang. The metrics describe this rank's rows.
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
        detach_targets: bool = True,
        gather: bool = False,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self.detach_targets = check_bool("detach_targets", detach_targets)
        self.gather = check_bool("gather", gather)
        self.process_group = process_group
        self._directory = _distributed.LabelDirectory()
        self.temperature = check_positive("temperature", temperature)
        self.use_soft_targets = check_bool("use_soft_targets", use_soft_targets)
        self.soft_target_temperature = check_positive(
            "soft_target_temperature", soft_target_temperature
        )
        self.soft_target_weight = check_weight("soft_target_weight", soft_target_weight)
        self.use_prototypes = check_bool("use_prototypes", use_prototypes)
        self.prototype_weight = check_weight("prototype_weight", prototype_weight)
        if use_prototypes and prototype_manager is None:
            raise ValueError("use_prototypes=True requires a prototype_manager")
        if prototype_manager is not None and not callable(
            getattr(prototype_manager, "get_prototype_targets", None)
        ):
            raise TypeError("prototype_manager must have a get_prototype_targets method")
        self.prototype_manager = prototype_manager
        self.hard_targets: HardTargets = check_choice(
            "hard_targets", hard_targets, ("identity", "label")
        )
        self._frozen: FrozenLabels | None = None
        if target_embeddings is not None:
            self._frozen = FrozenLabels(target_embeddings)
            self.register_buffer("_target_matrix", self._frozen.matrix, persistent=False)
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
            f"target_embeddings={self._target_matrix is not None}, "
            f"detach_targets={self.detach_targets}, gather={self.gather}"
        )

    @property
    def spec(self) -> TargetSpec:
        """What the targets blend, read from the current settings (about 1 us)."""
        return TargetSpec(
            hard=self.hard_targets,
            use_soft=self.use_soft_targets,
            use_prototypes=self.use_prototypes,
            soft_weight=self.soft_target_weight,
            prototype_weight=self.prototype_weight,
            temperature=self.soft_target_temperature,
        )

    def get_targets(
        self,
        text_embeddings: Tensor,
        label_texts: Sequence[str] | None = None,
        *,
        want_semantic: bool = False,
        plan: Plan | None = None,
    ) -> FactoredTargets:
        """The targets of a batch in factored form (``.dense()`` gives the ``B x B`` matrix).

        Args:
            text_embeddings: ``B x D`` text embeddings (float32 or float64).
            label_texts: ``B`` labels, as for :meth:`forward`.
            want_semantic: Also compute the mean label similarity (``.semantic``).
            plan: Force a :class:`protofast.targets.Plan` (for comparisons); ``None``
                chooses, as :meth:`forward` does.

        Returns:
            The :class:`protofast.targets.FactoredTargets`; ``.plan`` says how they were
            built.
        """
        return build_targets(
            self.spec,
            text_embeddings,
            label_texts,
            manager=self.prototype_manager,
            frozen=self._frozen,
            frozen_matrix=self._target_matrix,
            want_semantic=want_semantic,
            plan=plan,
            detach=self.detach_targets,
        )

    def get_logits(
        self,
        imu: Tensor,
        text: Tensor,
        imu_queue: Tensor | None = None,
        text_queue: Tensor | None = None,
    ) -> Logits:
        """The logits of both directions, queue columns appended."""
        sim = imu @ text.T
        base = sim / self.temperature  # in-batch imu -> text logits, contiguous
        logits_it = self._with_queue(base, imu, text_queue)
        logits_ti = self._with_queue(base.T, text, imu_queue)
        return Logits(sim, base, logits_it, logits_ti)

    def _with_queue(self, logits: Tensor, rows: Tensor, queue: Tensor | None) -> Tensor:
        """``logits`` with a queue's columns appended (``rows @ queue.T / temperature``)."""
        if queue is None:
            return logits
        extra = rows @ queue.to(rows.dtype).T / self.temperature
        return torch.cat([logits, extra], dim=1)

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
                prototypes and ``target_embeddings``; enables the per-label plans.
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
        if self.gather and (ctx := _distributed.ranks(self.process_group)) is not None:
            return self._forward_gathered(
                ctx,
                imu_embeddings,
                text_embeddings,
                label_texts,
                return_metrics,
                imu_queue,
                text_queue,
            )
        self._check_inputs(imu_embeddings, text_embeddings, label_texts, imu_queue, text_queue)
        dtype = torch.promote_types(
            torch.promote_types(imu_embeddings.dtype, text_embeddings.dtype), torch.float32
        )
        with torch.autocast(device_type=imu_embeddings.device.type, enabled=False):
            imu, text = imu_embeddings.to(dtype), text_embeddings.to(dtype)
            targets = self.get_targets(text, label_texts, want_semantic=return_metrics)
            logits = self.get_logits(imu, text, imu_queue, text_queue)
            loss, lse_it, lse_ti = soft_cross_entropy(logits, targets)
            if not return_metrics:
                return loss, None
            with torch.no_grad():
                return loss, self._metrics(loss, logits, lse_it, lse_ti, targets)

    def _forward_gathered(
        self,
        ctx: _distributed.Ranks,
        imu_embeddings: Tensor,
        text_embeddings: Tensor,
        label_texts: Sequence[str] | None,
        return_metrics: bool,
        imu_queue: Tensor | None,
        text_queue: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """:meth:`forward` over the global batch: this rank's rows against every rank's."""
        problem: BaseException | None = None
        try:
            self._check_inputs(imu_embeddings, text_embeddings, label_texts, imu_queue, text_queue)
        except (TypeError, ValueError) as error:
            problem = error
        shape = [-1, -1] if problem is not None else list(imu_embeddings.shape)
        header = [*shape, label_texts is not None]
        everyone = _distributed.agree(problem, header, ctx, "InfoNCELoss(gather=True)")
        if any(row != everyone[0] for row in everyone):
            raise ValueError(
                "InfoNCELoss(gather=True): every rank needs the same batch size and dimension, "
                "and labels on every rank or on none; got (batch, dim, labels) "
                + ", ".join(f"rank {r}: {tuple(row)}" for r, row in enumerate(everyone))
            )
        batch = imu_embeddings.shape[0]
        dtype = torch.promote_types(
            torch.promote_types(imu_embeddings.dtype, text_embeddings.dtype), torch.float32
        )
        with torch.autocast(device_type=imu_embeddings.device.type, enabled=False):
            imu, text = imu_embeddings.to(dtype), text_embeddings.to(dtype)
            labels = None
            spec = self.spec
            if label_texts is not None and (spec.soft or spec.hard == "label"):
                labels = self._directory.gather(list(label_texts), ctx)
            # one collective for both (and one in the backward pass)
            both = _distributed.gather_rows(torch.cat([imu, text], dim=1), ctx)
            imu_all, text_all = both[:, : imu.shape[1]], both[:, imu.shape[1] :]
            targets = self.get_targets(text_all, labels, want_semantic=return_metrics)
            start = ctx.rank * batch
            sim_it = imu @ text_all.T
            base_it = sim_it / self.temperature
            base_ti = text @ imu_all.T / self.temperature
            logits_it = self._with_queue(base_it, imu, text_queue)
            logits_ti = self._with_queue(base_ti, text, imu_queue)
            with contextlib.nullcontext() if targets.graph else torch.no_grad():
                rows = targets.rows(start, start + batch)
                row_sums = targets.row_sums()
                if isinstance(row_sums, Tensor):
                    row_sums = row_sums[start : start + batch]
            lse_it = torch.logsumexp(logits_it, dim=1)
            lse_ti = torch.logsumexp(logits_ti, dim=1)
            loss_it = (lse_it * row_sums).sum() - torch.dot(rows.reshape(-1), base_it.reshape(-1))
            loss_ti = (lse_ti * row_sums).sum() - torch.dot(rows.reshape(-1), base_ti.reshape(-1))
            loss = (loss_it + loss_ti) * (0.5 / batch)
            if not return_metrics:
                return loss, None
            with torch.no_grad():
                sim = sim_it.detach()
                positions = torch.arange(batch, device=sim.device) + start
                positive = sim[torch.arange(batch, device=sim.device), positions].mean()
                total = sim.shape[1]
                negative = (sim.sum() - positive * batch) / max(batch * (total - 1), 1)
                ids = targets.ids

                def accuracy(direction: Tensor) -> Tensor:
                    pred = direction.detach().max(dim=1).indices
                    if self.hard_targets == "label":
                        assert ids is not None
                        mine = ids[start : start + batch]
                        hit = (pred < total) & (ids[pred.clamp(max=total - 1)] == mine)
                    else:
                        hit = pred == positions
                    return hit.to(sim.dtype).mean()

                metrics = {
                    "loss": loss.detach(),
                    "loss_imu_to_text": (loss_it / batch).detach(),
                    "loss_text_to_imu": (loss_ti / batch).detach(),
                    "acc_imu_to_text": accuracy(logits_it),
                    "acc_text_to_imu": accuracy(logits_ti),
                    "positive_similarity": positive,
                    "negative_similarity": negative,
                    "similarity_gap": positive - negative,
                }
                if targets.semantic is not None:
                    metrics["label_semantic_similarity"] = targets.semantic
                return loss, metrics

    def _check_inputs(
        self, imu: Any, text: Any, label_texts: Any, imu_queue: Any, text_queue: Any
    ) -> None:
        imu = check_embeddings("imu_embeddings", imu)
        text = check_embeddings("text_embeddings", text)
        check_pair(imu, text)
        batch, dim = imu.shape
        if batch < 1 or dim < 1:
            raise ValueError(f"embeddings must be non-empty, got shape {tuple(imu.shape)}")
        for name, queue in (("imu_queue", imu_queue), ("text_queue", text_queue)):
            if queue is None:
                continue
            check_embeddings(name, queue)
            if queue.shape[1] != dim:
                raise ValueError(f"{name} must have shape (Q, {dim}), got {tuple(queue.shape)}")
            if queue.device != imu.device:
                raise ValueError(f"{name} is on {queue.device}, expected {imu.device}")
        if label_texts is None:
            if self.hard_targets == "label":
                raise ValueError("hard_targets='label' requires label_texts")
            if self.use_prototypes:
                raise ValueError("use_prototypes=True requires label_texts")
            if self.use_soft_targets and self._frozen is not None:
                raise ValueError("label_texts is required when target_embeddings is set")
            return
        if isinstance(label_texts, str | bytes) or not isinstance(label_texts, Sequence):
            raise TypeError(
                f"label_texts must be a sequence of str, got {type(label_texts).__name__}"
            )
        if len(label_texts) != batch:
            raise ValueError(
                f"label_texts has {len(label_texts)} entries, expected {batch} (the batch size)"
            )

    def _metrics(
        self,
        loss: Tensor,
        logits: Logits,
        lse_it: Tensor,
        lse_ti: Tensor,
        targets: FactoredTargets,
    ) -> dict[str, Tensor]:
        base, sim = logits.base, logits.similarity.detach()
        batch = base.shape[0]
        # per-direction losses, only for reporting
        if targets.plan is Plan.IDENTITY:
            trace = base.diagonal().sum() / batch
            loss_it, loss_ti = lse_it.mean() - trace, lse_ti.mean() - trace
        else:
            row_sums = targets.row_sums()
            matrix = targets.dense()
            flat = base.reshape(-1)
            loss_it = (lse_it * row_sums).mean() - matrix.reshape(-1) @ flat / batch
            loss_ti = (lse_ti * row_sums).mean() - matrix.T.reshape(-1) @ flat / batch
        diagonal = sim.diagonal()
        positive = diagonal.mean()
        negative = (sim.sum() - diagonal.sum()) / max(batch * (batch - 1), 1)
        rows = torch.arange(batch, device=sim.device)
        ids = targets.ids

        def accuracy(direction: Tensor) -> Tensor:
            pred = direction.detach().max(dim=1).indices  # first maximum, like argmax
            if self.hard_targets == "label":
                assert ids is not None
                hit = (pred < batch) & (ids[pred.clamp(max=batch - 1)] == ids)
            else:
                hit = pred == rows
            return hit.to(sim.dtype).mean()

        metrics = {
            "loss": loss.detach(),
            "loss_imu_to_text": loss_it.detach(),
            "loss_text_to_imu": loss_ti.detach(),
            "acc_imu_to_text": accuracy(logits.imu_to_text),
            "acc_text_to_imu": accuracy(logits.text_to_imu),
            "positive_similarity": positive,
            "negative_similarity": negative,
            "similarity_gap": positive - negative,
        }
        if targets.semantic is not None:
            metrics["label_semantic_similarity"] = targets.semantic
        return metrics


class SemanticAlignmentLoss(nn.Module):
    """The design note's entry point: a thin wrapper around :class:`InfoNCELoss`.

    Takes exactly the arguments of :class:`InfoNCELoss` (see there) and its ``forward`` returns
    the same ``(loss, metrics)`` tuple. The wrapped loss is available as ``.infonce`` (the
    note's name) and ``.info_nce`` (an alias).

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
        detach_targets: bool = True,
        gather: bool = False,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self.infonce = InfoNCELoss(
            temperature=temperature,
            use_soft_targets=use_soft_targets,
            soft_target_temperature=soft_target_temperature,
            soft_target_weight=soft_target_weight,
            use_prototypes=use_prototypes,
            prototype_weight=prototype_weight,
            prototype_manager=prototype_manager,
            hard_targets=hard_targets,
            target_embeddings=target_embeddings,
            detach_targets=detach_targets,
            gather=gather,
            process_group=process_group,
        )

    @property
    def info_nce(self) -> InfoNCELoss:
        """The wrapped loss (alias of ``infonce``, the note's name)."""
        return self.infonce

    @property
    def prototype_manager(self) -> Any | None:
        """The prototype manager of the wrapped loss (``None`` when unset)."""
        return self.infonce.prototype_manager

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
        return self.infonce(
            imu_embeddings,
            text_embeddings,
            label_texts=label_texts,
            return_metrics=return_metrics,
            imu_queue=imu_queue,
            text_queue=text_queue,
        )
