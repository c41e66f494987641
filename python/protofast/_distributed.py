"""Collectives of protofast's torch.distributed support, in one place.

The manager and the loss call these when a default process group (or the group they were given)
has more than one rank:

* :func:`agree` is how a rank's bad input becomes the same clear error on every rank instead of
  a hang: every rank shares whether its input is valid before any collective that depends on it.
* :class:`LabelDirectory` moves labels between ranks as 64-bit hashes in tensors; a label's
  text travels once, the first time any rank sends it.
* :func:`merge_store` folds every rank's per-label sums since the last merge into one store, the
  same on every rank bit for bit (the same additions in the same order everywhere).
* :func:`gather_rows` gathers a batch from every rank and keeps its gradient.

Host-side exchanges (labels, sums, headers) go through a group whose backend takes CPU tensors
(gloo): the default group when it is gloo, else a gloo group made once over the same ranks. So a
step on CUDA exchanges labels without a host-device synchronisation; only :func:`gather_rows`
moves device tensors, on the group's own backend (NCCL on GPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ._core import LabelStore, label_hashes

__all__ = ["LabelDirectory", "Ranks", "agree", "gather_rows", "merge_store", "ranks"]

# The gloo twin of each device group (key: the group object, ``None`` for the default group).
_CPU_GROUPS: dict[Any, Any] = {}


class Ranks(NamedTuple):
    """Where this process stands in its group.

    Attributes:
        rank: This process's rank in ``group``.
        size: The number of ranks (``> 1``).
        group: The group of device collectives (``None``: the default group).
        cpu_group: A group over the same ranks whose backend takes CPU tensors.
    """

    rank: int
    size: int
    group: Any
    cpu_group: Any


def initialized() -> bool:
    """Whether torch.distributed is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def active(group: Any = None) -> bool:
    """Whether torch.distributed is initialised with more than one rank in ``group``."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group=group) > 1


def ranks(group: Any = None) -> Ranks | None:
    """This process's :class:`Ranks` in ``group``, or ``None`` when it runs alone.

    The first call for a group whose backend cannot take CPU tensors (NCCL) creates a gloo group
    over the same ranks: a collective call, so every rank must reach it together (the manager
    and the loss call it at their first step, which every rank runs).
    """
    if not active(group):
        return None
    return Ranks(
        dist.get_rank(group=group), dist.get_world_size(group=group), group, _cpu_group(group)
    )


def _cpu_group(group: Any) -> Any:
    if "gloo" in str(dist.get_backend(group=group)):
        return group
    if group not in _CPU_GROUPS:
        members = None if group is None else dist.get_process_group_ranks(group)
        _CPU_GROUPS[group] = dist.new_group(ranks=members, backend="gloo")
    return _CPU_GROUPS[group]


def _all_gather(tensor: Tensor, ctx: Ranks) -> list[Tensor]:
    """``tensor`` from every rank (same shape everywhere), on the CPU group."""
    out = [torch.empty_like(tensor) for _ in range(ctx.size)]
    dist.all_gather(out, tensor, group=ctx.cpu_group)
    return out


def _all_gather_rows(array: np.ndarray, ctx: Ranks, counts: Sequence[int]) -> list[np.ndarray]:
    """Each rank's ``array`` (``counts[r]`` rows, other dimensions equal), padded to the
    longest for the exchange."""
    longest = max(counts)
    padded = np.zeros((longest, *array.shape[1:]), dtype=array.dtype)
    padded[: len(array)] = array
    parts = _all_gather(torch.from_numpy(padded), ctx)
    return [part.numpy()[:n] for part, n in zip(parts, counts, strict=True)]


def _all_gather_bytes(data: bytes, ctx: Ranks) -> list[bytes]:
    sizes = [int(t) for t in _all_gather(torch.tensor([len(data)], dtype=torch.int64), ctx)]
    buf = np.frombuffer(data, dtype=np.uint8)
    return [part.tobytes() for part in _all_gather_rows(buf, ctx, sizes)]


def _pack(labels: Sequence[str]) -> bytes:
    """Labels as length-prefixed UTF-8 (lone surrogates kept with ``surrogatepass``)."""
    encoded = [label.encode("utf-8", "surrogatepass") for label in labels]
    lengths = np.fromiter((len(e) for e in encoded), dtype="<i8", count=len(encoded))
    return np.array([len(encoded)], dtype="<i8").tobytes() + lengths.tobytes() + b"".join(encoded)


def _unpack(data: bytes) -> list[str]:
    n = int(np.frombuffer(data[:8], dtype="<i8")[0])
    lengths = np.frombuffer(data[8 : 8 + 8 * n], dtype="<i8").tolist()
    out, pos = [], 8 + 8 * n
    for length in lengths:
        out.append(data[pos : pos + length].decode("utf-8", "surrogatepass"))
        pos += length
    return out


class DistributedError(RuntimeError):
    """Another rank's input was refused: this rank stops at the same step (its own input may
    be fine). The message says which rank and why."""


def agree(
    problem: BaseException | None, values: Sequence[int], ctx: Ranks, what: str
) -> list[list[int]]:
    """Every rank shares whether its input is valid (and a few integers) before a collective
    that depends on it; an invalid input on any rank then stops every rank at this step.

    Args:
        problem: This rank's error, or ``None`` when its input is valid.
        values: Integers to share (the same count on every rank).
        ctx: The ranks.
        what: Who asks (for messages), e.g. ``"InfoNCELoss(gather=True)"``.

    Returns:
        ``values`` of every rank, in rank order.

    Raises:
        BaseException: This rank's ``problem`` itself, once every rank knows of it.
        DistributedError: Another rank's input was invalid (its message is included).
    """
    header = torch.tensor([problem is not None, *values], dtype=torch.int64)
    rows = _all_gather(header, ctx)
    bad = [r for r, row in enumerate(rows) if row[0]]
    if bad:
        message = "" if problem is None else f"{type(problem).__name__}: {problem}"
        messages = _all_gather_bytes(message.encode("utf-8", "replace"), ctx)
        if problem is not None:
            raise problem
        detail = "; ".join(f"rank {r}: {messages[r].decode('utf-8', 'replace')}" for r in bad)
        raise DistributedError(
            f"{what}: rank {ctx.rank} stops because another rank's input was refused ({detail})"
        )
    return [row[1:].tolist() for row in rows]


class LabelDirectory:
    """The text of every label that any rank has sent, by its 64-bit hash, the same on every
    rank (every rank adds the same names in the same order).

    A batch's labels travel as hashes (one int64 tensor per step); the text of a label travels
    once, the first time a rank sends it. Memory grows with the distinct labels sent.
    """

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def gather(self, labels: Sequence[str], ctx: Ranks) -> list[str]:
        """The labels of every rank's batch, concatenated in rank order.

        Every rank must pass the same number of labels (checked by the caller with
        :func:`agree`).

        Raises:
            DistributedError: Two different labels share a hash (about one chance in
                ``2**64`` per pair).
        """
        hashes = label_hashes(labels)
        everyone = torch.cat(_all_gather(torch.from_numpy(hashes), ctx)).tolist()
        names = self.names
        unknown = {h for h in everyone if h not in names}
        if unknown:  # every rank sees the same unknown hashes: it sends the names it has
            mine: dict[int, str] = {}
            for label, h in zip(labels, hashes.tolist(), strict=True):
                if h in unknown:
                    mine.setdefault(h, label)
            for data in _all_gather_bytes(_pack(list(mine.values())), ctx):
                for label in _unpack(data):
                    h = int(label_hashes([label])[0])
                    known = names.setdefault(h, label)
                    if known != label:
                        raise DistributedError(
                            f"labels {known!r} and {label!r} have the same 64-bit hash"
                        )
        return [names[h] for h in everyone]


def merge_store(
    store: LabelStore, labels: Sequence[str], sums: np.ndarray, counts: np.ndarray, ctx: Ranks
) -> int:
    """Folds every rank's per-label sums since the last merge into ``store``.

    Labels new to ``store`` are added first, in sorted order of their text (so the store's ids
    do not depend on which rank saw a label first); then every rank's sums are added in rank
    order. Every rank runs the same additions in the same order, so stores that were equal stay
    equal bit for bit. Nothing changes anywhere if any rank's sums are invalid.

    Args:
        store: The merged store (running-mean mode), equal on every rank.
        labels: This rank's ``n`` labels with samples since the last merge.
        sums: ``(n, D)`` float32 sums of their embeddings.
        counts: ``(n,)`` int64 sample counts.
        ctx: The ranks.

    Returns:
        The number of labels new to the store.

    Raises:
        ValueError: This rank's sums are non-finite or of another dimension than the store's
            (raised on this rank).
        DistributedError: Another rank's sums were refused.
    """
    dim = store.dim
    problem: BaseException | None = None
    if len(labels) and not np.isfinite(sums).all():
        problem = ValueError(
            "text_embeddings: a non-finite value (NaN or inf) reached the prototype store "
            "since the last merge"
        )
    elif len(labels) and dim is not None and sums.shape[1] != dim:
        problem = ValueError(f"text_embeddings: expected {dim} columns, got {sums.shape[1]}")
    known = store.lookup(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    new = [label for label, i in zip(labels, known.tolist(), strict=True) if i < 0]
    width = sums.shape[1] if len(labels) else 0
    header = agree(problem, [len(new), len(labels), width], ctx, "PrototypeManager merge")
    widths = {w for _, n, w in header if n}
    if len(widths) > 1:
        raise ValueError(
            f"PrototypeManager merge: ranks sent embeddings of different dimensions {widths}"
        )
    added = 0
    if any(n for n, _, _ in header):
        union: set[str] = set()
        for data in _all_gather_bytes(_pack(new), ctx):
            union.update(_unpack(data))
        store.intern(sorted(union))
        added = len(union)
    rows = [n for _, n, _ in header]
    if not any(rows):
        return added
    (width,) = widths
    ids = store.lookup(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    local = sums if len(labels) else np.zeros((0, width), dtype=np.float32)
    all_ids = _all_gather_rows(ids.astype(np.int64), ctx, rows)
    all_sums = _all_gather_rows(np.ascontiguousarray(local, dtype=np.float32), ctx, rows)
    all_counts = _all_gather_rows(counts.astype(np.int64), ctx, rows)
    for r in range(ctx.size):
        if rows[r]:
            store.add_sums(all_ids[r], all_sums[r], all_counts[r])
    return added


def broadcast_arrays(arrays: list[np.ndarray], ctx: Ranks) -> list[np.ndarray]:
    """Rank 0's ``arrays`` on every rank (shapes and dtypes known to every rank: the other
    ranks pass arrays of the right shape whose values are overwritten)."""
    out = []
    for array in arrays:
        t = torch.from_numpy(np.ascontiguousarray(array))
        src = 0 if ctx.cpu_group is None else dist.get_global_rank(ctx.cpu_group, 0)
        dist.broadcast(t, src=src, group=ctx.cpu_group)
        out.append(t.numpy())
    return out


def broadcast_async(tensor: Tensor, ctx: Ranks) -> Any:
    """Starts the broadcast of rank 0's ``tensor`` (CPU) on the CPU group; returns its work
    handle (``.wait()``)."""
    src = 0 if ctx.cpu_group is None else dist.get_global_rank(ctx.cpu_group, 0)
    return dist.broadcast(tensor, src=src, group=ctx.cpu_group, async_op=True)


class _GatherRows(torch.autograd.Function):
    """All-gather along rows; the backward pass sums every rank's gradient of this rank's
    rows (reduce-scatter on NCCL, all-to-all elsewhere)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rank: int, size: int, group: Any) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.size, ctx.group, ctx.rows = rank, size, group, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        grad = grad.contiguous()
        rows = ctx.rows
        if "nccl" in str(dist.get_backend(group=ctx.group)):
            out = torch.empty((rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
            return out, None, None, None
        # every rank's gradient of this rank's rows, summed in rank order: an all-to-all moves
        # half the bytes of an all-reduce (gloo has no reduce-scatter)
        parts = torch.empty_like(grad)
        dist.all_to_all_single(parts, grad, group=ctx.group)
        return parts.view(ctx.size, rows, *grad.shape[1:]).sum(0), None, None, None


def gather_rows(x: Tensor, ctx: Ranks) -> Tensor:
    """Every rank's ``x`` (``(B, D)``, the same shape everywhere), concatenated in rank order,
    with gradient: the gradient that reaches this rank's ``x`` is the sum over ranks of each
    rank's gradient of these rows (what DDP's averaging of parameter gradients expects)."""
    return _GatherRows.apply(x, ctx.rank, ctx.size, ctx.group)
