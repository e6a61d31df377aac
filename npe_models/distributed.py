"""Devices and data parallelism for every task: ``resolve_device`` (auto, cpu, cuda[:N]), ``bf16_autocast`` (``--amp``)
and ``torch.distributed`` set up from ``torchrun``'s environment (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "init_distributed",
    "resolve_device",
    "device_for_resume",
    "bf16_autocast",
    "all_reduce_sum",
    "barrier",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and reports."""
        return self.rank == 0


def device_for_resume(recorded: str) -> str:
    """The device a resumed run asks for: the one it recorded (``cpu`` stays ``cpu``), or ``auto`` with a warning
    when this machine lacks it (a run trained on a GPU continues on a CPU machine)."""
    if recorded.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "this run was trained on %s, which this machine lacks: it continues on %s.",
            recorded,
            resolve_device("auto"),
        )
        return "auto"
    return recorded


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` -> the GPU of this local rank."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available; use --device cpu.")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(resolved)
    return resolved


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` (CPU or CUDA) when ``enabled`` (``--amp``); a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=resolved if resolved.type == "cuda" else None)
    return DistributedContext(rank, world_size, local_rank, resolved)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over all processes in place (a no-op for a single process)."""
    if context.enabled:
        dist.all_reduce(tensor)
    return tensor


def barrier(context: DistributedContext) -> None:
    """Wait for every process (a no-op for a single process)."""
    if context.enabled:
        dist.barrier()
