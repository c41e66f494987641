"""Tests of the .ts reader and the UEA BasicMotions loader.

The real-data tests need the BasicMotions files of the ``aeon`` wheel (installed with
``pip install --no-deps aeon``; ``make venv`` does it); they fail, not skip, when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from protofast.train.data import (
    BASICMOTIONS_ACTIVITIES,
    find_basicmotions_dir,
    load_basicmotions,
    parse_ts,
    read_ts,
    window_series,
)

SMALL = """# a comment
% another comment
@problemName Small
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength true
@seriesLength 4
@classLabel true up down
@data
1,2,3,4:5,6,7,8:up
0.5,?,1.5,2:-1,-2,-3,-4:down

-1e-3,0,0,1:2,2,2,2:up
"""


def test_parse_ts_reads_values_labels_and_header() -> None:
    data = parse_ts(SMALL)
    assert data.x.shape == (3, 2, 4)
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[0], [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert np.isnan(data.x[1, 0, 1])
    assert data.x[1, 0, 2] == pytest.approx(1.5)
    assert data.x[2, 0, 0] == pytest.approx(-1e-3)
    np.testing.assert_array_equal(data.x[1, 1], [-1, -2, -3, -4])
    assert data.y == ["up", "down", "up"]
    assert data.class_labels == ["up", "down"]
    assert data.header["problemname"] == "Small"


def test_parse_ts_without_class_labels() -> None:
    text = "@univariate true\n@classLabel false\n@data\n1,2,3\n4,5,6\n"
    data = parse_ts(text)
    assert data.x.shape == (2, 1, 3)
    assert data.y == [None, None]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("@dimensions 1\n@classLabel true a\n@data\n1,2:a\n1,2,3:a\n", "unequal"),
        ("@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", "dimensions"),
        ("@dimensions 1\n@classLabel true a b\n@data\n1,2:c\n", "undeclared"),
        ("@timeStamps true\n@data\n(1,2),(2,3)\n", "time stamps"),
        ("@dimensions 1\n", "without @data"),
        ("@seriesLength 3\n@classLabel false\n@data\n1,2\n", "seriesLength"),
        ("@classLabel false\n@data\n1,x\n", "line 3"),
        ("1,2\n@data\n", "header"),
        ("@classLabel false\n@data\n", "without series"),
    ],
)
def test_parse_ts_refuses_malformed_files(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_ts(text)


def test_window_series_cuts_each_series() -> None:
    x = np.arange(2 * 3 * 10, dtype=np.float32).reshape(2, 3, 10)
    w = window_series(x, np.array([1, 4]), np.array([7, 8]), window=4, step=3)
    assert w.x.shape == (2 * 3, 3, 4)  # starts 0, 3, 6
    np.testing.assert_array_equal(w.x[1], x[0, :, 3:7])
    np.testing.assert_array_equal(w.x[5], x[1, :, 6:10])
    assert w.y.tolist() == [1, 1, 1, 4, 4, 4]
    assert w.person.tolist() == [7, 7, 7, 8, 8, 8]
    with pytest.raises(ValueError):
        window_series(x, np.array([1, 4]), np.array([7, 8]), window=11, step=1)


# ------------------------------------------------------------------------------ real data


def test_real_files_are_found_without_importing_aeon() -> None:
    code = (
        "import sys\n"
        "from protofast.train.data import find_basicmotions_dir\n"
        "print(find_basicmotions_dir())\n"
        "print('aeon' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder, imported = proc.stdout.split()
    assert Path(folder).name == "BasicMotions"
    assert imported == "False"


def test_real_train_file_content() -> None:
    data = read_ts(find_basicmotions_dir() / "BasicMotions_TRAIN.ts")
    assert data.x.shape == (40, 6, 100)
    assert np.all(np.isfinite(data.x))
    assert sorted(data.class_labels) == ["Badminton", "Running", "Standing", "Walking"]
    assert {label: data.y.count(label) for label in data.class_labels} == dict.fromkeys(
        data.class_labels, 10
    )


def test_load_basicmotions_split_and_normalisation() -> None:
    split = load_basicmotions()
    per_recording = (100 - 10) // 2 + 1
    assert len(split.train) == len(split.test) == 40 * per_recording
    assert split.activities == sorted(BASICMOTIONS_ACTIVITIES)
    assert split.train.x.shape[1:] == (6, 10)
    np.testing.assert_allclose(split.train.x.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(split.train.x.std(axis=(0, 2)), 1.0, atol=1e-3)
    # train and test recordings are disjoint, and every activity is in both
    assert not set(split.train.person.tolist()) & set(split.test.person.tolist())
    for part in (split.train, split.test):
        assert np.bincount(part.y, minlength=5)[1:].tolist() == [10 * per_recording] * 4


def test_explicit_folder_and_missing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError):
        find_basicmotions_dir(tmp_path)
    src = find_basicmotions_dir()
    for name in ("BasicMotions_TRAIN.ts", "BasicMotions_TEST.ts"):
        shutil.copy(src / name, tmp_path / name)
    monkeypatch.setenv("PROTOFAST_BASICMOTIONS_PATH", str(tmp_path))
    assert find_basicmotions_dir() == tmp_path
    assert len(load_basicmotions(window=100, step=100).train) == 40
