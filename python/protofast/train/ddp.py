"""The training job on several processes (``torchrun --nproc_per_node N -m protofast.train``).

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the job initialises a process group
(NCCL on CUDA, gloo on the CPU), and every rank trains on its share of each batch: the global
batch (``--batch-size``) is split into equal contiguous parts, one per rank, in rank order. The
model and the text head are wrapped in ``DistributedDataParallel`` (gradients averaged), the loss
gathers every rank's embeddings (``InfoNCELoss(gather=True)``: the global batch's negatives and
targets), and the prototype manager shares one store and one clustering across ranks (its
default under a process group). So a step computes the loss of one process on the global batch,
and the run follows a one-process run up to floating-point rounding and batch-norm statistics,
which are per rank. Rank 0 logs, evaluates and writes the outputs; before a checkpoint every rank
merges its prototype samples (``PrototypeManager.sync``), so the one file resumes every rank.

The end of a run: every rank waits for the others (:func:`finish`, a barrier), destroys the group
(:func:`teardown`) and, when started as a command, leaves without the interpreter's shutdown
(:func:`leave`). ``DistributedDataParallel`` keeps the gloo group alive past
``destroy_process_group``: its three threads (``gloo_tcp_loop`` and two ``pt_gloo_runloop``) run
until the process ends (torch 2.15). A rank once aborted at that point of its exit (``terminate
called without an active exception``, while its peer still evaluated); 67 runs since did not
reproduce it, so the cause is not proven: these steps take away the two suspects, a peer still at
work and live threads during the interpreter's shutdown.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NamedTuple, NoReturn

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Ranks", "Pair", "current", "finish", "leave", "setup", "share", "teardown"]


class Ranks(NamedTuple):
    """This process in a multi-process run.

    Attributes:
        rank: Its rank.
        size: The number of ranks.
        local_rank: Its rank on this machine (its GPU).
    """

    rank: int
    size: int
    local_rank: int


def setup(device: str) -> str:
    """Initialises the process group when run by ``torchrun`` with several processes.

    Args:
        device: The job's ``--device`` setting.

    Returns:
        The device this rank trains on: ``cuda:<local rank>`` for CUDA, else ``device``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return f"cuda:{local}" if cuda else ("cpu" if device == "auto" else device)


def current() -> Ranks | None:
    """This process's :class:`Ranks`, or ``None`` when it runs alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def share(batch: int, ranks: Ranks | None) -> slice:
    """This rank's rows of a global batch of ``batch`` rows (all of them alone).

    Raises:
        ValueError: ``batch`` does not split evenly over the ranks (the gathered loss needs the
            same batch size on every rank).
    """
    if ranks is None:
        return slice(0, batch)
    if batch % ranks.size:
        raise ValueError(
            f"--batch-size {batch} must be a multiple of the number of processes ({ranks.size})"
        )
    part = batch // ranks.size
    return slice(ranks.rank * part, (ranks.rank + 1) * part)


class Pair(nn.Module):
    """The IMU encoder and the text head as one module, so that one
    ``DistributedDataParallel`` averages the gradients of both."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(model(x), head(text))``."""
        return self.model(x), self.head(text)


def finish() -> None:
    """Waits until every rank has finished its run (a barrier; nothing alone), so that no rank
    destroys the group or exits while another still evaluates or writes. Call it after a run
    that succeeded only: a rank that failed leaves at once, and ``torchrun`` stops the others."""
    if current() is not None:
        dist.barrier()


def teardown() -> None:
    """Destroys the process group if :func:`setup` made one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(status: int, several: bool) -> NoReturn:
    """Ends the process with ``status``.

    Args:
        status: The exit status.
        several: Whether this process was one rank of several. It then flushes the logs and the
            standard streams and ends at once (``os._exit``), without the interpreter's shutdown:
            the gloo threads that ``DistributedDataParallel`` keeps alive (see the module's
            docstring) never meet a half-finalised process. Alone it is ``sys.exit(status)``.
    """
    if not several:
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
