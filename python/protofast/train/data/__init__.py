"""Real IMU data for protofast's training job (UCI HAPT, shipped inside a PyPI package)."""

from ..cache import cache_dir
from .descriptions import (
    DESCRIPTIONS,
    ActivityDescriptions,
    all_texts,
    descriptions_for,
    heldout_texts,
    train_texts,
)
from .hapt import (
    ACTIVITY_NAMES,
    CHANNELS,
    TEST_PEOPLE,
    HaptSplit,
    Recording,
    RestrictedUnpickler,
    WindowSet,
    find_hapt_file,
    installed_hapt_file,
    load_hapt,
    load_hapt_recordings,
    make_windows,
    normalise,
    person_split,
    restricted_loads,
)

__all__ = [
    "ACTIVITY_NAMES",
    "CHANNELS",
    "DESCRIPTIONS",
    "TEST_PEOPLE",
    "ActivityDescriptions",
    "HaptSplit",
    "Recording",
    "RestrictedUnpickler",
    "WindowSet",
    "all_texts",
    "cache_dir",
    "descriptions_for",
    "find_hapt_file",
    "heldout_texts",
    "installed_hapt_file",
    "load_hapt",
    "load_hapt_recordings",
    "make_windows",
    "normalise",
    "person_split",
    "restricted_loads",
    "train_texts",
]
