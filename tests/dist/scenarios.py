"""What each rank runs in the multi-process tests (importable by spawned processes)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from protofast import InfoNCELoss, PrototypeManager
from protofast._core import LabelStore
from protofast._distributed import DistributedError, merge_store, ranks
from ranks import CATEGORIES, D, batch, label_vectors, manager, partition, snapshot

STEPS = 12
B = 8


def stream(rank: int, size: int, overlap: bool, num_labels: int, step: int) -> list[str]:
    """Rank ``rank``'s labels at ``step``: its own slice of the labels (disjoint), or draws
    from all of them in a rank-specific order (overlapping)."""
    names = sorted(label_vectors(num_labels))
    rng = np.random.default_rng(1000 * rank + step)
    if overlap:
        return [names[i] for i in rng.integers(0, len(names), size=B)]
    mine = names[rank::size]
    return [mine[i] for i in rng.integers(0, len(mine), size=B)]


def merged_clusters(rank: int, size: int, folder: str, overlap: bool, **options: Any) -> dict:
    """Feeds ``STEPS`` batches per rank; returns the state that must match on every rank, and
    every rank's batches (to replay them in one process)."""
    vectors = label_vectors(40)
    m = manager(**options)
    fed = []
    for step in range(STEPS):
        names = stream(rank, size, overlap, 40, step)
        labels, emb = batch(vectors, names, seed=100 * rank + step)
        m.add_labels(labels, emb)
        fed.append((labels, emb.numpy()))
    out = snapshot(m)
    out["fed"] = fed
    out["world"] = m.get_statistics()["world_size"]
    return out


def gathered_loss(rank: int, size: int, folder: str) -> dict:
    """The gathered loss and gradients of several target settings, and the single-process loss
    and gradients on the concatenated batch (every rank can build the whole batch)."""
    vectors = label_vectors(12)
    names = sorted(vectors)
    g = torch.Generator().manual_seed(7)
    total = size * B
    imu_all = torch.nn.functional.normalize(torch.randn(total, D, generator=g), dim=1)
    label_all = [names[int(i)] for i in torch.randint(0, len(names), (total,), generator=g)]
    text_all = torch.from_numpy(np.stack([vectors[n] for n in label_all]).astype(np.float32))
    text_all = torch.nn.functional.normalize(text_all, dim=1)
    weight = torch.eye(D) + 0.1 * torch.randn(D, D, generator=g)  # a shared "model"
    mine = slice(rank * B, (rank + 1) * B)
    m = manager(update_interval=1)
    m.add_labels(label_all[mine], text_all[mine])  # merged and clustered on every rank
    frozen = {n: torch.from_numpy(v.astype(np.float32)) for n, v in vectors.items()}
    settings = {
        "identity": {"use_soft_targets": False},
        "pairwise": {},
        "label_hard": {"hard_targets": "label", "use_soft_targets": False},
        "hybrid": {"use_prototypes": True, "prototype_manager": m, "hard_targets": "label"},
        "frozen": {"target_embeddings": frozen},
        "graph": {"detach_targets": False},
    }
    out: dict[str, Any] = {"prototypes": m.prototypes.numpy().tobytes()}
    local, _ = InfoNCELoss()(imu_all[mine], text_all[mine], label_all[mine])
    out["local_pairwise"] = float(local)
    for name, kwargs in settings.items():
        results = []
        for gather in (True, False):
            w = weight.clone().requires_grad_(True)
            loss_fn = InfoNCELoss(gather=gather, **kwargs)
            if gather:  # this rank's rows
                imu, text, labels = imu_all[mine] @ w, text_all[mine] @ w, label_all[mine]
            else:  # one process, the whole batch
                imu, text, labels = imu_all @ w, text_all @ w, label_all
            loss, metrics = loss_fn(imu, text, labels)
            loss.backward()
            grad = w.grad.clone()
            if gather:  # what DDP does with the gradients: their mean over ranks
                dist.all_reduce(grad)
                grad /= size
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                results.append((float(mean_loss) / size, grad.numpy(), metrics))
            else:
                results.append((float(loss), grad.numpy(), metrics))
        out[name] = results
    return out


def resumed(rank: int, size: int, folder: str) -> dict:
    """Saves each rank's state mid-interval, resumes from it and compares with the
    uninterrupted run."""
    vectors = label_vectors(40)

    def feed(m: PrototypeManager, steps: range) -> None:
        for step in steps:
            m.add_labels(*batch(vectors, stream(rank, size, True, 40, step), 100 * rank + step))

    whole = manager()
    feed(whole, range(0, 18))
    first = manager()
    feed(first, range(0, 8))
    path = os.path.join(folder, f"manager{rank}.pt")
    first.save(path)
    again = PrototypeManager.load(path)
    feed(again, range(8, 18))
    # one file for every rank: after sync() rank 0's file resumes every rank like a run that
    # synced at the same step (the merge comes earlier, so the store's order can differ)
    synced = manager()
    feed(synced, range(0, 8))
    synced.sync()
    feed(synced, range(8, 18))
    shared = manager()
    feed(shared, range(0, 8))
    shared.sync()
    if rank == 0:
        shared.save(os.path.join(folder, "shared.pt"))
    dist.barrier()
    from_shared = PrototypeManager.load(os.path.join(folder, "shared.pt"))
    feed(from_shared, range(8, 18))
    return {
        "whole": snapshot(whole),
        "resumed": snapshot(again),
        "synced": snapshot(synced),
        "from_shared": snapshot(from_shared),
    }


def async_matches_sync(rank: int, size: int, folder: str) -> dict:
    """An async manager installs, ``swap_after`` steps late, the clusters the sync one got."""
    vectors = label_vectors(40)
    sync, background = manager(), manager(async_update=True, swap_after=2)
    seen = {}
    for step in range(12):
        labels, emb = batch(vectors, stream(rank, size, True, 40, step), 100 * rank + step)
        sync.add_labels(labels, emb)
        background.add_labels(labels, emb)
        if step + 1 == 5:
            seen["sync_at_5"] = snapshot(sync)
            seen["async_at_5"] = snapshot(background)
        if step + 1 == 7:
            seen["async_at_7"] = snapshot(background)
    return seen


def bad_batches(rank: int, size: int, folder: str) -> dict:
    """Rank 1 passes a malformed batch: every rank must get an error, none may hang."""
    errors: dict[str, str] = {}
    loss_fn = InfoNCELoss(hard_targets="label")
    loss_fn.gather = True
    imu = torch.randn(B, D)
    labels = [f"l{i}" for i in range(B)]
    if rank == 1:
        labels = labels[:-1]  # one label short
    try:
        loss_fn(imu, imu, labels)
    except (ValueError, DistributedError) as error:
        errors["loss"] = f"{type(error).__name__}: {error}"
    # different batch sizes: a valid batch on each rank, but not the same
    try:
        n = B + rank
        loss_fn(torch.randn(n, D), torch.randn(n, D), [f"l{i}" for i in range(n)])
    except ValueError as error:
        errors["sizes"] = f"{type(error).__name__}: {error}"
    # a non-finite sum reaching the merge (what a NaN on a GPU's deferred sums does)
    ctx = ranks()
    assert ctx is not None
    store = LabelStore()
    store.add(["a"], np.ones((1, D), dtype=np.float32))
    sums = np.ones((1, D), dtype=np.float32)
    if rank == 1:
        sums[0, 0] = np.nan
    try:
        merge_store(store, ["b"], sums, np.array([1]), ctx)
    except (ValueError, DistributedError) as error:
        errors["merge"] = f"{type(error).__name__}: {error}"
    errors["store_after"] = repr((store.labels(), store.counts().tolist()))
    # the world still works afterwards
    m = manager(update_interval=1)
    m.add_labels(*batch(label_vectors(8), sorted(label_vectors(8)), seed=rank))
    errors["after"] = str(m.is_initialized)
    return errors


def merge_only(rank: int, size: int, folder: str, num_labels: int, repeats: int) -> dict:
    """Times the merge of ``num_labels`` labels (every rank holds its own share and half of
    them are known already) for the benchmark."""
    import time

    ctx = ranks()
    assert ctx is not None
    rng = np.random.default_rng(rank)
    times = []
    for _ in range(repeats):
        store = LabelStore()
        names = [f"label {i}" for i in range(num_labels)]
        store.intern(names[: num_labels // 2])
        mine = names[rank::size]
        sums = rng.normal(size=(len(mine), 384)).astype(np.float32)
        counts = np.ones(len(mine), dtype=np.int64)
        dist.barrier()
        start = time.perf_counter()
        merge_store(store, mine, sums, counts, ctx)
        times.append(time.perf_counter() - start)
    return {"seconds": times}


__all__ = [
    "CATEGORIES",
    "async_matches_sync",
    "bad_batches",
    "gathered_loss",
    "merge_only",
    "merged_clusters",
    "partition",
    "resumed",
]


def async_when_ready(rank: int, size: int, folder: str) -> dict:
    """``swap_after=None``: installed at the first call after rank 0 is done, the same call on
    every rank; a checkpoint taken while it runs installs it at the same call once resumed."""
    vectors = label_vectors(40)

    def data(step: int) -> tuple[list[str], torch.Tensor]:
        return batch(vectors, stream(rank, size, True, 40, step), 100 * rank + step)

    def first_install(m: PrototypeManager, start: int) -> tuple[int, dict]:
        for step in range(start, 30):
            m.add_labels(*data(step))
            if m.num_updates:
                return step, snapshot(m)
        raise AssertionError("never installed")

    sync, background = manager(ingest="deferred"), manager(async_update=True)
    for step in range(1, 6):
        sync.add_labels(*data(step))
        background.add_labels(*data(step))
    saved = background.state_dict()  # waits for the re-clustering in flight
    resumed = manager(async_update=True)
    resumed.load_state_dict(saved)
    installed_at, installed = first_install(background, 6)
    resumed_at, resumed_state = first_install(resumed, 6)
    return {
        "installed_at": installed_at,
        "installed": installed,
        "reference": snapshot(sync),
        "resumed_at": resumed_at,
        "resumed": resumed_state,
    }
