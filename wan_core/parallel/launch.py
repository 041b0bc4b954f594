"""Joining the process group ``torchrun`` set up (its ``RANK`` / ``WORLD_SIZE`` / ``MASTER_*`` variables)."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import InputError
from .groups import ParallelSettings, forget_groups

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a collective waits for the other ranks before the render fails (a dead rank ends it, no hang)."""


def launched_world() -> int:
    """Processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group(parallel: ParallelSettings | None, device: str) -> bool:
    """Join torchrun's process group for a ``parallel`` render (NCCL on CUDA, each rank on its ``LOCAL_RANK``
    GPU; gloo on CPUs). Returns whether this process joined one (and so must leave it). Several processes without
    ``--parallel``, or degrees that are not the process count, are errors naming the fix."""
    world = launched_world()
    if parallel is None:
        if world > 1:
            raise InputError(f"this run has {world} processes (torchrun) but no --parallel: give --parallel "
                             f"ulysses={world} (or ulysses={world // 2},cfg=2), or launch one process")
        return False
    parallel.check_for(None, world)  # the process count; the heads are checked with the model's config
    if dist.is_initialized():
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    log.info("rank %d of %d (%s)", dist.get_rank(), world, parallel)
    return True


def rank() -> int:
    """This process's rank (0 outside a process group): rank 0 writes the outputs."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def leave_process_group() -> None:
    forget_groups()
    if dist.is_initialized():
        dist.destroy_process_group()
