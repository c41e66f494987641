"""Captions: many label texts per activity, composed from its wording, a manner and a context.

This is the regime the design note recommends prototypes for: *many* labels (a few hundred)
that fall into semantic categories. Each caption is ``"<description> <manner> <context>"``
(manner and context may be empty), e.g. ``"walking briskly down a corridor"`` or ``"a game of
badminton casually in a sports hall"``:

* the *descriptions* are the activity's own (:mod:`protofast.train.data.descriptions`): training
  captions use its training descriptions, held-out captions its held-out descriptions;
* the *manners* are adverbials written for each activity (``"briskly"``, ``"one step at a
  time"``, ...), shared by training and held-out captions;
* the *contexts* are places written for each category of activity (level locomotion, stairs,
  static postures, lying, postural transitions, sport); training captions use the category's
  training contexts, held-out captions its held-out contexts.

Training and held-out captions therefore share no description and no context: the held-out set
measures transfer to new wording *and* new context. From the full product of the parts a fixed,
seeded draw keeps ``per_activity`` training and ``heldout_per_activity`` held-out captions per
activity (the draw does not depend on the run's seed, so every run sees the same captions).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .descriptions import ActivityDescriptions

__all__ = [
    "CAPTION_SIZES",
    "CONTEXTS",
    "MANNERS",
    "compose_captions",
]

#: Manners per activity name (the empty string: no manner).
MANNERS: dict[str, tuple[str, ...]] = {
    "walking": ("", "briskly", "slowly", "at an easy pace"),
    "walking_upstairs": ("", "slowly", "quickly", "one step at a time"),
    "walking_downstairs": ("", "carefully", "quickly", "holding the railing"),
    "sitting": ("", "quietly", "comfortably", "for a while"),
    "standing": ("", "quietly", "patiently", "for a while"),
    "lying": ("", "quietly", "comfortably", "for a while"),
    "stand_to_sit": ("", "slowly", "carefully", "quickly"),
    "sit_to_stand": ("", "slowly", "carefully", "quickly"),
    "sit_to_lie": ("", "slowly", "carefully", "quickly"),
    "lie_to_sit": ("", "slowly", "carefully", "quickly"),
    "stand_to_lie": ("", "slowly", "carefully", "quickly"),
    "lie_to_stand": ("", "slowly", "carefully", "quickly"),
    "running": ("", "fast", "at a steady pace", "for exercise"),
    "badminton": ("", "energetically", "casually", "competitively"),
}

_CATEGORY: dict[str, str] = {
    "walking": "level",
    "running": "level",
    "walking_upstairs": "stairs",
    "walking_downstairs": "stairs",
    "sitting": "static",
    "standing": "static",
    "lying": "lying",
    "stand_to_sit": "transition",
    "sit_to_stand": "transition",
    "sit_to_lie": "transition",
    "lie_to_sit": "transition",
    "stand_to_lie": "transition",
    "lie_to_stand": "transition",
    "badminton": "sport",
}

#: Contexts per category: ``(training contexts, held-out contexts)`` ("" means none).
CONTEXTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "level": (
        ("", "down a corridor", "outside", "in a park", "along a street"),
        ("across a car park", "near the station"),
    ),
    "stairs": (
        ("", "at home", "in an office building", "at a train station", "in a stairwell"),
        ("in a hotel", "at school"),
    ),
    "static": (
        ("", "at home", "in an office", "in a waiting room", "outside"),
        ("in a library", "at a bus stop"),
    ),
    "lying": (
        ("", "at home", "in the bedroom", "on the sofa", "after lunch"),
        ("in a hotel room", "on a holiday"),
    ),
    "transition": (
        ("", "at home", "in the bedroom", "in an office", "in a waiting room"),
        ("in a hotel room", "at a friend's house"),
    ),
    "sport": (
        ("", "in a sports hall", "in a garden", "at a club", "with a friend"),
        ("in a gym", "on a Sunday afternoon"),
    ),
}

#: ``(training, held-out)`` captions per activity for each data set: a few hundred in all
#: (HAPT: 12 x 24 = 288 training and 96 held-out; BasicMotions: 4 x 60 = 240 and 48).
CAPTION_SIZES: dict[str, tuple[int, int]] = {"hapt": (24, 8), "basicmotions": (60, 12)}

_CAPTION_SEED = 20261128


def _compose(descs: Iterable[str], manners: Iterable[str], contexts: Iterable[str]) -> list[str]:
    return [
        " ".join(part for part in (d, m, c) if part)
        for d in descs
        for m in manners
        for c in contexts
    ]


def compose_captions(
    descriptions: dict[int, ActivityDescriptions],
    *,
    per_activity: int,
    heldout_per_activity: int,
) -> dict[int, ActivityDescriptions]:
    """Compose training and held-out captions for each activity.

    Args:
        descriptions: ``{activity id: ActivityDescriptions}`` (their ``name`` selects the
            manners and the category's contexts).
        per_activity: Training captions per activity.
        heldout_per_activity: Held-out captions per activity.

    Returns:
        ``{activity id: ActivityDescriptions}`` whose ``train``/``heldout`` are the captions.

    Raises:
        KeyError: If an activity has no manners or category.
        ValueError: If the parts cannot give that many distinct captions, or a held-out
            caption equals a training caption (of any activity).
    """
    rng = np.random.default_rng(_CAPTION_SEED)
    out: dict[int, ActivityDescriptions] = {}
    for a, d in descriptions.items():
        manners = MANNERS[d.name]
        train_ctx, held_ctx = CONTEXTS[_CATEGORY[d.name]]
        pools = (
            _compose(d.train, manners, train_ctx),
            _compose(d.heldout, manners, held_ctx),
        )
        picked: list[tuple[str, ...]] = []
        for pool, n in zip(pools, (per_activity, heldout_per_activity), strict=True):
            pool = list(dict.fromkeys(pool))
            if n > len(pool):
                raise ValueError(f"{d.name}: {len(pool)} distinct captions, {n} asked for")
            idx = np.sort(rng.permutation(len(pool))[:n])
            picked.append(tuple(pool[i] for i in idx))
        out[a] = ActivityDescriptions(a, d.name, train=picked[0], heldout=picked[1])
    train_all = {t for d in out.values() for t in d.train}
    clash = [t for d in out.values() for t in d.heldout if t in train_all]
    if clash:
        raise ValueError(f"held-out captions also used for training: {clash[:3]}")
    return out
