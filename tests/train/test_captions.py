"""Tests of the composed captions (the many-label regime of the ablation)."""

from __future__ import annotations

import pytest
from protofast.train.data import (
    BASICMOTIONS_DESCRIPTIONS,
    CAPTION_SIZES,
    DESCRIPTIONS,
    compose_captions,
)

TABLES = {"hapt": DESCRIPTIONS, "basicmotions": BASICMOTIONS_DESCRIPTIONS}


@pytest.mark.parametrize("dataset", sorted(TABLES))
def test_captions_sizes_disjointness_and_wording(dataset: str) -> None:
    table = TABLES[dataset]
    n_train, n_held = CAPTION_SIZES[dataset]
    caps = compose_captions(table, per_activity=n_train, heldout_per_activity=n_held)
    assert list(caps) == list(table)
    train = [t for d in caps.values() for t in d.train]
    held = [t for d in caps.values() for t in d.heldout]
    assert len(train) == len(set(train)) == n_train * len(table)
    assert len(held) == len(set(held)) == n_held * len(table)
    assert len(train) >= 200  # the note's "many labels" regime
    assert not set(train) & set(held)
    for a, d in caps.items():
        assert d.name == table[a].name
        assert all(any(t.startswith(p) for p in table[a].train) for t in d.train)
        assert all(any(t.startswith(p) for p in table[a].heldout) for t in d.heldout)
    # a fixed draw: the same captions every time
    again = compose_captions(table, per_activity=n_train, heldout_per_activity=n_held)
    assert again == caps


def test_captions_refuse_more_than_the_parts_allow() -> None:
    with pytest.raises(ValueError, match="distinct captions"):
        compose_captions(BASICMOTIONS_DESCRIPTIONS, per_activity=10_000, heldout_per_activity=1)
