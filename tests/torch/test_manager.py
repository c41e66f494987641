"""PrototypeManager: the design note's behaviour on the Rust core."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from protofast import ProtofastError, PrototypeManager, kmeans

ACTIVITIES = [
    "walking", "running", "jogging", "sitting", "standing", "lying",
    "cycling", "biking", "ascending stairs", "descending stairs", "ironing", "rope jumping",
]  # fmt: skip


def label_vectors(dim: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {a: torch.randn(dim, generator=g) for a in ACTIVITIES}


def batch(vectors: dict[str, torch.Tensor], size: int, seed: int, noise: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    names = list(vectors)
    idx = torch.randint(len(names), (size,), generator=g).tolist()
    labels = [names[i] for i in idx]
    emb = torch.stack([vectors[n] for n in labels])
    return labels, emb + noise * torch.randn(emb.shape, generator=g)


def reference_targets(manager: PrototypeManager, labels, emb, temperature: float) -> torch.Tensor:
    """The note's per-sample loop, written plainly."""
    rows = []
    for i, label in enumerate(labels):
        if label in manager.label_to_cluster:
            proto = manager.prototypes[manager.label_to_cluster[label]]
        else:
            d = ((manager.prototypes - emb[i]) ** 2).sum(1)
            proto = manager.prototypes[int(d.argmin())]
        rows.append(torch.softmax(proto @ emb.T / temperature, dim=0))
    return torch.stack(rows)


def fed(manager: PrototypeManager, steps: int, size: int = 32, seed: int = 0) -> PrototypeManager:
    vectors = label_vectors()
    for s in range(steps):
        manager.add_labels(*batch(vectors, size, seed * 1000 + s))
    return manager


def test_defaults_are_the_notes() -> None:
    m = PrototypeManager()
    assert (m.num_clusters, m.update_interval, m.min_samples_per_cluster) == (5, 100, 3)
    assert m.prototypes is None and m.label_to_cluster == {} and not m.is_initialized
    assert m.min_samples_rule == "samples"  # the note's trigger: samples, not unique labels
    assert (m.min_total_samples, m.min_unique_labels) == (15, 5)


def test_reclusters_every_interval_once_enough_labels() -> None:
    m = PrototypeManager(num_clusters=3, update_interval=4, min_samples_per_cluster=2)
    fed(m, 3)
    assert not m.is_initialized
    fed(m, 1, seed=1)
    assert m.is_initialized and m.num_updates == 1
    fed(m, 4, seed=2)
    assert m.num_updates == 2 and m.num_batches == 8
    assert m.prototypes is not None and m.prototypes.shape == (3, 16)
    assert set(m.label_to_cluster) == set(m.store.labels())
    assert sorted(sum(m.cluster_labels.values(), [])) == sorted(m.label_to_cluster)


def test_waits_for_enough_unique_labels_and_logs_once(caplog) -> None:
    m = PrototypeManager(
        num_clusters=4, update_interval=1, min_samples_per_cluster=2, min_samples_rule="labels"
    )
    caplog.set_level(logging.INFO, logger="protofast")
    for _ in range(3):
        m.add_labels(["a", "b", "c"], torch.randn(3, 4))
    assert not m.is_initialized
    notes = [r for r in caplog.records if "not ready" in r.getMessage()]
    assert len(notes) == 1 and "3 unique labels seen, clustering needs 8" in notes[0].getMessage()
    m.add_labels(list("defgh"), torch.randn(5, 4))
    assert m.is_initialized and m.num_labels_seen == 8


def test_update_log_has_the_notes_format(caplog) -> None:
    caplog.set_level(logging.INFO, logger="protofast")
    m = fed(PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2), 2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "[PrototypeManager] Updated prototypes (update #1)" in text
    assert f"  Total unique labels: {len(m.store)}" in text
    assert "  Number of clusters: 3" in text
    for c in range(3):
        n = len(m.cluster_labels[c])
        assert f"  Cluster {c} ({n} labels): [" in text


def test_prototypes_are_kmeans_of_label_means() -> None:
    m = fed(PrototypeManager(num_clusters=3, update_interval=5, min_samples_per_cluster=2), 5)
    expected = kmeans(m.store.means(), 3, n_init=10, seed=42)
    np.testing.assert_array_equal(m.prototypes.numpy(), expected.centroids)
    assert [m.label_to_cluster[lbl] for lbl in m.store.labels()] == expected.labels.tolist()


def test_identity_before_first_clustering() -> None:
    m = PrototypeManager()
    t = m.get_prototype_targets(["a", "b", "a"], torch.randn(3, 4))
    assert torch.equal(t, torch.eye(3))


@given(st.integers(1, 40), st.sampled_from([0.1, 0.5, 2.0]), st.integers(0, 10**6))
def test_targets_equal_the_notes_loop(b: int, temperature: float, seed: int) -> None:
    m = fed(PrototypeManager(num_clusters=4, update_interval=3, min_samples_per_cluster=2), 3)
    vectors = label_vectors()
    labels, emb = batch(vectors, b, seed)
    labels = [lbl if i % 5 else f"unseen {i}" for i, lbl in enumerate(labels)]
    emb = emb.double()
    got = m.get_prototype_targets(labels, emb, temperature=temperature)
    m.prototypes = m.prototypes.double()  # the reference in float64 too
    want = reference_targets(m, labels, emb, temperature)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(b, dtype=torch.float64))
    f32 = m.get_prototype_targets(labels, emb.float(), temperature=temperature)
    torch.testing.assert_close(f32, want.float(), rtol=1e-3, atol=1e-4)


def test_unseen_one_hot_and_assign() -> None:
    m = fed(
        PrototypeManager(
            num_clusters=3, update_interval=2, min_samples_per_cluster=2, unseen="one_hot"
        ),
        2,
    )
    labels = ["walking", "never seen", "sitting"]
    emb = torch.randn(3, 16)
    t = m.get_prototype_targets(labels, emb)
    assert torch.equal(t[1], torch.tensor([0.0, 1.0, 0.0]))
    ids = m.assign(labels, emb)
    nearest = ((m.prototypes - emb[1]) ** 2).sum(1).argmin()
    assert ids[0] == m.label_to_cluster["walking"] and ids[1] == nearest


@pytest.mark.parametrize("unseen", ["nearest", "one_hot"])
def test_prototype_logits_factor_the_targets(unseen) -> None:
    m = PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2)
    m.unseen = unseen
    labels, emb = batch(label_vectors(), 10, seed=3)
    # before the first clustering: no prototype rows, every row one-hot (the identity)
    logits, clusters, one_hot = m.prototype_logits(labels, emb)
    assert logits.shape == (0, 10) and (clusters == -1).all() and one_hot is not None
    assert one_hot.all() and torch.equal(m.get_prototype_targets(labels, emb), torch.eye(10))
    fed(m, 2)
    labels = [lbl if i % 4 else f"unseen {i}" for i, lbl in enumerate(labels)]
    logits, clusters, one_hot = m.prototype_logits(labels, emb, temperature=0.3)
    assert logits.shape == (3, 10) and clusters.shape == (10,)
    torch.testing.assert_close(logits, m.prototypes @ emb.T / 0.3)
    rows = torch.softmax(logits, dim=1)[clusters.clamp_min(0)]
    if unseen == "one_hot":
        assert one_hot is not None and one_hot.tolist() == [i % 4 == 0 for i in range(10)]
        assert (clusters[one_hot] == -1).all() and (clusters[~one_hot] >= 0).all()
        rows[one_hot] = torch.eye(10)[one_hot]
    else:
        assert one_hot is None and (clusters >= 0).all()
    torch.testing.assert_close(rows, m.get_prototype_targets(labels, emb, temperature=0.3))


def test_ids_of_the_last_batch_are_reused_only_for_the_same_labels() -> None:
    m = fed(PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2), 2)
    vectors = label_vectors()
    labels, emb = batch(vectors, 12, seed=7)
    labels[0] = "brand new"  # interned by add_labels, so not seen at the last clustering
    m.add_labels(labels, emb)
    want = reference_targets(m, labels, emb, 0.5)
    torch.testing.assert_close(m.get_prototype_targets(labels, emb), want)
    # the caller reuses (mutates) its list: the cached ids must not be used for it
    labels[1], labels[2] = "walking", "never seen"
    torch.testing.assert_close(
        m.get_prototype_targets(labels, emb), reference_targets(m, labels, emb, 0.5)
    )
    assert m.batch_labels(labels) is None  # the list changed since add_labels
    # a rejected batch leaves no ids (nor grouping) behind
    m.add_labels(labels, emb)
    assert m.batch_labels(labels) is not None
    with pytest.raises(ValueError):
        m.add_labels(labels, torch.full((12, 16), float("nan")))
    assert m.batch_labels(labels) is None


def test_device_nearest_matches_rust_lookup() -> None:
    for spherical in (False, True):
        m = fed(
            PrototypeManager(
                num_clusters=4, update_interval=2, min_samples_per_cluster=2, spherical=spherical
            ),
            2,
        )
        emb = torch.randn(64, 16)
        labels = [f"new {i}" for i in range(64)]
        rust = m.assign(labels, emb)  # unseen labels on the CPU: the Rust lookup
        p = m.prototypes
        if spherical:  # the formula of the lookup on a GPU
            device = (torch.nn.functional.normalize(emb, dim=1) @ p.T).argmax(1)
        else:
            device = (p.square().sum(1)[None, :] - 2.0 * (emb @ p.T)).argmin(1)
        assert torch.equal(rust, device)


def test_deferred_ingest_matches_direct() -> None:
    a = fed(
        PrototypeManager(
            num_clusters=3, update_interval=4, min_samples_per_cluster=2, ingest="direct"
        ),
        8,
    )
    b = fed(
        PrototypeManager(
            num_clusters=3, update_interval=4, min_samples_per_cluster=2, ingest="deferred"
        ),
        8,
    )
    assert a.store.labels() == b.store.labels()
    np.testing.assert_allclose(a.store.means(), b.store.means(), rtol=1e-5, atol=1e-6)
    assert a.label_to_cluster == b.label_to_cluster
    torch.testing.assert_close(a.prototypes, b.prototypes)
    assert a.get_statistics()["total_embeddings_accumulated"] == 8 * 32
    assert b.get_statistics()["total_embeddings_accumulated"] == 8 * 32
    # the next batch, with a label the clustering never saw: deferred ingest sends its
    # clusters along with its ids, and the targets must not change for it
    labels, emb = batch(label_vectors(), 32, seed=77)
    labels[3] = "a new label"
    for m in (a, b):
        m.add_labels(labels, emb)
    for mode in ("nearest", "one_hot"):
        a.unseen = b.unseen = mode
        expected = a.get_prototype_targets(labels, emb)
        torch.testing.assert_close(b.get_prototype_targets(labels, emb), expected)
        # again: the clusters sent with the ids are intact after a use
        torch.testing.assert_close(b.get_prototype_targets(labels, emb), expected)
        # a manager restored from b's state has no batch in memory: it looks the labels up
        c = PrototypeManager()
        c.load_state_dict(b.state_dict())
        torch.testing.assert_close(c.get_prototype_targets(labels, emb), expected)
        b.add_labels(labels, emb)
        a.add_labels(labels, emb)


def test_window_mode_uses_last_samples() -> None:
    m = PrototypeManager(
        num_clusters=1, update_interval=1, min_samples_per_cluster=1, max_samples_per_label=2
    )
    for v in (0.0, 10.0, 20.0):
        m.add_labels(["a"], torch.full((1, 2), v))
    np.testing.assert_allclose(m.prototypes.numpy(), [[15.0, 15.0]])


@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_resumed_run_reclusters_exactly_like_the_uninterrupted_one(tmp_path, ingest) -> None:
    def make() -> PrototypeManager:
        return PrototypeManager(
            num_clusters=3, update_interval=5, min_samples_per_cluster=2, n_init=3, ingest=ingest
        )

    vectors = label_vectors()
    batches = [batch(vectors, 16, s) for s in range(17)]
    whole = make()
    for b in batches:
        whole.add_labels(*b)
    first = make()
    for b in batches[:7]:
        first.add_labels(*b)
    first.save(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # no arbitrary unpickling
    assert state["version"] == 3
    resumed = PrototypeManager.load(tmp_path / "m.pt")
    for b in batches[7:]:
        resumed.add_labels(*b)
    assert resumed.num_updates == whole.num_updates == 3
    assert torch.equal(resumed.prototypes, whole.prototypes)
    assert resumed.label_to_cluster == whole.label_to_cluster
    labels, emb = batches[0]
    assert torch.equal(
        resumed.get_prototype_targets(labels, emb), whole.get_prototype_targets(labels, emb)
    )
    assert resumed.get_statistics() == whole.get_statistics()


def test_load_state_dict_rejects_bad_state_and_keeps_manager() -> None:
    m = fed(PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2), 2)
    state = m.state_dict()
    state["version"] = 99
    before = m.label_to_cluster.copy()
    with pytest.raises(ValueError, match="unsupported version"):
        m.load_state_dict(state)
    state = m.state_dict()
    state["store"]["labels"] = state["store"]["labels"][:-1]
    with pytest.raises(ProtofastError):
        m.load_state_dict(state)
    assert m.label_to_cluster == before


def test_cluster_info_and_statistics() -> None:
    m = fed(PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2), 2)
    info = m.get_cluster_info("walking")
    assert info["cluster_id"] == m.label_to_cluster["walking"]
    assert "walking" in info["cluster_labels"]
    assert info["num_labels_in_cluster"] == len(info["cluster_labels"])
    assert m.get_cluster_info("no such label") is None
    stats = m.get_statistics()
    for key in (
        "is_initialized",
        "num_unique_labels",
        "num_labels_seen",
        "num_clusters",
        "num_updates",
        "total_embeddings_accumulated",
        "store_nbytes",
    ):
        assert key in stats
    assert stats["num_unique_labels"] == len(ACTIVITIES)
    assert sum(stats["cluster_sizes"]) == len(ACTIVITIES)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda m: m.add_labels(["a", "b"], torch.randn(3, 4)), ValueError, "expected 2 rows"),
        (lambda m: m.add_labels("ab", torch.randn(2, 4)), TypeError, "single str"),
        (lambda m: m.add_labels(["a"], np.zeros((1, 4))), TypeError, "torch.Tensor"),
        (lambda m: m.add_labels(["a"], torch.randn(4)), ValueError, "2-D"),
        (lambda m: m.add_labels(["a"], torch.full((1, 4), float("nan"))), ValueError, "non-finite"),
        (lambda m: m.add_labels(["a"], torch.randn(1, 5)), ValueError, "expected 4 columns"),
        (lambda m: m.get_prototype_targets(["a"], torch.randn(1, 4), 0.0), ValueError, "> 0"),
    ],
)
@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_bad_input_raises_and_changes_nothing(call, exc, match, ingest) -> None:
    m = PrototypeManager(num_clusters=1, update_interval=1000, ingest=ingest)
    m.add_labels(["x"], torch.randn(1, 4))
    before = (m.num_batches, m.store.labels())
    with pytest.raises(exc, match=match):
        call(m)
    assert (m.num_batches, m.store.labels()) == before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_clusters": 0}, "num_clusters"),
        ({"update_interval": 0}, "update_interval"),
        ({"min_samples_per_cluster": 0}, "min_samples_per_cluster"),
        ({"unseen": "drop"}, "unseen"),
        ({"ingest": "sometimes"}, "ingest"),
        ({"ingest": "deferred", "max_samples_per_label": 3}, "running mean"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_configuration(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PrototypeManager(**kwargs)


def test_half_precision_embeddings() -> None:
    m = fed(PrototypeManager(num_clusters=3, update_interval=2, min_samples_per_cluster=2), 2)
    labels, emb = batch(label_vectors(), 8, 5)
    t = m.get_prototype_targets(labels, emb.to(torch.bfloat16))
    assert t.dtype == torch.float32 and torch.allclose(t.sum(1), torch.ones(8))
    m.add_labels(labels, emb.half())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_step_inputs(manager: PrototypeManager, steps: int, seed: int, hybrid: bool):
    """The inputs of ``steps`` training steps on CUDA, and the loss that uses ``manager``.

    They are put on the device here, before any step (a copy from pageable host memory
    synchronises).
    """
    from protofast import InfoNCELoss

    vectors = {k: v.cuda() for k, v in label_vectors().items()}
    loss_fn = InfoNCELoss(
        use_soft_targets=hybrid, use_prototypes=True, prototype_manager=manager
    ).cuda()
    inputs = []
    for s in range(steps):
        labels, _ = batch(label_vectors(), 32, seed * 1000 + s)
        text = torch.nn.functional.normalize(torch.stack([vectors[n] for n in labels]), dim=1)
        inputs.append((labels, text, torch.randn(32, 16, device="cuda", requires_grad=True)))
    torch.cuda.synchronize()
    return inputs, loss_fn


def _run_steps(manager: PrototypeManager, inputs, loss_fn) -> list[torch.Tensor]:
    """One training step per input: ``add_labels``, then the loss forward and backward."""
    losses = []
    for labels, text, imu in inputs:
        manager.add_labels(labels, text)
        loss, _ = loss_fn(imu, text, labels)
        loss.backward()
        losses.append(loss.detach())
    return losses


@needs_cuda
@pytest.mark.parametrize("hybrid", [False, True])
def test_cuda_steps_between_reclusterings_never_synchronise(hybrid: bool) -> None:
    m = PrototypeManager(num_clusters=3, update_interval=10, min_samples_per_cluster=2)
    _run_steps(m, *_cuda_step_inputs(m, 10, seed=0, hybrid=hybrid))  # the 10th re-clusters
    assert m.is_initialized and m.prototypes is not None and m.prototypes.is_cuda
    inputs, loss_fn = _cuda_step_inputs(m, 9, seed=1, hybrid=hybrid)  # none re-clusters
    inputs[-1][0][0] = "a label never seen"  # an unseen label takes its nearest prototype
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = _run_steps(m, inputs, loss_fn)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(bool(torch.isfinite(loss)) for loss in losses)
    with pytest.raises(RuntimeError):  # the check is live: a synchronising call raises
        torch.cuda.set_sync_debug_mode("error")
        try:
            float(losses[0])
        finally:
            torch.cuda.set_sync_debug_mode(0)


@needs_cuda
def test_cuda_manager_matches_cpu() -> None:
    kwargs = dict(num_clusters=3, update_interval=4, min_samples_per_cluster=2)
    cpu, gpu = PrototypeManager(**kwargs), PrototypeManager(**kwargs)
    vectors = label_vectors()
    for s in range(8):
        labels, emb = batch(vectors, 32, s)
        cpu.add_labels(labels, emb)
        gpu.add_labels(labels, emb.cuda())
    assert gpu.prototypes is not None and gpu.prototypes.is_cuda
    assert cpu.label_to_cluster == gpu.label_to_cluster
    torch.testing.assert_close(gpu.prototypes.cpu(), cpu.prototypes, rtol=1e-5, atol=1e-6)
    labels, emb = batch(vectors, 16, 99)
    labels[0] = "never seen"
    for mode in ("nearest", "one_hot"):
        cpu.unseen = gpu.unseen = mode
        torch.testing.assert_close(
            gpu.get_prototype_targets(labels, emb.cuda()).cpu(),
            cpu.get_prototype_targets(labels, emb),
            rtol=1e-5,
            atol=1e-6,
        )
