"""Text-side map applied to the frozen label-text embeddings.

By default the frozen MiniLM embeddings are used directly (``--text-head frozen``): the label
texts and their geometry stay fixed, so soft targets and prototypes are stable, held-out
descriptions are embedded in exactly the space the IMU encoder was trained on, and nothing can
over-fit the few dozen training texts. ``--text-head linear`` adds a trainable
identity-initialised linear map on the text side; soft targets and prototypes are then still
computed from the frozen embeddings (``target_embeddings`` of :class:`protofast.InfoNCELoss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextHead"]


class TextHead(nn.Module):
    """Text-side map applied to frozen label embeddings.

    Args:
        dim: Embedding dimension.
        kind: ``"frozen"`` (identity, no parameters) or ``"linear"`` (trainable, identity init).

    Raises:
        ValueError: On an unknown ``kind``.
    """

    def __init__(self, dim: int, kind: str = "frozen") -> None:
        super().__init__()
        if kind not in ("frozen", "linear"):
            raise ValueError(f"text head must be 'frozen' or 'linear', got {kind!r}")
        self.kind = kind
        self.proj: nn.Linear | None = None
        if kind == "linear":
            self.proj = nn.Linear(dim, dim)
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim))
                self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map and L2-normalise text embeddings.

        Args:
            x: ``(N, D)`` frozen text embeddings.

        Returns:
            ``(N, D)`` unit-norm embeddings.
        """
        if self.proj is not None:
            x = self.proj(x)
        return F.normalize(x, dim=-1)
