"""Naive plain-torch reference of the loss, targets and retrieval metrics.

Written element by element, straight from the formulas, independent of ``protofast``'s code.
Meant for small inputs only. Everything is computed in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ref_hard(batch: int, labels: list[str] | None) -> Tensor:
    """Identity, or same-label positives with each row's mass spread evenly."""
    out = torch.zeros(batch, batch, dtype=torch.float64)
    for i in range(batch):
        if labels is None:
            out[i, i] = 1.0
            continue
        positives = [j for j in range(batch) if labels[j] == labels[i]]
        for j in positives:
            out[i, j] = 1.0 / len(positives)
    return out


def ref_pairwise(embeddings: Tensor, temperature: float) -> Tensor:
    """Row softmax of embeddings @ embeddings.T / temperature, one element at a time."""
    e = embeddings.detach().double()
    batch = e.shape[0]
    out = torch.zeros(batch, batch, dtype=torch.float64)
    for i in range(batch):
        scores = [float(e[i] @ e[j]) / temperature for j in range(batch)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for j in range(batch):
            out[i, j] = weights[j] / total
    return out


def ref_targets(
    batch: int,
    labels: list[str] | None,
    label_embeddings: Tensor,
    *,
    hard_mode: str,
    use_soft: bool,
    use_proto: bool,
    proto_matrix: Tensor | None,
    soft_temperature: float,
    soft_weight: float,
    proto_weight: float,
) -> Tensor:
    """The design note's blend; ``label_embeddings`` is B x D (text or target embeddings)."""
    hard = ref_hard(batch, labels if hard_mode == "label" else None)
    if not use_soft and not use_proto:
        return hard
    if use_soft and use_proto:
        assert proto_matrix is not None
        pairwise = ref_pairwise(label_embeddings, soft_temperature)
        soft = (1 - proto_weight) * pairwise + proto_weight * proto_matrix.double()
    elif use_soft:
        soft = ref_pairwise(label_embeddings, soft_temperature)
    else:
        assert proto_matrix is not None
        soft = proto_matrix.double()
    return (1 - soft_weight) * hard + soft_weight * soft


def ref_loss(
    imu: Tensor,
    text: Tensor,
    targets: Tensor,
    temperature: float,
    imu_queue: Tensor | None = None,
    text_queue: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Return (loss, loss_i2t, loss_t2i, logits_i2t, logits_t2i); differentiable in the inputs."""
    imu, text = imu.double(), text.double()
    batch = imu.shape[0]
    keys_it = text if text_queue is None else torch.cat([text, text_queue.double()])
    keys_ti = imu if imu_queue is None else torch.cat([imu, imu_queue.double()])
    logits_it = imu @ keys_it.T / temperature
    logits_ti = text @ keys_ti.T / temperature
    t = targets.detach().double()

    def soft_ce(logits: Tensor) -> Tensor:
        padded = torch.zeros_like(logits)
        padded[:, :batch] = t
        rows = [-(padded[i] * torch.log_softmax(logits[i], dim=0)).sum() for i in range(batch)]
        return torch.stack(rows).mean()

    l_it = soft_ce(logits_it)
    l_ti = soft_ce(logits_ti)
    return (l_it + l_ti) / 2, l_it, l_ti, logits_it, logits_ti


def ref_metrics(
    imu: Tensor,
    text: Tensor,
    labels: list[str] | None,
    *,
    hard_mode: str,
    loss: Tensor,
    l_it: Tensor,
    l_ti: Tensor,
    logits_it: Tensor,
    logits_ti: Tensor,
    semantic_embeddings: Tensor | None,
) -> dict[str, float]:
    """Metrics as documented, computed with loops."""
    imu, text = imu.detach().double(), text.detach().double()
    batch = imu.shape[0]

    def is_positive(i: int, j: int) -> bool:
        if j >= batch:
            return False
        if hard_mode == "label":
            assert labels is not None
            return labels[i] == labels[j]
        return i == j

    def accuracy(logits: Tensor) -> float:
        hits = 0
        for i in range(batch):
            row = logits[i].tolist()
            best = row.index(max(row))
            hits += is_positive(i, best)
        return hits / batch

    pos = [float(imu[i] @ text[i]) for i in range(batch)]
    neg = [float(imu[i] @ text[j]) for i in range(batch) for j in range(batch) if i != j]
    positive = sum(pos) / batch
    negative = sum(neg) / len(neg) if neg else 0.0
    out = {
        "loss": float(loss.detach()),
        "loss_imu_to_text": float(l_it.detach()),
        "loss_text_to_imu": float(l_ti.detach()),
        "acc_imu_to_text": accuracy(logits_it.detach()),
        "acc_text_to_imu": accuracy(logits_ti.detach()),
        "positive_similarity": positive,
        "negative_similarity": negative,
        "similarity_gap": positive - negative,
    }
    if semantic_embeddings is not None:
        e = semantic_embeddings.detach().double()
        off = [float(e[i] @ e[j]) for i in range(batch) for j in range(batch) if i != j]
        out["label_semantic_similarity"] = sum(off) / len(off) if off else 0.0
    return out


def ref_recall(imu: Tensor, text: Tensor, k_values: list[int]) -> dict[str, float]:
    """Recall@k by sorting every row in Python; ties resolved in the positive's favour."""
    imu, text = imu.double(), text.double()
    n = imu.shape[0]

    def recall(queries: Tensor, gallery: Tensor, k: int) -> float:
        hits = 0
        for i in range(n):
            scores = [float(queries[i] @ gallery[j]) for j in range(n)]
            # sort by descending score, the positive first among equal scores
            order = sorted(range(n), key=lambda j, s=scores, i=i: (-s[j], j != i))
            hits += i in order[: min(k, n)]
        return hits / n

    out: dict[str, float] = {}
    for k in k_values:
        a, b = recall(imu, text, k), recall(text, imu, k)
        out[f"recall@{k}_imu_to_text"] = a
        out[f"recall@{k}_text_to_imu"] = b
        out[f"recall@{k}_avg"] = (a + b) / 2
    return out
