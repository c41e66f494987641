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
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_int,
    check_labels,
    check_nonnegative,
    check_positive,
)
from ._core import LabelStore, ProtofastError, kmeans, nearest_prototype
from .targets import BatchLabels

__all__ = ["PrototypeLogits", "PrototypeManager"]

logger = logging.getLogger("protofast")

STATE_VERSION = 2  # 2: the config holds min_samples_rule (version 1 ran the "labels" rule)
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
            sums = torch.zeros(cap, emb.shape[1], dtype=torch.float32, device=emb.device)
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

    def state(self) -> dict[str, Tensor] | None:
        if self.sums is None:
            return None
        assert self.counts is not None
        return {"sum": self.sums.cpu(), "count": torch.from_numpy(self.counts.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> _DeviceSums:
        sums = cls()
        if state is not None:
            sums.sums = state["sum"].to(device)
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
        ids: np.ndarray,
        arrays: Sequence[np.ndarray],
        clusters: tuple[int, Tensor, np.ndarray] | None,
    ) -> None:
        self.labels = list(labels)  # a copy: the caller may reuse its list
        self.ids = ids  # (B,) store id of each sample
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
        """Samples per store id, stored and pending together."""
        counts = self.store.counts()
        pending = self._pending.counts
        if pending is not None:
            n = min(len(counts), len(pending))
            counts = counts.copy()
            counts[:n] += pending[:n]
        return counts

    def _readiness(self) -> tuple[bool, int, int]:
        """Whether the clustering rule holds, the unique labels with samples and the samples."""
        counts = self._sample_counts()
        unique, total = int(np.count_nonzero(counts)), int(counts.sum())
        ready = unique >= self.min_unique_labels and total >= self.min_total_samples
        return ready, unique, total

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
            if self.device is None:
                self.device = emb.device
            self._batch = None
            try:  # the core checks the labels while it reads them
                if self._deferred(emb.device):
                    self._batch = self._accumulate(labels, emb)
                else:
                    ids, *grouping = self.store.add_grouped(labels, emb)
                    self._batch = _Batch(labels, ids, grouping, None)
            except TypeError:
                check_labels("label_texts", labels)  # a message that names label_texts' item
                raise
            self.num_batches += 1
            if self.num_batches % self.update_interval != 0:
                return
            ready, unique, total = self._readiness()
            if ready:
                self.update_prototypes()
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
        """Adds a batch to the device-side sums; returns it as the last batch."""
        dim = self.store.dim if self.store.dim is not None else self._pending.dim
        if dim is not None and emb.shape[1] != dim:
            raise ProtofastError(
                f"embeddings: expected {dim} columns (the store's dimension), got {emb.shape[1]}"
            )
        # Checking values on a GPU would synchronise: there, a NaN is caught
        # when the sums reach the store at the next re-clustering.
        if emb.device.type == "cpu" and not bool(torch.isfinite(emb).all()):
            raise ProtofastError("embeddings: contains a non-finite value (NaN or inf)")
        ids, *grouping = self.store.intern_grouped(labels)
        clusters = None
        if self.is_initialized:
            # the loss will ask for this batch's clusters: send them with the ids
            host = self._host_clusters(ids)
            packed = _to_device(np.concatenate([ids, host]), emb.device)
            device_ids = packed[: len(ids)]
            clusters = (self.num_updates, packed[len(ids) :], host)
        else:
            device_ids = _to_device(ids, emb.device)
        self._pending.add(ids, device_ids, emb, len(self.store))
        return _Batch(labels, ids, grouping, clusters)

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
        note) on the mean embedding of every label with samples; prototypes are
        the cluster centres. Fills ``label_to_cluster`` and ``cluster_labels``,
        increments ``num_updates`` and logs the clusters. The same rule as the
        periodic trigger of :meth:`add_labels` decides whether it runs
        (``min_samples_rule``).

        Returns:
            ``True`` if prototypes were updated, ``False`` if the rule does not
            hold yet (too few samples or unique labels).
        """
        with self._lock:
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
            self._pending.flush(self.store)
            # labels interned without samples (a note checkpoint's) take no part
            ids = np.flatnonzero(self.store.counts() > 0)
            all_labels = self.store.labels()
            labels = [all_labels[i] for i in ids.tolist()]
            means = self.store.means()[ids]
            result = kmeans(
                means,
                self.num_clusters,
                n_init=self.n_init,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self.seed,
                spherical=self.spherical,
            )
            device = self.device if self.device is not None else torch.device("cpu")
            self.prototypes = torch.from_numpy(result.centroids).to(device)
            table = np.full(len(all_labels) + 1, -1, dtype=np.int64)
            table[ids] = result.labels
            self._cluster_table = table
            self.label_to_cluster = dict(zip(labels, result.labels.tolist(), strict=True))
            self.cluster_labels = _members(self.label_to_cluster)
            self.num_updates += 1
            self.num_labels_seen = len(labels)
            self.is_initialized = True
            self._log_update(result.inertia)
            return True

    def _log_update(self, inertia: float) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        lines = [
            f"[PrototypeManager] Updated prototypes (update #{self.num_updates})",
            f"  Total unique labels: {self.num_labels_seen}",
            f"  Number of clusters: {self.num_clusters}",
        ]
        for c, members in self.cluster_labels.items():
            shown = repr(members[:5])[:-1] + (", ...]" if len(members) > 5 else "]")
            lines.append(f"  Cluster {c} ({len(members)} labels): {shown}")
        logger.info("\n".join(lines))
        logger.debug("[PrototypeManager] k-means inertia %.6g", inertia)

    # ----------------------------------------------------------------- targets
    def _ids(self, labels: list[str]) -> tuple[np.ndarray, tuple[int, Tensor, np.ndarray] | None]:
        """Store ids of ``labels`` (-1 if never seen) and, when known, their clusters.

        The last :meth:`add_labels` batch is reused, for its samples or for its distinct
        labels (the list of its :meth:`batch_labels`), without a second lookup."""
        batch = self._batch
        if batch is not None:
            if batch.is_distinct(labels):
                return batch.ids[batch.arrays[0]], None
            if labels is batch.labels or labels == batch.labels:
                return batch.ids, batch.clusters
        return self.store.lookup(labels), None

    def _clusters(
        self, labels: list[str], emb: Tensor, unseen_rule: Unseen
    ) -> tuple[Tensor, np.ndarray]:
        """Cluster id of each sample on ``emb``'s device (-1 for unseen labels
        under ``unseen_rule="one_hot"``), and the host mask of samples whose
        label was not seen at the last clustering."""
        assert self.prototypes is not None
        ids, cached = self._ids(labels)
        device_clusters: Tensor | None = None
        if cached is not None and cached[0] == self.num_updates and cached[1].device == emb.device:
            device_clusters, clusters = cached[1], cached[2]  # sent with the ids by add_labels
        else:
            clusters = self._host_clusters(ids)
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
        table = self._cluster_table  # ids past the clustering and -1 both land on the -1
        return table[np.minimum(ids, len(table) - 1)]

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
            ``store_nbytes`` and ``cluster_sizes``.
        """
        counts = self._sample_counts()
        return {
            "is_initialized": self.is_initialized,
            "num_unique_labels": int(np.count_nonzero(counts)),
            "num_labels_seen": self.num_labels_seen,
            # the note's: clusters with labels at the last clustering, 0 before it
            "num_clusters": len(self.cluster_labels) if self.is_initialized else 0,
            "num_updates": self.num_updates,
            "total_embeddings_accumulated": int(counts.sum()),
            "num_batches": self.num_batches,
            "store_nbytes": self.store.nbytes,
            "cluster_sizes": [
                len(self.cluster_labels.get(c, [])) for c in range(self.num_clusters)
            ],
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
        }

    @_locked
    def state_dict(self) -> dict[str, Any]:
        """The whole state: configuration, store, pending sums, prototypes,
        mappings and counters, as tensors and plain Python values only (loads
        with ``torch.load(..., weights_only=True)``).

        Returns:
            The state dict.
        """
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
            },
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
        if version not in (1, STATE_VERSION):
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
        pending = state["pending"]
        if pending is not None:
            if not isinstance(pending, dict):
                raise TypeError(f"state.pending must be a dict or None, got {type(pending)}")
            sums = _state_matrix("pending.sum", pending["sum"], dim=dim)
            counts = _state_ids("pending.count", pending["count"], 0, None)
            if len(counts) != sums.shape[0] or sums.shape[0] < len(labels):
                raise ValueError(
                    f"state.pending: {len(counts)} counts and {sums.shape[0]} sum rows for "
                    f"{len(labels)} labels"
                )
            pending = {"sum": sums, "count": torch.from_numpy(counts)}
        num_batches = check_int("state.counters.num_batches", counters["num_batches"], 0)
        num_updates = check_int("state.counters.num_updates", counters["num_updates"], 0)
        num_seen = check_int("state.counters.num_labels_seen", counters["num_labels_seen"], 0)
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
