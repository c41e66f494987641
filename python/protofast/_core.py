"""Typed Python front of the Rust core: input conversion and validation.

Every function converts its array arguments once (numpy or torch, any real
dtype, any device, any strides) to C-contiguous float32 numpy arrays, checks
the plain arguments, and calls the compiled module, which releases the GIL
while it works.
"""

from __future__ import annotations

import numbers
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _protofast
from ._protofast import (  # the batch kernels of protofast.targets, handed on as they are
    ProtofastError,
    group_labels_raw,
    label_targets_raw,
    rows_match_raw,
)

__all__ = [
    "KMeansResult",
    "LabelStore",
    "ProtofastError",
    "as_matrix",
    "get_amx",
    "get_num_threads",
    "group_labels_raw",
    "kmeans",
    "label_hashes",
    "label_targets_raw",
    "match_clusters",
    "nearest_prototype",
    "rows_match_raw",
    "set_amx",
    "set_num_threads",
]


def as_matrix(x: Any, name: str) -> np.ndarray:
    """Converts ``x`` to a C-contiguous float32 numpy matrix.

    Args:
        x: A numpy array, torch tensor (any device, any float dtype, with or
            without grad) or anything ``np.asarray`` accepts, of 2 dimensions.
        name: The argument's name, used in error messages.

    Returns:
        A 2-D C-contiguous ``float32`` array (``x`` itself when it already is one).

    Raises:
        TypeError: ``x`` is not numeric (strings, objects, complex numbers).
        ProtofastError: ``x`` is not 2-dimensional.
    """
    if type(x).__module__.startswith("torch"):
        if x.dtype.is_complex or x.dtype == _torch_bool():
            raise TypeError(f"{name}: expected real numbers, got a tensor of dtype {x.dtype}")
        x = x.detach().to(device="cpu").float().contiguous().numpy()
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name}: a masked array's mask would be ignored; pass a plain array "
            "(fill or drop the masked values first)"
        )
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub" or arr.dtype.kind == "b":
        raise TypeError(f"{name}: expected real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ProtofastError(f"{name}: expected a 2-D array, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _torch_bool() -> Any:
    import torch

    return torch.bool


# The core takes sizes as 64-bit integers: larger values are refused here, naming the argument,
# instead of failing in the conversion with a bare OverflowError.
_INT_MAX = 2**63 - 1


def _int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    maximum = _INT_MAX if maximum is None else maximum
    if value < minimum or value > maximum:
        raise ProtofastError(
            f"{name}: must be at least {minimum} and at most {maximum}, got {value}"
        )
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _int_vector(name: str, value: Any, minimum: int) -> np.ndarray:
    """``value`` as a 1-D C-contiguous int64 array of integers ``>= minimum``; floats, bools
    and values that do not fit in 64 bits are refused, naming the argument."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name}: a masked array's mask would be ignored; pass a plain array")
    arr = _to_numpy(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype == object or arr.size == 0:  # Python ints, possibly too large for int64
            try:
                arr = np.asarray(arr.tolist() if arr.size else [], dtype=np.int64)
            except OverflowError:
                raise ProtofastError(f"{name}: a value does not fit in 64 bits") from None
            except (TypeError, ValueError):
                raise TypeError(f"{name}: expected integers, got {arr.dtype}") from None
        else:
            raise TypeError(f"{name}: expected integers, got an array of dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT_MAX:
        raise ProtofastError(f"{name}: a value does not fit in 64 bits")
    arr = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)
    if arr.size and int(arr.min()) < minimum:
        what = "negative" if minimum == 0 else f"less than {minimum}"
        raise ProtofastError(f"{name}: a value is {what} ({int(arr.min())})")
    return arr


def _label_list(labels: Any, name: str = "labels") -> list[Any]:
    """``labels`` as a list (itself when it is one), its items not checked: the core checks
    them while it reads them, and :func:`_refused` explains a refusal."""
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of str, got a single {type(labels).__name__}")
    if type(labels) is list:
        return labels
    try:
        return list(labels)
    except TypeError:
        raise TypeError(
            f"{name}: expected a sequence of str, got {type(labels).__name__}"
        ) from None


def _labels(labels: Any, name: str = "labels") -> list[str]:
    """``labels`` as a list of str, checked here."""
    out = _label_list(labels, name)
    if set(map(type, out)) <= {str}:  # all exactly str: the common case
        return out
    for i, label in enumerate(out):
        if not isinstance(label, str):
            raise TypeError(f"{name}: item {i} is {type(label).__name__}, expected str")
    return out


def _refused(labels: list[Any], name: str, error: Exception) -> Exception:
    """The error to raise when the core refused ``labels`` with ``error``: one that names the
    argument and the item (a non-str, or a str with no UTF-8 form), else ``error`` itself."""
    _labels(labels, name)  # raises for a non-str item
    if isinstance(error, UnicodeError):
        for i, label in enumerate(labels):
            try:
                label.encode("utf-8")
            except UnicodeError:
                return ProtofastError(f"{name}: item {i} has no UTF-8 form (a lone surrogate?)")
    return error


@dataclass(frozen=True)
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes:
        centroids: ``(k, D)`` float32 cluster centres (unit norm if spherical).
        labels: ``(N,)`` int64 index of each point's nearest centroid (with
            ``reassign=False``: its cluster in the last assignment step).
        inertia: Sum of squared distances of the points to their centroid
            (computed exactly, in float64; for spherical k-means, of the
            normalised points).
        n_iter: Lloyd iterations run by the kept restart.
        converged: Whether the kept restart stopped before ``max_iter``.
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


def kmeans(
    x: Any,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: Literal["k-means++", "random"] | Any = "k-means++",
    spherical: bool = False,
    n_local_trials: int | None = None,
    reassign: bool = True,
) -> KMeansResult:
    """Lloyd's k-means, parallel and deterministic.

    For a given ``seed`` the result is identical bit for bit whatever the
    number of threads (see :func:`set_num_threads`).

    Args:
        x: ``(N, D)`` points (numpy array or torch tensor, any real dtype).
        k: Number of clusters, ``1 <= k <= N``.
        n_init: Restarts with different initialisations; the lowest inertia
            wins. Ignored (one run) when ``init`` is an array.
        max_iter: Maximum Lloyd iterations per restart; 0 returns the initial
            centroids with the points assigned to them.
        tol: Stop when the summed squared centroid shift is at most ``tol``
            times the mean per-feature variance of ``x`` (scikit-learn's
            rule); also stops when no label changes. ``tol=0`` runs until
            labels stop changing or ``max_iter``.
        seed: Seed of the random initialisation (``0 <= seed < 2**64``).
        init: ``"k-means++"`` (greedy, as scikit-learn), ``"random"``
            (k distinct points), or a ``(k, D)`` array of initial centroids.
        spherical: Cosine k-means: rows of ``x`` (and ``init``) are normalised
            to unit norm and centroids are kept at unit norm.
        n_local_trials: Candidates drawn per k-means++ centre, keeping the
            one that lowers the potential most. ``None`` (default):
            ``2 + floor(ln k)``, greedy k-means++ as scikit-learn. ``1``: the
            original k-means++ (one draw per centre, as faiss), about
            ``2 + ln k`` times cheaper for a slightly higher starting
            inertia (measured in ``benches/RESULTS.md``).
        reassign: After the last update, label each point with its nearest
            returned centroid (default, scikit-learn's ``labels_``): one more
            distance pass unless the last update moved no centroid.
            ``False`` keeps the labels of the last assignment step, whose
            member means the returned centroids are (the partition faiss's
            centroids come from; clusters left empty take a far point), and
            saves that pass: ``n`` iterations cost ``n`` passes instead of
            ``n + 1``. The centroids are the same either way; ``inertia``
            is that of the returned labels.

    Returns:
        A :class:`KMeansResult`.

    Raises:
        TypeError: An argument has the wrong type.
        ProtofastError: A value is invalid (``k > N``, a NaN in ``x``, an
            ``init`` of the wrong shape, a zero row in spherical mode, ...).
    """
    data = as_matrix(x, "x")
    k = _int("k", k, 1)
    n_init = _int("n_init", n_init, 1)
    max_iter = _int("max_iter", max_iter, 0)
    seed = _int("seed", seed, 0, 2**64 - 1)
    if n_local_trials is not None:
        n_local_trials = _int("n_local_trials", n_local_trials, 1)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol: expected a float, got {type(tol).__name__}")
    init_centroids = None
    if isinstance(init, str):
        init_name = init
    else:
        init_centroids = as_matrix(init, "init")
        init_name = "array"
    centroids, labels, inertia, n_iter, converged = _protofast.kmeans_raw(
        data,
        k,
        n_init=n_init,
        max_iter=max_iter,
        tol=float(tol),
        seed=seed,
        init=init_name,
        init_centroids=init_centroids,
        spherical=_bool("spherical", spherical),
        n_local_trials=n_local_trials,
        reassign=_bool("reassign", reassign),
    )
    return KMeansResult(centroids, labels, float(inertia), int(n_iter), bool(converged))


def kmeans_plusplus(
    x: Any, k: int, *, seed: int = 0, n_local_trials: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeds alone, as scikit-learn's ``kmeans_plusplus``.

    The seeds are the initial centroids of :func:`kmeans` with the same
    ``seed`` and ``n_local_trials`` (``n_init=1``, not spherical), without the
    assignment of the points that :func:`kmeans` does even with
    ``max_iter=0``. Deterministic for a given ``seed`` whatever the number of
    threads.

    Args:
        x: ``(N, D)`` points (numpy array or torch tensor, any real dtype).
        k: Number of seeds, ``1 <= k <= N``.
        seed: Seed of the random draws (``0 <= seed < 2**64``).
        n_local_trials: Candidates drawn per centre (see :func:`kmeans`);
            ``None``: ``2 + floor(ln k)``, ``1``: one draw per centre.

    Returns:
        ``(centers, indices)``: the ``(k, D)`` float32 seeds and the int64
        indices of the rows of ``x`` they are, in the order chosen.

    Raises:
        TypeError: An argument has the wrong type.
        ProtofastError: A value is invalid (``k > N``, a NaN in ``x``, ...).
    """
    data = as_matrix(x, "x")
    k = _int("k", k, 1)
    seed = _int("seed", seed, 0, 2**64 - 1)
    if n_local_trials is not None:
        n_local_trials = _int("n_local_trials", n_local_trials, 1)
    indices = _protofast.kmeans_plusplus_raw(data, k, seed=seed, n_local_trials=n_local_trials)
    return data[indices], indices


def nearest_prototype(
    queries: Any, centroids: Any, *, metric: Literal["l2", "cosine"] = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centroid of each query.

    Args:
        queries: ``(Q, D)`` query vectors (numpy or torch, any real dtype).
        centroids: ``(k, D)`` centroids, ``k >= 1``.
        metric: ``"l2"``: the smallest squared Euclidean distance, returned as
            the score; ``"cosine"``: the largest cosine similarity, returned as
            the score (zero-norm rows are an error).

    Returns:
        ``(ids, scores)``: ``(Q,)`` int64 centroid indices (ties go to the
        lowest index) and ``(Q,)`` float32 scores.

    Raises:
        TypeError: An array is not numeric.
        ProtofastError: Shapes disagree, a value is not finite, the metric is
            unknown, or a row has zero norm with ``metric="cosine"``.
    """
    q = as_matrix(queries, "queries")
    c = as_matrix(centroids, "centroids")
    if not isinstance(metric, str):
        raise TypeError(f"metric: expected 'l2' or 'cosine', got {type(metric).__name__}")
    return _protofast.nearest_prototype_raw(q, c, metric)


def label_hashes(labels: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each label, for exchanging labels between processes.

    The value depends on the label's UTF-8 bytes alone: it is the same in every process (no
    ``PYTHONHASHSEED``), on every platform and in every protofast version, so the ranks of a
    distributed job can exchange labels as an int64 tensor instead of as pickled strings. The
    algorithm (fixed for good; a pure-Python version is in the tests):

    1. ``h = K0 ^ n`` for ``n`` bytes, ``K0 = 0x243F6A8885A308D3``.
    2. For each 8-byte chunk, read little-endian as ``w`` (the last one zero-padded):
       ``h = lo(p) ^ hi(p)`` with ``p = (h ^ w) * 0x9E3779B97F4A7C15`` in 128 bits.
    3. ``h ^= h >> 33; h *= 0xFF51AFD7ED558CCD; h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53;
       h ^= h >> 33`` (mod 2**64), then ``h`` read as a signed (two's complement) int64.

    A string with a lone surrogate (no UTF-8 form) is hashed from
    ``label.encode("utf-8", "surrogatepass")``: deterministic too, and never equal to the
    bytes of a valid string. Not cryptographic: collisions can be built on purpose; ``m``
    natural labels collide with probability about ``m**2 / 2**65``.

    Args:
        labels: Label strings (``str`` or subclasses), e.g. a batch's label texts.

    Returns:
        ``(len(labels),)`` int64 hashes; equal labels get equal hashes.

    Raises:
        TypeError: ``labels`` is a bare string or not a sequence, or an item is not a ``str``
            (the message names the item).
    """
    return _protofast.label_hashes_raw(_label_list(labels))


def match_clusters(previous: Any, current: Any, k: int) -> np.ndarray:
    """Renumbers ``current``'s clusters to agree with ``previous`` as much as possible.

    Given two assignments of the same items to clusters ``0..k-1``, returns the permutation
    ``perm`` such that renaming current cluster ``c`` to ``perm[c]`` maximises the total overlap
    ``sum_c |{i : previous[i] == perm[c] and current[i] == c}|``: relabel with
    ``perm[current]``. Exact (the Hungarian method on the ``k x k`` overlap counts, integer
    arithmetic); the GIL is released while it runs. When several permutations reach the
    maximum, the one kept is the one that leaves the most clusters at their own number
    (``perm[c] == c``), and among those the lexicographically smallest: the result depends on
    the input alone.

    Args:
        previous: ``(n,)`` integer cluster ids (numpy, torch or a sequence); ``-1`` marks an
            item absent from this clustering, ignored.
        current: ``(n,)`` integer cluster ids of the same items, ``-1`` as in ``previous``.
        k: The number of clusters, ``k >= 1``.

    Returns:
        ``(k,)`` int64 permutation of ``0..k-1``.

    Raises:
        TypeError: An id array is not of an integer dtype, or ``k`` is not an int.
        ProtofastError: ``k < 1``, an array is not 1-D, the lengths differ, an id is outside
            ``-1..k-1``, or the ``k x k`` counts do not fit in memory.
    """
    k = _int("k", k, 1)
    prev = _id_vector("previous", previous)
    cur = _id_vector("current", current)
    return _protofast.match_clusters_raw(prev, cur, k)


def _id_vector(name: str, value: Any) -> np.ndarray:
    """``value`` as a 1-D int64 array of ids ``>= -1`` (the upper bound is the core's check)."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name}: a masked array's mask would be ignored; pass a plain array")
    ndim = _to_numpy(value).ndim
    if ndim != 1:
        raise ProtofastError(f"{name}: expected a 1-D array, got {ndim} dimensions")
    return _int_vector(name, value, -1)


def set_num_threads(n: int) -> None:
    """Sets the number of threads protofast uses (default: the number of cores,
    or the ``PROTOFAST_NUM_THREADS`` environment variable).

    Args:
        n: Thread count, at least 1.

    Raises:
        TypeError: ``n`` is not an int.
        ProtofastError: ``n < 1``.
    """
    _protofast.set_num_threads(_int("n", n, 1))


def get_num_threads() -> int:
    """The number of threads protofast uses.

    Returns:
        The thread count of protofast's pool.
    """
    return _protofast.get_num_threads()


def set_amx(enabled: bool) -> bool:
    """Turns on or off the integer screen of k-means' plain assignment steps on the CPU's
    tile unit (Intel AMX; default: on where the CPU and OS have it, unless the
    ``PROTOFAST_AMX=0`` environment variable is set).

    The screen bounds every centroid's distance from int8 products and recomputes only the
    panels of centroids that may be nearest, with the full pass's own arithmetic: labels,
    centroids and inertia are the same bits either way; only the time differs. It runs where it
    was measured to pay: ``k >= 96``, ``D >= 128`` and ``k * D >= 32768``, the rows quantized
    once per call (``k >= 192`` and ``k * D >= 65536`` when the quantized rows would take more
    than 256 MiB, about 330 000 rows of 384, and each step quantizes its own).

    Args:
        enabled: Whether the screen should run.

    Returns:
        Whether it now runs (``False`` on a CPU or OS without AMX, whatever ``enabled``).

    Raises:
        TypeError: ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    return _protofast.set_amx(enabled)


def get_amx() -> bool:
    """Whether k-means' plain assignment steps run the integer screen on the CPU's tile unit.

    Returns:
        ``True`` when the CPU and OS have AMX and the screen is on (see :func:`set_amx`).
    """
    return _protofast.get_amx()


class _ForkGuard:
    """Makes ``os.fork`` wait until no thread is inside a store's core call.

    A core call holds the store's Rust mutex; a child forked meanwhile would inherit it locked,
    held by a thread that does not exist there, and hang on its first use of the store. Each
    :class:`LabelStore` call therefore runs under a Python lock, and before a fork every
    store's lock is taken (the fork waits for calls in flight), then released in parent and
    child alike, as CPython does for its own locks.
    """

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[LabelStore] = weakref.WeakSet()
        self._registry = threading.Lock()
        self._held: list[LabelStore] = []
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before, after_in_parent=self._after, after_in_child=self._after
            )

    def track(self, store: LabelStore) -> None:
        with self._registry:
            self._stores.add(store)

    def _before(self) -> None:
        self._registry.acquire()
        self._held = list(self._stores)
        for store in self._held:
            store._lock.acquire()

    def _after(self) -> None:
        for store in self._held:
            store._lock.release()
        self._held = []
        self._registry.release()


_FORK_GUARD = _ForkGuard()


class LabelStore:
    """Interns label strings and keeps per-label embedding statistics.

    Labels get dense ids in first-seen order. Per label the store keeps its
    sample count and either the running mean over all its samples (default;
    stored as a float32 sum, each batch pre-summed in float64) or, with
    ``max_samples_per_label=N``, a window of its last N samples. The
    dimension is fixed by the first batch. A rejected batch leaves the store
    unchanged. Safe to share between threads; picklable.

    Args:
        max_samples_per_label: ``None`` for the running mean, or the window
            size ``N >= 1``.

    Raises:
        ProtofastError: ``max_samples_per_label`` is less than 1.
    """

    __slots__ = ("__weakref__", "_inner", "_lock")

    def __init__(self, max_samples_per_label: int | None = None) -> None:
        if max_samples_per_label is not None:
            max_samples_per_label = _int("max_samples_per_label", max_samples_per_label, 1)
        self._adopt(_protofast.LabelStore(max_samples_per_label))

    def _adopt(self, inner: Any) -> None:
        """Holds ``inner`` behind a lock that a fork waits for (see ``_ForkGuard``)."""
        self._inner = inner
        self._lock = threading.Lock()
        _FORK_GUARD.track(self)

    def add(self, labels: Sequence[str], embeddings: Any) -> np.ndarray:
        """Adds a batch of samples.

        Args:
            labels: ``B`` label strings.
            embeddings: ``(B, D)`` embeddings, row i belonging to ``labels[i]``.

        Returns:
            ``(B,)`` int64 ids of the labels.

        Raises:
            TypeError: ``labels`` is not a sequence of str, or the embeddings
                are not numeric.
            ProtofastError: Length mismatch, a dimension other than the
                store's, or a NaN/inf value. The store is left unchanged.
        """
        texts, data = _label_list(labels), as_matrix(embeddings, "embeddings")
        with self._lock:
            try:
                return self._inner.add(texts, data)
            except (TypeError, UnicodeError) as error:
                raise _refused(texts, "labels", error) from None

    def intern(self, labels: Sequence[str]) -> np.ndarray:
        """Ids of ``labels``, adding unseen ones without samples.

        Args:
            labels: Label strings.

        Returns:
            ``(len(labels),)`` int64 ids.

        Raises:
            TypeError: ``labels`` is not a sequence of str.
        """
        texts = _label_list(labels)
        with self._lock:
            try:
                return self._inner.intern(texts)
            except (TypeError, UnicodeError) as error:
                raise _refused(texts, "labels", error) from None

    def add_grouped(
        self, labels: Sequence[str], embeddings: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`add`, and the batch grouped by label, in one call.

        Args:
            labels: ``B`` label strings.
            embeddings: ``(B, D)`` embeddings, row i belonging to ``labels[i]``.

        Returns:
            ``(ids, first, inverse, counts)``, int64: the ``(B,)`` ids of the labels, and the
            batch's distinct labels in order of first appearance (as
            :func:`protofast.targets.group_labels`): the first sample of each, the number of
            each sample's label and the samples per label.

        Raises:
            TypeError: As :meth:`add`.
            ProtofastError: As :meth:`add`; the store is left unchanged.
        """
        texts, data = _label_list(labels), as_matrix(embeddings, "embeddings")
        with self._lock:
            try:
                ids, (first, inverse, counts) = self._inner.add_grouped(texts, data)
            except (TypeError, UnicodeError) as error:
                raise _refused(texts, "labels", error) from None
        return ids, first, inverse, counts

    def intern_grouped(
        self, labels: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`intern`, and the batch grouped by label (as :meth:`add_grouped`), in one
        call.

        Raises:
            TypeError: ``labels`` is not a sequence of str.
        """
        texts = _label_list(labels)
        with self._lock:
            try:
                ids, (first, inverse, counts) = self._inner.intern_grouped(texts)
            except (TypeError, UnicodeError) as error:
                raise _refused(texts, "labels", error) from None
        return ids, first, inverse, counts

    def lookup(self, labels: Sequence[str]) -> np.ndarray:
        """Ids of ``labels`` without changing the store.

        Args:
            labels: Label strings.

        Returns:
            ``(len(labels),)`` int64 ids, -1 for labels never seen.

        Raises:
            TypeError: ``labels`` is not a sequence of str.
        """
        texts = _label_list(labels)
        with self._lock:
            try:
                return self._inner.lookup(texts)
            except (TypeError, UnicodeError) as error:
                raise _refused(texts, "labels", error) from None

    def add_sums(self, ids: Any, sums: Any, counts: Any) -> None:
        """Merges pre-summed statistics (running-mean mode only).

        Label ``ids[i]`` gains ``counts[i]`` samples whose sum is ``sums[i]``:
        the way per-device or per-process accumulators are folded in.

        Args:
            ids: ``(M,)`` ids from :meth:`intern` or :meth:`add`.
            sums: ``(M, D)`` per-label sums of embeddings.
            counts: ``(M,)`` non-negative sample counts.

        Raises:
            ProtofastError: Window mode, an unknown id, a negative count,
                mismatched lengths or a non-finite value. Nothing is changed.
        """
        ids_arr = _int_vector("ids", ids, 0)
        counts_arr = _int_vector("counts", counts, 0)
        data = as_matrix(sums, "sums")
        with self._lock:
            self._inner.add_sums(ids_arr, data, counts_arr)

    def means(self) -> np.ndarray:
        """The ``(L, D)`` float32 mean embedding of every label, in id order.

        Returns:
            The means; a label interned without samples has a row of NaN.
            ``(0, 0)`` before the first batch.
        """
        with self._lock:
            return self._inner.means()

    def labels(self) -> list[str]:
        """All labels in id order.

        Returns:
            The label strings.
        """
        with self._lock:
            return self._inner.labels()

    def counts(self) -> np.ndarray:
        """Samples seen per label, in id order.

        Returns:
            ``(L,)`` int64 counts (all samples, also in window mode).
        """
        with self._lock:
            return self._inner.counts()

    def __len__(self) -> int:
        with self._lock:
            return len(self._inner)

    @property
    def dim(self) -> int | None:
        """The embedding dimension, ``None`` before the first batch."""
        with self._lock:
            return self._inner.dim

    @property
    def nbytes(self) -> int:
        """Bytes held by the store (allocated capacity)."""
        with self._lock:
            return self._inner.nbytes

    @property
    def max_samples_per_label(self) -> int | None:
        """The window size, ``None`` in running-mean mode."""
        with self._lock:
            return self._inner.max_samples_per_label

    def __repr__(self) -> str:
        with self._lock:
            return repr(self._inner)

    def state(self) -> dict[str, Any]:
        """The whole state as plain values and numpy arrays (for checkpoints).

        Returns:
            A dict with keys ``max_samples_per_label``, ``dim``, ``labels``,
            ``counts``, ``data`` and ``window_rows``.
        """
        with self._lock:
            state = self._inner.state()
        # empty arrays from the core may share one dangling address, which torch.save
        # refuses across dtypes: give each its own buffer
        for key, value in state.items():
            if isinstance(value, np.ndarray) and value.size == 0:
                state[key] = value.copy()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelStore:
        """Rebuilds a store from :meth:`state` (arrays may be torch tensors).

        Args:
            state: A dict as returned by :meth:`state`.

        Returns:
            The restored store.

        Raises:
            ProtofastError: The state is inconsistent.
            KeyError: A key is missing.
        """
        store = cls(state["max_samples_per_label"])
        dim = state["dim"]
        dim = None if dim is None else _int("state.dim", dim, 0)
        data = _state_data(state["data"])
        store._inner.load_state(
            store.max_samples_per_label,
            dim,
            _labels(state["labels"], "state.labels"),
            _int_vector("state.counts", state["counts"], 0),
            data,
            _int_vector("state.window_rows", state["window_rows"], 0),
        )
        return store

    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._adopt(LabelStore.from_state(state)._inner)


def _state_data(value: Any) -> np.ndarray:
    """A state's ``data`` as a C-contiguous float64 matrix (states written before the store
    kept float64 sums hold float32: widened exactly)."""
    arr = _to_numpy(value)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2:
        raise TypeError(
            f"state.data: expected a 2-D array of real numbers, got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
