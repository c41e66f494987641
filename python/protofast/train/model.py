"""A small 1-D CNN that maps IMU windows into the text-embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IMUEncoder"]


class IMUEncoder(nn.Module):
    """1-D CNN IMU encoder with a projection head to the text dimension.

    Three strided conv blocks (Conv1d, BatchNorm, ReLU; each halves the time axis) and global
    average pooling give a ``4 * width``-d feature, and a two-layer MLP projects it to
    ``embed_dim``; the output is L2-normalised. With the defaults it has ~0.2 M parameters and
    costs ~0.1 GFLOP per batch of 128 windows of 128 samples, so it trains quickly on a CPU.

    Args:
        in_channels: Number of IMU channels (6 for accelerometer + gyroscope).
        embed_dim: Output dimension (384 to match all-MiniLM-L6-v2).
        width: Channels of the first conv block (doubled in each following block).
        dropout: Dropout before the projection head.
    """

    def __init__(
        self, in_channels: int = 6, embed_dim: int = 384, width: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, c1, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(c1),
            nn.ReLU(inplace=True),
            nn.Conv1d(c1, c2, kernel_size=5, stride=2, padding=2, bias=False),
            nn.BatchNorm1d(c2),
            nn.ReLU(inplace=True),
            nn.Conv1d(c2, c3, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(c3),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c3, 2 * c3),
            nn.ReLU(inplace=True),
            nn.Linear(2 * c3, embed_dim),
        )
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of windows.

        Args:
            x: ``(B, C, L)`` float tensor.

        Returns:
            ``(B, embed_dim)`` unit-norm embeddings.
        """
        h = self.features(x).mean(dim=-1)
        return F.normalize(self.head(h), dim=-1)
