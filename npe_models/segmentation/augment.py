"""Training augmentation of one segmentation sample, every random draw from one ``torch.Generator``.

Two pipelines (:data:`AUGMENTATIONS`): ``"crop"``, a uniform random crop and a horizontal flip; ``"mmseg"``,
MMSegmentation's ADE20K training pipeline: ``RandomResize(scale, ratio_range, keep_ratio=True)``,
``RandomCrop(crop_size, cat_max_ratio)``, ``RandomFlip(0.5)``, ``PhotoMetricDistortion``, then the pad to the crop
that MMSegmentation's data preprocessor does (image 0, mask the ignore index). Images are uint8 ``(3, H, W)``,
masks integer ``(H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENTATIONS", "CropAugmentation", "photometric_distortion", "random_rescale"]

AUGMENTATIONS = ("crop", "mmseg")
_CROP_TRIES = 10  # MMSegmentation's RandomCrop redraws a crop up to 10 times for cat_max_ratio
_BRIGHTNESS_DELTA, _CONTRAST, _SATURATION, _HUE_DELTA = 32.0, (0.5, 1.5), (0.5, 1.5), 18


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + float(torch.rand((), generator=generator)) * (high - low)


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.randint(2, (1,), generator=generator))


def random_rescale(
    image: Tensor, mask: Tensor, scale: tuple[int, int], ratio_range: tuple[float, float], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """MMSegmentation's ``RandomResize(scale, ratio_range, keep_ratio=True)``: the scale times a uniform ratio bounds
    the longer and the shorter side, the aspect ratio is kept; image bilinear, mask nearest."""
    ratio = _uniform(*ratio_range, generator)
    long_bound, short_bound = int(max(scale) * ratio), int(min(scale) * ratio)
    height, width = mask.shape
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    new_h, new_w = max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
    if (new_h, new_w) == (height, width):
        return image, mask
    resized = F.interpolate(image[None].float(), (new_h, new_w), mode="bilinear", align_corners=False)[0]
    rows = torch.arange(new_h) * height // new_h
    columns = torch.arange(new_w) * width // new_w
    return resized.round().clamp(0, 255).to(torch.uint8), mask[rows][:, columns]


def _convert(image: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """``image * alpha + beta`` clipped to 0..255 and truncated to uint8, as MMSegmentation's ``convert``."""
    return (image.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


def _rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in degrees [0, 360), saturation in [0, 1], value in [0, 255] of a float ``(3, H, W)`` image."""
    value, minimum = rgb.max(0).values, rgb.min(0).values
    delta = value - minimum
    safe = delta.clamp(min=1e-6)
    red, green, blue = rgb
    hue = torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4)
    hue = torch.where(value == red, ((green - blue) / safe) % 6, hue)
    hue = torch.where(delta > 0, hue * 60, torch.zeros_like(hue))
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-6), torch.zeros_like(value))
    return hue, saturation, value


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """The uint8 RGB image of hue (degrees), saturation and value (0..255), rounded."""

    def channel(n: int) -> Tensor:
        k = (n + hue / 60) % 6
        return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)

    return torch.stack([channel(5), channel(3), channel(1)]).round().clamp(0, 255).to(torch.uint8)


def _contrast(image: Tensor, generator: torch.Generator) -> Tensor:
    return _convert(image, alpha=_uniform(*_CONTRAST, generator)) if _coin(generator) else image


def photometric_distortion(image: Tensor, generator: torch.Generator) -> Tensor:
    """MMSegmentation's ``PhotoMetricDistortion`` on a uint8 image: each step with probability 0.5, brightness
    (+-32), contrast (x0.5-1.5) first or last (a coin), saturation (x0.5-1.5), hue (an integer in -18..17 of
    OpenCV's 0-180 hue scale, as MMSegmentation's NumPy draw)."""
    if _coin(generator):
        image = _convert(image, beta=_uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA, generator))
    contrast_first = _coin(generator)
    if contrast_first:
        image = _contrast(image, generator)
    if _coin(generator):
        hue, saturation, value = _rgb_to_hsv(image.float())
        saturation = (saturation * _uniform(*_SATURATION, generator)).clamp(0, 1)
        image = _hsv_to_rgb(hue, saturation, value)
    if _coin(generator):
        hue, saturation, value = _rgb_to_hsv(image.float())
        shift = 2 * int(torch.randint(-_HUE_DELTA, _HUE_DELTA, (1,), generator=generator))  # degrees
        image = _hsv_to_rgb((hue + shift) % 360, saturation, value)
    if not contrast_first:
        image = _contrast(image, generator)
    return image


@dataclass(frozen=True)
class CropAugmentation:
    """One training sample's augmentation (see the module's docstring): ``mode`` ``"crop"`` or ``"mmseg"``;
    ``scale`` (longer side, shorter side) and ``ratio_range`` of the random rescale, ``cat_max_ratio`` of the crop
    (1: no check) and ``photometric`` apply to ``"mmseg"`` only."""

    crop_size: tuple[int, int]
    mode: str = "crop"
    flip: bool = True
    ignore_index: int = 255
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True

    def _crop_origin(self, mask: Tensor, generator: torch.Generator) -> tuple[int, int]:
        """A uniform crop position (top, left); images smaller than the crop start at 0 on that side."""
        top = int(torch.randint(max(mask.shape[0] - self.crop_size[0], 0) + 1, (1,), generator=generator))
        left = int(torch.randint(max(mask.shape[1] - self.crop_size[1], 0) + 1, (1,), generator=generator))
        return top, left

    def _balanced_origin(self, mask: Tensor, generator: torch.Generator) -> tuple[int, int]:
        """MMSegmentation's ``cat_max_ratio`` check: redraw (up to 10 times) while the crop holds a single class or
        one class covers ``cat_max_ratio`` or more of its labelled pixels; the last draw is kept unchecked."""
        origin = self._crop_origin(mask, generator)
        if self.cat_max_ratio >= 1:
            return origin
        for _ in range(_CROP_TRIES):
            top, left = origin
            window = mask[top : top + self.crop_size[0], left : left + self.crop_size[1]]
            counts = torch.unique(window[window != self.ignore_index], return_counts=True)[1]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            origin = self._crop_origin(mask, generator)
        return origin

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The augmented ``(image (3, h, w) uint8, mask (h, w))`` at the crop size."""
        mmseg = self.mode == "mmseg"
        if mmseg:
            image, mask = random_rescale(image, mask, self.scale, self.ratio_range, generator)
        top, left = self._balanced_origin(mask, generator) if mmseg else self._crop_origin(mask, generator)
        crop_h, crop_w = self.crop_size
        image, mask = image[:, top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            image, mask = image.flip(-1), mask.flip(-1)
        if mmseg and self.photometric:
            image = photometric_distortion(image, generator)
        pad_h, pad_w = crop_h - image.shape[-2], crop_w - image.shape[-1]
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), mask.contiguous()
