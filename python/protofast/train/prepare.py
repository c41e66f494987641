"""Data of a training run: IMU windows, label texts and their frozen embeddings.

The windows come from UCI HAPT (``--dataset hapt``) or UEA BasicMotions (``--dataset
basicmotions``); the label texts are natural descriptions (``--label-texts descriptions``) or
composed captions (``--label-texts captions``, :mod:`protofast.train.data.captions`).

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
from .data.basicmotions import BASICMOTIONS_ACTIVITIES, load_basicmotions
from .data.captions import CAPTION_SIZES, compose_captions
from .data.descriptions import BASICMOTIONS_DESCRIPTIONS, ActivityDescriptions, descriptions_for
from .data.hapt import ACTIVITY_NAMES, HaptSplit, load_hapt
from .text import embed_texts

__all__ = ["DATASETS", "LABEL_TEXTS", "PreparedData", "prepare_data"]

#: The data sets of ``--dataset``.
DATASETS: tuple[str, ...] = ("hapt", "basicmotions")
#: The label-text regimes of ``--label-texts``.
LABEL_TEXTS: tuple[str, ...] = ("descriptions", "captions")

logger = logging.getLogger("protofast")


@dataclass
class PreparedData:
    """Windows, label texts and their frozen embeddings.

    Attributes:
        split: Normalised windows split by person (HAPT) or by the archive's split
            (BasicMotions).
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
        dataset: ``"hapt"`` or ``"basicmotions"``.
        label_kind: ``"descriptions"`` or ``"captions"``.
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
    dataset: str = "hapt"
    label_kind: str = "descriptions"

    @property
    def class_names(self) -> list[str]:
        """Activity names in class-index order."""
        names = BASICMOTIONS_ACTIVITIES if self.dataset == "basicmotions" else ACTIVITY_NAMES
        return [names[a] for a in self.activities]


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load the data set, build the label texts and embed them (cached on disk).

    Args:
        cfg: Run settings (``dataset``, ``label_texts``, ``data_path``,
            ``include_transitions`` (HAPT only), ``text_model``).

    Returns:
        The prepared data.

    Raises:
        FileNotFoundError: If the data set is not installed.
        ValueError: On an unknown ``dataset`` or ``label_texts``.
        protofast.train.text.TextEncoderUnavailable: If the text encoder is missing.
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    if cfg.label_texts not in LABEL_TEXTS:
        raise ValueError(f"label_texts must be one of {LABEL_TEXTS}, got {cfg.label_texts!r}")
    t0 = time.perf_counter()
    if cfg.dataset == "hapt":
        split = load_hapt(cfg.data_path, include_transitions=cfg.include_transitions)
        table = None
    else:
        split = load_basicmotions(cfg.data_path)
        table = BASICMOTIONS_DESCRIPTIONS
    t_data = time.perf_counter() - t0
    activities = list(split.activities)
    descs = descriptions_for(activities, table)
    if cfg.label_texts == "captions":
        n_train, n_held = CAPTION_SIZES[cfg.dataset]
        descs = compose_captions(descs, per_activity=n_train, heldout_per_activity=n_held)
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
        dataset=cfg.dataset,
        label_kind=cfg.label_texts,
    )
    logger.info(
        "%s: %d train / %d test windows (%d activities, test people/recordings %s); "
        "%d training + %d held-out label texts (%s; data %.1fs, text %.1fs)",
        "HAPT" if cfg.dataset == "hapt" else "BasicMotions",
        len(split.train),
        len(split.test),
        len(activities),
        split.test_people,
        len(train_texts),
        len(held_texts),
        cfg.label_texts,
        t_data,
        t_text,
    )
    return prepared
