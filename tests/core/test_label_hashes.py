"""protofast.label_hashes against a pure-Python implementation of its documented algorithm."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from protofast import label_hashes

MASK = (1 << 64) - 1
K0, K1 = 0x243F6A8885A308D3, 0x9E3779B97F4A7C15
F1, F2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53


def reference(label: str) -> int:
    """The algorithm of the docstring, written out in plain Python integers."""
    data = label.encode("utf-8", "surrogatepass")
    h = K0 ^ len(data)
    for start in range(0, len(data), 8):
        word = int.from_bytes(data[start : start + 8].ljust(8, b"\0"), "little")
        product = (h ^ word) * K1
        h = (product & MASK) ^ (product >> 64)
    h ^= h >> 33
    h = (h * F1) & MASK
    h ^= h >> 33
    h = (h * F2) & MASK
    h ^= h >> 33
    return h - (1 << 64) if h >> 63 else h


# Computed once with `reference`; the Rust tests pin the same values. They must never change.
PINNED = {
    "": 8848935107335307795,
    "a": 1108961763177208711,
    "a\0": 5622207272599723098,
    "walking": 3287065890914717306,
    "walking upstairs": 7256239408253180257,
    "12345678": -3756447662748408629,
    "123456789": 27907803560282598,
    "h\u00e9llo w\u00f6rld \u2713": -893065434330581332,
    "\U0001f600 emoji": -7094812828988329143,
}


def test_pinned_vectors() -> None:
    texts = list(PINNED)
    assert [reference(t) for t in texts] == list(PINNED.values())
    got = label_hashes(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts),)
    assert got.tolist() == list(PINNED.values())


@given(st.lists(st.text(max_size=40), max_size=30))
def test_matches_the_reference(texts: list[str]) -> None:
    got = label_hashes(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts),)
    assert got.tolist() == [reference(t) for t in texts]


def test_lone_surrogates_hash_their_surrogatepass_bytes() -> None:
    texts = ["\ud800", "a\udfffb", "\ud83d\ude00", "\U0001f600", "\ufffd"]
    got = label_hashes(texts).tolist()
    assert got == [reference(t) for t in texts]
    # a surrogate pair written as two code points is not the character it would encode
    assert got[2] != got[3]
    assert len(set(got)) == len(got)


def test_any_sequence_and_str_subclasses() -> None:
    class Label(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
            return b"not used"

    texts = ["walking", "sitting", "walking"]
    want = [reference(t) for t in texts]
    assert label_hashes(tuple(texts)).tolist() == want
    assert label_hashes(t for t in texts).tolist() == want
    assert label_hashes(np.array(texts)).tolist() == want  # numpy str_ is a str
    assert label_hashes([Label(t) for t in texts]).tolist() == want
    assert label_hashes([Label("\ud800")]).tolist() == [reference("\ud800")]
    assert label_hashes([]).shape == (0,)


def test_same_in_another_process_with_another_string_hash_seed() -> None:
    texts = ["walking", "sitting down", "\u00e9t\u00e9", "\ud800"]
    code = f"import protofast; print(protofast.label_hashes({texts!r}).tolist())"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(label_hashes(texts).tolist())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a", 3], "labels: item 1 is int, expected str"),
        ([b"a"], "labels: item 0 is bytes, expected str"),
        (["a", "b", None], "labels: item 2 is NoneType, expected str"),
        ("walking", "labels: expected a sequence of str, got a single str"),
        (b"walking", "labels: expected a sequence of str, got a single bytes"),
        (3, "labels: expected a sequence of str, got int"),
    ],
)
def test_type_errors_name_the_item(labels: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        label_hashes(labels)  # type: ignore[arg-type]
