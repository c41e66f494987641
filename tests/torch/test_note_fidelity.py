"""The design note's PrototypeManager rules, re-stated here, run beside protofast's.

``NoteRules`` is written from the note's documented behaviour: every ``update_interval`` calls
of ``add_labels`` it re-clusters when at least ``num_clusters x min_samples_per_cluster``
embeddings (samples) and at least ``num_clusters`` unique labels were accumulated; the
clustering is k-means (10 restarts, seed 42 every time) of the per-label mean embeddings; the
targets are ``softmax(prototype[cluster(label)] @ text.T / temperature)`` per sample, one-hot for
a label not in the last clustering.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from protofast import InfoNCELoss, PrototypeManager, SemanticAlignmentLoss, kmeans

ACTIVITIES = ["walking", "running", "sitting", "standing", "lying", "cycling", "stairs up"]


def centres(dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Well separated label centres, so that every k-means finds the same partition."""
    g = torch.Generator().manual_seed(seed)
    return {a: 10.0 * torch.randn(dim, generator=g) for a in ACTIVITIES}


def draw(vectors, labels, seed: int, noise: float = 0.01):
    g = torch.Generator().manual_seed(seed)
    emb = torch.stack([vectors[a] for a in labels])
    return list(labels), emb + noise * torch.randn(emb.shape, generator=g)


class NoteRules:
    """The note's manager rules with protofast's k-means (seed 42, 10 restarts)."""

    def __init__(self, num_clusters=5, update_interval=100, min_samples_per_cluster=3):
        self.k, self.interval, self.m = num_clusters, update_interval, min_samples_per_cluster
        self.samples: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self.counter = 0
        self.num_updates = 0
        self.label_to_cluster: dict[str, int] = {}
        self.prototypes: torch.Tensor | None = None

    def add_labels(self, labels, emb) -> bool:
        """Returns whether this call re-clustered."""
        for label, row in zip(labels, emb, strict=True):
            self.samples[label].append(row.detach().float())
        self.counter += 1
        if self.counter < self.interval:
            return False
        self.counter = 0
        total = sum(len(v) for v in self.samples.values())
        return total >= self.k * self.m and self.update_prototypes()

    def update_prototypes(self) -> bool:
        if len(self.samples) < self.k:
            return False
        names = list(self.samples)
        means = np.stack([torch.stack(self.samples[n]).mean(0).numpy() for n in names])
        result = kmeans(means, self.k, n_init=10, seed=42)
        self.prototypes = torch.from_numpy(result.centroids)
        self.label_to_cluster = dict(zip(names, result.labels.tolist(), strict=True))
        self.num_updates += 1
        return True

    def targets(self, labels, emb, temperature=0.5) -> torch.Tensor:
        if self.prototypes is None:
            return torch.eye(len(labels))
        rows = []
        for i, label in enumerate(labels):
            if label in self.label_to_cluster:
                p = self.prototypes[self.label_to_cluster[label]]
                rows.append(torch.softmax(p @ emb.T / temperature, dim=0))
            else:
                rows.append(torch.nn.functional.one_hot(torch.tensor(i), len(labels)).float())
        return torch.stack(rows)


def same_partition(a: dict[str, int], b: dict[str, int]) -> bool:
    """Equal up to a renumbering of the clusters."""
    if a.keys() != b.keys():
        return False
    pairs = {(a[x], b[x]) for x in a}
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


# ------------------------------------------------------------------- item 1: the trigger
def test_six_activities_get_prototypes_as_with_the_note() -> None:
    """6 activities, 5 clusters x 3 samples: the note clusters; 15 unique labels are not needed."""
    vectors = centres()
    m = PrototypeManager(num_clusters=5, update_interval=2)
    note = NoteRules(num_clusters=5, update_interval=2)
    for s in range(4):
        batch = draw(vectors, ACTIVITIES[:6], s)
        assert m.add_labels(*batch) is None
        note.add_labels(*batch)
        assert m.is_initialized == (note.prototypes is not None)
        assert m.num_updates == note.num_updates
    assert m.num_updates == 1 and m.num_labels_seen == 6  # 12 samples < 15 at call 2
    assert m.update_counter == note.counter == 0


def test_the_labels_rule_remains_an_option_and_is_saved() -> None:
    vectors = centres()
    m = PrototypeManager(num_clusters=5, update_interval=1, min_samples_rule="labels")
    m.add_labels(*draw(vectors, ACTIVITIES[:6] * 3, 0))
    assert not m.is_initialized and not m.update_prototypes()
    assert m.state_dict()["config"]["min_samples_rule"] == "labels"
    with pytest.raises(ValueError, match="min_samples_rule"):
        PrototypeManager(min_samples_rule="unique")


def test_a_version_1_state_resumes_with_the_labels_rule() -> None:
    m = PrototypeManager(num_clusters=2, update_interval=1)
    m.add_labels(*draw(centres(), ACTIVITIES[:2] * 3, 0))
    state = m.state_dict()
    state["version"] = 1
    del state["config"]["min_samples_rule"]
    m.load_state_dict(state)
    assert m.min_samples_rule == "labels"


@pytest.mark.parametrize(
    "labels,ready",
    [
        (ACTIVITIES[:4] * 4, False),  # 16 samples, 4 unique labels < 5
        (ACTIVITIES[:5] * 2, False),  # 5 unique labels, 10 samples < 15
        (ACTIVITIES[:5] * 3, True),  # 15 samples, 5 unique labels
    ],
)
@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_trigger_and_update_prototypes_follow_one_rule(labels, ready, ingest) -> None:
    vectors = centres()
    m = PrototypeManager(update_interval=1000, ingest=ingest)
    m.add_labels(*draw(vectors, labels, 0))
    assert m.update_prototypes() is ready
    t = PrototypeManager(update_interval=1, ingest=ingest)
    t.add_labels(*draw(vectors, labels, 0))
    assert t.is_initialized is ready


@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_trigger_partition_and_targets_match_the_notes_rules(ingest) -> None:
    vectors = centres()
    m = PrototypeManager(
        num_clusters=3, update_interval=3, min_samples_per_cluster=4, ingest=ingest
    )
    note = NoteRules(num_clusters=3, update_interval=3, min_samples_per_cluster=4)
    rng = np.random.default_rng(0)
    for s in range(20):
        names = rng.choice(ACTIVITIES[: 2 + s // 3], size=int(rng.integers(1, 5))).tolist()
        batch = draw(vectors, names, s)
        m.add_labels(*batch)
        note.add_labels(*batch)
        assert (m.num_updates, m.update_counter) == (note.num_updates, note.counter)
        if note.prototypes is not None:
            assert same_partition(m.label_to_cluster, note.label_to_cluster)
            probe = draw(vectors, [a for a in ACTIVITIES if a in note.label_to_cluster], 99)
            torch.testing.assert_close(m.get_prototype_targets(*probe), note.targets(*probe))
    assert note.num_updates >= 3


# ----------------------------------------------------------------------- item 2: one seed
def test_every_update_uses_the_one_seed() -> None:
    rng = np.random.default_rng(3)
    means = rng.normal(size=(12, 4)).astype(np.float32)  # no clear structure: seeds matter
    m = PrototypeManager(num_clusters=4, update_interval=1000, min_samples_per_cluster=1)
    m.add_labels([f"l{i}" for i in range(12)], torch.from_numpy(means))
    m.update_prototypes()
    first = (m.prototypes.clone(), dict(m.label_to_cluster))
    m.update_prototypes()  # unchanged data: the same partition, the same numbering
    assert torch.equal(m.prototypes, first[0]) and m.label_to_cluster == first[1]
    expected = kmeans(means, 4, n_init=10, seed=42)
    np.testing.assert_array_equal(m.prototypes.numpy(), expected.centroids)


# ---------------------------------------------------------------------- item 3: load
def test_load_on_an_instance_restores_it_in_place(tmp_path) -> None:
    vectors = centres()
    saved = PrototypeManager(num_clusters=2, update_interval=1)
    saved.add_labels(*draw(vectors, ACTIVITIES[:3] * 2, 0))
    saved.save(tmp_path / "m.pt")
    m = PrototypeManager(num_clusters=2)
    assert m.load(tmp_path / "m.pt") is m  # the note's manager.load(path)
    assert m.label_to_cluster == saved.label_to_cluster
    assert torch.equal(m.prototypes, saved.prototypes)
    fresh = PrototypeManager.load(tmp_path / "m.pt")  # the class form: a new manager
    assert isinstance(fresh, PrototypeManager) and fresh is not m
    assert fresh.label_to_cluster == saved.label_to_cluster


# ----------------------------------------------------------- item 4: the note's checkpoints
def note_checkpoint(path, vectors) -> dict:
    """A file in the note's save() format, from its documented keys."""
    protos = torch.stack([vectors["walking"], vectors["sitting"]]).float()
    mapping = {"walking": 0, "running": 0, "sitting": 1, "lying": 1}
    members = collections.defaultdict(list)
    for label, c in mapping.items():
        members[c].append(label)
    state = {
        "num_clusters": 2,
        "prototypes": protos,
        "label_to_cluster": mapping,
        "cluster_labels": dict(members),  # the note saves dict(defaultdict)
        "num_updates": 3,
        "is_initialized": True,
    }
    torch.save(state, path)
    return state


def test_a_note_checkpoint_loads_with_weights_only(tmp_path) -> None:
    vectors = centres()
    state = note_checkpoint(tmp_path / "note.pt", vectors)
    loaded = torch.load(tmp_path / "note.pt", weights_only=True)  # plain types and tensors
    assert loaded["label_to_cluster"] == state["label_to_cluster"]
    for m in (PrototypeManager.load(tmp_path / "note.pt"), PrototypeManager(num_clusters=7)):
        if not m.is_initialized:
            m.load(tmp_path / "note.pt")
        assert m.num_clusters == 2 and m.num_updates == 3 and m.is_initialized
        assert m.label_to_cluster == state["label_to_cluster"]
        assert dict(m.cluster_labels) == state["cluster_labels"]
        assert isinstance(m.cluster_labels, collections.defaultdict)
        assert torch.equal(m.prototypes, state["prototypes"])
        stats = m.get_statistics()
        assert stats["num_unique_labels"] == stats["total_embeddings_accumulated"] == 0
        labels, emb = draw(vectors, ["walking", "lying", "running"], 1)
        note = NoteRules(num_clusters=2)
        note.prototypes, note.label_to_cluster = state["prototypes"], state["label_to_cluster"]
        torch.testing.assert_close(m.get_prototype_targets(labels, emb), note.targets(labels, emb))


def test_load_state_dict_accepts_the_notes_dict_and_reclusters_on_new_samples(tmp_path) -> None:
    vectors = centres()
    state = note_checkpoint(tmp_path / "note.pt", vectors)
    m = PrototypeManager(num_clusters=2, update_interval=1, min_samples_per_cluster=1)
    m.load_state_dict(state)
    assert m.label_to_cluster == state["label_to_cluster"]
    m.add_labels(*draw(vectors, ["cycling", "standing"], 0))  # the note: only new samples
    assert m.num_updates == 4 and set(m.label_to_cluster) == {"cycling", "standing"}
    m2 = PrototypeManager.load(tmp_path / "note.pt")
    m2.save(tmp_path / "again.pt")  # and it saves in protofast's format
    assert PrototypeManager.load(tmp_path / "again.pt").label_to_cluster == m2.label_to_cluster


def test_an_inconsistent_note_checkpoint_is_refused(tmp_path) -> None:
    state = note_checkpoint(tmp_path / "note.pt", centres())
    state["label_to_cluster"]["walking"] = 5
    m = PrototypeManager()
    with pytest.raises(ValueError, match="label_to_cluster"):
        m.load_state_dict(state)
    assert not m.is_initialized and m.num_clusters == 5


# ----------------------------------------------------------- item 5: smaller differences
def test_smaller_differences_match_the_note() -> None:
    m = PrototypeManager(num_clusters=2, update_interval=3)
    assert m.get_statistics()["num_clusters"] == 0  # the note: 0 before the first clustering
    assert isinstance(m.cluster_labels, collections.defaultdict)
    m.add_labels(*draw(centres(), ACTIVITIES[:3] * 2, 0))
    assert m.update_counter == 1
    m.add_labels(*draw(centres(), ACTIVITIES[:3] * 2, 1))
    m.add_labels(*draw(centres(), ACTIVITIES[:3] * 2, 2))
    assert m.update_counter == 0 and m.is_initialized
    assert m.get_statistics()["num_clusters"] == len(m.cluster_labels) == 2
    assert isinstance(m.cluster_labels, collections.defaultdict)
    loss = SemanticAlignmentLoss()
    assert loss.infonce is loss.info_nce and isinstance(loss.infonce, InfoNCELoss)


def test_metrics_become_json_with_item() -> None:
    loss_fn = InfoNCELoss()
    imu = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    _, metrics = loss_fn(imu, text)
    json.dumps({k: v.item() for k, v in metrics.items()})  # the README's recipe


# --------------------------------------------------- item 8: a stateful model of the rules
class ManagerMachine(RuleBasedStateMachine):
    """Drives PrototypeManager against a plain model: counters, trigger and label sets."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors = centres(dim=4)
        self.tmp = None

    @initialize(
        ingest=st.sampled_from(["direct", "deferred"]),
        k=st.integers(1, 3),
        interval=st.integers(1, 3),
        m=st.integers(1, 3),
    )
    def setup(self, ingest, k, interval, m) -> None:
        self.manager = PrototypeManager(
            num_clusters=k, update_interval=interval, min_samples_per_cluster=m, ingest=ingest
        )
        self.k, self.interval, self.m = k, interval, m
        self.samples: collections.Counter[str] = collections.Counter()
        self.calls = self.updates = 0
        self.clustered: set[str] = set()

    def _ready(self) -> bool:
        return sum(self.samples.values()) >= self.k * self.m and len(self.samples) >= self.k

    def _clustered(self) -> None:
        self.updates += 1
        self.clustered = set(self.samples)

    @rule(
        names=st.lists(st.sampled_from(ACTIVITIES), min_size=1, max_size=6), seed=st.integers(0, 9)
    )
    def add_labels(self, names, seed) -> None:
        self.manager.add_labels(*draw(self.vectors, names, seed))
        self.samples.update(names)
        self.calls += 1
        if self.calls % self.interval == 0 and self._ready():
            self._clustered()

    @rule()
    def update_prototypes(self) -> None:
        ready = self._ready()
        assert self.manager.update_prototypes() is ready
        if ready:
            self._clustered()

    @precondition(lambda self: hasattr(self, "manager"))
    @rule(names=st.lists(st.sampled_from(ACTIVITIES), min_size=1, max_size=5))
    def targets(self, names) -> None:
        labels, emb = draw(self.vectors, names, 0)
        t = self.manager.get_prototype_targets(labels, emb)
        assert t.shape == (len(names), len(names))
        torch.testing.assert_close(t.sum(1), torch.ones(len(names)))
        if not self.updates:
            assert torch.equal(t, torch.eye(len(names)))

    @rule()
    def state_round_trip(self) -> None:
        copy = PrototypeManager()
        copy.load_state_dict(self.manager.state_dict())
        self.manager = copy

    @rule()
    def save_and_load(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/m.pt"
            self.manager.save(path)
            if self.calls % 2:
                self.manager = PrototypeManager.load(path)
            else:
                other = PrototypeManager()
                other.load(path)
                self.manager = other

    @invariant()
    def counters_and_label_sets(self) -> None:
        if not hasattr(self, "manager"):
            return
        m = self.manager
        assert m.num_batches == self.calls and m.update_counter == self.calls % self.interval
        assert m.num_updates == self.updates and m.is_initialized == bool(self.updates)
        assert set(m.label_to_cluster) == self.clustered
        stats = m.get_statistics()
        assert stats["num_unique_labels"] == len(self.samples)
        assert stats["total_embeddings_accumulated"] == sum(self.samples.values())
        if self.updates:
            assert m.num_labels_seen == len(self.clustered)
            assert sorted(sum(m.cluster_labels.values(), [])) == sorted(self.clustered)


ManagerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
TestManagerMachine = ManagerMachine.TestCase
