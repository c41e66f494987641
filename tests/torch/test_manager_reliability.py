"""PrototypeManager reliability: atomic saves, checked states and files, spherical rows,
threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from protofast import PrototypeManager

LABELS = ["walking", "running", "sitting", "standing", "lying", "cycling"]


def fed(**kwargs) -> PrototypeManager:
    m = PrototypeManager(num_clusters=2, update_interval=1, min_samples_per_cluster=1, **kwargs)
    g = torch.Generator().manual_seed(0)
    m.add_labels(LABELS, torch.randn(len(LABELS), 4, generator=g))
    return m


def test_a_save_killed_midway_leaves_the_previous_file(tmp_path) -> None:
    path = tmp_path / "m.pt"
    fed().save(path)
    before = PrototypeManager.load(path).label_to_cluster
    child = textwrap.dedent(
        f"""
        import sys, time, torch
        from protofast import PrototypeManager
        real = torch.save
        def slow(obj, f, *a, **k):
            f.write(b"partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
            real(obj, f, *a, **k)
        torch.save = slow
        m = PrototypeManager(num_clusters=3)
        m.add_labels(["x"], torch.ones(1, 4))
        m.save({str(path)!r})
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert PrototypeManager.load(path).label_to_cluster == before
    leftovers = [p for p in os.listdir(tmp_path) if p != "m.pt"]
    assert all(p.endswith(".tmp") for p in leftovers)  # only the dead writer's temporary


def test_a_failed_save_removes_its_temporary(tmp_path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        fed().save(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def _set(state, path, value):
    *parents, last = path
    for key in parents:
        state = state[key]
    state[last] = value


@pytest.mark.parametrize(
    "path,value,exc,match",
    [
        (("prototypes",), torch.full((2, 4), float("nan")), ValueError, "non-finite"),
        (("prototypes",), torch.full((2, 4), float("inf")), ValueError, "non-finite"),
        (("prototypes",), torch.zeros(3, 4), ValueError, "2 rows"),
        (("prototypes",), torch.zeros(2, 5), ValueError, "columns"),
        (("prototypes",), torch.zeros(2, 4, dtype=torch.int64), TypeError, "floating"),
        (("prototypes",), None, ValueError, "no prototypes"),
        (("cluster_of_id",), torch.zeros(6), TypeError, "integer"),
        (("cluster_of_id",), torch.full((6,), 2), ValueError, r"in \[-1, 2\)"),
        (("cluster_of_id",), torch.full((6,), -2), ValueError, r"in \[-1, 2\)"),
        (("counters", "num_batches"), -1, ValueError, ">= 0"),
        (("counters", "num_updates"), -3, ValueError, ">= 0"),
        (("counters", "num_labels_seen"), 1.5, TypeError, "int"),
        (("counters", "is_initialized"), 1, TypeError, "bool"),
        (("counters", "warned_not_ready"), "no", TypeError, "bool"),
    ],
)
def test_load_state_dict_checks_every_field_and_keeps_the_manager(path, value, exc, match) -> None:
    m = fed()
    state = m.state_dict()
    before = (m.state_dict(), dict(m.label_to_cluster))
    _set(state, path, value)
    with pytest.raises(exc, match=match):
        m.load_state_dict(state)
    assert m.label_to_cluster == before[1]
    assert torch.equal(m.state_dict()["prototypes"], before[0]["prototypes"])


@pytest.mark.parametrize(
    "pending,exc,match",
    [
        ({"sum": torch.full((64, 4), float("nan")), "count": torch.ones(64, dtype=torch.int64)},
         ValueError, "non-finite"),
        ({"sum": torch.zeros(64, 4), "count": -torch.ones(64, dtype=torch.int64)},
         ValueError, ">= 0"),
        ({"sum": torch.zeros(64, 4), "count": torch.ones(63, dtype=torch.int64)},
         ValueError, "counts"),
        ({"sum": torch.zeros(64, 5), "count": torch.ones(64, dtype=torch.int64)},
         ValueError, "columns"),
        ({"sum": torch.zeros(64), "count": torch.ones(64, dtype=torch.int64)},
         ValueError, "2-D"),
    ],
)  # fmt: skip
def test_bad_pending_sums_are_refused(pending, exc, match) -> None:
    m = fed()
    state = m.state_dict()
    state["pending"] = pending
    with pytest.raises(exc, match=match):
        m.load_state_dict(state)


def test_a_store_dimension_other_than_the_prototypes_is_refused() -> None:
    m = fed()
    state = m.state_dict()
    other = PrototypeManager(num_clusters=2, update_interval=1000)
    other.add_labels(LABELS, torch.randn(len(LABELS), 5))
    state["store"] = other.state_dict()["store"]
    with pytest.raises(ValueError, match="columns"):
        m.load_state_dict(state)
    assert m.store.dim == 4


@pytest.mark.parametrize("content", [b"", b"junk, not a checkpoint", None])
def test_a_junk_or_truncated_file_names_the_file(tmp_path, content) -> None:
    path = tmp_path / "m.pt"
    if content is None:  # a real checkpoint cut in half
        fed().save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="m.pt"):
        PrototypeManager.load(path)
    m = fed()
    before = dict(m.label_to_cluster)
    with pytest.raises(ValueError, match="m.pt"):
        m.load(path)
    assert m.label_to_cluster == before


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_spherical_refuses_zero_and_non_finite_rows(bad, ingest) -> None:
    m = PrototypeManager(num_clusters=1, update_interval=1, spherical=True, ingest=ingest)
    emb = torch.randn(3, 4)
    emb[1] = bad
    with pytest.raises(ValueError, match="row 1"):
        m.add_labels(["a", "b", "c"], emb)
    assert m.num_batches == 0 and len(m.store) == 0
    assert m.get_statistics()["total_embeddings_accumulated"] == 0


@pytest.mark.parametrize("ingest", ["direct", "deferred"])
def test_the_manager_can_be_shared_between_threads(ingest) -> None:
    m = PrototypeManager(
        num_clusters=2, update_interval=3, min_samples_per_cluster=1, ingest=ingest
    )
    errors: list[BaseException] = []
    done = threading.Event()

    def feed() -> None:
        try:
            g = torch.Generator().manual_seed(1)
            for i in range(300):
                names = [LABELS[(i + j) % len(LABELS)] for j in range(4)] + [f"extra{i % 40}"]
                m.add_labels(names, torch.randn(len(names), 4, generator=g))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                m.update_prototypes()
                state = m.state_dict()
                PrototypeManager().load_state_dict(state)
                m.get_prototype_targets(LABELS[:3], torch.randn(3, 4))
                m.get_statistics()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=feed), threading.Thread(target=read)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert time.monotonic() - start < 120
    assert m.num_batches == 300
    PrototypeManager().load_state_dict(m.state_dict())


def test_a_state_of_deferred_sums_is_a_copy_on_the_cpu() -> None:
    """state_dict() and load_state_dict() copy the pending sums: on the CPU ``.cpu()`` and
    ``.to("cpu")`` return the tensor itself, which later batches would update in place."""
    g = torch.Generator().manual_seed(0)
    m = PrototypeManager(num_clusters=2, update_interval=100, ingest="deferred")
    m.add_labels(LABELS, torch.randn(len(LABELS), 4, generator=g))
    state = m.state_dict()
    before = state["pending"]["sum"].clone()
    resumed = PrototypeManager(num_clusters=2, update_interval=100, ingest="deferred")
    resumed.load_state_dict(state)
    extra = torch.randn(len(LABELS), 4, generator=g)
    m.add_labels(LABELS, extra)
    resumed.add_labels(LABELS, extra)
    assert torch.equal(state["pending"]["sum"], before)  # the saved state did not move
    assert torch.equal(m.state_dict()["pending"]["sum"], resumed.state_dict()["pending"]["sum"])
