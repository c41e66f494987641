"""UEA BasicMotions (smart-watch accelerometer and gyroscope), read from a PyPI package.

Data source
-----------
BasicMotions, from the UEA multivariate time series classification archive
(https://www.timeseriesclassification.com/description.php?Dataset=BasicMotions; A. Bagnall et
al., "The UEA multivariate time series classification archive, 2018", arXiv:1811.00075). Four
students wore a smart watch while standing, walking, running and playing badminton; its 3-D
accelerometer and 3-D gyroscope were sampled at 10 Hz for 10 s (100 samples) per recording, five
recordings per student and activity: 80 recordings, split 40/40 into the archive's official
TRAIN and TEST files.

The two ``.ts`` files ship as package data inside the PyPI wheel of ``aeon`` (the time-series
toolkit; ``aeon/datasets/data/BasicMotions/``). protofast needs only those files, never aeon's
code: ``pip install --no-deps aeon`` installs them without aeon's dependencies, this module
locates them through :mod:`importlib.metadata` (or, failing that, through the package's import
spec) *without importing aeon*, and reads them with its own :func:`read_ts`.

Where the files are found (first hit wins, see :func:`find_basicmotions_dir`):

1. an explicit ``path`` argument or the ``PROTOFAST_BASICMOTIONS_PATH`` environment variable (a
   directory holding ``BasicMotions_TRAIN.ts`` and ``BasicMotions_TEST.ts``);
2. the installed ``aeon`` distribution;
3. the cache directory (``$PROTOFAST_CACHE`` or ``~/.cache/protofast``): ``basicmotions/``.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import cache_dir
from .hapt import HaptSplit, WindowSet, normalise

__all__ = [
    "BASICMOTIONS_ACTIVITIES",
    "BASICMOTIONS_CHANNELS",
    "BASICMOTIONS_DIST",
    "TsData",
    "describe_split",
    "find_basicmotions_dir",
    "installed_basicmotions_dir",
    "load_basicmotions",
    "parse_ts",
    "read_ts",
    "window_series",
]

BASICMOTIONS_DIST = "aeon"
_MEMBER_DIR = "aeon/datasets/data/BasicMotions"
_FILES = ("BasicMotions_TRAIN.ts", "BasicMotions_TEST.ts")

#: BasicMotions activity ids (protofast's numbering) to snake_case names.
BASICMOTIONS_ACTIVITIES: dict[int, str] = {
    1: "standing",
    2: "walking",
    3: "running",
    4: "badminton",
}
_CLASS_TO_ID = {"standing": 1, "walking": 2, "running": 3, "badminton": 4}

#: Channels in the order of the files' dimensions (accelerometer, then gyroscope).
BASICMOTIONS_CHANNELS: tuple[str, ...] = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")

#: Offset added to the recording index of the TEST file's series (so ids never collide).
_TEST_OFFSET = 1000


# --------------------------------------------------------------------------------------------
# The .ts format
# --------------------------------------------------------------------------------------------


@dataclass
class TsData:
    """The content of a ``.ts`` file (equal-length series only).

    Attributes:
        x: ``(N, C, L)`` float32 series (``NaN`` where the file has ``?``).
        y: ``N`` class labels as written in the file (``None`` entries without class labels).
        class_labels: The labels declared by ``@classLabel true ...`` (empty if none).
        header: The ``@`` keys, lower-cased, with their raw values.
    """

    x: np.ndarray
    y: list[str | None]
    class_labels: list[str]
    header: dict[str, str] = field(default_factory=dict)


def _bool(header: dict[str, str], key: str, default: bool) -> bool:
    value = header.get(key)
    if value is None:
        return default
    word = value.split()[0].lower() if value.split() else ""
    if word not in ("true", "false"):
        raise ValueError(f".ts header @{key}: expected true or false, got {value!r}")
    return word == "true"


def parse_ts(text: str) -> TsData:
    """Parse the text of a ``.ts`` file (the sktime/aeon time-series format).

    Supported: comment lines (``#`` or ``%``), the ``@`` header (``@problemName``,
    ``@timeStamps false``, ``@univariate``, ``@dimensions``, ``@equalLength``,
    ``@seriesLength``, ``@classLabel``, ``@missing``, ...) and ``@data`` rows of comma-separated
    values, one ``:``-separated field per dimension, the class label last when
    ``@classLabel true``; ``?`` is a missing value (``NaN``). Time-stamped series and series of
    unequal length are refused.

    Args:
        text: The file's content.

    Returns:
        The parsed data.

    Raises:
        ValueError: On a malformed file, time stamps, unequal lengths, a wrong number of
            dimensions, an undeclared class label or a non-numeric value.
    """
    header: dict[str, str] = {}
    rows: list[list[np.ndarray]] = []
    labels: list[str | None] = []
    in_data = False
    has_labels = False
    class_labels: list[str] = []
    dims: int | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#%":
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f".ts line {lineno}: expected a @ header line before @data")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                if _bool(header, "timestamps", False):
                    raise ValueError(".ts files with time stamps are not supported")
                words = header.get("classlabel", "false").split()
                has_labels = bool(words) and words[0].lower() == "true"
                class_labels = words[1:] if has_labels else []
                if "dimensions" in header:
                    dims = int(header["dimensions"])
                elif _bool(header, "univariate", False):
                    dims = 1
                continue
            header[key] = value.strip()
            continue
        fields = line.split(":")
        label: str | None = None
        if has_labels:
            if len(fields) < 2:
                raise ValueError(f".ts line {lineno}: missing class label")
            label = fields.pop().strip()
            if class_labels and label not in class_labels:
                raise ValueError(f".ts line {lineno}: undeclared class label {label!r}")
        if dims is None:
            dims = len(fields)
        if len(fields) != dims:
            raise ValueError(f".ts line {lineno}: {len(fields)} dimensions, expected {dims}")
        series: list[np.ndarray] = []
        for f in fields:
            if "(" in f:
                raise ValueError(f".ts line {lineno}: time-stamped values are not supported")
            try:
                values = [np.nan if v.strip() == "?" else float(v) for v in f.split(",")]
            except ValueError as exc:
                raise ValueError(f".ts line {lineno}: {exc}") from None
            series.append(np.asarray(values, dtype=np.float32))
        rows.append(series)
        labels.append(label)
    if not in_data:
        raise ValueError(".ts file without @data section")
    if not rows:
        raise ValueError(".ts file without series")
    lengths = {len(s) for row in rows for s in row}
    if len(lengths) != 1:
        raise ValueError(f".ts series of unequal lengths {sorted(lengths)} are not supported")
    length = lengths.pop()
    declared = header.get("serieslength")
    if declared is not None and int(declared) != length:
        raise ValueError(f".ts @seriesLength {declared} but the series have {length} values")
    x = np.stack([np.stack(row) for row in rows]).astype(np.float32)
    return TsData(x, labels, class_labels, header)


def read_ts(path: str | os.PathLike[str]) -> TsData:
    """Read a ``.ts`` file (see :func:`parse_ts`).

    Args:
        path: The file.

    Returns:
        The parsed data.

    Raises:
        OSError: If the file cannot be read.
        ValueError: On a malformed or unsupported file.
    """
    return parse_ts(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Locating the files
# --------------------------------------------------------------------------------------------


def _has_files(directory: Path) -> bool:
    return all((directory / f).is_file() for f in _FILES)


def installed_basicmotions_dir() -> Path | None:
    """The ``BasicMotions`` data folder of the installed ``aeon`` distribution (not imported).

    Returns:
        The folder, or ``None`` when aeon (or the files in it) is not installed.
    """
    try:
        dist = importlib_metadata.distribution(BASICMOTIONS_DIST)
    except importlib_metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            name = str(entry).replace("\\", "/")
            if name == f"{_MEMBER_DIR}/{_FILES[0]}":
                folder = Path(str(dist.locate_file(entry))).parent
                if _has_files(folder):
                    return folder
    # a top-level find_spec locates the package without running its __init__
    spec = importlib.util.find_spec(BASICMOTIONS_DIST)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "datasets" / "data" / "BasicMotions"
        if _has_files(folder):
            return folder
    return None


def find_basicmotions_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate the folder holding ``BasicMotions_TRAIN.ts`` and ``BasicMotions_TEST.ts``.

    Args:
        path: Explicit folder; overrides everything else (as does
            ``PROTOFAST_BASICMOTIONS_PATH``).

    Returns:
        The folder.

    Raises:
        FileNotFoundError: If the files are nowhere to be found (the message says how to get
            them).
    """
    explicit = path if path is not None else os.environ.get("PROTOFAST_BASICMOTIONS_PATH")
    if explicit:
        p = Path(explicit).expanduser()
        if not _has_files(p):
            raise FileNotFoundError(f"{p} does not hold {' and '.join(_FILES)}")
        return p
    installed = installed_basicmotions_dir()
    if installed is not None:
        return installed
    cached = cache_dir() / "basicmotions"
    if _has_files(cached):
        return cached
    raise FileNotFoundError(
        "UEA BasicMotions not found. Install the package that carries it, without its "
        "dependencies:\n    pip install --no-deps aeon\n"
        f"or put {' and '.join(_FILES)} into {cached}, "
        "or point PROTOFAST_BASICMOTIONS_PATH at the folder holding them."
    )


# --------------------------------------------------------------------------------------------
# Windows and split
# --------------------------------------------------------------------------------------------


def window_series(
    x: np.ndarray, y: np.ndarray, recording: np.ndarray, *, window: int, step: int
) -> WindowSet:
    """Cut equal-length series into sliding windows (each keeps its series' label).

    Args:
        x: ``(N, C, L)`` series.
        y: ``(N,)`` activity id of each series.
        recording: ``(N,)`` recording id of each series (kept as the windows' ``person``).
        window: Window length in samples (``<= L``).
        step: Hop between window starts.

    Returns:
        The windows, series by series.

    Raises:
        ValueError: If ``window`` or ``step`` is not positive or ``window`` exceeds ``L``.
    """
    if window <= 0 or step <= 0:
        raise ValueError("window and step must be positive")
    length = x.shape[2]
    if window > length:
        raise ValueError(f"window {window} is longer than the series ({length})")
    starts = np.arange(0, length - window + 1, step)
    idx = starts[:, None] + np.arange(window)[None, :]  # (W, window)
    w = x[:, :, idx]  # (N, C, W, window)
    w = w.transpose(0, 2, 1, 3).reshape(-1, x.shape[1], window)
    n_w = len(starts)
    return WindowSet(
        np.ascontiguousarray(w, dtype=np.float32),
        np.repeat(np.asarray(y, dtype=np.int64), n_w),
        np.repeat(np.asarray(recording, dtype=np.int64), n_w),
    )


def _activity_ids(labels: Sequence[str | None]) -> np.ndarray:
    out = []
    for label in labels:
        key = (label or "").strip().lower()
        if key not in _CLASS_TO_ID:
            raise ValueError(f"BasicMotions: unknown class label {label!r}")
        out.append(_CLASS_TO_ID[key])
    return np.asarray(out, dtype=np.int64)


def load_basicmotions(
    path: str | os.PathLike[str] | None = None, *, window: int = 10, step: int = 2
) -> HaptSplit:
    """Load BasicMotions, window it and normalise it with the training statistics.

    The archive's own TRAIN/TEST split is kept (40 recordings each). Every 10-s recording is cut
    into windows of ``window`` samples (default 1 s at 10 Hz) every ``step`` samples (default
    0.2 s: 46 overlapping windows per recording, a cheap augmentation); the windows of a
    recording keep its label, and the ``person`` field of the windows holds the recording id
    (TEST recordings numbered from 1000). Short windows keep the task from saturating: with
    4-s windows every target setting classifies the TEST recordings perfectly, which leaves
    nothing to compare.

    Args:
        path: Optional folder with the two ``.ts`` files (see :func:`find_basicmotions_dir`).
        window: Window length in samples.
        step: Hop in samples.

    Returns:
        The normalised split (``test_people`` lists the TEST recording ids).

    Raises:
        FileNotFoundError: If the data cannot be located.
        ValueError: If the files are malformed or hold unexpected shapes or labels.
    """
    folder = find_basicmotions_dir(path)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for name, offset in zip(_FILES, (0, _TEST_OFFSET), strict=True):
        data = read_ts(folder / name)
        if data.x.shape[1] != len(BASICMOTIONS_CHANNELS):
            raise ValueError(f"{name}: {data.x.shape[1]} dimensions, expected 6")
        if not np.all(np.isfinite(data.x)):
            raise ValueError(f"{name}: missing values")
        parts.append((data.x, _activity_ids(data.y), offset + np.arange(len(data.y))))
    train_w, test_w = (window_series(x, y, r, window=window, step=step) for x, y, r in parts)
    mean, std, (train_n, test_n) = normalise(train_w, test_w)
    present = sorted(set(train_w.y.tolist()) | set(test_w.y.tolist()))
    return HaptSplit(train_n, test_n, mean, std, present, sorted(set(parts[1][2].tolist())))


def describe_split(split: HaptSplit) -> dict[str, Any]:
    """Window counts per activity of a split (for logs and tests).

    Args:
        split: A split from :func:`load_basicmotions`.

    Returns:
        ``{"train": {name: n}, "test": {name: n}}``.
    """
    out: dict[str, Any] = {}
    for tag, ws in (("train", split.train), ("test", split.test)):
        ids, counts = np.unique(ws.y, return_counts=True)
        out[tag] = {
            BASICMOTIONS_ACTIVITIES[int(i)]: int(c) for i, c in zip(ids, counts, strict=True)
        }
    return out
