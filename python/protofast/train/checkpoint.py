"""``checkpoint.pt``: everything needed to resume a training run exactly.

The checkpoint holds the model, the text head, the optimizer, the LR scheduler,
``PrototypeManager.state_dict()``, the torch (and CUDA) RNG states, the step, the history and
the run settings. It is written atomically (temporary file, then rename) and loaded with
``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(
    path: Path,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    manager: Any | None,
    epoch: int,
    step: int,
    history: dict[str, list[Any]],
    cfg: TrainConfig,
) -> None:
    """Write a checkpoint atomically.

    Args:
        path: Destination file.
        model: The IMU encoder.
        head: The text head.
        optimizer: The optimizer.
        scheduler: The LR scheduler.
        manager: The prototype manager (``None`` without prototypes).
        epoch: Completed epochs.
        step: Completed optimiser steps.
        history: Training history.
        cfg: Run settings.
    """
    state = {
        "model": model.state_dict(),
        "text_head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "manager": manager.state_dict() if manager is not None else None,
        "epoch": epoch,
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "history": history,
        "config": cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    manager: Any | None,
    device: torch.device,
) -> tuple[int, dict[str, list[Any]]]:
    """Restore a checkpoint into freshly built training objects (in place).

    Also restores the torch RNG state and, when CUDA is available, the CUDA RNG states. The
    manager's state is restored only when both ``manager`` and the saved state exist.

    Args:
        path: Checkpoint written by :func:`save_checkpoint`.
        model: The IMU encoder.
        head: The text head.
        optimizer: The optimizer.
        scheduler: The LR scheduler.
        manager: The prototype manager (``None`` without prototypes).
        device: Device to map the tensors to.

    Returns:
        ``(step, history)`` of the checkpoint.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(ckpt["model"])
    head.load_state_dict(ckpt["text_head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if manager is not None and ckpt.get("manager") is not None:
        manager.load_state_dict(ckpt["manager"])
    if ckpt.get("torch_rng") is not None:
        torch.set_rng_state(ckpt["torch_rng"].cpu())
    if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
    return int(ckpt["step"]), ckpt["history"]
