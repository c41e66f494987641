"""Tests for protofast.loss, protofast.targets and protofast.metrics against tests/reference.py."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference as ref  # noqa: E402
from builders import (  # noqa: E402
    blend_targets,
    hard_targets,
    index_labels,
    pairwise_targets,
)
from protofast import PrototypeManager  # noqa: E402
from protofast.loss import InfoNCELoss, SemanticAlignmentLoss  # noqa: E402
from protofast.metrics import compute_retrieval_metrics  # noqa: E402
from protofast.targets import Plan, group_labels  # noqa: E402

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABEL_POOL = ["walking", "running", "sitting", "lying"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """These tensors are tiny: extra threads only add synchronisation (painful on busy CPUs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class FakeManager:
    """Stands in for PrototypeManager: returns a fixed row-stochastic matrix, records calls."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix
        self.calls: list[tuple[list[str], torch.Tensor, float]] = []

    def get_prototype_targets(
        self, label_texts: list[str], text_embeddings: torch.Tensor, temperature: float = 0.5
    ) -> torch.Tensor:
        self.calls.append((list(label_texts), text_embeddings.detach().clone(), temperature))
        return self.matrix.clone()


@dataclass(frozen=True)
class Mode:
    use_soft: bool
    use_proto: bool
    hard: str
    target_emb: bool = False


MODES = {
    "hard": Mode(False, False, "identity"),
    "label_hard": Mode(False, False, "label"),
    "pairwise": Mode(True, False, "identity"),
    "pairwise_label": Mode(True, False, "label"),
    "prototype": Mode(False, True, "identity"),
    "hybrid": Mode(True, True, "identity"),
    "hybrid_label": Mode(True, True, "label"),
    "pairwise_target_emb": Mode(True, False, "identity", True),
    "hybrid_target_emb": Mode(True, True, "label", True),
}


def _normalized(gen: torch.Generator, *shape: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _row_stochastic(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(n, n, generator=gen, dtype=torch.float64) * 2, dim=1)


@dataclass
class Case:
    labels: list[str]
    imu: torch.Tensor
    text: torch.Tensor
    imu_queue: torch.Tensor | None
    text_queue: torch.Tensor | None
    target_map: dict[str, torch.Tensor]
    proto: torch.Tensor
    tau: float
    tau_s: float
    w_soft: float
    w_proto: float


@st.composite
def cases(draw: Any, max_batch: int = 8) -> Case:
    batch = draw(st.integers(1, max_batch))
    dim = draw(st.integers(2, 6))
    n_labels = draw(st.integers(1, 4))
    labels = draw(st.lists(st.sampled_from(LABEL_POOL[:n_labels]), min_size=batch, max_size=batch))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    imu = _normalized(gen, batch, dim)
    text = _normalized(gen, batch, dim)
    if draw(st.booleans()):  # equal labels share a text embedding (enables the dedup path)
        first = {label: i for i, label in reversed(list(enumerate(labels)))}
        text = text[[first[label] for label in labels]]
    q_imu, q_text = draw(st.none() | st.integers(0, 4)), draw(st.none() | st.integers(0, 4))
    target_map = {label: _normalized(gen, dim + 1) for label in LABEL_POOL}
    return Case(
        labels=labels,
        imu=imu,
        text=text,
        imu_queue=None if q_imu is None else _normalized(gen, q_imu, dim),
        text_queue=None if q_text is None else _normalized(gen, q_text, dim),
        target_map=target_map,
        proto=_row_stochastic(gen, batch),
        tau=draw(st.floats(0.05, 2.0)),
        tau_s=draw(st.floats(0.05, 2.0)),
        w_soft=draw(st.floats(0.0, 1.0)),
        w_proto=draw(st.floats(0.0, 1.0)),
    )


def _build(mode: Mode, case: Case, manager: FakeManager | None = None) -> InfoNCELoss:
    return InfoNCELoss(
        temperature=case.tau,
        use_soft_targets=mode.use_soft,
        soft_target_temperature=case.tau_s,
        soft_target_weight=case.w_soft,
        use_prototypes=mode.use_proto,
        prototype_weight=case.w_proto,
        prototype_manager=manager,
        hard_targets=mode.hard,
        target_embeddings=case.target_map if mode.target_emb else None,
    )


def _leaf(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype).detach().requires_grad_(True)


def _clear_argmax(logits: torch.Tensor, margin: float = 1e-4) -> bool:
    if logits.shape[1] < 2:
        return True
    top = logits.detach().topk(2, dim=1).values
    return bool(((top[:, 0] - top[:, 1]) > margin).all())


def _run_both(mode: Mode, case: Case, dtype: torch.dtype, pass_labels: bool = True) -> None:
    """Run protofast and the reference on the same case; compare loss, metrics, gradients."""
    manager = FakeManager(case.proto.to(dtype)) if mode.use_proto else None
    loss_fn = _build(mode, case, manager)
    labels = case.labels if pass_labels else None
    inputs = [_leaf(t, dtype) for t in (case.imu, case.text, case.imu_queue, case.text_queue)]
    imu, text, imu_q, text_q = inputs
    loss, metrics = loss_fn(imu, text, labels, imu_queue=imu_q, text_queue=text_q)
    assert loss.dtype == dtype and loss.dim() == 0

    ref_inputs = [
        _leaf(t, torch.float64) for t in (case.imu, case.text, case.imu_queue, case.text_queue)
    ]
    r_imu, r_text, r_imu_q, r_text_q = ref_inputs
    batch = case.imu.shape[0]
    if mode.target_emb:
        label_emb = torch.stack([case.target_map[label] for label in case.labels])
    else:
        label_emb = case.text.to(dtype).double()  # what the loss sees
    targets = ref.ref_targets(
        batch,
        labels,
        label_emb,
        hard_mode=mode.hard,
        use_soft=mode.use_soft,
        use_proto=mode.use_proto,
        proto_matrix=case.proto.to(dtype),
        soft_temperature=case.tau_s,
        soft_weight=case.w_soft,
        proto_weight=case.w_proto,
    )
    r_loss, r_it, r_ti, r_logits_it, r_logits_ti = ref.ref_loss(
        r_imu, r_text, targets, case.tau, r_imu_q, r_text_q
    )
    expected = ref.ref_metrics(
        r_imu,
        r_text,
        labels,
        hard_mode=mode.hard,
        loss=r_loss,
        l_it=r_it,
        l_ti=r_ti,
        logits_it=r_logits_it,
        logits_ti=r_logits_ti,
        semantic_embeddings=label_emb if mode.use_soft else None,
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert metrics is not None
    assert set(metrics) == set(expected)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key
        if key.startswith("acc_"):
            logits = r_logits_it if key.endswith("imu_to_text") else r_logits_ti
            if not _clear_argmax(logits):
                continue  # near-tie: argmax legitimately depends on rounding
        assert math.isclose(float(value), expected[key], rel_tol=tol, abs_tol=tol), (
            key,
            float(value),
            expected[key],
        )
    assert math.isclose(float(loss.detach()), float(r_loss.detach()), rel_tol=tol, abs_tol=tol)

    if manager is not None:
        ((call_labels, call_emb, call_temp),) = manager.calls
        assert call_labels == case.labels and call_temp == case.tau_s
        expected_emb = label_emb if mode.target_emb else case.text.to(dtype)
        torch.testing.assert_close(call_emb.double(), expected_emb.double(), rtol=tol, atol=tol)

    loss.backward()
    r_loss.backward()
    g_tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    for mine, theirs in zip(inputs, ref_inputs, strict=True):
        if mine is None:
            continue
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad.double(), theirs.grad, **g_tol)


# ---------------------------------------------------------------------- reference comparison


@pytest.mark.parametrize("mode_name", list(MODES))
@SETTINGS
@given(case=cases(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_matches_reference(mode_name: str, case: Case, dtype: torch.dtype) -> None:
    _run_both(MODES[mode_name], case, dtype)


@pytest.mark.parametrize("mode_name", ["hard", "pairwise"])
@SETTINGS
@given(case=cases())
def test_matches_reference_without_labels(mode_name: str, case: Case) -> None:
    _run_both(MODES[mode_name], case, torch.float64, pass_labels=False)


# ---------------------------------------------------------------------- dedup path


PER_LABEL = (Plan.LABEL, Plan.LABEL_CORE)


class _SpyLoss(InfoNCELoss):
    """Records the plan of each step's targets (``force_full``: per sample, ``B x B``)."""

    def __init__(self, *args: Any, force_full: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.force_full = force_full
        self.plans: list[Plan] = []

    def get_targets(self, *args: Any, **kwargs: Any) -> Any:
        if self.force_full:
            kwargs["plan"] = Plan.SAMPLE
        targets = super().get_targets(*args, **kwargs)
        self.plans.append(targets.plan)
        return targets

    @property
    def decisions(self) -> list[bool]:
        """Whether each step with a choice took a per-label plan."""
        return [plan in PER_LABEL for plan in self.plans]


@SETTINGS
@given(
    labels=st.lists(st.sampled_from(LABEL_POOL), min_size=2, max_size=12),
    seed=st.integers(0, 2**31 - 1),
    hard=st.sampled_from(["identity", "label"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_dedup_path_equals_full_path(
    labels: list[str], seed: int, hard: str, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, dim = len(labels), 5
    per_label = {label: _normalized(gen, dim) for label in LABEL_POOL}
    text = torch.stack([per_label[label] for label in labels]).to(dtype)
    imu = _normalized(gen, batch, dim).to(dtype)
    kwargs = dict(soft_target_temperature=0.3, soft_target_weight=0.7, hard_targets=hard)
    fast, full = _SpyLoss(**kwargs), _SpyLoss(force_full=True, **kwargs)
    results = []
    for loss_fn in (fast, full):
        x = imu.clone().requires_grad_(True)
        loss, metrics = loss_fn(x, text, labels)
        loss.backward()
        results.append((loss, metrics, x.grad))
    distinct = len(set(labels))
    attempted = 2 * distinct * distinct <= batch * batch  # the per-label plans pay off only then
    assert fast.decisions == [attempted]
    assert full.plans == [Plan.SAMPLE]
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    (l1, m1, g1), (l2, m2, g2) = results
    torch.testing.assert_close(l1, l2, **tol)
    torch.testing.assert_close(g1, g2, **tol)
    assert m1 is not None and m2 is not None
    for key in m1:
        torch.testing.assert_close(m1[key], m2[key], **tol)

    # a perturbed embedding of a repeated label must disable the dedup path
    if attempted:
        repeat = next(i for i, label in enumerate(labels) if label in labels[:i])
        bumped = text.clone()
        bumped[repeat] += 1e-3
        fast(imu, bumped, labels)
        assert fast.plans[-1] is Plan.SAMPLE


@SETTINGS
@given(
    labels=st.lists(st.sampled_from(LABEL_POOL), min_size=1, max_size=10),
    seed=st.integers(0, 2**31 - 1),
    tau=st.floats(0.05, 3.0),
)
def test_pairwise_targets_dedup_function(labels: list[str], seed: int, tau: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    index = index_labels(labels)
    unique = _normalized(gen, len(index.labels), 4)
    ids = torch.tensor(index.inverse)
    full = pairwise_targets(unique[ids], tau)
    with_counts = pairwise_targets(
        unique, tau, label_ids=ids, label_counts=torch.tensor(index.counts)
    )
    without_counts = pairwise_targets(unique, tau, label_ids=ids)
    torch.testing.assert_close(with_counts, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(without_counts, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full, ref.ref_pairwise(unique[ids], tau), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- targets.py


def test_index_labels() -> None:
    index = index_labels(["b", "a", "b", "c", "a", "b"])
    assert index.labels == ["b", "a", "c"]
    assert index.inverse == [0, 1, 0, 2, 1, 0]
    assert index.counts == [3, 2, 1]
    assert index.first == [0, 1, 3]
    with pytest.raises(TypeError, match="label_texts"):
        index_labels("walking")
    with pytest.raises(TypeError, match=r"label_texts\[1\]"):
        index_labels(["a", 3])  # type: ignore[list-item]


@SETTINGS
@given(labels=st.lists(st.text(max_size=4), max_size=40))
def test_compiled_label_grouping_equals_python(labels: list[str]) -> None:
    got = group_labels(labels)
    position: dict[str, int] = {}
    inverse = [position.setdefault(label, len(position)) for label in labels]
    want = (
        list(position),
        inverse,
        [inverse.count(i) for i in range(len(position))],
        [inverse.index(i) for i in range(len(position))],
    )
    assert got.labels == want[0]
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a.dtype == np.int64 and a.tolist() == b


def test_label_grouping_falls_back_for_labels_not_utf8() -> None:
    labels = ["a", "\ud800", "a", "\ud800"]  # a lone surrogate has no UTF-8 form
    index = index_labels(labels)
    assert index.labels == ["a", "\ud800"] and index.inverse == [0, 1, 0, 1]


def test_dedup_check_handles_layouts_and_nan() -> None:
    labels = ["a", "b", "a", "b"]
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]])
    loss_fn = _SpyLoss(soft_target_temperature=0.5)
    imu = torch.randn(4, 2)
    for text, expected in (
        (rows, True),
        (rows.T.contiguous().T, True),  # not C-contiguous: checked by numpy instead
        (torch.where(torch.arange(4)[:, None] == 3, rows + 1e-3, rows), False),
        (torch.where(torch.arange(4)[:, None] == 1, torch.nan, rows), False),
    ):
        loss_fn.plans.clear()
        loss_fn(imu, text, labels)
        assert loss_fn.decisions == [expected]


def test_core_builds_only_small_label_sets() -> None:
    """The core's single-threaded L x L product is only used while L^2 D <= 2^21: a batch of
    80 distinct labels at D = 384 takes the tensor path (still the per-label one)."""
    calls: list[int] = []
    gen = torch.Generator().manual_seed(3)
    loss_fn = _SpyLoss()
    for distinct, dim in ((80, 384), (72, 384), (80, 300)):
        per_label = _normalized(gen, distinct, dim).float()
        ids = torch.arange(256) % distinct
        labels = [f"label {i}" for i in ids.tolist()]
        loss_fn(_normalized(gen, 256, dim).float(), per_label[ids], labels)
        assert loss_fn.decisions[-1] is True  # the per-label path either way
        if loss_fn.plans[-1] is Plan.LABEL_CORE:
            calls.append(distinct)
    assert calls == [72, 80]  # 80^2 * 384 > 2^21; 72^2 * 384 and 80^2 * 300 are not


def test_core_target_calls_reject_bad_input() -> None:
    """The core's per-label target call names the bad argument (ProtofastError, a
    ValueError) instead of reading out of bounds."""
    from protofast import ProtofastError
    from protofast._protofast import label_targets_raw

    emb = np.eye(3, dtype=np.float32)
    counts = np.array([1.0, 2.0, 1.0], np.float32)
    weights = dict(hard=0.2, pairwise=0.8, inv_temperature=2.0)
    part, semantic = label_targets_raw(emb, counts, **weights, want_semantic=True)
    assert part.shape == (3, 3) and semantic is not None
    np.testing.assert_allclose(part @ counts, np.ones(3), rtol=1e-6)  # row mass 0.2 + 0.8
    logits = np.zeros((2, 3), np.float32)
    bad_calls = [
        (lambda: label_targets_raw(emb, counts[:2], **weights), "emb"),
        (lambda: label_targets_raw(emb, np.array([1, 0, 1], np.float32), **weights), "counts"),
        (lambda: label_targets_raw(emb, counts, **weights, logits=logits), "logits"),
        (
            lambda: label_targets_raw(
                emb, counts, **weights, logits=logits, clusters=np.array([0, 2, 1])
            ),
            "clusters",
        ),
    ]
    for call, name in bad_calls:
        with pytest.raises(ProtofastError, match=f"^{name}:"):
            call()


def test_hard_targets() -> None:
    assert torch.equal(hard_targets(3), torch.eye(3))
    labels = ["a", "b", "a", "a"]
    got = hard_targets(4, torch.tensor(index_labels(labels).inverse), dtype=torch.float64)
    torch.testing.assert_close(got, ref.ref_hard(4, labels))
    with pytest.raises(ValueError, match="batch_size"):
        hard_targets(0)
    with pytest.raises(ValueError, match="label_ids"):
        hard_targets(3, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="label_ids"):
        hard_targets(2, torch.tensor([0.0, 1.0]))


def test_blend_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    hard, pw, pr = torch.eye(3, dtype=torch.float64), *(_row_stochastic(gen, 3) for _ in "ab")
    assert blend_targets(hard) is hard
    torch.testing.assert_close(
        blend_targets(hard, pw, soft_target_weight=0.3), 0.7 * hard + 0.3 * pw
    )
    torch.testing.assert_close(blend_targets(hard, None, pr, soft_target_weight=1.0), pr)
    torch.testing.assert_close(
        blend_targets(hard, pw, pr, soft_target_weight=0.4, prototype_weight=0.25),
        0.6 * hard + 0.4 * (0.75 * pw + 0.25 * pr),
    )
    # hard=None is the identity, computed without materialising it; inputs are not modified
    before = (pw.clone(), pr.clone())
    for soft in ((pw, None), (None, pr), (pw, pr)):
        torch.testing.assert_close(
            blend_targets(None, *soft, soft_target_weight=0.4, prototype_weight=0.25),
            blend_targets(hard, *soft, soft_target_weight=0.4, prototype_weight=0.25),
        )
    assert torch.equal(pw, before[0]) and torch.equal(pr, before[1])
    with pytest.raises(ValueError, match="at least one soft matrix"):
        blend_targets(None)
    with pytest.raises(ValueError, match="soft_target_weight"):
        blend_targets(hard, pw, soft_target_weight=1.5)
    with pytest.raises(ValueError, match="prototype targets"):
        blend_targets(hard, None, torch.eye(2))
    with pytest.raises(ValueError, match="temperature"):
        pairwise_targets(torch.eye(2), 0.0)


# ---------------------------------------------------------------------- real prototype manager


class MatrixOnlyManager:
    """Exposes only get_prototype_targets of a real manager: the loss's B x B fallback."""

    def __init__(self, manager: PrototypeManager) -> None:
        self.manager = manager

    def get_prototype_targets(
        self, label_texts: list[str], text_embeddings: torch.Tensor, temperature: float = 0.5
    ) -> torch.Tensor:
        return self.manager.get_prototype_targets(label_texts, text_embeddings, temperature)


ACTIVITIES = [f"activity {i}" for i in range(10)]


def _clustered_manager(unseen: str, dim: int, clustered: bool = True) -> PrototypeManager:
    gen = torch.Generator().manual_seed(11)
    vectors = _normalized(gen, len(ACTIVITIES) - 2, dim)  # the last two labels stay unseen
    manager = PrototypeManager(
        num_clusters=3, update_interval=10**6, min_samples_per_cluster=2, unseen=unseen
    )
    for _ in range(3):
        manager.add_labels(
            ACTIVITIES[:-2], vectors + 0.05 * torch.randn(vectors.shape, generator=gen)
        )
    if clustered:
        assert manager.update_prototypes()
    return manager


@pytest.mark.parametrize("unseen", ["nearest", "one_hot"])
@pytest.mark.parametrize("clustered", [True, False])
@SETTINGS
@given(
    picks=st.lists(st.integers(0, len(ACTIVITIES) - 1), min_size=2, max_size=24),
    mode_name=st.sampled_from(["prototype", "hybrid", "hybrid_label", "hybrid_target_emb"]),
    shared=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_real_manager_matches_reference(
    unseen: str,
    clustered: bool,
    picks: list[int],
    mode_name: str,
    shared: bool,
    dtype: torch.dtype,
    seed: int,
) -> None:
    """With protofast's manager the loss builds prototype targets from the k distinct rows
    (per label or per sample); the result must be the reference loss on the manager's own
    B x B targets, and equal to the loss that only gets that B x B matrix."""
    mode = MODES[mode_name]
    dim = 6
    manager = _clustered_manager(unseen, dim + 1 if mode.target_emb else dim, clustered)
    gen = torch.Generator().manual_seed(seed)
    labels = [ACTIVITIES[i] for i in picks]
    batch = len(labels)
    per_label = {label: _normalized(gen, dim) for label in ACTIVITIES}
    if shared:  # equal labels share a text embedding: the per-label path
        text = torch.stack([per_label[label] for label in labels])
    else:
        text = _normalized(gen, batch, dim)
    imu = _normalized(gen, batch, dim)
    target_map = {label: _normalized(gen, dim + 1) for label in ACTIVITIES}
    label_emb = (
        torch.stack([target_map[label] for label in labels]) if mode.target_emb else text
    ).to(dtype)
    manager.add_labels(labels, label_emb)  # the training loop feeds the batch first
    kwargs: dict[str, Any] = dict(
        temperature=0.2,
        use_soft_targets=mode.use_soft,
        soft_target_temperature=0.4,
        soft_target_weight=0.6,
        use_prototypes=True,
        prototype_weight=0.3,
        hard_targets=mode.hard,
        target_embeddings=target_map if mode.target_emb else None,
    )
    proto = manager.get_prototype_targets(labels, label_emb, temperature=0.4)
    targets = ref.ref_targets(
        batch,
        labels,
        label_emb.double(),
        hard_mode=mode.hard,
        use_soft=mode.use_soft,
        use_proto=True,
        proto_matrix=proto,
        soft_temperature=0.4,
        soft_weight=0.6,
        proto_weight=0.3,
    )
    r_imu, r_text = _leaf(imu, torch.float64), _leaf(text.to(dtype), torch.float64)
    assert r_imu is not None and r_text is not None
    r_loss = ref.ref_loss(r_imu, r_text, targets, 0.2)[0]
    r_loss.backward()

    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    results = []
    for owner in (manager, MatrixOnlyManager(manager)):
        loss_fn = InfoNCELoss(prototype_manager=owner, **kwargs)
        x, y = _leaf(imu, dtype), _leaf(text, dtype)
        assert x is not None and y is not None
        loss, metrics = loss_fn(x, y, labels)
        loss.backward()
        torch.testing.assert_close(loss.double(), r_loss.detach(), **tol)
        assert x.grad is not None and r_imu.grad is not None
        torch.testing.assert_close(x.grad.double(), r_imu.grad, **tol)
        if not mode.use_soft or mode.target_emb:  # text-derived targets carry no gradient
            assert y.grad is not None and r_text.grad is not None
            torch.testing.assert_close(y.grad.double(), r_text.grad, **tol)
        assert metrics is not None
        results.append((loss, x.grad, metrics))
    (l1, g1, m1), (l2, g2, m2) = results
    torch.testing.assert_close(l1, l2, **tol)
    torch.testing.assert_close(g1, g2, **tol)
    for key in m1:
        torch.testing.assert_close(m1[key], m2[key], **tol)


@pytest.mark.parametrize("unseen", ["nearest", "one_hot"])
@pytest.mark.parametrize("mode_name", ["pairwise", "pairwise_label", "hybrid", "hybrid_label"])
def test_compiled_label_targets_equal_the_tensor_path(unseen: str, mode_name: str) -> None:
    """On the CPU in float32 the per-label targets come from one call of the core; in float64
    the same loss builds them with tensor operations. Both must agree to float32 rounding,
    metrics included, with unseen labels (no prototype row) in the batch."""
    mode, dim = MODES[mode_name], 6
    manager = _clustered_manager(unseen, dim)
    gen = torch.Generator().manual_seed(5)
    per_label = {label: _normalized(gen, dim) for label in ACTIVITIES}
    labels = [ACTIVITIES[i] for i in [0, 1, 0, 9, 2, 1, 0, 9, 3, 0, 1, 2, 8, 0, 1, 3]]
    text = torch.stack([per_label[label] for label in labels])
    imu = _normalized(gen, len(labels), dim)
    loss_fn = _SpyLoss(
        temperature=0.2,
        use_soft_targets=mode.use_soft,
        soft_target_temperature=0.4,
        soft_target_weight=0.6,
        use_prototypes=mode.use_proto,
        prototype_weight=0.3,
        prototype_manager=manager if mode.use_proto else None,
        hard_targets=mode.hard,
    )
    results = []
    for dtype in (torch.float32, torch.float64):
        x = _leaf(imu, dtype)
        assert x is not None
        loss, metrics = loss_fn(x, text.to(dtype), labels)
        loss.backward()
        assert x.grad is not None and metrics is not None
        results.append((loss.double(), x.grad.double(), metrics))
    assert loss_fn.plans == [Plan.LABEL_CORE, Plan.LABEL]  # the core in float32 only
    (l32, g32, m32), (l64, g64, m64) = results
    tol = dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(l32, l64, **tol)
    torch.testing.assert_close(g32, g64, **tol)
    assert m32.keys() == m64.keys()
    for key in m32:
        torch.testing.assert_close(m32[key].double(), m64[key], **tol)


def test_metrics_do_not_change_the_loss() -> None:
    """return_metrics=False takes the factored targets only; it must give the same loss."""
    manager = _clustered_manager("one_hot", 5)
    gen = torch.Generator().manual_seed(5)
    labels = [ACTIVITIES[i % 10] for i in (0, 1, 0, 9, 2, 0, 1, 9)]
    per_label = {label: _normalized(gen, 5) for label in ACTIVITIES}
    text = torch.stack([per_label[label] for label in labels])
    imu = _normalized(gen, len(labels), 5)
    for hard in ("identity", "label"):
        loss_fn = InfoNCELoss(use_prototypes=True, prototype_manager=manager, hard_targets=hard)
        grads = []
        losses = []
        for want in (False, True):
            x = imu.clone().requires_grad_(True)
            loss, _ = loss_fn(x, text, labels, return_metrics=want)
            loss.backward()
            losses.append(loss)
            grads.append(x.grad)
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("mode_name", list(MODES))
def test_gradcheck(mode_name: str) -> None:
    mode = MODES[mode_name]
    gen = torch.Generator().manual_seed(1)
    labels = ["walking", "running", "walking", "sitting"]
    imu, text = _normalized(gen, 4, 3), _normalized(gen, 4, 3)
    imu_q, text_q = _normalized(gen, 2, 3), _normalized(gen, 3, 3)
    case = Case(
        labels,
        imu,
        text,
        imu_q,
        text_q,
        {label: _normalized(gen, 5) for label in LABEL_POOL},
        _row_stochastic(gen, 4),
        0.2,
        0.4,
        0.6,
        0.3,
    )
    loss_fn = _build(mode, case, FakeManager(case.proto) if mode.use_proto else None)
    # pairwise targets taken from the text embeddings carry no gradient by design, so the
    # finite-difference check can only vary the text embeddings when targets do not use them
    text_varies = not mode.use_soft or mode.target_emb
    leaves = [t.clone().requires_grad_(True) for t in (imu, text, imu_q, text_q)]
    if not text_varies:
        leaves[1].requires_grad_(False)

    def fn(a: torch.Tensor, b: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
        return loss_fn(a, b, labels, return_metrics=False, imu_queue=qa, text_queue=qb)[0]

    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_targets_carry_no_gradient() -> None:
    """With pairwise targets, d loss / d text equals the gradient with targets held fixed."""
    gen = torch.Generator().manual_seed(2)
    imu, text = _normalized(gen, 5, 4), _normalized(gen, 5, 4)
    t = text.clone().requires_grad_(True)
    loss, _ = InfoNCELoss(use_soft_targets=True)(imu, t)
    loss.backward()
    targets = 0.5 * torch.eye(5, dtype=torch.float64) + 0.5 * ref.ref_pairwise(text, 0.5)
    t2 = text.clone().requires_grad_(True)
    ref.ref_loss(imu, t2, targets, 0.1)[0].backward()
    torch.testing.assert_close(t.grad, t2.grad)


# ---------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("mode_name", list(MODES))
def test_batch_size_one(mode_name: str) -> None:
    mode = MODES[mode_name]
    gen = torch.Generator().manual_seed(3)
    case = Case(
        ["walking"],
        _normalized(gen, 1, 4),
        _normalized(gen, 1, 4),
        None,
        None,
        {label: _normalized(gen, 4) for label in LABEL_POOL},
        torch.ones(1, 1, dtype=torch.float64),
        0.1,
        0.5,
        0.5,
        0.5,
    )
    loss_fn = _build(mode, case, FakeManager(case.proto) if mode.use_proto else None)
    loss, metrics = loss_fn(case.imu, case.text, case.labels)
    assert float(loss) == 0.0  # a single column with target 1
    assert metrics is not None
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["acc_imu_to_text"]) == 1.0
    queue = _normalized(gen, 3, 4)
    loss, _ = loss_fn(case.imu, case.text, case.labels, imu_queue=queue, text_queue=queue)
    assert math.isfinite(float(loss)) and float(loss) > 0


def test_return_metrics_false_and_wrapper() -> None:
    gen = torch.Generator().manual_seed(4)
    imu, text = _normalized(gen, 6, 4).float(), _normalized(gen, 6, 4).float()
    labels = ["a", "b", "a", "c", "b", "a"]
    manager = FakeManager(_row_stochastic(gen, 6).float())
    kwargs = dict(use_prototypes=True, prototype_manager=manager, hard_targets="label")
    loss_fn = InfoNCELoss(**kwargs)
    loss, metrics = loss_fn(imu, text, labels, return_metrics=False)
    assert metrics is None
    loss2, metrics2 = loss_fn(imu, text, labels)
    assert metrics2 is not None and "label_semantic_similarity" in metrics2
    torch.testing.assert_close(loss, loss2)
    wrapped = SemanticAlignmentLoss(**kwargs)
    assert wrapped.prototype_manager is manager
    loss3, metrics3 = wrapped(imu, text, labels)
    torch.testing.assert_close(loss3, loss2)
    assert metrics3 is not None and metrics3.keys() == metrics2.keys()
    no_soft = InfoNCELoss(use_soft_targets=False)(imu, text)[1]
    assert no_soft is not None and "label_semantic_similarity" not in no_soft


def test_label_accuracy_counts_any_same_label_column() -> None:
    # imu 0 points at text 2, which has the same label: correct for "label", wrong for identity
    text = torch.eye(3)
    imu = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = ["a", "b", "a"]
    by_label = InfoNCELoss(use_soft_targets=False, hard_targets="label")(imu, text, labels)[1]
    by_index = InfoNCELoss(use_soft_targets=False)(imu, text, labels)[1]
    assert by_label is not None and by_index is not None
    assert float(by_label["acc_imu_to_text"]) == 1.0
    assert float(by_index["acc_imu_to_text"]) == pytest.approx(2 / 3)
    # a queue entry that wins the argmax is never a positive
    queue = torch.tensor([[0.0, 0.0, 1.0]]) * 2
    m = InfoNCELoss(use_soft_targets=False, hard_targets="label")(
        imu, text, labels, text_queue=queue
    )[1]
    assert m is not None and float(m["acc_imu_to_text"]) == pytest.approx(1 / 3)


def test_autocast_bf16_cpu() -> None:
    torch.manual_seed(0)
    enc_a, enc_b = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16)
    x, y = torch.randn(12, 8), torch.randn(12, 8)
    labels = [LABEL_POOL[i % 3] for i in range(12)]
    manager = FakeManager(torch.full((12, 12), 1 / 12))
    loss_fn = InfoNCELoss(use_prototypes=True, prototype_manager=manager, hard_targets="label")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        imu = torch.nn.functional.normalize(enc_a(x), dim=1)
        text = torch.nn.functional.normalize(enc_b(y), dim=1)
        assert imu.dtype == torch.bfloat16
        loss, metrics = loss_fn(imu, text, labels, imu_queue=imu[:3].detach())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert metrics is not None and all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    assert enc_a.weight.grad is not None and torch.isfinite(enc_a.weight.grad).all()
    half, _ = loss_fn(imu.detach().half(), text.detach().half(), labels)
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_target_embeddings_mapping_accepts_arrays_and_moves() -> None:
    table = {"a": [1.0, 0.0], "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.6, 0.8])}
    loss_fn = InfoNCELoss(target_embeddings=table)
    assert "_target_matrix" not in loss_fn.state_dict()
    imu = torch.eye(3)
    loss, metrics = loss_fn(imu, imu, ["a", "c", "a"])
    assert torch.isfinite(loss) and metrics is not None
    # off-diagonal mean of the label similarity: pairs (a,c)=0.6 x4, (a,a)=1 x2 -> 4.4 / 6
    assert float(metrics["label_semantic_similarity"]) == pytest.approx(4.4 / 6)


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature="0.1"), TypeError, "temperature"),
        (dict(soft_target_temperature=0), ValueError, "soft_target_temperature"),
        (dict(soft_target_weight=1.5), ValueError, "soft_target_weight"),
        (dict(soft_target_weight=-0.1), ValueError, "soft_target_weight"),
        (dict(prototype_weight=2.0), ValueError, "prototype_weight"),
        (dict(use_soft_targets=1), TypeError, "use_soft_targets"),
        (dict(use_prototypes=True), ValueError, "prototype_manager"),
        (dict(use_prototypes=True, prototype_manager=object()), TypeError, "prototype_manager"),
        (dict(hard_targets="soft"), ValueError, "hard_targets"),
        (dict(target_embeddings=torch.eye(3)), TypeError, "target_embeddings"),
        (dict(target_embeddings={}), ValueError, "target_embeddings"),
        (dict(target_embeddings={"a": [1.0, 0.0], "b": [1.0]}), ValueError, "target_embeddings"),
        (dict(target_embeddings={1: [1.0]}), TypeError, "target_embeddings"),
        (dict(target_embeddings={"a": [float("inf")]}), ValueError, "target_embeddings"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        InfoNCELoss(**kwargs)


def test_forward_validation() -> None:
    x = torch.randn(4, 3)
    labels = ["a", "b", "a", "c"]
    plain = InfoNCELoss()
    with pytest.raises(ValueError, match="same shape"):
        plain(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="imu_embeddings must be 2-D"):
        plain(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="text_embeddings"):
        plain(x, x.long())
    with pytest.raises(TypeError, match="imu_embeddings"):
        plain(x.numpy(), x)
    with pytest.raises(ValueError, match="label_texts has 3 entries"):
        plain(x, x, labels[:3])
    with pytest.raises(TypeError, match="label_texts"):
        plain(x, x, "abca")
    for hard in ("identity", "label"):  # labels grouped (label hard targets) or not
        with pytest.raises(TypeError, match=r"label_texts\[2\] must be a str, got int"):
            InfoNCELoss(hard_targets=hard)(x, x, ["a", "b", 3, "c"])
        with pytest.raises(TypeError, match=r"label_texts\[0\] must be a str, got bytes"):
            InfoNCELoss(hard_targets=hard)(x, x, (b"a", "b", "a", "c"))
    with pytest.raises(ValueError, match="text_queue"):
        plain(x, x, text_queue=torch.randn(2, 4))
    with pytest.raises(ValueError, match="imu_queue"):
        plain(x, x, imu_queue=torch.randn(2))
    with pytest.raises(ValueError, match="hard_targets='label' requires label_texts"):
        InfoNCELoss(hard_targets="label")(x, x)
    manager = FakeManager(torch.eye(4))
    with pytest.raises(ValueError, match="label_texts"):
        InfoNCELoss(use_prototypes=True, prototype_manager=manager)(x, x)
    with pytest.raises(ValueError, match="get_prototype_targets returned shape"):
        InfoNCELoss(use_prototypes=True, prototype_manager=FakeManager(torch.eye(3)))(x, x, labels)
    table = InfoNCELoss(target_embeddings={"a": [1.0], "b": [2.0]})
    with pytest.raises(ValueError, match="label_texts is required"):
        table(x, x)
    with pytest.raises(ValueError, match=r"missing from target_embeddings: \['c'\]"):
        table(x, x, labels)


# ---------------------------------------------------------------------- retrieval metrics


def test_retrieval_hand_checkable() -> None:
    # With imu = identity, score(i, j) = text[j, i] = S[i, j] where text = S.T. Row i gets a 0 on
    # the diagonal, +1 at `above[i]` off-diagonal places (items ranked above the positive), -1
    # elsewhere, so the imu -> text rank of query i is exactly len(above[i]).
    above = [[], [0], [0, 1, 3], [0, 1]]
    n = len(above)
    scores = -torch.ones(n, n)
    for i, cols in enumerate(above):
        scores[i, i] = 0.0
        for j in cols:
            scores[i, j] = 1.0
    imu, text = torch.eye(n), scores.T.contiguous()
    ranks_it = [len(cols) for cols in above]
    # text -> imu: query i scores gallery j with S[j, i]; count j with S[j, i] > S[i, i] = 0
    ranks_ti = [sum(i in above[j] for j in range(n)) for i in range(n)]
    ks = [1, 2, 3, 100]
    got = compute_retrieval_metrics(imu, text, k_values=ks)
    for k in ks:
        want_it = sum(r < k for r in ranks_it) / n
        want_ti = sum(r < k for r in ranks_ti) / n
        assert got[f"recall@{k}_imu_to_text"] == pytest.approx(want_it)
        assert got[f"recall@{k}_text_to_imu"] == pytest.approx(want_ti)
        assert got[f"recall@{k}_avg"] == pytest.approx((want_it + want_ti) / 2)
        assert isinstance(got[f"recall@{k}_avg"], float)
    assert got["recall@100_avg"] == 1.0  # k > N clamps
    assert got == ref.ref_recall(imu, text, ks)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_retrieval_matches_reference(n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    imu, text = _normalized(gen, n, 3), _normalized(gen, n, 3)
    got = compute_retrieval_metrics(imu, text, k_values=(1, 3, 5))
    want = ref.ref_recall(imu, text, [1, 3, 5])
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key])


def test_retrieval_validation() -> None:
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        compute_retrieval_metrics(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="k_values"):
        compute_retrieval_metrics(x, x, k_values=(0,))
    with pytest.raises(TypeError, match="k_values"):
        compute_retrieval_metrics(x, x, k_values=(1.5,))
    with pytest.raises(TypeError, match="floating"):
        compute_retrieval_metrics(x.long(), x.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    labels = ["a", "b", "a", "c", "a", "b"]
    per_label = {label: _normalized(gen, 8) for label in "abc"}
    text = torch.stack([per_label[label] for label in labels]).float()
    imu = _normalized(gen, 6, 8).float()
    for kwargs in (dict(), dict(hard_targets="label"), dict(target_embeddings=per_label)):
        cpu_loss, cpu_m = InfoNCELoss(**kwargs)(imu, text, labels)
        gpu_loss, gpu_m = InfoNCELoss(**kwargs).cuda()(imu.cuda(), text.cuda(), labels)
        torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=1e-5, atol=1e-5)
        assert cpu_m is not None and gpu_m is not None
        for key in cpu_m:
            torch.testing.assert_close(gpu_m[key].cpu(), cpu_m[key], rtol=1e-5, atol=1e-5)


def test_settings_changed_after_construction_take_effect() -> None:
    """The loss reads its settings once and keeps them; setting one makes it read them again."""
    gen = torch.Generator().manual_seed(2)
    labels = ["a", "b", "a", "c", "a", "b"]
    per_label = {label: _normalized(gen, 4) for label in "abc"}
    text = torch.stack([per_label[label] for label in labels])
    loss_fn = InfoNCELoss(soft_target_weight=0.5)
    before = loss_fn.get_targets(text, labels).dense()
    changes = dict(
        soft_target_weight=0.2,
        soft_target_temperature=0.3,
        hard_targets="label",
        use_soft_targets=False,
    )
    for name, value in changes.items():
        setattr(loss_fn, name, value)
        fresh = InfoNCELoss(**{key: getattr(loss_fn, key) for key in changes})
        got = loss_fn.get_targets(text, labels).dense()
        torch.testing.assert_close(got, fresh.get_targets(text, labels).dense())
        assert not torch.allclose(got, before)
        before = got


@pytest.mark.parametrize("mode_name", ["pairwise", "hybrid", "pairwise_label"])
def test_targets_keep_their_graph_when_asked_as_the_notes_code(mode_name: str) -> None:
    """``detach_targets=False``: the loss backpropagates through its pairwise and prototype
    targets into the text embeddings, as the design note's code does; checked against the
    note's formula written out in plain torch, targets differentiable. With the default the
    text gradient is the one of detached targets."""
    mode, dim = MODES[mode_name], 6
    manager = _clustered_manager("nearest", dim)
    gen = torch.Generator().manual_seed(9)
    labels = [ACTIVITIES[i] for i in [0, 1, 0, 9, 2, 1, 0, 3, 8, 0]]
    per_label = {label: _normalized(gen, dim) for label in ACTIVITIES}
    text0 = torch.stack([per_label[label] for label in labels]).double()
    imu0 = _normalized(gen, len(labels), dim).double()
    tau, soft_tau, w, p = 0.2, 0.4, 0.6, 0.3

    def reference(detach: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        imu, text = imu0.clone().requires_grad_(True), text0.clone().requires_grad_(True)
        source = text.detach() if detach else text
        pairwise = torch.softmax(source @ source.T / soft_tau, dim=1)
        if mode.use_proto:
            clusters = manager.assign(labels, text0)
            protos = manager.prototypes.double()
            proto = torch.softmax(protos @ source.T / soft_tau, dim=1)[clusters]
            soft = (1 - p) * pairwise + p * proto
        else:
            soft = pairwise
        hard = ref.ref_hard(len(labels), labels if mode.hard == "label" else None)
        targets = (1 - w) * hard + w * soft
        logits = imu @ text.T / tau
        loss = 0.5 * (
            -(targets * torch.log_softmax(logits, dim=1)).sum(1).mean()
            - (targets * torch.log_softmax(logits.T, dim=1)).sum(1).mean()
        )
        loss.backward()
        assert imu.grad is not None and text.grad is not None
        return loss.detach(), imu.grad, text.grad

    for detach in (False, True):
        loss_fn = InfoNCELoss(
            temperature=tau,
            use_soft_targets=True,
            soft_target_temperature=soft_tau,
            soft_target_weight=w,
            use_prototypes=mode.use_proto,
            prototype_weight=p,
            prototype_manager=manager if mode.use_proto else None,
            hard_targets=mode.hard,
            detach_targets=detach,
        )
        imu, text = imu0.clone().requires_grad_(True), text0.clone().requires_grad_(True)
        loss, _ = loss_fn(imu, text, labels)
        loss.backward()
        want_loss, want_imu, want_text = reference(detach)
        tol = dict(rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(loss.detach(), want_loss, **tol)
        torch.testing.assert_close(imu.grad, want_imu, **tol)
        torch.testing.assert_close(text.grad, want_text, **tol)
        plan = loss_fn.get_targets(text, labels).plan
        assert plan is (Plan.LABEL if detach else Plan.SAMPLE)
    # the two settings differ in the text gradient only through the targets
    assert not torch.allclose(reference(False)[2], reference(True)[2])


def test_rows_that_differ_take_the_per_sample_plan_with_prototypes_too() -> None:
    """With prototypes the per-label core plan checks the rows before asking the manager; a
    batch whose same-label rows differ is built per sample, equal to the forced SAMPLE plan."""
    manager = _clustered_manager("nearest", 6)
    gen = torch.Generator().manual_seed(4)
    labels = [ACTIVITIES[i] for i in [0, 1, 0, 2, 1, 0, 3, 0, 1, 2, 0, 1]]
    per_label = {label: _normalized(gen, 6) for label in ACTIVITIES}
    text = torch.stack([per_label[label] for label in labels]).float()
    loss_fn = InfoNCELoss(use_prototypes=True, prototype_manager=manager)
    assert loss_fn.get_targets(text, labels).plan is Plan.LABEL_CORE
    noisy = text + 1e-4 * torch.randn(text.shape, generator=gen)
    got = loss_fn.get_targets(noisy, labels)
    assert got.plan is Plan.SAMPLE
    forced = loss_fn.get_targets(noisy, labels, plan=Plan.SAMPLE)
    torch.testing.assert_close(got.dense(), forced.dense(), rtol=0, atol=0)
