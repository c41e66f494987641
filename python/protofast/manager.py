"""PrototypeManager: the design note's prototype system on the Rust core.

A drop-in for the plain-Python ``PrototypeManager`` of the design note:
the same constructor, attributes and methods, with the label store, k-means
and nearest-prototype lookup done in Rust and the per-sample Python loop of
``get_prototype_targets`` replaced by one gather on the device.

Defaults reproduce the note (5 clusters, re-clustering every 100 batches once
``num_clusters × min_samples_per_cluster`` samples and ``num_clusters`` unique
labels were seen, k-means with 10 restarts and one seed on the per-label mean
embeddings, prototype targets
``softmax(prototype[cluster(label_i)] @ text_embeddings.T / temperature)``).
What goes beyond the note is keyword-only and off by default or documented.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import _distributed
from ._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_int,
    check_labels,
    check_nonnegative,
    check_positive,
    check_weight,
)
from ._core import LabelStore, ProtofastError, kmeans, match_clusters, nearest_prototype
from ._distributed import Ranks
from .targets import BatchLabels

__all__ = ["ClusteringReport", "PrototypeLogits", "PrototypeManager"]

logger = logging.getLogger("protofast")

# 2: the config holds min_samples_rule (version 1 ran the "labels" rule); 3: warm_start,
# renumber, async_update, swap_after and distributed in the config, the unmerged labels of a
# rank (``delta``), a re-clustering in flight (``incoming``) and the last churn
STATE_VERSION = 3
Unseen = Literal["nearest", "one_hot"]
Ingest = Literal["auto", "direct", "deferred"]
MinSamplesRule = Literal["samples", "labels"]

# The keys of a checkpoint written by the design note's ``PrototypeManager.save``.
NOTE_STATE_KEYS = frozenset(
    (
        "num_clusters",
        "prototypes",
        "label_to_cluster",
        "cluster_labels",
        "num_updates",
        "is_initialized",
    )
)


class _LoadMethod:
    """``load`` that dispatches on how it is reached: on the class it builds a new manager
    (``PrototypeManager.load(path)``), on an instance it restores that instance in place
    (the note's ``manager.load(path)``)."""

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_class.__doc__

    def __get__(self, obj: Any, owner: type) -> Callable[..., Any]:
        if obj is None:
            return functools.partial(self.on_class, owner)
        return functools.partial(self.on_instance, obj)


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Host array to ``device`` without a device synchronisation (pinned copy)."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class PrototypeLogits(NamedTuple):
    """Prototype targets in factored form (see :meth:`PrototypeManager.prototype_logits`).

    Row ``i`` of the ``(n, n)`` prototype targets is ``softmax(logits[clusters[i]])``, except
    rows flagged in ``one_hot``, which are the one-hot row ``i``. ``logits`` has only ``k``
    distinct rows, so consumers can combine the softmax with their own column weights and
    gather afterwards instead of building ``n x n`` matrices. Before the first clustering
    ``logits`` has no rows and every row is one-hot (the targets are the identity): one form,
    whatever the state, so rows without a prototype are handled in one place.

    Attributes:
        logits: ``(k, n)`` ``prototypes @ text_embeddings.T / temperature`` on the embeddings'
            device, float64 for float64 embeddings, else float32.
        clusters: ``(n,)`` int64 prototype (row of ``logits``) of each sample on the same
            device; -1 for a one-hot row.
        one_hot: ``(n,)`` bool mask of the one-hot rows on the same device, or ``None`` when
            there is none (known on the host, so testing for it never synchronises).
    """

    logits: Tensor
    clusters: Tensor
    one_hot: Tensor | None


def _label_list(name: str, labels: Any) -> list[Any]:
    """``labels`` as a list (itself when it is one); a bare str is refused, items are checked
    by whoever reads them."""
    if isinstance(labels, str | bytes) or type(labels) is not list:
        return check_labels(name, labels)
    return labels


class _DeviceSums:
    """Deferred ingest: per-label sums on the embeddings' device and sample counts on the
    host, moved into the store at re-clustering, so that steps that do not re-cluster never
    synchronise with the device."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None  # (capacity, D) float32, rows indexed by store id
        # label occurrences are known on the host, so counting them there costs no sync
        self.counts: np.ndarray | None = None

    @property
    def dim(self) -> int | None:
        return None if self.sums is None else self.sums.shape[1]

    def total(self) -> int:
        """Samples accumulated and not yet moved to the store."""
        return 0 if self.counts is None else int(self.counts.sum())

    def add(self, ids: np.ndarray, device_ids: Tensor, emb: Tensor, num_labels: int) -> None:
        """Adds the rows of ``emb`` to the sums of store ids ``ids`` (``device_ids`` on the
        device); ``num_labels`` is the store's size, which the capacity must cover."""
        if self.sums is None or self.sums.shape[0] < num_labels:
            old = 0 if self.sums is None else self.sums.shape[0]
            cap = max(num_labels, 2 * old, 64)
            sums = torch.empty(cap, emb.shape[1], dtype=torch.float32, device=emb.device)
            sums[old:].zero_()  # the rows copied below need no zeroing first
            counts = np.zeros(cap, dtype=np.int64)
            if self.sums is not None:
                assert self.counts is not None
                sums[:old] = self.sums
                counts[:old] = self.counts
            self.sums, self.counts = sums, counts
        assert self.counts is not None
        np.add.at(self.counts, ids, 1)
        self.sums.index_add_(0, device_ids, emb.float())

    def flush(self, store: LabelStore) -> None:
        """Moves the sums into ``store`` (synchronises) and zeroes them."""
        if self.sums is None:
            return
        assert self.counts is not None
        n = len(store)
        counts = self.counts[:n]
        sums = self.sums[:n].cpu().numpy()
        ids = np.flatnonzero(counts)
        if len(ids):
            store.add_sums(ids, sums[ids], counts[ids])
        self.sums.zero_()
        self.counts[:] = 0

    def peek(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the sums and counts of ids ``0..rows-1`` (synchronises)."""
        if self.sums is None:
            return np.zeros((rows, 0), dtype=np.float32), np.zeros(rows, dtype=np.int64)
        assert self.counts is not None
        return self.sums[:rows].cpu().numpy().copy(), self.counts[:rows].copy()

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`peek`, then zeroes every sum and count."""
        sums, counts = self.peek(rows)
        self.zero()
        return sums, counts

    def empty_like(self) -> _DeviceSums:
        """A zeroed accumulator of the same capacity, dimension and device."""
        fresh = _DeviceSums()
        if self.sums is not None:
            assert self.counts is not None
            fresh.sums = torch.zeros_like(self.sums)
            fresh.counts = np.zeros_like(self.counts)
        return fresh

    def zero(self) -> None:
        """Zeroes every sum and count (the capacity stays)."""
        if self.sums is not None:
            assert self.counts is not None
            self.sums.zero_()
            self.counts[:] = 0

    def fold(self, labels: list[str], store: LabelStore) -> None:
        """Adds the sums of ``labels`` (this accumulator's rows, in order) to ``store``, then
        zeroes them. On an error (a non-finite sum) the store is unchanged."""
        sums, counts = self.peek(len(labels))
        keep = np.flatnonzero(counts)
        if len(keep):
            kept = [labels[i] for i in keep.tolist()]
            store.intern(kept)
            store.add_sums(store.lookup(kept), sums[keep], counts[keep])
        self.zero()

    def state(self) -> dict[str, Tensor] | None:
        if self.sums is None:
            return None
        assert self.counts is not None
        # a copy: on the CPU .cpu() is the tensor itself, which later batches update in place
        return {"sum": self.sums.cpu().clone(), "count": torch.from_numpy(self.counts.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> _DeviceSums:
        sums = cls()
        if state is not None:
            sums.sums = state["sum"].to(device, copy=True)  # never the caller's tensor
            sums.counts = state["count"].cpu().numpy().astype(np.int64)
        return sums


class _Batch:
    """The last :meth:`PrototypeManager.add_labels` batch, keyed by its store ids: the loss
    asks for the targets of the very batch that was just added, which then needs neither a
    second grouping nor a second lookup."""

    __slots__ = ("_distinct", "arrays", "clusters", "ids", "labels")

    def __init__(
        self,
        labels: list[str],
        ids: np.ndarray | None,
        arrays: Sequence[np.ndarray],
        clusters: tuple[int, Tensor, np.ndarray] | None,
    ) -> None:
        self.labels = list(labels)  # a copy: the caller may reuse its list
        self.ids = ids  # (B,) store id of each sample (None with a side accumulator)
        self.arrays = arrays  # (first, inverse, counts) of the batch's distinct labels
        # (num_updates, device cluster ids, host cluster ids) of the samples when the batch
        # came while prototypes existed (sent with the ids in one transfer); valid until the
        # next re-clustering
        self.clusters = clusters
        self._distinct: BatchLabels | None = None

    @property
    def grouping(self) -> BatchLabels:
        """The batch's distinct labels, built on first use."""
        if self._distinct is None:
            first, inverse, counts = self.arrays
            labels = [self.labels[i] for i in first.tolist()]
            self._distinct = BatchLabels(labels, inverse, counts, first)
        return self._distinct

    def is_distinct(self, labels: Any) -> bool:
        """Whether ``labels`` is this batch's list of distinct labels (the very object)."""
        return self._distinct is not None and labels is self._distinct.labels


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``method`` holding the manager's lock."""

    @functools.wraps(method)
    def run(self: PrototypeManager, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


def _members(label_to_cluster: dict[str, int]) -> defaultdict[int, list[str]]:
    """The note's ``cluster_labels``: a ``defaultdict(list)`` of the non-empty clusters, in
    order of their first label."""
    members: defaultdict[int, list[str]] = defaultdict(list)
    for label, c in label_to_cluster.items():
        members[c].append(label)
    return members


class _Snapshot(NamedTuple):
    """What one re-clustering reads, copied from the manager when it starts (a background
    re-clustering then needs nothing that later steps change)."""

    ids: np.ndarray  # (L,) store ids of the labels clustered
    means: np.ndarray | None  # (L, D) their mean embeddings (None: the worker reads them)
    previous: np.ndarray | None  # (L,) their cluster at the last clustering (-1: none)
    init: np.ndarray | None  # (k, D) the previous prototypes, for a warm start


class _Clustering(NamedTuple):
    """The outcome of one re-clustering, numbered as it will be installed."""

    centroids: np.ndarray  # (k, D) float32
    assignments: np.ndarray  # (L,) int64 cluster of each label of the snapshot
    inertia: float
    n_iter: int
    churn: float  # share of labels clustered both times whose cluster changed; NaN if none
    warm: bool  # a warm start
    seconds: float  # the k-means' wall time


class ClusteringReport(NamedTuple):
    """How the last re-clustering went (:attr:`PrototypeManager.last_clustering`).

    Attributes:
        num_labels: Labels clustered.
        inertia: k-means inertia (sum of squared distances to the prototypes).
        n_iter: Lloyd iterations of the run kept.
        warm_start: Whether it started from the previous prototypes.
        churn: Share of the labels clustered both times whose cluster changed, after
            renumbering; ``None`` for a first clustering.
        seconds: Wall time of the k-means (on rank 0 with several ranks).
    """

    num_labels: int
    inertia: float
    n_iter: int
    warm_start: bool
    churn: float | None
    seconds: float


def _cluster(snapshot: _Snapshot, settings: dict[str, Any], renumber: bool) -> _Clustering:
    """Runs the k-means of one re-clustering (no manager state: safe on a worker thread).

    A warm start (``snapshot.init``) runs one Lloyd from the previous prototypes, whose numbering
    it keeps; a restart runs ``n_init`` k-means++ restarts and, with ``renumber``, renames its
    clusters to overlap most with the previous ones (:func:`protofast.match_clusters`)."""
    k = settings["n_clusters"]
    common = {
        "max_iter": settings["max_iter"],
        "tol": settings["tol"],
        "seed": settings["seed"],
        "spherical": settings["spherical"],
    }
    start = time.perf_counter()
    if snapshot.init is not None:
        result = kmeans(snapshot.means, k, init=snapshot.init, **common)
    else:
        result = kmeans(snapshot.means, k, n_init=settings["n_init"], **common)
    centroids, assignments = result.centroids, result.labels.astype(np.int64)
    churn = float("nan")
    previous = snapshot.previous
    if previous is not None and (both := previous >= 0).any():
        if renumber and snapshot.init is None:
            perm = np.asarray(match_clusters(previous, assignments, k), dtype=np.int64)
            assignments = perm[assignments]
            renamed = np.empty_like(centroids)
            renamed[perm] = centroids
            centroids = renamed
        churn = float(np.mean(previous[both] != assignments[both]))
    return _Clustering(
        centroids,
        assignments,
        float(result.inertia),
        int(result.n_iter),
        churn,
        snapshot.init is not None,
        time.perf_counter() - start,
    )


class _Prepared(NamedTuple):
    """The mappings of a clustering, built off the training thread when it runs in the
    background (100 000 labels take tens of milliseconds of Python)."""

    table: np.ndarray  # cluster of each store id (-1: not clustered), then a trailing -1
    label_to_cluster: dict[str, int]
    cluster_labels: defaultdict[int, list[str]]


def _clusters_of(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The cluster of each store id in a cluster table (its last entry is -1: ids past the
    clustering and -1 both land on it)."""
    return table[np.minimum(ids, len(table) - 1)]


def _means(store: LabelStore, ids: np.ndarray) -> np.ndarray:
    """The means of store ids ``ids`` (no second copy when they are every label)."""
    means = store.means()
    return means if len(ids) == len(means) else means[ids]


def _prepare(store: LabelStore, ids: np.ndarray, assignments: np.ndarray) -> _Prepared:
    """The mappings of clustering ``assignments`` of store ids ``ids``."""
    all_labels = store.labels()
    labels = [all_labels[i] for i in ids.tolist()]
    table = np.full(len(all_labels) + 1, -1, dtype=np.int64)
    table[ids] = assignments
    mapping = dict(zip(labels, assignments.tolist(), strict=True))
    return _Prepared(table, mapping, _members(mapping))


class _Incoming:
    """A re-clustering that runs on a worker thread until the step at which it is installed."""

    __slots__ = (
        "error",
        "flag",
        "ids",
        "prepared",
        "result",
        "seen",
        "spare",
        "swap_at",
        "thread",
        "work",
    )

    def __init__(self, ids: np.ndarray, swap_at: int | None) -> None:
        self.ids = ids
        # the add_labels call (num_batches) that installs it; None: the first call after it is
        # done (with several ranks: after rank 0 said so, the same call on every rank)
        self.swap_at = swap_at
        self.thread: threading.Thread | None = None
        self.result: _Clustering | None = None
        self.prepared: _Prepared | None = None  # the result's mappings, built by the worker
        # the side accumulator the worker folded into the store (zeroed): the next spare
        self.spare: _DeviceSums | None = None
        self.error: BaseException | None = None
        # several ranks, swap_at None: rank 0's "done" flag, broadcast at one call and read at
        # the next (so that waiting for it costs nothing), and the last flag read
        self.flag: Tensor | None = None
        self.work: Any = None
        self.seen = False

    def due(self, calls: int, ctx: Ranks | None) -> bool:
        """Whether the ``calls``-th :meth:`PrototypeManager.add_labels` installs it."""
        if self.swap_at is not None:
            return calls >= self.swap_at
        if ctx is None:
            return self.thread is None or not self.thread.is_alive()
        self.drain()
        if self.seen:
            return True
        done = ctx.rank == 0 and (self.thread is None or not self.thread.is_alive())
        self.flag = torch.tensor([int(done)], dtype=torch.int64)
        self.work = _distributed.broadcast_async(self.flag, ctx)
        return False

    def drain(self) -> None:
        """Waits for the flag in flight (sent at the last call: already there)."""
        if self.work is not None:
            self.work.wait()
            self.work = None
            assert self.flag is not None
            self.seen = bool(self.flag[0])

    def start(
        self, work: Callable[[], _Clustering], prepare: Callable[[_Clustering], _Prepared]
    ) -> None:
        def run() -> None:
            try:
                result = work()
                self.prepared = prepare(result)
                self.result = result
            except BaseException as error:  # re-raised by wait() on the training thread
                self.error = error

        self.thread = threading.Thread(target=run, name="protofast-recluster", daemon=True)
        self.thread.start()

    def wait(self) -> _Clustering | None:
        """The result (``None`` on a rank that does not cluster), once it is there."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.result


class PrototypeManager:
    """Accumulates label embeddings, clusters them into prototypes and turns
    cluster membership into soft targets.

    Args:
        num_clusters: Number of prototypes (k-means clusters).
        update_interval: Re-cluster every this many :meth:`add_labels` calls.
        min_samples_per_cluster: With ``min_samples_rule="samples"`` (the note's
            rule) clustering waits until ``num_clusters × min_samples_per_cluster``
            samples (embeddings) and ``num_clusters`` unique labels were seen; with
            ``"labels"`` until ``num_clusters × min_samples_per_cluster`` unique
            labels were seen.
        device: Where prototypes live; ``None``: the device of the first
            embeddings given to :meth:`add_labels`.
        seed: Seed of every clustering (the note uses 42 each time, so unchanged
            data keeps its partition; a resumed run re-clusters exactly like an
            uninterrupted one).
        n_init: k-means restarts per update.
        max_iter: k-means iterations per restart.
        tol: k-means tolerance (scikit-learn's relative rule).
        spherical: Cluster with cosine k-means (unit-norm prototypes), and
            assign unseen labels by cosine similarity. Off: the note's
            Euclidean k-means.
        max_samples_per_label: ``None``: each label's statistic is the mean of
            all its samples; ``N``: the mean of its last N samples (the note
            sizes memory for 10). Window mode copies each batch to the host.
        unseen: For labels not seen at the last clustering: ``"nearest"``
            takes the prototype nearest to the label's embedding; ``"one_hot"``
            gives the sample a one-hot (hard) target row.
        ingest: ``"direct"``: each batch goes to the Rust store at once (a
            host copy); ``"deferred"``: per-label sums and counts accumulate on
            the embeddings' device and reach the store at re-clustering, so
            steps that do not re-cluster never synchronise with the device;
            ``"auto"``: deferred on CUDA in running-mean mode, else direct.
        min_samples_rule: ``"samples"`` (default, the note's rule) or
            ``"labels"`` (the stricter rule of protofast before 0.2); see
            ``min_samples_per_cluster``. Saved with the state; a state saved
            without it (version 1) resumes with ``"labels"``, the rule it ran with.
        warm_start: Re-cluster from the previous prototypes (one Lloyd run,
            usually a few iterations) instead of ``n_init`` k-means++
            restarts; the first clustering always restarts. Off: the note's
            restarts. It changes the clustering (measured in
            ``benches/RESULTS.md``).
        renumber: After a restart, rename the new clusters to overlap most
            with the previous ones (Hungarian assignment on the labels
            clustered both times), so that a cluster keeps its id across
            re-clusterings. Changes no partition and no target; ``False``
            keeps k-means' own numbering. Churn (the share of labels whose
            cluster changed) is reported either way (``get_statistics()``).
        async_update: Re-cluster on a worker thread (the core holds no GIL):
            steps keep the previous prototypes until the new ones are
            installed at the start of an :meth:`add_labels` call, at the same
            call on every rank (see ``swap_after``). Batches go to a side
            accumulator (float32 sums, as ``ingest="deferred"``); in one
            process a trigger hands it whole to the worker, which folds it
            into the store, reads the means and clusters, so no step copies
            the store or waits for its lock.
            For the same data the clusters equal those of the synchronous
            path with ``ingest="deferred"``. A checkpoint taken while one runs
            waits for it, and the resumed run installs it at the same call.
        swap_after: When a background re-clustering is installed. ``None``
            (default): at the first :meth:`add_labels` call after it is done
            (with several ranks: the call after rank 0 announced it, so no
            rank waits); steps never stall, but the call depends on timing,
            and so does whether a later trigger finds it still running (such
            a trigger merges and starts nothing). ``N``: exactly ``N`` calls
            after it started, waiting there if it is not done: the same
            schedule in every run.
        distributed: Whether the ranks of a torch.distributed job share one
            store and one clustering. ``None`` (default): yes whenever a
            process group with more than one rank is initialised at the
            first :meth:`add_labels`; ``True``: required (a missing process
            group is an error); ``False``: each rank keeps its own (the
            note's behaviour, which lets ranks drift apart). See the notes.
        process_group: The group of ranks (``None``: the default group).

    Notes:
        With several ranks, each rank accumulates its batches' sums on its
        device; every ``update_interval`` calls the ranks merge them into
        one store, the same on every rank (labels new to the store travel
        once, as text; sums and counts as tensors), and rank 0 clusters and
        broadcasts the prototypes and mapping, so that every rank holds the
        same prototypes and ``label_to_cluster``. Every rank must call
        :meth:`add_labels` (and :meth:`update_prototypes`, :meth:`sync`) the
        same number of times, as with DDP. Steps that do not re-cluster
        communicate nothing. ``state_dict`` is per rank (it holds this
        rank's unmerged sums): save one file per rank, or call :meth:`sync`
        on every rank before saving one.

    The manager may be shared between threads: its state changes and reads
    hold one re-entrant lock.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument has an invalid value.
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
        max_iter: int = 300,
        tol: float = 1e-4,
        spherical: bool = False,
        max_samples_per_label: int | None = None,
        unseen: Unseen = "nearest",
        ingest: Ingest = "auto",
        min_samples_rule: MinSamplesRule = "samples",
        warm_start: bool = False,
        renumber: bool = True,
        async_update: bool = False,
        swap_after: int | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        self._lock = threading.RLock()
        self.num_clusters = check_int("num_clusters", num_clusters, 1)
        self.update_interval = check_int("update_interval", update_interval, 1)
        self.min_samples_per_cluster = check_int(
            "min_samples_per_cluster", min_samples_per_cluster, 1
        )
        self.seed = check_int("seed", seed, 0, 2**63 - 1)
        self.n_init = check_int("n_init", n_init, 1)
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.tol = check_nonnegative("tol", tol)
        self.spherical = check_bool("spherical", spherical)
        self.unseen: Unseen = check_choice("unseen", unseen, ("nearest", "one_hot"))
        self.ingest: Ingest = check_choice("ingest", ingest, ("auto", "direct", "deferred"))
        self.min_samples_rule: MinSamplesRule = check_choice(
            "min_samples_rule", min_samples_rule, ("samples", "labels")
        )
        self.warm_start = check_bool("warm_start", warm_start)
        self.renumber = check_bool("renumber", renumber)
        self.async_update = check_bool("async_update", async_update)
        self.swap_after = None if swap_after is None else check_int("swap_after", swap_after, 1)
        if distributed is not None:
            check_bool("distributed", distributed)
        self.distributed = distributed
        self.process_group = process_group
        if ingest == "deferred" and max_samples_per_label is not None:
            raise ValueError(
                "ingest must be 'auto' or 'direct' with a window store "
                "(max_samples_per_label); 'deferred' needs the running mean"
            )
        self.device = None if device is None else torch.device(device)
        self.store = LabelStore(max_samples_per_label)

        self.prototypes: Tensor | None = None
        self.label_to_cluster: dict[str, int] = {}
        self.cluster_labels: defaultdict[int, list[str]] = defaultdict(list)
        self.num_updates = 0
        self.num_labels_seen = 0
        self.is_initialized = False
        self.num_batches = 0
        # the cluster of each store id at the last clustering, then a trailing -1:
        # the cluster of any id (-1 for ids the clustering did not see) in one gather
        self._cluster_table = np.full(1, -1, dtype=np.int64)
        self._pending = _DeviceSums()
        self._warned_not_ready = False
        self._batch: _Batch | None = None  # the last add_labels batch
        # (key, prototypes / temperature in the embeddings' dtype and device)
        self._scaled: tuple[tuple[Any, ...], Tensor] | None = None
        self.last_churn: float | None = None  # churn of the last re-clustering
        self.last_clustering: ClusteringReport | None = None
        self._incoming: _Incoming | None = None  # a background re-clustering
        # several ranks: resolved at the first add_labels (None: this process alone)
        self._ranks_resolved = False
        self._ctx: Ranks | None = None
        # several ranks: this rank's labels since the last merge (their sums are _pending's)
        self._delta: LabelStore | None = None
        self._spare: _DeviceSums | None = None  # async_update: the zeroed accumulator to swap in

    # ------------------------------------------------------------------ ingest
    @property
    def min_unique_labels(self) -> int:
        """Unique labels needed before a clustering: ``num_clusters`` under the
        ``"samples"`` rule, ``num_clusters × min_samples_per_cluster`` under ``"labels"``."""
        if self.min_samples_rule == "labels":
            return self.num_clusters * self.min_samples_per_cluster
        return self.num_clusters

    @property
    def min_total_samples(self) -> int:
        """Samples (embeddings) needed before a clustering: ``num_clusters ×
        min_samples_per_cluster`` under the ``"samples"`` rule, 0 under ``"labels"``."""
        if self.min_samples_rule == "labels":
            return 0
        return self.num_clusters * self.min_samples_per_cluster

    @property
    def update_counter(self) -> int:
        """The note's counter: :meth:`add_labels` calls since the last re-clustering
        check (it re-clusters when this reaches ``update_interval``, then restarts at 0)."""
        return self.num_batches % self.update_interval

    def _sample_counts(self) -> np.ndarray:
        """Samples per store id, stored and pending together (with several ranks: merged
        samples only, the same on every rank)."""
        counts = self.store.counts()
        pending = self._pending.counts
        if pending is not None and self._delta is None:
            n = min(len(counts), len(pending))
            counts = counts.copy()
            counts[:n] += pending[:n]
        return counts

    def _readiness(self) -> tuple[bool, int, int]:
        """Whether the clustering rule holds, the unique labels with samples and the samples."""
        counts = self._sample_counts()
        unique, total = int(np.count_nonzero(counts)), int(counts.sum())
        return self._rule(unique, total), unique, total

    def _rule(self, unique: int, total: int) -> bool:
        """The clustering rule (``min_samples_rule``) for these unique labels and samples."""
        return unique >= self.min_unique_labels and total >= self.min_total_samples

    def _trigger_in_background(self) -> None:
        """The periodic trigger of ``async_update`` in one process. The rule is decided from the
        store and the side accumulator together; then the accumulator goes to the worker whole
        (it folds it into the store, then clusters) and steps continue with a fresh one, so the
        trigger step does no work in proportion to the labels."""
        delta, pending = self._delta, self._pending
        assert delta is not None
        labels = delta.labels()
        counts = np.zeros(len(labels), dtype=np.int64)
        if pending.counts is not None:
            counts = pending.counts[: len(labels)].copy()
        stored = self.store.counts()
        before = np.zeros(len(labels), dtype=np.int64)
        if len(labels) and len(stored):
            known = self.store.lookup(labels)
            before = np.where(known >= 0, stored[np.maximum(known, 0)], 0)
        unique = int(np.count_nonzero(stored)) + int(np.count_nonzero((counts > 0) & (before == 0)))
        total = int(stored.sum()) + int(counts.sum())
        if not self._rule(unique, total):
            self._fold_delta(again=True)
            if not self._warned_not_ready:
                self._warned_not_ready = True
                self._log_not_ready(unique, total)
            return
        # the worker's zeroed accumulator of the last re-clustering, or one of the same size (no
        # step then grows the new one again, a copy of all its sums each time it doubles)
        spare = self._spare if self._spare is not None else pending.empty_like()
        self._delta, self._pending, self._spare = LabelStore(), spare, None
        store, table = self.store, self._cluster_table
        initialized, settings, renumber = self.is_initialized, self._settings(), self.renumber
        init = self._warm_init()
        incoming = _Incoming(np.zeros(0, dtype=np.int64), self._swap_at())

        def work() -> _Clustering:
            pending.fold(labels, store)
            incoming.spare = pending
            ids = np.flatnonzero(store.counts() > 0)
            previous = _clusters_of(table, ids) if initialized else None
            incoming.ids = ids
            return _cluster(_Snapshot(ids, _means(store, ids), previous, init), settings, renumber)

        incoming.start(work, lambda result: _prepare(store, incoming.ids, result.assignments))
        self._incoming = incoming

    def _deferred(self, device: torch.device) -> bool:
        if self.ingest == "auto":
            return device.type == "cuda" and self.store.max_samples_per_label is None
        return self.ingest == "deferred"

    def add_labels(self, label_texts: Sequence[str], text_embeddings: Tensor) -> None:
        """Adds a batch of label embeddings and counts the call.

        Every ``update_interval`` calls it re-clusters, once enough unique
        labels were seen; until then it logs once why prototypes are not ready.

        Args:
            label_texts: ``B`` label strings.
            text_embeddings: ``(B, D)`` embeddings of those labels (any float
                dtype and device; gradients are not tracked).

        Raises:
            TypeError: Wrong argument types.
            ValueError: Length or dimension mismatch, or non-finite values
                (the store and the call counter are then unchanged).
        """
        labels = _label_list("label_texts", label_texts)
        emb = check_embeddings("text_embeddings", text_embeddings, len(labels)).detach()
        if self.spherical and len(labels):
            self._check_spherical_rows(emb)
        with self._lock:
            ctx = self._ranks()
            if self.device is None:
                self.device = emb.device
            self._batch = None
            try:  # the core checks the labels while it reads them
                if self._delta is not None or self._deferred(emb.device):
                    self._batch = self._accumulate(labels, emb)
                else:
                    ids, *grouping = self.store.add_grouped(labels, emb)
                    self._batch = _Batch(labels, ids, grouping, None)
            except TypeError:
                check_labels("label_texts", labels)  # a message that names label_texts' item
                raise
            self.num_batches += 1
            if self._incoming is not None and self._incoming.due(self.num_batches, ctx):
                self._swap_in()
            if self.num_batches % self.update_interval != 0:
                return
            if self._incoming is not None:
                # a background re-clustering is reading the store: this trigger merges and
                # starts nothing (no step waits for it); the next one after it is installed does
                return
            if ctx is None and self._delta is not None and self.async_update:
                self._trigger_in_background()
                return
            self._merge_now(ctx)  # first: readiness is decided on the merged store
            ready, unique, total = self._readiness()
            if ready:
                self._recluster(ctx)
            elif not self._warned_not_ready:
                self._warned_not_ready = True
                self._log_not_ready(unique, total)

    @staticmethod
    def _check_spherical_rows(emb: Tensor) -> None:
        """Cosine k-means cannot place a zero (or non-finite) row: refuse it before
        anything is stored or counted. Checked on the host (a synchronisation on GPUs)."""
        norms = torch.linalg.vector_norm(emb.float(), dim=1)
        bad = ~(torch.isfinite(norms) & (norms > 0))
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                "text_embeddings must have finite, non-zero rows with spherical=True "
                f"(cosine k-means), got row {row} of norm {float(norms[row])}"
            )

    def _log_not_ready(self, unique: int, total: int) -> None:
        if self.min_samples_rule == "labels":
            logger.info(
                "[PrototypeManager] Prototypes not ready: %d unique labels seen, "
                "clustering needs %d (num_clusters=%d x min_samples_per_cluster=%d)",
                unique,
                self.min_unique_labels,
                self.num_clusters,
                self.min_samples_per_cluster,
            )
        else:
            logger.info(
                "[PrototypeManager] Prototypes not ready: %d samples and %d unique labels "
                "seen, clustering needs %d samples (num_clusters=%d x "
                "min_samples_per_cluster=%d) and %d unique labels",
                total,
                unique,
                self.min_total_samples,
                self.num_clusters,
                self.min_samples_per_cluster,
                self.min_unique_labels,
            )

    def _accumulate(self, labels: list[str], emb: Tensor) -> _Batch:
        """Adds a batch to the device-side sums; returns it as the last batch. With several
        ranks the sums are indexed by this rank's labels since the last merge (``_delta``),
        the clusters by the merged store's ids."""
        dim = self._pending.dim
        if dim is None:
            dim = self.store.dim
        if dim is not None and emb.shape[1] != dim:
            raise ProtofastError(
                f"embeddings: expected {dim} columns (the store's dimension), got {emb.shape[1]}"
            )
        # Checking values on a GPU would synchronise: there, a NaN is caught
        # when the sums reach the store at the next re-clustering.
        if emb.device.type == "cpu" and not bool(torch.isfinite(emb).all()):
            raise ProtofastError("embeddings: contains a non-finite value (NaN or inf)")
        interner = self.store if self._delta is None else self._delta
        ids, *grouping = interner.intern_grouped(labels)
        store_ids = ids if self._delta is None else None  # the store may be busy: no lookup
        clusters = None
        if self.is_initialized:
            # the loss will ask for this batch's clusters: send them with the ids
            host = (
                self._host_clusters(ids) if store_ids is not None else self._lookup_clusters(labels)
            )
            packed = _to_device(np.concatenate([ids, host]), emb.device)
            device_ids = packed[: len(ids)]
            clusters = (self.num_updates, packed[len(ids) :], host)
        else:
            device_ids = _to_device(ids, emb.device)
        self._pending.add(ids, device_ids, emb, len(interner))
        return _Batch(labels, store_ids, grouping, clusters)

    def _known(self, label_texts: Any) -> list[str] | None:
        """``label_texts`` itself when it is the last batch's labels (or their distinct
        labels), which the core has checked already; else ``None``."""
        batch = self._batch
        if batch is None or type(label_texts) is not list:
            return None
        if batch.is_distinct(label_texts) or label_texts == batch.labels:
            return label_texts
        return None

    @_locked
    def batch_labels(self, label_texts: Sequence[str]) -> BatchLabels | None:
        """The grouping of the last :meth:`add_labels` batch, if ``label_texts`` is that
        batch (the loss then groups nothing again); ``None`` otherwise.

        Args:
            label_texts: A batch's labels.

        Returns:
            The batch's :class:`protofast.targets.BatchLabels`, or ``None``.
        """
        batch = self._batch
        if batch is None or not (label_texts is batch.labels or label_texts == batch.labels):
            return None
        return batch.grouping

    # -------------------------------------------------------------- clustering
    def update_prototypes(self) -> bool:
        """Re-clusters the per-label mean embeddings into prototypes.

        Runs k-means (``n_init`` restarts, seed ``seed`` every time, as the
        note; or a warm start, see ``warm_start``) on the mean embedding of
        every label with samples; prototypes are the cluster centres. Fills
        ``label_to_cluster`` and ``cluster_labels``, increments
        ``num_updates`` and logs the clusters. The same rule as the
        periodic trigger of :meth:`add_labels` decides whether it runs
        (``min_samples_rule``). With several ranks it first merges every
        rank's samples (:meth:`sync`): call it on every rank. With
        ``async_update`` it starts the re-clustering, which is installed
        ``swap_after`` :meth:`add_labels` calls later.

        Returns:
            ``True`` if prototypes were updated (or, with ``async_update``,
            a re-clustering started), ``False`` if the rule does not hold
            yet (too few samples or unique labels).
        """
        with self._lock:
            ctx = self._ranks()
            if self._incoming is not None:
                self._swap_in()
            self._merge_now(ctx)
            ready, unique, total = self._readiness()
            if not ready:
                logger.info(
                    "[PrototypeManager] Not enough data for clustering: %d unique labels "
                    "(needs %d), %d samples (needs %d)",
                    unique,
                    self.min_unique_labels,
                    total,
                    self.min_total_samples,
                )
                return False
            self._recluster(ctx)
            return True

    @_locked
    def sync(self) -> None:
        """Merges every rank's samples since the last merge into the shared store now (a
        collective call: every rank must make it). Afterwards every rank holds the same
        store and ``state_dict`` differs between ranks only in its rank number, so one rank's
        file resumes every rank. Alone, it only moves pending device sums to the store.

        Raises:
            ValueError: This rank's pending sums hold a non-finite value.
            protofast._distributed.DistributedError: Another rank's sums were refused.
        """
        ctx = self._ranks()
        if self._incoming is not None:
            self._swap_in()
        self._merge_now(ctx)
        if self._delta is None:
            self._pending.flush(self.store)

    def _merge_now(self, ctx: Ranks | None) -> None:
        """Moves the side accumulator into the store: every rank's (a collective call), or this
        process's (``async_update``); nothing without one. The store must be idle (no
        background re-clustering reading it)."""
        if ctx is not None:
            self._merge(ctx)
        elif self._delta is not None:
            self._fold_delta(again=True)

    def _ranks(self) -> Ranks | None:
        """This process's ranks, resolved once (at the first call that needs them)."""
        if self._ranks_resolved:
            return self._ctx
        ctx = None
        if self.distributed is not False:
            ctx = _distributed.ranks(self.process_group)
            if ctx is None and self.distributed and not _distributed.initialized():
                raise ValueError(
                    "distributed=True needs an initialised torch.distributed process group"
                )
        if ctx is not None and self.store.max_samples_per_label is not None:
            raise ValueError(
                "several ranks share one store only in running-mean mode: pass "
                "max_samples_per_label=None, or distributed=False for one store per rank"
            )
        self._ranks_resolved, self._ctx = True, ctx
        side = ctx is not None or (self.async_update and self.store.max_samples_per_label is None)
        if side and self._delta is None:
            # samples already in the store (added before the group existed) stay this rank's own
            self._delta = LabelStore()
        elif not side and self._delta is not None:
            self._fold_delta()
        return ctx

    def _fold_delta(self, again: bool = False) -> None:
        """Moves the side accumulator's sums into the store (a state saved by a rank, resumed
        alone; or, with ``again``, the one process's merge of ``async_update``, after which a
        new side accumulator starts). On an error (a non-finite sum) nothing moves."""
        assert self._delta is not None
        self._pending.fold(self._delta.labels(), self.store)
        self._delta = LabelStore() if again else None

    def _merge(self, ctx: Ranks) -> None:
        """Folds every rank's sums since the last merge into the store, the same on every rank
        (a collective call). On an error nothing changes on any rank."""
        assert self._delta is not None
        labels = self._delta.labels()
        sums, counts = self._pending.peek(len(labels))
        keep = np.flatnonzero(counts)
        _distributed.merge_store(
            self.store, [labels[i] for i in keep.tolist()], sums[keep], counts[keep], ctx
        )
        self._delta = LabelStore()
        self._pending.take(len(labels))  # zeroes them
        self._batch = None  # its store ids predate the merge

    # -------------------------------------------------------------- re-clustering
    def _settings(self) -> dict[str, Any]:
        return {
            "n_clusters": self.num_clusters,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "seed": self.seed,
            "spherical": self.spherical,
        }

    def _snapshot(self, *, read_means: bool = True) -> _Snapshot:
        """The labels with samples (a note checkpoint's labels without samples take no part),
        their means (unless a background worker reads them: ``read_means=False``), their
        clusters at the last clustering and the warm start's prototypes."""
        if self._delta is None:
            self._pending.flush(self.store)
        ids = np.flatnonzero(self.store.counts() > 0)
        means = _means(self.store, ids) if read_means else None
        previous = self._host_clusters(ids) if self.is_initialized else None
        return _Snapshot(ids, means, previous, self._warm_init())

    def _warm_init(self) -> np.ndarray | None:
        """The previous prototypes as a warm start's initial centroids (``warm_start`` with
        prototypes of the current shape), else ``None``."""
        if (
            self.warm_start
            and self.prototypes is not None
            and self.prototypes.shape == (self.num_clusters, self.store.dim)
        ):
            return self.prototypes.detach().cpu().float().numpy()
        return None

    def _swap_at(self) -> int | None:
        """The add_labels call that installs a background re-clustering started now (``None``:
        the first call after it is done)."""
        return None if self.swap_after is None else self.num_batches + self.swap_after

    def _recluster(self, ctx: Ranks | None) -> None:
        """Re-clusters now, or starts a background re-clustering (``async_update``); with
        several ranks rank 0 clusters and every rank installs its broadcast result."""
        if self._incoming is not None:
            self._swap_in()
        # with a side accumulator the store does not change until the worker is done: the
        # worker reads the means itself (a copy of 100 000 x 384 means takes 0.1 s)
        background = self.async_update and self._delta is not None
        snapshot = self._snapshot(read_means=not background)
        settings, renumber, store = self._settings(), self.renumber, self.store

        def work() -> _Clustering:
            taken = snapshot
            if taken.means is None:
                taken = taken._replace(means=_means(store, taken.ids))
            return _cluster(taken, settings, renumber)

        computes = ctx is None or ctx.rank == 0
        if self.async_update:
            incoming = _Incoming(snapshot.ids, self._swap_at())
            if computes:
                ids = snapshot.ids
                incoming.start(work, lambda result: _prepare(store, ids, result.assignments))
            self._incoming = incoming
            return
        result, problem = None, None
        if computes:
            try:
                result = work()
            except Exception as error:
                if ctx is None:
                    raise
                problem = error
        self._install(snapshot.ids, self._share(result, problem, len(snapshot.ids), ctx))

    def _swap_in(self) -> None:
        """Installs the background re-clustering (waiting for it if it is not done)."""
        incoming, ctx = self._incoming, self._ctx
        assert incoming is not None
        self._incoming = None
        incoming.drain()
        result, problem = None, None
        try:
            result = incoming.wait()
        except Exception as error:
            if ctx is None:
                raise
            problem = error
        if incoming.spare is not None and self._spare is None:
            self._spare = incoming.spare  # zeroed by the worker: the next trigger's fresh one
        if ctx is None and result is None:
            logger.warning(
                "[PrototypeManager] A re-clustering in flight was saved by another rank "
                "without its result; it is dropped and the next one replaces it"
            )
            return
        shared = self._share(result, problem, len(incoming.ids), ctx)
        self._install(incoming.ids, shared, incoming.prepared if result is not None else None)

    def _share(
        self,
        result: _Clustering | None,
        problem: BaseException | None,
        rows: int,
        ctx: Ranks | None,
    ) -> _Clustering:
        """Rank 0's result on every rank (alone: the result itself)."""
        if ctx is None:
            assert result is not None
            return result
        _distributed.agree(problem, [], ctx, "PrototypeManager re-clustering")
        dim = self.store.dim or 0
        if result is None:
            result = _Clustering(
                np.zeros((self.num_clusters, dim), dtype=np.float32),
                np.zeros(rows, dtype=np.int64),
                0.0,
                0,
                0.0,
                False,
                0.0,
            )
        meta = np.array(
            [result.inertia, result.n_iter, result.churn, result.warm, result.seconds],
            dtype=np.float64,
        )
        centroids, assignments, meta = _distributed.broadcast_arrays(
            [result.centroids.astype(np.float32), result.assignments, meta], ctx
        )
        return _Clustering(
            centroids,
            assignments,
            float(meta[0]),
            int(meta[1]),
            float(meta[2]),
            bool(meta[3]),
            float(meta[4]),
        )

    def _install(
        self, ids: np.ndarray, result: _Clustering, prepared: _Prepared | None = None
    ) -> None:
        """Makes ``result`` (a clustering of store ids ``ids``) the current prototypes, with its
        mappings when they were built already."""
        if prepared is None:
            prepared = _prepare(self.store, ids, result.assignments)
        table = prepared.table
        grown = len(self.store) + 1 - len(table)  # labels interned since it was built
        if grown > 0:
            table = np.concatenate([table, np.full(grown, -1, dtype=np.int64)])
        device = self.device if self.device is not None else torch.device("cpu")
        self.prototypes = torch.from_numpy(np.ascontiguousarray(result.centroids)).to(device)
        self._cluster_table = table
        self.label_to_cluster = prepared.label_to_cluster
        self.cluster_labels = prepared.cluster_labels
        self.num_updates += 1
        self.num_labels_seen = len(ids)
        self.is_initialized = True
        self.last_churn = None if np.isnan(result.churn) else result.churn
        self.last_clustering = ClusteringReport(
            len(ids), result.inertia, result.n_iter, result.warm, self.last_churn, result.seconds
        )
        self._log_update(result.inertia)

    def _log_update(self, inertia: float) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        lines = [
            f"[PrototypeManager] Updated prototypes (update #{self.num_updates})",
            f"  Total unique labels: {self.num_labels_seen}",
            f"  Number of clusters: {self.num_clusters}",
        ]
        if self.last_churn is not None:
            lines.append(f"  Churn: {100 * self.last_churn:.1f}% of labels changed cluster")
        for c, members in self.cluster_labels.items():
            shown = repr(members[:5])[:-1] + (", ...]" if len(members) > 5 else "]")
            lines.append(f"  Cluster {c} ({len(members)} labels): {shown}")
        logger.info("\n".join(lines))
        logger.debug("[PrototypeManager] k-means inertia %.6g", inertia)

    # ----------------------------------------------------------------- targets
    def _cluster_ids(
        self, labels: list[str]
    ) -> tuple[np.ndarray, tuple[int, Tensor, np.ndarray] | None]:
        """The cluster of each label at the last clustering (-1 if it was not clustered) and,
        when known, the same on the device.

        The last :meth:`add_labels` batch is reused, for its samples or for its distinct
        labels (the list of its :meth:`batch_labels`), without a second lookup."""
        batch = self._batch
        if batch is not None:
            distinct = batch.is_distinct(labels)
            if distinct or labels is batch.labels or labels == batch.labels:
                cached = batch.clusters
                if cached is not None and cached[0] == self.num_updates:
                    if distinct:
                        return cached[2][batch.arrays[0]], None
                    return cached[2], cached
                if batch.ids is not None:
                    ids = batch.ids[batch.arrays[0]] if distinct else batch.ids
                    return self._host_clusters(ids), None
        return self._lookup_clusters(labels), None

    def _lookup_clusters(self, labels: list[str]) -> np.ndarray:
        """The cluster of each label at the last clustering (-1 if it was not clustered). With
        a side accumulator (several ranks, ``async_update``) from the mapping, not the store,
        which a background re-clustering may be reading."""
        if self._delta is None:
            return self._host_clusters(self.store.lookup(labels))
        get = self.label_to_cluster.get
        return np.fromiter((get(label, -1) for label in labels), np.int64, count=len(labels))

    def _clusters(
        self, labels: list[str], emb: Tensor, unseen_rule: Unseen
    ) -> tuple[Tensor, np.ndarray]:
        """Cluster id of each sample on ``emb``'s device (-1 for unseen labels
        under ``unseen_rule="one_hot"``), and the host mask of samples whose
        label was not seen at the last clustering."""
        assert self.prototypes is not None
        clusters, cached = self._cluster_ids(labels)
        device_clusters: Tensor | None = None
        if cached is not None and cached[1].device == emb.device:
            device_clusters = cached[1]  # sent with the ids by add_labels
        unseen = clusters < 0
        if unseen.any() and unseen_rule == "nearest":
            if emb.device.type == "cpu":
                found, _ = nearest_prototype(
                    emb[torch.from_numpy(np.flatnonzero(unseen))],
                    self.prototypes.cpu(),
                    metric="cosine" if self.spherical else "l2",
                )
                clusters = clusters.copy()  # may be the cached array
                clusters[unseen] = found
                return _to_device(clusters, emb.device), unseen
            if device_clusters is None:
                device_clusters = _to_device(clusters, emb.device)
            nearest = self._nearest_on_device(emb)
            return torch.where(device_clusters >= 0, device_clusters, nearest), unseen
        if device_clusters is None:
            device_clusters = _to_device(clusters, emb.device)
        return device_clusters, unseen

    def _host_clusters(self, ids: np.ndarray) -> np.ndarray:
        """Cluster of each store id at the last clustering; -1 for ids it did not see."""
        return _clusters_of(self._cluster_table, ids)

    def _scaled_prototypes(self, device: torch.device, dtype: torch.dtype, temperature: float):
        """``prototypes / temperature`` on ``device`` in ``dtype``, cached until they change."""
        assert self.prototypes is not None
        key = (id(self.prototypes), self.num_updates, device, dtype, temperature)
        if self._scaled is None or self._scaled[0] != key:
            protos = self.prototypes.to(device, dtype)
            self._scaled = (key, protos / temperature)
        return self._scaled[1]

    def _nearest_on_device(self, emb: Tensor) -> Tensor:
        """Nearest prototype of each row of ``emb``, computed on its device."""
        assert self.prototypes is not None
        p = self.prototypes.to(emb.device, torch.float32)
        e = emb.float()
        if self.spherical:
            return (torch.nn.functional.normalize(e, dim=1) @ p.T).argmax(1)
        return (p.square().sum(1)[None, :] - 2.0 * (e @ p.T)).argmin(1)

    @_locked
    def prototype_logits(
        self,
        label_texts: Sequence[str],
        text_embeddings: Tensor,
        temperature: float = 0.5,
        *,
        keep_graph: bool = False,
    ) -> PrototypeLogits:
        """The prototype targets of a batch in factored form.

        :meth:`get_prototype_targets` is ``softmax(logits, dim=1)[clusters]``
        with the one-hot rows put in; this returns the pieces instead, so
        that a caller can reweight columns (e.g. one column per distinct
        label) before gathering. Cluster assignment is exactly that of
        :meth:`get_prototype_targets` (unseen labels: ``unseen`` rule).

        Args:
            label_texts: ``n`` label strings.
            text_embeddings: ``(n, D)`` their embeddings.
            temperature: Softmax temperature (> 0).

        Returns:
            A :class:`PrototypeLogits`; before the first clustering its
            ``logits`` has no rows and every row is one-hot (the identity).

        Raises:
            TypeError: Wrong argument types.
            ValueError: Length or dimension mismatch, or ``temperature <= 0``.
        """
        labels = self._known(label_texts) or check_labels("label_texts", label_texts)
        source = check_embeddings("text_embeddings", text_embeddings, len(labels))
        emb = source.detach()
        temperature = check_positive("temperature", temperature)
        n, device = len(labels), emb.device
        dtype = torch.promote_types(emb.dtype, torch.float32)
        if not self.is_initialized or self.prototypes is None:  # every row one-hot
            return PrototypeLogits(
                emb.new_zeros((0, n), dtype=dtype),
                torch.full((n,), -1, dtype=torch.int64, device=device),
                torch.ones(n, dtype=torch.bool, device=device),
            )
        if emb.shape[1] != self.prototypes.shape[1]:
            raise ValueError(
                f"text_embeddings must have {self.prototypes.shape[1]} columns "
                f"(the prototypes' dimension), got {emb.shape[1]}"
            )
        with torch.no_grad():
            clusters, unseen = self._clusters(labels, emb, self.unseen)
            scaled = self._scaled_prototypes(device, dtype, temperature)
            one_hot = None
            if self.unseen == "one_hot" and unseen.any():
                one_hot = _to_device(unseen, device)
            if not keep_graph:
                logits = scaled @ emb.to(dtype).T  # (k, n): k distinct rows
        if keep_graph:
            logits = scaled @ source.to(dtype).T
        return PrototypeLogits(logits, clusters, one_hot)

    @_locked
    def get_prototype_targets(
        self, label_texts: Sequence[str], text_embeddings: Tensor, temperature: float = 0.5
    ) -> Tensor:
        """Prototype soft targets for a batch.

        Row i is ``softmax(prototype[cluster(label_i)] @ text_embeddings.T /
        temperature)``. A label not seen at the last clustering takes the
        prototype nearest to its own embedding (``unseen="nearest"``) or a
        one-hot row (``unseen="one_hot"``). Before the first clustering the
        targets are the identity. No per-sample Python loop; on CUDA no
        host-device synchronisation. The factored form is
        :meth:`prototype_logits`.

        Args:
            label_texts: ``B`` label strings.
            text_embeddings: ``(B, D)`` text embeddings of the batch.
            temperature: Softmax temperature (> 0).

        Returns:
            A ``(B, B)`` tensor on ``text_embeddings``' device whose rows sum
            to 1, without gradient: float64 for float64 embeddings, else float32.

        Raises:
            TypeError: Wrong argument types.
            ValueError: Length or dimension mismatch, or ``temperature <= 0``.
        """
        logits, clusters, one_hot = self.prototype_logits(label_texts, text_embeddings, temperature)
        b, device = len(text_embeddings), text_embeddings.device
        if logits.shape[0] == 0:  # not clustered yet: the identity
            return torch.eye(b, device=device, dtype=torch.float32)
        with torch.no_grad():
            targets = torch.softmax(logits, dim=1).index_select(0, clusters.clamp_min(0))
            if one_hot is not None:
                eye = torch.eye(b, device=device, dtype=targets.dtype)
                targets = torch.where(one_hot[:, None], eye, targets)
        return targets

    @_locked
    def assign(self, label_texts: Sequence[str], text_embeddings: Tensor) -> Tensor:
        """Cluster id of each sample (unseen labels: nearest prototype).

        Args:
            label_texts: ``B`` label strings.
            text_embeddings: ``(B, D)`` their embeddings.

        Returns:
            ``(B,)`` int64 cluster ids on the embeddings' device; all -1 before
            the first clustering.

        Raises:
            TypeError: Wrong argument types.
            ValueError: Length mismatch.
        """
        labels = check_labels("label_texts", label_texts)
        emb = check_embeddings("text_embeddings", text_embeddings, len(labels)).detach()
        if not self.is_initialized:
            return torch.full((len(labels),), -1, dtype=torch.int64, device=emb.device)
        clusters, _ = self._clusters(labels, emb, "nearest")
        return clusters

    # ------------------------------------------------------------- inspection
    @_locked
    def get_cluster_info(self, label: str) -> dict[str, Any] | None:
        """The cluster of ``label`` at the last clustering.

        Args:
            label: A label string.

        Returns:
            ``{"cluster_id", "cluster_labels", "num_labels_in_cluster"}``, or
            ``None`` if the label was not part of the last clustering.
        """
        cid = self.label_to_cluster.get(label)
        if cid is None:
            return None
        members = list(self.cluster_labels[cid])
        return {"cluster_id": cid, "cluster_labels": members, "num_labels_in_cluster": len(members)}

    @_locked
    def get_statistics(self) -> dict[str, Any]:
        """Counters in the note's terms, plus the store's memory.

        Returns:
            A dict with ``is_initialized``, ``num_unique_labels``,
            ``num_labels_seen``, ``num_clusters``, ``num_updates``,
            ``total_embeddings_accumulated``, ``num_batches``,
            ``store_nbytes``, ``cluster_sizes``, ``cluster_churn`` (the share
            of labels clustered by the last two clusterings whose cluster
            changed; ``None`` before a second one), ``update_in_flight``
            (a background re-clustering not yet installed), ``world_size``
            (ranks sharing the store, 1 alone) and ``unmerged_embeddings``
            (this rank's samples since the last merge, counted in
            ``total_embeddings_accumulated``).
        """
        counts = self._sample_counts()
        unmerged = 0 if self._delta is None else self._pending.total()
        return {
            "is_initialized": self.is_initialized,
            "num_unique_labels": int(np.count_nonzero(counts)),
            "num_labels_seen": self.num_labels_seen,
            # the note's: clusters with labels at the last clustering, 0 before it
            "num_clusters": len(self.cluster_labels) if self.is_initialized else 0,
            "num_updates": self.num_updates,
            "total_embeddings_accumulated": int(counts.sum()) + unmerged,
            "num_batches": self.num_batches,
            "store_nbytes": self.store.nbytes,
            "cluster_sizes": [
                len(self.cluster_labels.get(c, [])) for c in range(self.num_clusters)
            ],
            "cluster_churn": self.last_churn,
            "update_in_flight": self._incoming is not None,
            "world_size": 1 if self._ctx is None else self._ctx.size,
            "unmerged_embeddings": unmerged,
        }

    def __repr__(self) -> str:
        return (
            f"PrototypeManager(num_clusters={self.num_clusters}, "
            f"update_interval={self.update_interval}, labels={len(self.store)}, "
            f"num_updates={self.num_updates})"
        )

    # ------------------------------------------------------------ checkpoints
    def _config(self) -> dict[str, Any]:
        return {
            "num_clusters": self.num_clusters,
            "update_interval": self.update_interval,
            "min_samples_per_cluster": self.min_samples_per_cluster,
            "seed": self.seed,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "spherical": self.spherical,
            "max_samples_per_label": self.store.max_samples_per_label,
            "unseen": self.unseen,
            "ingest": self.ingest,
            "min_samples_rule": self.min_samples_rule,
            "warm_start": self.warm_start,
            "renumber": self.renumber,
            "async_update": self.async_update,
            "swap_after": self.swap_after,
            "distributed": self.distributed,
        }

    def _incoming_state(self) -> dict[str, Any] | None:
        """The re-clustering in flight (waited for: its result is saved, so that the resumed
        run installs it at the same step)."""
        incoming = self._incoming
        if incoming is None:
            return None
        incoming.drain()
        result = incoming.wait()
        return {
            "swap_at": incoming.swap_at,
            "seen": incoming.seen,
            "ids": torch.from_numpy(incoming.ids.astype(np.int64)),
            "result": None
            if result is None
            else {
                "centroids": torch.from_numpy(np.ascontiguousarray(result.centroids)),
                "assignments": torch.from_numpy(result.assignments.astype(np.int64)),
                "inertia": result.inertia,
                "n_iter": result.n_iter,
                "churn": result.churn,
                "warm": result.warm,
                "seconds": result.seconds,
            },
        }

    @_locked
    def state_dict(self) -> dict[str, Any]:
        """The whole state: configuration, store, pending sums, prototypes,
        mappings and counters, as tensors and plain Python values only (loads
        with ``torch.load(..., weights_only=True)``). A re-clustering in flight
        (``async_update``) is waited for and saved with the step that installs
        it. With several ranks the state holds this rank's unmerged sums (see
        :meth:`sync`).

        Returns:
            The state dict.
        """
        incoming = self._incoming_state()  # first: its worker may still be writing the store
        store = self.store.state()
        if store["dim"] is None and len(store["labels"]):
            # labels known without samples (deferred sums not flushed yet, or a note
            # checkpoint's labels): the store's state needs the dimension
            dim = self._pending.dim
            if dim is None and self.prototypes is not None:
                dim = self.prototypes.shape[1]
            if dim is not None:
                rows = 0 if store["max_samples_per_label"] is not None else len(store["labels"])
                store["dim"], store["data"] = dim, np.zeros((rows, dim), dtype=np.float32)
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "store": {
                "max_samples_per_label": store["max_samples_per_label"],
                "dim": store["dim"],
                "labels": list(store["labels"]),
                "counts": torch.from_numpy(store["counts"]),
                "data": torch.from_numpy(store["data"]),
                "window_rows": torch.from_numpy(store["window_rows"]),
            },
            "pending": self._pending.state(),
            "prototypes": None if self.prototypes is None else self.prototypes.detach().cpu(),
            "cluster_of_id": torch.from_numpy(self._cluster_table[:-1].copy()),
            "counters": {
                "num_batches": self.num_batches,
                "num_updates": self.num_updates,
                "num_labels_seen": self.num_labels_seen,
                "is_initialized": self.is_initialized,
                "warned_not_ready": self._warned_not_ready,
                "last_churn": self.last_churn,
            },
            "delta": None if self._delta is None else self._delta.labels(),
            "incoming": incoming,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`, configuration included, so that the
        run continues exactly as the one that saved it; or the dict that the
        design note's ``save()`` writes (see :meth:`load`).

        Every field is checked before anything changes: on an error the
        manager is unchanged.

        Args:
            state: A dict from :meth:`state_dict`, or the note's checkpoint dict.

        Raises:
            TypeError: A field has the wrong type (e.g. integer prototypes, a
                float cluster table, a non-bool ``is_initialized``).
            ValueError: Unknown version or an inconsistent state (non-finite or
                wrongly shaped prototypes or pending sums, negative counters,
                out-of-range cluster ids, mismatched dimensions).
            KeyError: A key is missing.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        if "version" not in state and NOTE_STATE_KEYS <= state.keys():
            fresh = self._from_note_state(state)
        else:
            fresh = self._from_state(state)
        with self._lock:
            fresh.__dict__.pop("_lock")
            self.__dict__.update(fresh.__dict__)

    def _target_device(self) -> torch.device:
        return self.device if self.device is not None else torch.device("cpu")

    def _from_state(self, state: dict[str, Any]) -> PrototypeManager:
        """A new manager holding a :meth:`state_dict` (checked field by field)."""
        version = state.get("version")
        if version not in (1, 2, STATE_VERSION):
            raise ValueError(f"state: unsupported version {version!r}")
        config = dict(state["config"])
        if version == 1:  # saved before the rule was an option: it ran the "labels" rule
            config.setdefault("min_samples_rule", "labels")
        fresh = PrototypeManager(device=self.device, **config)
        k = fresh.num_clusters
        fresh.store = LabelStore.from_state(state["store"])
        labels = fresh.store.labels()
        dim = fresh.store.dim
        counters = state["counters"]
        initialized = check_bool("state.counters.is_initialized", counters["is_initialized"])
        warned = check_bool("state.counters.warned_not_ready", counters["warned_not_ready"])
        cluster_of_id = _state_ids("cluster_of_id", state["cluster_of_id"], -1, k)
        if len(cluster_of_id) > len(labels):
            raise ValueError("state: more cluster assignments than labels")
        protos = state["prototypes"]
        if protos is not None:
            protos = _state_matrix("prototypes", protos, rows=k, dim=dim)
            dim = protos.shape[1]
        if initialized and protos is None:
            raise ValueError("state: is_initialized is True but there are no prototypes")
        if not initialized and (cluster_of_id >= 0).any():
            raise ValueError("state: cluster assignments without is_initialized")
        delta = state.get("delta")
        if delta is not None:
            fresh._delta = LabelStore()
            fresh._delta.intern(check_labels("state.delta", delta))
        pending = state["pending"]
        if pending is not None:
            if not isinstance(pending, dict):
                raise TypeError(f"state.pending must be a dict or None, got {type(pending)}")
            sums = _state_matrix("pending.sum", pending["sum"], dim=dim)
            counts = _state_ids("pending.count", pending["count"], 0, None)
            indexed = len(labels) if fresh._delta is None else len(fresh._delta)
            if len(counts) != sums.shape[0] or sums.shape[0] < indexed:
                raise ValueError(
                    f"state.pending: {len(counts)} counts and {sums.shape[0]} sum rows for "
                    f"{indexed} labels"
                )
            pending = {"sum": sums, "count": torch.from_numpy(counts)}
        num_batches = check_int("state.counters.num_batches", counters["num_batches"], 0)
        num_updates = check_int("state.counters.num_updates", counters["num_updates"], 0)
        num_seen = check_int("state.counters.num_labels_seen", counters["num_labels_seen"], 0)
        churn = counters.get("last_churn")
        if churn is not None:
            churn = check_weight("state.counters.last_churn", churn)
        incoming = _incoming_from_state(state.get("incoming"), k, dim, len(labels))
        device = self._target_device()
        if protos is not None:
            fresh.prototypes = protos.to(device)
        fresh._pending = _DeviceSums.from_state(pending, device)
        fresh._cluster_table = np.append(cluster_of_id, -1)
        seen = [
            (lbl, c)
            for lbl, c in zip(labels[: len(cluster_of_id)], cluster_of_id.tolist(), strict=True)
            if c >= 0
        ]
        fresh.label_to_cluster = dict(seen)
        fresh.cluster_labels = _members(fresh.label_to_cluster)
        fresh.num_batches = num_batches
        fresh.num_updates = num_updates
        fresh.num_labels_seen = num_seen
        fresh.is_initialized = initialized
        fresh._warned_not_ready = warned
        fresh.last_churn = churn
        fresh._incoming = incoming
        return fresh

    def _from_note_state(self, state: dict[str, Any]) -> PrototypeManager:
        """A new manager holding the note's checkpoint: this manager's configuration with
        the file's ``num_clusters``, the file's prototypes and mappings, and an empty store
        (the note's file holds no embeddings). The file's labels are known to the store
        without samples, so that they keep their clusters until the next clustering, which
        uses only the samples added after the load (as the note's)."""
        config = self._config()
        config["num_clusters"] = check_int("state.num_clusters", state["num_clusters"], 1)
        fresh = PrototypeManager(device=self.device, **config)
        k = fresh.num_clusters
        initialized = check_bool("state.is_initialized", state["is_initialized"])
        num_updates = check_int("state.num_updates", state["num_updates"], 0)
        protos = state["prototypes"]
        if protos is not None:
            protos = _state_matrix("prototypes", protos, rows=k)
        if initialized and protos is None:
            raise ValueError("state: is_initialized is True but there are no prototypes")
        mapping = state["label_to_cluster"]
        if not isinstance(mapping, dict):
            raise TypeError(f"state.label_to_cluster must be a dict, got {type(mapping)}")
        check_labels("state.label_to_cluster", list(mapping))
        for label, c in mapping.items():
            if isinstance(c, bool) or not isinstance(c, int | np.integer):
                raise TypeError(
                    f"state.label_to_cluster[{label!r}] must be an int, got {type(c).__name__}"
                )
            if not 0 <= c < k:
                raise ValueError(f"state.label_to_cluster[{label!r}] must be in [0, {k}), got {c}")
        mapping = {label: int(c) for label, c in mapping.items()}
        if mapping and not initialized:
            raise ValueError("state: cluster assignments without is_initialized")
        members = state["cluster_labels"]
        if not isinstance(members, dict):
            raise TypeError(f"state.cluster_labels must be a dict, got {type(members)}")
        expected = _members(mapping)
        given = {c: sorted(v) for c, v in members.items() if len(v)}
        if given != {c: sorted(v) for c, v in expected.items()}:
            raise ValueError("state: cluster_labels does not match label_to_cluster")
        ids = fresh.store.intern(list(mapping))
        table = np.full(len(mapping) + 1, -1, dtype=np.int64)
        table[ids] = list(mapping.values())
        if protos is not None:
            fresh.prototypes = protos.to(self._target_device())
        fresh._cluster_table = table
        fresh.label_to_cluster = mapping
        fresh.cluster_labels = defaultdict(list, {c: list(v) for c, v in members.items()})
        fresh.num_updates = num_updates
        fresh.num_labels_seen = len(mapping)
        fresh.is_initialized = initialized
        return fresh

    def save(self, path: str | os.PathLike[str]) -> None:
        """Saves :meth:`state_dict` with ``torch.save``, atomically: the state
        goes to a temporary file in the same folder, is flushed to disk and
        then replaces ``path``, so that a crash mid-save leaves the previous
        file intact.

        Args:
            path: Destination file.
        """
        path = os.fspath(path)
        state = self.state_dict()
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:  # the rename itself reaches the disk with the folder
            dir_fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def _load_into(self, path: str | os.PathLike[str]) -> PrototypeManager:
        """``manager.load(path)``: restores this manager in place from a file
        written by :meth:`save` or by the note's ``save()``, keeping its device.
        Never unpickles arbitrary objects (``weights_only=True``).

        Args:
            path: The file.

        Returns:
            This manager.

        Raises:
            ValueError: The file is not a readable checkpoint (the message names it),
                or its state is inconsistent; the manager is then unchanged.
        """
        self.load_state_dict(_read_checkpoint(path))
        return self

    def _load_new(  # type: ignore[misc]  # reached through _LoadMethod: cls is the class
        cls: type[PrototypeManager],
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
    ) -> PrototypeManager:
        """Loads a manager saved with :meth:`save` (or by the note's ``save()``).

        On the class, ``PrototypeManager.load(path)`` returns a new manager; on
        an instance, ``manager.load(path)`` restores that manager in place (the
        note's usage) and returns it. Never unpickles arbitrary objects
        (``torch.load(..., weights_only=True)``).

        Args:
            path: A file written by :meth:`save` or by the note's ``save()``.
            device: Where to put the prototypes (default: CPU); class form only.

        Returns:
            The restored manager.

        Raises:
            ValueError: The file is not a readable checkpoint (the message names
                it), or its state is inconsistent.
        """
        state = _read_checkpoint(path)
        manager = cls(device=device)
        manager.load_state_dict(state)
        return manager

    load = _LoadMethod(_load_new, _load_into)


def _read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a truncated, junk or refused
    file raises a ValueError that names it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError) as error:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable prototype manager checkpoint: {error}"
        ) from error


def _incoming_from_state(state: Any, k: int, dim: int | None, num_labels: int) -> _Incoming | None:
    """A saved re-clustering in flight, checked (its result, when this rank had one)."""
    if state is None:
        return None
    if not isinstance(state, dict):
        raise TypeError(f"state.incoming must be a dict or None, got {type(state).__name__}")
    swap_at = state["swap_at"]
    if swap_at is not None:
        swap_at = check_int("state.incoming.swap_at", swap_at, 0)
    ids = _state_ids("incoming.ids", state["ids"], 0, num_labels)
    incoming = _Incoming(ids, swap_at)
    incoming.seen = check_bool("state.incoming.seen", state.get("seen", False))
    result = state["result"]
    if result is not None:
        if not isinstance(result, dict):
            raise TypeError(f"state.incoming.result must be a dict, got {type(result).__name__}")
        centroids = _state_matrix("incoming.result.centroids", result["centroids"], k, dim)
        assignments = _state_ids("incoming.result.assignments", result["assignments"], 0, k)
        if len(assignments) != len(ids):
            raise ValueError("state.incoming: one assignment per id is needed")
        churn = result["churn"]
        if not isinstance(churn, float):
            raise TypeError(f"state.incoming.result.churn must be a float, got {type(churn)}")
        incoming.result = _Clustering(
            centroids.float().numpy(),
            assignments,
            float(check_nonnegative("state.incoming.result.inertia", result["inertia"])),
            check_int("state.incoming.result.n_iter", result["n_iter"], 0),
            churn,
            check_bool("state.incoming.result.warm", result["warm"]),
            float(check_nonnegative("state.incoming.result.seconds", result["seconds"])),
        )
    return incoming


def _state_ids(name: str, value: Any, low: int, high: int | None) -> np.ndarray:
    """A 1-D integer tensor as int64 numpy, every value in ``[low, high)``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"state.{name} must be a tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"state.{name} must have an integer dtype, got {value.dtype}")
    if value.dim() != 1:
        raise ValueError(f"state.{name} must be 1-D, got shape {tuple(value.shape)}")
    array = value.cpu().numpy().astype(np.int64)
    if len(array) and (array.min() < low or (high is not None and array.max() >= high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"state.{name} must be {bound}, got values {array.min()}..{array.max()}")
    return array


def _state_matrix(name: str, value: Any, rows: int | None = None, dim: int | None = None) -> Tensor:
    """A finite 2-D floating tensor (``rows`` x ``dim`` where given)."""
    check_embeddings(f"state.{name}", value)
    if rows is not None and value.shape[0] != rows:
        raise ValueError(f"state.{name} must have {rows} rows, got {value.shape[0]}")
    if dim is not None and value.shape[1] != dim:
        raise ValueError(
            f"state.{name} must have {dim} columns (the store's dimension), got {value.shape[1]}"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"state.{name} contains a non-finite value (NaN or inf)")
    return value
