"""Training batches for segmentation: random crops (and flips) of full images, and input normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["RandomCropBatches", "normalize_images"]


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images ``(B, 3, H, W)`` to float ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


class RandomCropBatches:
    """Endless batches of random crops from a dataset of full ``(image (3, H, W), mask (H, W))`` pairs.

    Images are drawn uniformly with replacement, cropped at a uniform position and flipped
    horizontally with probability 0.5 (when ``flip``); images smaller than the crop are padded
    (image with 0, mask with ``ignore_index``). All randomness comes from one seeded generator,
    whose state (``state_dict``) makes an interrupted run resume with the same batches.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        crop_size: tuple[int, int],
        seed: int = 0,
        flip: bool = True,
        ignore_index: int = 255,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty.")
        if batch_size < 1 or min(crop_size) < 1:
            raise ValueError(f"batch_size and crop_size must be positive, got {batch_size} and {crop_size}.")
        self.dataset, self.batch_size, self.crop_size = dataset, batch_size, tuple(crop_size)
        self.flip, self.ignore_index = flip, ignore_index
        self.generator = torch.Generator().manual_seed(seed)

    def _crop(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - image.shape[-2], 0), max(crop_w - image.shape[-1], 0)
        if pad_h or pad_w:
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0)
            mask = torch.nn.functional.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(image.shape[-2] - crop_h + 1, (1,), generator=self.generator))
        left = int(torch.randint(image.shape[-1] - crop_w + 1, (1,), generator=self.generator))
        image, mask = image[:, top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]
        if self.flip and bool(torch.rand((), generator=self.generator) < 0.5):
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """Images ``(B, 3, h, w)`` (the dataset's dtype, uint8 for STARE) and masks ``(B, h, w)`` int64."""
        indices = torch.randint(len(self.dataset), (self.batch_size,), generator=self.generator).tolist()
        pairs = [self._crop(*self.dataset[i]) for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]).long()

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
