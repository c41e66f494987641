"""Runs a scenario on N CPU ranks (gloo, torch.multiprocessing) and returns what each rank
reported; a rank that fails or a world that runs past its time limit fails the test."""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from protofast import PrototypeManager

D = 16
CATEGORIES = 4


def label_vectors(num_labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels ``c{category}-l{i}`` whose embeddings lie around one centre per category
    (well separated, so every clustering of them finds the categories)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CATEGORIES, D)) * 4.0
    return {
        f"c{i % CATEGORIES}-l{i}": centres[i % CATEGORIES] + rng.normal(size=D) * 0.3
        for i in range(num_labels)
    }


def batch(vectors: dict[str, np.ndarray], names: list[str], seed: int) -> tuple[list, torch.Tensor]:
    """Samples of ``names`` (their label vector plus a little noise)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([vectors[n] + rng.normal(size=D) * 0.05 for n in names])
    return list(names), torch.from_numpy(rows.astype(np.float32))


def partition(label_to_cluster: dict[str, int]) -> set[frozenset[str]]:
    """The clusters as sets of labels (numbering ignored)."""
    members: dict[int, set[str]] = {}
    for label, c in label_to_cluster.items():
        members.setdefault(c, set()).add(label)
    return {frozenset(m) for m in members.values()}


def manager(**kwargs: Any) -> PrototypeManager:
    base = {"num_clusters": CATEGORIES, "update_interval": 5, "min_samples_per_cluster": 1}
    base.update(kwargs)
    return PrototypeManager(**base)


def snapshot(m: PrototypeManager) -> dict[str, Any]:
    """What must be equal on every rank, as plain values."""
    protos = None if m.prototypes is None else m.prototypes.cpu().numpy().tobytes()
    return {
        "prototypes": protos,
        "label_to_cluster": dict(m.label_to_cluster),
        "store_labels": m.store.labels(),
        "store_counts": m.store.counts().tolist(),
        "store_means": m.store.means().tobytes(),
        "num_updates": m.num_updates,
    }


def _entry(rank: int, size: int, scenario: Callable[..., Any], folder: str, kwargs: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size
    )
    try:
        result: Any = scenario(rank, size, folder, **kwargs)
        outcome = ("ok", result)
    except BaseException:
        outcome = ("error", traceback.format_exc())
    with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(outcome, f)
    dist.destroy_process_group()


def run(scenario: Callable[..., Any], size: int, timeout: float = 120.0, **kwargs: Any) -> list:
    """``scenario(rank, size, folder, **kwargs)`` on ``size`` ranks; its return values in rank
    order. Raises AssertionError if a rank raised, died or the world ran past ``timeout``."""
    with tempfile.TemporaryDirectory() as folder:
        context = mp.start_processes(
            _entry,
            args=(size, scenario, folder, kwargs),
            nprocs=size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.kill()
                raise AssertionError(f"{scenario.__name__} on {size} ranks ran past {timeout} s")
        results = []
        for rank in range(size):
            with open(os.path.join(folder, f"rank{rank}.pkl"), "rb") as f:
                status, value = pickle.load(f)
            if status != "ok":
                raise AssertionError(f"rank {rank} of {scenario.__name__} failed:\n{value}")
            results.append(value)
        return results
