"""Data of a training run: HAPT windows, label texts and their frozen embeddings.

Every activity has a list of *training* descriptions and a disjoint list of *held-out*
descriptions (:mod:`protofast.train.data.descriptions`); both are embedded once with the frozen text
encoder (cached on disk). The result is shared between the runs of an ablation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .config import TrainConfig
from .data.descriptions import ActivityDescriptions, descriptions_for
from .data.hapt import ACTIVITY_NAMES, HaptSplit, load_hapt
from .text import embed_texts

__all__ = ["PreparedData", "prepare_data"]

logger = logging.getLogger("protofast")


@dataclass
class PreparedData:
    """Windows, label texts and their frozen embeddings.

    Attributes:
        split: Normalised HAPT windows split by person.
        activities: Activity ids, in class-index order.
        descriptions: ``{activity id: ActivityDescriptions}``.
        train_texts: All training descriptions.
        train_text_class: Class index of each training description.
        train_text_emb: ``(T, D)`` frozen embeddings of ``train_texts``.
        heldout_texts: All held-out descriptions.
        heldout_text_class: Class index of each held-out description.
        heldout_text_emb: ``(H, D)`` frozen embeddings of ``heldout_texts``.
        y_train: Class index of each training window.
        y_test: Class index of each test window.
        timings: Seconds spent loading data and embedding texts.
    """

    split: HaptSplit
    activities: list[int]
    descriptions: dict[int, ActivityDescriptions]
    train_texts: list[str]
    train_text_class: np.ndarray
    train_text_emb: np.ndarray
    heldout_texts: list[str]
    heldout_text_class: np.ndarray
    heldout_text_emb: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Activity names in class-index order."""
        return [ACTIVITY_NAMES[a] for a in self.activities]


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load HAPT, build the label texts and embed them (cached on disk).

    Args:
        cfg: Run settings (``data_path``, ``include_transitions``, ``text_model``).

    Returns:
        The prepared data.

    Raises:
        FileNotFoundError: If the HAPT data is not installed.
        protofast.train.text.TextEncoderUnavailable: If the text encoder is missing.
    """
    t0 = time.perf_counter()
    split = load_hapt(cfg.data_path, include_transitions=cfg.include_transitions)
    t_data = time.perf_counter() - t0
    activities = list(split.activities)
    descs = descriptions_for(activities)
    class_of = {a: i for i, a in enumerate(activities)}
    train_texts = [t for a in activities for t in descs[a].train]
    train_cls = np.array([class_of[a] for a in activities for _ in descs[a].train])
    held_texts = [t for a in activities for t in descs[a].heldout]
    held_cls = np.array([class_of[a] for a in activities for _ in descs[a].heldout])
    t1 = time.perf_counter()
    emb = embed_texts(train_texts + held_texts, model_name=cfg.text_model)
    t_text = time.perf_counter() - t1
    n = len(train_texts)
    lookup = np.vectorize(class_of.__getitem__, otypes=[np.int64])
    prepared = PreparedData(
        split=split,
        activities=activities,
        descriptions=descs,
        train_texts=train_texts,
        train_text_class=train_cls,
        train_text_emb=emb[:n],
        heldout_texts=held_texts,
        heldout_text_class=held_cls,
        heldout_text_emb=emb[n:],
        y_train=lookup(split.train.y),
        y_test=lookup(split.test.y),
        timings={"data_s": t_data, "text_s": t_text},
    )
    logger.info(
        "HAPT: %d train / %d test windows (%d activities, test people %s); "
        "%d training + %d held-out label texts (data %.1fs, text %.1fs)",
        len(split.train),
        len(split.test),
        len(activities),
        split.test_people,
        len(train_texts),
        len(held_texts),
        t_data,
        t_text,
    )
    return prepared
