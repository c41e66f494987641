"""Retrieval metrics for paired IMU / text embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._checks import check_embeddings, check_int, check_pair

__all__ = ["compute_retrieval_metrics"]

_CHUNK_ROWS = 4096


def _as_matrix(name: str, value: Any) -> Tensor:
    tensor = check_embeddings(name, value if isinstance(value, Tensor) else torch.as_tensor(value))
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(tensor.shape)}")
    return tensor


def _ranks(queries: Tensor, gallery: Tensor) -> Tensor:
    """For each query ``i``, how many gallery items score strictly higher than item ``i``."""
    n = queries.shape[0]
    out = torch.empty(n, dtype=torch.long, device=queries.device)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        scores = queries[start:stop] @ gallery.T
        local = torch.arange(stop - start, device=queries.device)
        positive = scores[local, local + start]
        out[start:stop] = (scores > positive[:, None]).sum(dim=1)
    return out


@torch.no_grad()
def compute_retrieval_metrics(
    imu_embeddings: Tensor,
    text_embeddings: Tensor,
    k_values: Iterable[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k for IMU -> text and text -> IMU retrieval.

    Pair ``i`` (``imu_embeddings[i]``, ``text_embeddings[i]``) is the only positive of row
    ``i``. Scores are dot products of the embeddings as given (pass normalised embeddings for
    cosine similarity); fp16/bf16 inputs are scored in float32. A query is a hit at ``k`` when
    fewer than ``k`` gallery items score strictly higher than its positive (ties count in the
    positive's favour). ``k`` larger than ``N`` is clamped to ``N`` (recall 1.0). Scores are
    computed in row chunks, so memory stays ``O(chunk x N)``.

    Args:
        imu_embeddings: ``N x D`` tensor (or array-like).
        text_embeddings: ``N x D`` tensor (or array-like) on the same device.
        k_values: Positive integers.

    Returns:
        ``{"recall@{k}_imu_to_text", "recall@{k}_text_to_imu", "recall@{k}_avg"}`` for each
        ``k``, as Python floats in ``[0, 1]``; keys use the requested ``k``.

    Raises:
        TypeError: On non-floating embeddings or a non-integer ``k``.
        ValueError: On mismatched or empty shapes, different devices, or ``k < 1`` / no ``k``.
    """
    imu = _as_matrix("imu_embeddings", imu_embeddings)
    text = _as_matrix("text_embeddings", text_embeddings)
    check_pair(imu, text)
    ks = list(k_values)
    if not ks:
        raise ValueError("k_values must contain at least one k")
    ks = [check_int("k_values", k, 1) for k in ks]

    dtype = torch.promote_types(torch.promote_types(imu.dtype, text.dtype), torch.float32)
    n = imu.shape[0]
    with torch.autocast(device_type=imu.device.type, enabled=False):
        imu = imu.detach().to(dtype)
        text = text.detach().to(dtype)
        rank_it = _ranks(imu, text)
        rank_ti = _ranks(text, imu)
        limits = torch.tensor([min(k, n) for k in ks], device=imu.device)
        hits_it = (rank_it[None, :] < limits[:, None]).sum(dim=1).tolist()
        hits_ti = (rank_ti[None, :] < limits[:, None]).sum(dim=1).tolist()

    result: dict[str, float] = {}
    for k, h_it, h_ti in zip(ks, hits_it, hits_ti, strict=True):
        r_it, r_ti = h_it / n, h_ti / n
        result[f"recall@{k}_imu_to_text"] = r_it
        result[f"recall@{k}_text_to_imu"] = r_ti
        result[f"recall@{k}_avg"] = (r_it + r_ti) / 2
    return result
