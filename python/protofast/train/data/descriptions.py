"""Natural-language descriptions of the HAPT activities.

Every activity has several training descriptions (one is drawn at random for each training
sample) and a few *held-out* descriptions that are never trained on: they are only used to
evaluate zero-shot transfer to unseen label texts. Each held-out text was checked to be nearest
(in all-MiniLM-L6-v2 space) to the mean of its own activity's training texts, so the held-out
evaluation measures transfer to new wording rather than text ambiguity. The texts are written so
that they cluster naturally (level walking, stairs, static postures, sitting/standing
transitions, lying transitions), which is what prototypical soft targets exploit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BASICMOTIONS_DESCRIPTIONS",
    "DESCRIPTIONS",
    "ActivityDescriptions",
    "all_texts",
    "descriptions_for",
    "heldout_texts",
    "train_texts",
]


@dataclass(frozen=True)
class ActivityDescriptions:
    """Label texts of one activity.

    Attributes:
        activity: HAPT activity id.
        name: snake_case activity name.
        train: Descriptions used for training (and for training-text evaluation).
        heldout: Descriptions never trained on (held-out-text evaluation only).
    """

    activity: int
    name: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]


DESCRIPTIONS: dict[int, ActivityDescriptions] = {
    d.activity: d
    for d in (
        ActivityDescriptions(
            1,
            "walking",
            train=(
                "walking",
                "walking at a normal pace",
                "strolling",
                "a person walking on level ground",
                "taking a walk",
                "walking along a corridor",
            ),
            heldout=("walking at a leisurely pace", "going for a stroll"),
        ),
        ActivityDescriptions(
            2,
            "walking_upstairs",
            train=(
                "walking upstairs",
                "climbing stairs",
                "going up the stairs",
                "ascending a staircase",
                "stepping up a flight of stairs",
                "walking up the steps",
            ),
            heldout=("mounting the stairs", "climbing up a stairway"),
        ),
        ActivityDescriptions(
            3,
            "walking_downstairs",
            train=(
                "walking downstairs",
                "going down the stairs",
                "descending stairs",
                "stepping down a staircase",
                "walking down the steps",
                "coming down a flight of stairs",
            ),
            heldout=("taking the stairs down", "going down a stairway"),
        ),
        ActivityDescriptions(
            4,
            "sitting",
            train=(
                "sitting",
                "sitting on a chair",
                "seated",
                "sitting still",
                "being seated at a desk",
                "sitting quietly",
            ),
            heldout=("resting in a chair", "sat on a seat"),
        ),
        ActivityDescriptions(
            5,
            "standing",
            train=(
                "standing",
                "standing still",
                "standing upright",
                "standing in place",
                "staying on one's feet",
                "standing without moving",
            ),
            heldout=("remaining upright on both feet", "waiting while standing"),
        ),
        ActivityDescriptions(
            6,
            "lying",
            train=(
                "lying down",
                "lying on a bed",
                "lying flat",
                "laying down",
                "lying on one's back",
                "reclining horizontally",
            ),
            heldout=("stretched out on a mattress", "resting flat on the bed"),
        ),
        ActivityDescriptions(
            7,
            "stand_to_sit",
            train=(
                "sitting down",
                "going from standing to sitting",
                "taking a seat",
                "lowering oneself onto a chair",
                "moving from standing to a seated position",
            ),
            heldout=("settling into a chair", "dropping into a seat"),
        ),
        ActivityDescriptions(
            8,
            "sit_to_stand",
            train=(
                "standing up",
                "getting up from a chair",
                "rising from a seat",
                "going from sitting to standing",
                "pushing up out of a chair",
            ),
            heldout=("standing up out of the chair", "rising out of a seat to stand"),
        ),
        ActivityDescriptions(
            9,
            "sit_to_lie",
            train=(
                "lying down from sitting",
                "going from sitting to lying",
                "lying back from a seated position",
                "reclining from sitting",
                "moving from a seated position to lying flat",
            ),
            heldout=(
                "reclining onto the bed from a seated position",
                "leaning back to lie down from a seated position",
            ),
        ),
        ActivityDescriptions(
            10,
            "lie_to_sit",
            train=(
                "sitting up from lying",
                "going from lying to sitting",
                "sitting up in bed",
                "rising from lying to a seated position",
                "getting up to sit",
            ),
            heldout=("sitting up after lying down", "sitting upright after lying in bed"),
        ),
        ActivityDescriptions(
            11,
            "stand_to_lie",
            train=(
                "lying down from standing",
                "going from standing to lying",
                "getting into bed from standing",
                "lowering oneself from standing to lying",
                "moving from standing to lying flat",
            ),
            heldout=(
                "lying down flat after standing",
                "lying down onto the bed from a standing position",
            ),
        ),
        ActivityDescriptions(
            12,
            "lie_to_stand",
            train=(
                "getting out of bed",
                "standing up from lying",
                "going from lying to standing",
                "rising from lying down to standing",
                "getting up from the bed",
            ),
            heldout=("climbing out of bed onto one's feet", "waking up and standing up"),
        ),
    )
}


#: Descriptions of the four UEA BasicMotions activities (ids of
#: :data:`protofast.train.data.basicmotions.BASICMOTIONS_ACTIVITIES`), written like HAPT's:
#: six training and two held-out descriptions each.
BASICMOTIONS_DESCRIPTIONS: dict[int, ActivityDescriptions] = {
    d.activity: d
    for d in (
        ActivityDescriptions(
            1,
            "standing",
            train=(
                "standing",
                "standing still",
                "standing upright",
                "standing in place",
                "resting on one's feet",
                "standing without moving",
            ),
            heldout=("remaining upright on both feet", "waiting while standing"),
        ),
        ActivityDescriptions(
            2,
            "walking",
            train=(
                "walking",
                "walking at a normal pace",
                "strolling",
                "a person walking on level ground",
                "taking a walk",
                "walking along a path",
            ),
            heldout=("walking at a leisurely pace", "going for a stroll"),
        ),
        ActivityDescriptions(
            3,
            "running",
            train=(
                "running",
                "jogging",
                "running at a steady pace",
                "a person running",
                "going for a run",
                "sprinting",
            ),
            heldout=("running along a track", "jogging at a quick pace"),
        ),
        ActivityDescriptions(
            4,
            "badminton",
            train=(
                "playing badminton",
                "a game of badminton",
                "hitting a shuttlecock with a racket",
                "swinging a badminton racket",
                "playing a racket sport",
                "smashing a shuttlecock over the net",
            ),
            heldout=("a badminton rally", "returning a shuttlecock"),
        ),
    )
}


def descriptions_for(
    activities: Iterable[int], table: dict[int, ActivityDescriptions] | None = None
) -> dict[int, ActivityDescriptions]:
    """Return the descriptions of the given activities.

    Args:
        activities: Activity ids.
        table: The data set's descriptions (default: HAPT's, :data:`DESCRIPTIONS`).

    Returns:
        ``{activity id: ActivityDescriptions}`` in the given order.

    Raises:
        KeyError: If an activity has no descriptions.
    """
    table = DESCRIPTIONS if table is None else table
    out: dict[int, ActivityDescriptions] = {}
    for a in activities:
        if a not in table:
            raise KeyError(f"no descriptions for activity {a}")
        out[a] = table[a]
    return out


def train_texts(activities: Iterable[int] | None = None) -> list[str]:
    """All training descriptions, activity by activity.

    Args:
        activities: Activity ids (default: all).

    Returns:
        The texts.
    """
    acts = DESCRIPTIONS if activities is None else descriptions_for(activities)
    return [t for d in acts.values() for t in d.train]


def heldout_texts(activities: Iterable[int] | None = None) -> list[str]:
    """All held-out descriptions (never trained on), activity by activity.

    Args:
        activities: Activity ids (default: all).

    Returns:
        The texts.
    """
    acts = DESCRIPTIONS if activities is None else descriptions_for(activities)
    return [t for d in acts.values() for t in d.heldout]


def all_texts(activities: Iterable[int] | None = None) -> list[str]:
    """Training then held-out descriptions.

    Args:
        activities: Activity ids (default: all).

    Returns:
        The texts.
    """
    return train_texts(activities) + heldout_texts(activities)
