"""Several processes (torch.distributed, gloo on the CPU): one store and one clustering on every
rank, global negatives, checkpoints, async re-clustering and errors that reach every rank."""

from __future__ import annotations

import numpy as np
import pytest
import scenarios
import torch
from protofast import PrototypeManager
from ranks import batch, label_vectors, manager, partition, run

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

SHARED = ("prototypes", "label_to_cluster", "store_labels", "store_counts", "store_means")


def _same_everywhere(results: list[dict]) -> None:
    for key in SHARED:
        for rank, result in enumerate(results[1:], start=1):
            assert result[key] == results[0][key], f"{key} differs on rank {rank}"


def _single_process(results: list[dict]) -> PrototypeManager:
    """One process fed every rank's batches, step by step (rank order within a step)."""
    m = manager()
    for step in range(len(results[0]["fed"])):
        for result in results:
            labels, emb = result["fed"][step]
            m.add_labels(labels, torch.from_numpy(emb))
    return m


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "overlapping"])
def test_every_rank_holds_the_same_store_and_clusters(size: int, overlap: bool) -> None:
    results = run(scenarios.merged_clusters, size, overlap=overlap)
    _same_everywhere(results)
    first = results[0]
    assert first["world"] == size
    assert first["num_updates"] == scenarios.STEPS // 5
    # every label any rank saw is in every rank's store, with every rank's samples
    fed = [label for r in results for labels, _ in r["fed"] for label in labels]
    counts = dict(zip(first["store_labels"], first["store_counts"], strict=True))
    merged_steps = (scenarios.STEPS // 5) * 5
    fed_merged = [
        label for r in results for labels, _ in r["fed"][:merged_steps] for label in labels
    ]
    assert set(counts) == set(fed_merged) <= set(fed)
    for label in set(fed_merged):
        assert counts[label] == fed_merged.count(label)
    # the same partition as one process over the union of the data
    alone = _single_process(results)
    assert partition(first["label_to_cluster"]) == partition(alone.label_to_cluster)
    assert len(partition(alone.label_to_cluster)) == scenarios.CATEGORIES


def test_one_store_per_rank_when_turned_off() -> None:
    results = run(scenarios.merged_clusters, 2, overlap=False, distributed=False)
    assert results[0]["world"] == 1
    # each rank clustered only its own labels: the note's behaviour, ranks apart
    assert set(results[0]["label_to_cluster"]).isdisjoint(results[1]["label_to_cluster"])


@pytest.fixture(scope="module")
def gathered() -> list[dict]:
    return run(scenarios.gathered_loss, 2)


@pytest.mark.parametrize(
    "setting", ["identity", "pairwise", "label_hard", "hybrid", "frozen", "graph"]
)
def test_gathered_loss_and_gradients_equal_one_process_on_the_whole_batch(
    gathered: list[dict], setting: str
) -> None:
    for rank, result in enumerate(gathered):
        (loss_g, grad_g, metrics_g), (loss_1, grad_1, _) = result[setting]
        assert loss_g == pytest.approx(loss_1, rel=1e-5, abs=1e-6), f"rank {rank}"
        np.testing.assert_allclose(grad_g, grad_1, rtol=1e-4, atol=1e-6)
        assert set(metrics_g) >= {"loss", "acc_imu_to_text", "positive_similarity"}
    assert gathered[0]["prototypes"] == gathered[1]["prototypes"]


def test_gathered_loss_differs_from_the_local_loss(gathered: list[dict]) -> None:
    """The equality above is not that of the local loss: with global negatives the loss
    differs from the mean of the ranks' local losses."""
    local_mean = np.mean([result["local_pairwise"] for result in gathered])
    whole = gathered[0]["pairwise"][1][0]
    assert abs(local_mean - whole) > 1e-2


def test_checkpoints_resume_on_every_rank() -> None:
    results = run(scenarios.resumed, 2)
    for rank, result in enumerate(results):
        for key in SHARED:
            assert result["resumed"][key] == result["whole"][key], f"{key}, rank {rank}"
            assert result["from_shared"][key] == result["synced"][key], f"{key}, rank {rank}"
        assert partition(result["synced"]["label_to_cluster"]) == partition(
            result["whole"]["label_to_cluster"]
        )
    assert results[0]["whole"]["prototypes"] == results[1]["whole"]["prototypes"]


def test_async_installs_the_sync_clusters_at_the_same_step_on_every_rank() -> None:
    results = run(scenarios.async_matches_sync, 2)
    for result in results:
        assert result["async_at_5"]["num_updates"] == 0  # still running or not yet swapped
        for key in ("prototypes", "label_to_cluster"):
            assert result["async_at_7"][key] == result["sync_at_5"][key]
    assert results[0]["async_at_7"]["prototypes"] == results[1]["async_at_7"]["prototypes"]


def test_async_when_ready_swaps_at_one_step_everywhere_and_resumes_exactly() -> None:
    results = run(scenarios.async_when_ready, 2)
    assert results[0]["installed_at"] == results[1]["installed_at"]
    # the call after the one that saw rank 0 done (saving waited for it: the 2nd call)
    assert results[0]["installed_at"] == 7
    for result in results:
        for key in ("prototypes", "label_to_cluster"):
            assert result["installed"][key] == result["reference"][key]
        assert result["resumed_at"] == result["installed_at"]
        for key in SHARED:
            assert result["resumed"][key] == result["installed"][key], key


def test_a_bad_batch_on_one_rank_stops_every_rank_with_a_clear_error() -> None:
    results = run(scenarios.bad_batches, 2, timeout=90)
    assert results[1]["loss"].startswith("ValueError: label_texts has 7 entries")
    assert results[0]["loss"].startswith("DistributedError")
    assert "rank 1" in results[0]["loss"] and "label_texts has 7 entries" in results[0]["loss"]
    for result in results:
        assert "same batch size" in result["sizes"]
        assert "rank 1: (9, 16, 1)" in result["sizes"]
    assert results[1]["merge"].startswith("ValueError") and "non-finite" in results[1]["merge"]
    assert results[0]["merge"].startswith("DistributedError") and "rank 1" in results[0]["merge"]
    for result in results:  # nothing merged anywhere
        assert result["store_after"] == repr((["a"], [1]))
        assert result["after"] == "True"


# ------------------------------------------------------------------ one process


def _drifted(seed: int, scale: float, num_labels: int = 40) -> tuple[list[str], torch.Tensor]:
    vectors = label_vectors(64)
    names = list(vectors)[:num_labels]  # every category, in turn
    rng = np.random.default_rng(seed)
    labels, emb = batch(vectors, names, seed=seed)
    return labels, emb + torch.from_numpy(rng.normal(size=emb.shape).astype(np.float32)) * scale


@pytest.mark.parametrize("renumber", [True, False])
def test_renumbering_keeps_cluster_ids_after_small_drift(renumber: bool) -> None:
    """Restarts after a small drift find the same partition; renumbered, they keep the ids."""
    changed = 0
    for seed in range(6):
        m = PrototypeManager(
            num_clusters=4,
            update_interval=1,
            min_samples_per_cluster=1,
            seed=seed,
            renumber=renumber,
            max_samples_per_label=1,
        )
        m.add_labels(*_drifted(0, 0.0))
        before = dict(m.label_to_cluster)
        # new labels change what k-means++ draws: ids move unless renumbered
        m.add_labels(*_drifted(1, 0.05, num_labels=64))
        after = {label: m.label_to_cluster[label] for label in before}
        assert partition(after) == partition(before)
        moved = sum(before[label] != after[label] for label in before)
        assert m.get_statistics()["cluster_churn"] == pytest.approx(moved / len(before))
        changed += moved > 0
    if renumber:
        assert changed == 0
    else:
        assert changed > 0  # the raw numbering does move: the renumbered case is a real check


def test_warm_start_runs_fewer_iterations_to_the_same_partition() -> None:
    cold = PrototypeManager(num_clusters=4, update_interval=1, min_samples_per_cluster=1)
    warm = PrototypeManager(
        num_clusters=4, update_interval=1, min_samples_per_cluster=1, warm_start=True
    )
    iterations = {}
    for m, name in ((cold, "cold"), (warm, "warm")):
        m.add_labels(*_drifted(0, 0.0))
        m.add_labels(*_drifted(1, 0.05))
        iterations[name] = m.last_clustering.n_iter
        assert m.last_clustering.warm_start is (name == "warm")
    assert partition(warm.label_to_cluster) == partition(cold.label_to_cluster)
    assert warm.last_clustering.inertia == pytest.approx(cold.last_clustering.inertia, rel=0.01)
    assert iterations["warm"] <= iterations["cold"]


def test_async_in_one_process_equals_sync_and_checkpoints_resume() -> None:
    vectors = label_vectors(40)
    names = sorted(vectors)

    def data(step: int) -> tuple[list[str], torch.Tensor]:
        rng = np.random.default_rng(step)
        return batch(vectors, [names[i] for i in rng.integers(0, 40, 8)], seed=step)

    # async_update accumulates like ingest="deferred" (float32 sums until the re-clustering)
    sync = manager(ingest="deferred")
    background = manager(async_update=True, swap_after=3)
    saved = None
    for step in range(1, 14):
        sync.add_labels(*data(step))
        background.add_labels(*data(step))
        if step == 5:
            reference = (sync.prototypes.clone(), dict(sync.label_to_cluster))
            assert background.get_statistics()["update_in_flight"]
            assert background.prototypes is None
            saved = background.state_dict()  # taken while the re-clustering runs
        if step == 8:
            assert torch.equal(background.prototypes, reference[0])
            assert background.label_to_cluster == reference[1]
    resumed = manager(async_update=True, swap_after=3)
    resumed.load_state_dict(saved)
    for step in range(6, 14):
        resumed.add_labels(*data(step))
    assert torch.equal(resumed.prototypes, background.prototypes)
    assert resumed.label_to_cluster == background.label_to_cluster
    assert resumed.num_updates == background.num_updates


def test_async_when_ready_in_one_process_never_waits_and_resumes_exactly() -> None:
    vectors = label_vectors(40)
    names = sorted(vectors)

    def data(step: int) -> tuple[list[str], torch.Tensor]:
        rng = np.random.default_rng(step)
        return batch(vectors, [names[i] for i in rng.integers(0, 40, 8)], seed=step)

    sync, background = manager(ingest="deferred"), manager(async_update=True)
    for step in range(1, 6):
        sync.add_labels(*data(step))
        background.add_labels(*data(step))
    assert background.num_updates == 0  # started at call 5, not installed yet
    saved = background.state_dict()  # waits for the re-clustering started at call 5
    background.add_labels(*data(6))  # done: installed at this call
    assert background.num_updates == 1
    assert torch.equal(background.prototypes, sync.prototypes)
    assert background.label_to_cluster == sync.label_to_cluster
    resumed = manager(async_update=True)
    resumed.load_state_dict(saved)
    resumed.add_labels(*data(6))
    assert resumed.num_updates == 1
    assert torch.equal(resumed.prototypes, background.prototypes)
    assert resumed.store.means().tobytes() == background.store.means().tobytes()


def test_async_in_one_process_applies_the_rule_to_store_and_accumulator_together() -> None:
    """The clustering rule of an async trigger counts the samples of the store and of the side
    accumulator handed to the worker, as the synchronous path counts the store."""
    vectors = label_vectors(40)
    names = sorted(vectors)

    def data(step: int) -> tuple[list[str], torch.Tensor]:
        rng = np.random.default_rng(step)
        return batch(vectors, [names[i] for i in rng.integers(0, 40, 8)], seed=step)

    # 4 clusters x 20 = 80 samples: not at call 5 (40 samples), at call 10 (80)
    sync = manager(ingest="deferred", min_samples_per_cluster=20)
    background = manager(async_update=True, swap_after=1, min_samples_per_cluster=20)
    for step in range(1, 12):
        sync.add_labels(*data(step))
        background.add_labels(*data(step))
        if step == 10:
            assert sync.num_updates == 1 and background.num_updates == 0
            assert background.get_statistics()["update_in_flight"]
    assert background.num_updates == 1  # installed at call 11
    # the async path folded calls 1-5 at call 5 (not ready) and 6-10 at call 10, the deferred
    # one all ten at once: the same sums up to float32 rounding
    torch.testing.assert_close(background.prototypes, sync.prototypes, rtol=1e-5, atol=1e-5)
    assert background.label_to_cluster == sync.label_to_cluster
    assert background.store.counts().tolist() == sync.store.counts().tolist()[: len(background.store)]


def test_distributed_true_without_a_process_group_is_an_error_that_changes_nothing() -> None:
    m = manager(distributed=True)
    with pytest.raises(ValueError, match="process group"):
        m.add_labels(*_drifted(0, 0.0))
    assert len(m.store) == 0 and m.num_batches == 0
