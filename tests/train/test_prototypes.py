"""Tests of the candidate prototype forms (sensor-side clusters, PCL granularities)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from protofast import PrototypeManager
from protofast.train.prototypes import ClusterPrototypes, make_prototypes


def _unit(v: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=0)


# four labels: by their words a1/a2 are close and b1/b2 are close
TEXT = {
    "a1": _unit([1.0, 0.05, 0.0]),
    "a2": _unit([1.0, -0.05, 0.0]),
    "b1": _unit([0.0, 1.0, 0.05]),
    "b2": _unit([0.0, 1.0, -0.05]),
}
LABELS = list(TEXT)


def _feed(p: ClusterPrototypes, imu: dict[str, torch.Tensor] | None, calls: int) -> None:
    for _ in range(calls):
        emb = torch.stack([(imu or TEXT)[t] for t in LABELS])
        p.add_labels(LABELS, emb)


def test_text_source_clusters_by_words_and_targets_are_stochastic() -> None:
    p = ClusterPrototypes(TEXT, source="text", cluster_counts=(2,), update_interval=2, seed=0)
    e = torch.stack([TEXT[t] for t in LABELS])
    assert torch.equal(p.get_prototype_targets(LABELS, e, 0.5), torch.eye(4))  # not clustered
    _feed(p, None, 2)
    assert p.is_initialized and p.num_updates == 1
    groups = sorted(sorted(v) for v in p.cluster_labels.values())
    assert groups == [["a1", "a2"], ["b1", "b2"]]
    t = p.get_prototype_targets(LABELS, e, 0.1)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    assert float(t[0, :2].sum()) > 0.9  # a1's mass stays on the a-labels
    assert float(t[2, 2:].sum()) > 0.9


def test_sensor_source_clusters_by_movement_not_words() -> None:
    # the IMU embeddings group a1 with b1 and a2 with b2, against their words
    imu = {
        "a1": _unit([0.0, 0.0, 1.0]),
        "b1": _unit([0.05, 0.0, 1.0]),
        "a2": _unit([1.0, 0.0, 0.0]),
        "b2": _unit([1.0, 0.05, 0.0]),
    }
    p = ClusterPrototypes(TEXT, source="sensor", cluster_counts=(2,), update_interval=2, seed=0)
    _feed(p, imu, 2)
    groups = sorted(sorted(v) for v in p.cluster_labels.values())
    assert groups == [["a1", "b1"], ["a2", "b2"]]
    e = torch.stack([TEXT[t] for t in LABELS])
    t = p.get_prototype_targets(LABELS, e, 0.5)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    # the prototype of {a1, b1} is the mean of their *text* embeddings: a1's row puts equal
    # mass on a1 and b1 (both at the same similarity to that mean)
    torch.testing.assert_close(t[0, 0], t[0, 2], atol=1e-4, rtol=0)


def test_pcl_concentration_sharpens_tight_clusters() -> None:
    text = {
        "t1": _unit([1.0, 0.01, 0.0]),
        "t2": _unit([1.0, -0.01, 0.0]),
        "l1": _unit([0.0, 1.0, 0.6]),
        "l2": _unit([0.0, 1.0, -0.6]),
    }
    labels = list(text)
    e = torch.stack([text[t] for t in labels])
    outside = {}
    for conc in (False, True):
        p = ClusterPrototypes(
            text, cluster_counts=(2,), concentration=conc, update_interval=2, seed=0
        )
        p.add_labels(labels, e)
        p.add_labels(labels, e)  # 8 samples: enough for 2 clusters (3 samples each)
        assert p.is_initialized
        t = p.get_prototype_targets(labels, e, 0.5)
        torch.testing.assert_close(t.sum(1), torch.ones(4))
        # mass of each row outside its own cluster
        outside[conc] = torch.stack([t[0, 2:].sum(), t[2, :2].sum()])
    # the tight cluster (t1, t2) gets a sharper row, the loose one (l1, l2) a broader row
    assert outside[True][0] < outside[False][0]
    assert outside[True][1] > outside[False][1]


def test_several_granularities_average_and_state_round_trip() -> None:
    p = ClusterPrototypes(TEXT, cluster_counts=(2, 4), update_interval=2, seed=0)
    _feed(p, None, 2)
    e = torch.stack([TEXT[t] for t in LABELS])
    t = p.get_prototype_targets(LABELS, e, 0.5)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    q = ClusterPrototypes(TEXT, cluster_counts=(2, 4), update_interval=2, seed=0)
    q.load_state_dict(p.state_dict())
    torch.testing.assert_close(q.get_prototype_targets(LABELS, e, 0.5), t)
    with pytest.raises(ValueError):
        ClusterPrototypes(TEXT, cluster_counts=(2,)).load_state_dict(p.state_dict())


def test_make_prototypes_forms() -> None:
    kw = {"num_clusters": 2, "update_interval": 5, "seed": 0, "device": torch.device("cpu")}
    note = make_prototypes("note", label_embeddings=TEXT, **kw)
    assert isinstance(note, PrototypeManager) and note.num_clusters == 2
    sensor = make_prototypes("sensor", label_embeddings=TEXT, **kw)
    assert isinstance(sensor, ClusterPrototypes) and sensor.source == "sensor"
    pcl = make_prototypes("pcl", label_embeddings=TEXT, **kw)
    assert [m.num_clusters for m in pcl.managers] == [2, 4, 8]
    assert pcl.concentration
    with pytest.raises(ValueError, match="prototype form"):
        make_prototypes("bogus", label_embeddings=TEXT, **kw)
    with pytest.raises(ValueError):
        ClusterPrototypes(TEXT, source="bogus")
