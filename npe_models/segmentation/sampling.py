"""Training batches for segmentation: augmented crops of full images, drawn per iteration, and input normalisation.

Sample ``position`` of iteration ``i``'s global batch is a pure function of ``(seed, i, position)``: which image it
is and every random draw of its augmentation (:class:`~npe_models.segmentation.augment.CropAugmentation`) come
from a generator seeded with those three numbers. So a resumed run, any number of DataLoader workers and any number
of ``torchrun`` processes (each takes its share of the positions) see the same batches, and the batches need no
state in the checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import CropAugmentation

__all__ = ["RandomCropBatches", "normalize_images", "sample_generator"]


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images ``(B, 3, H, W)`` to float ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def sample_generator(seed: int, iteration: int, position: int) -> torch.Generator:
    """The generator of sample ``position`` of iteration ``iteration``'s batch (mixed by NumPy's SeedSequence)."""
    mixed = np.random.SeedSequence([seed, iteration, position]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


class _AugmentedSamples(Dataset):
    """Keys ``(iteration, position)`` -> ``(image, mask, "")``; an unreadable file gives ``(None, None, error)``
    instead of raising in a worker process."""

    def __init__(self, dataset: Dataset, augmentation: CropAugmentation, seed: int) -> None:
        self.dataset, self.augmentation, self.seed = dataset, augmentation, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Optional[Tensor], Optional[Tensor], str]:
        generator = sample_generator(self.seed, *key)
        index = int(torch.randint(len(self.dataset), (1,), generator=generator))
        try:
            image, mask = self.dataset[index]
        except ValueError as error:
            return None, None, str(error)
        image, mask = self.augmentation(image, mask, generator)
        return image, mask.long(), ""


class _IterationKeys(Sampler):
    """Endless batches of keys from iteration ``start`` on: ``[(i, p) for p in positions]``."""

    def __init__(self, start: int, positions: range) -> None:
        self.start, self.positions = start, positions

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return ([(i, p) for p in self.positions] for i in itertools.count(self.start))


def _collate(samples: list[tuple[Optional[Tensor], Optional[Tensor], str]]) -> tuple[Tensor, Tensor, list[str]]:
    errors = [error for _, _, error in samples if error]
    if errors:
        return torch.empty(0), torch.empty(0), errors
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]), []


class RandomCropBatches:
    """Augmented crops from a dataset of full ``(image (3, H, W) uint8, mask (H, W))`` pairs, iteration by iteration.

    ``batch_size`` is the global batch; this process (``rank`` of ``world_size``) gets its consecutive share.
    Images are drawn uniformly with replacement; see the module's docstring for the seeding. ``workers`` DataLoader
    processes decode and augment ahead of the training loop (0: in this process).

    Checkpoints written before the per-iteration seeding hold one generator's state (``{"generator": ...}``); a
    run resumed from one keeps drawing from that generator, in this process and in the old order, so it continues
    with the batches it would have seen.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        augmentation: CropAugmentation,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty.")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} (the global batch) must be a positive multiple of the {world_size} "
                "process(es); change --batch-size or the number of torchrun processes."
            )
        share = batch_size // world_size
        self.samples = _AugmentedSamples(dataset, augmentation, seed)
        self.batch_size, self.positions = batch_size, range(rank * share, (rank + 1) * share)
        self.workers, self.pin_memory = workers, pin_memory
        self.legacy_generator: Optional[torch.Generator] = None
        self._batches: Optional[Iterator[Any]] = None
        self._next = -1

    def _loader(self, start: int) -> DataLoader:
        return DataLoader(
            self.samples,
            batch_sampler=_IterationKeys(start, self.positions),
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            generator=torch.Generator(),  # its own: creating a loader leaves the global RNG (dropout's) untouched
        )

    def _legacy_batch(self) -> tuple[Tensor, Tensor]:
        """The next batch of a pre-seeding checkpoint's generator: the batch's images, then each crop's draws."""
        dataset, augment = self.samples.dataset, self.samples.augmentation
        indices = torch.randint(len(dataset), (self.batch_size,), generator=self.legacy_generator).tolist()
        pairs = [augment(*dataset[i], self.legacy_generator) for i in indices]
        images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]).long()
        return images[self.positions.start : self.positions.stop], masks[self.positions.start : self.positions.stop]

    def batch(self, iteration: int) -> tuple[Tensor, Tensor]:
        """Iteration ``iteration``'s images ``(b, 3, h, w)`` uint8 and masks ``(b, h, w)`` int64 (this process's)."""
        if self.legacy_generator is not None:
            return self._legacy_batch()
        if self._batches is None or self._next != iteration:
            self.close()
            self._batches = iter(self._loader(iteration))
        images, masks, errors = next(self._batches)
        self._next = iteration + 1
        if errors:
            raise ValueError(errors[0])
        return images, masks

    def close(self) -> None:
        """Stop the DataLoader's worker processes (a later :meth:`batch` starts them again)."""
        self._batches = None

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.legacy_generator is None else {"generator": self.legacy_generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "generator" in state:
            self.legacy_generator = torch.Generator()
            self.legacy_generator.set_state(state["generator"])
