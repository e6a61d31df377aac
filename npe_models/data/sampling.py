"""The training order of every classification source: one shuffle (or class-balanced draw) per epoch,
shared by all processes and split between them, from generators that depend only on the seed and epoch.

The in-memory CIFAR pipeline and the file-based sources draw their epochs here, so a run resumes
to the same batches and ``torchrun`` splits an epoch the way ``DistributedSampler`` does (padded by
repeating the first indices, rank ``r`` taking every ``world_size``-th one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["SAMPLINGS", "epoch_generator", "epoch_order", "EpochSampler"]

SAMPLINGS = ("uniform", "class_balanced")


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, stream), so a resumed run draws the same batches."""
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'uniform' or 'class_balanced', got {sampling!r}.")


def samples_per_rank(total: int, world_size: int) -> int:
    """Images each process sees per epoch (the epoch is padded to a multiple of ``world_size``)."""
    return math.ceil(total / world_size)


def epoch_order(labels: Tensor, sampling: str, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """This rank's sample indices for ``epoch``: a permutation (``uniform``) or, for ``class_balanced``, as
    many draws of a uniformly chosen class's random image as there are images."""
    check_sampling(sampling)
    shared = epoch_generator(seed, epoch, 0)
    total = len(labels)
    if sampling == "uniform":
        order = torch.randperm(total, generator=shared)
    else:
        class_counts = torch.bincount(labels)
        by_class = torch.argsort(labels, stable=True)
        class_starts = torch.cumsum(class_counts, 0) - class_counts
        present = torch.nonzero(class_counts).flatten()
        classes = present[torch.randint(len(present), (total,), generator=shared)]
        offsets = (torch.rand(total, generator=shared) * class_counts[classes]).long()
        order = by_class[class_starts[classes] + offsets]
    padded_total = samples_per_rank(total, world_size) * world_size
    order = torch.cat([order, order[: padded_total - total]])
    return order[rank::world_size]


class EpochSampler(Sampler[int]):
    """A DataLoader sampler over :func:`epoch_order`: call ``set_epoch`` before each epoch, as with
    ``DistributedSampler``."""

    def __init__(self, labels: Tensor, sampling: str, seed: int, rank: int = 0, world_size: int = 1) -> None:
        check_sampling(sampling)
        self.labels, self.sampling, self.seed = labels, sampling, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return samples_per_rank(len(self.labels), self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.labels, self.sampling, self.seed, self.epoch, self.rank, self.world_size)
        return iter(order.tolist())
