"""Settings of a segmentation run: which model to build and how to train it, both JSON-serialisable."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..models.segmentation import DEFAULT_SEGMENTATION_ALPHA, create_segmentation_model

__all__ = ["SegmentationModelConfig", "SegmentationTrainConfig", "SCHEDULES"]

SCHEDULES = ("multistep", "poly")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from JSON data, rejecting unknown keys and restoring tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; expected some of {sorted(names)}.")
    defaults = cls()
    return cls(**{k: tuple(v) if isinstance(getattr(defaults, k), tuple) else v for k, v in data.items()})


@dataclass
class SegmentationModelConfig:
    """What ``create_segmentation_model`` needs to rebuild a model, plus the input normalisation it expects."""

    name: str = "unet_fcn"
    num_classes: int = 2
    num_pems: Optional[int] = None
    pem_type: str = "linear"
    alpha: float = DEFAULT_SEGMENTATION_ALPHA
    t: int = 1
    aux_loss: Optional[bool] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: Optional[list[str]] = None
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

    def build(self, weights: Any = None, weights_backbone: Any = None) -> nn.Module:
        """The model these settings describe (torchvision weights only when passed here)."""
        return create_segmentation_model(
            self.name, num_classes=self.num_classes, num_pems=self.num_pems, pem_type=self.pem_type,
            alpha=self.alpha, t=self.t, aux_loss=self.aux_loss, weights=weights, weights_backbone=weights_backbone,
            **self.model_kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentationModelConfig":
        return _from_dict(cls, data)


@dataclass
class SegmentationTrainConfig:
    """Iteration-based SGD on random crops. Defaults are the paper's PEM schedule on STARE.

    600 iterations, lr 1e-2 divided by 10 at 200 and 400, momentum 0.9, weight decay 5e-4
    (MMSegmentation's STARE recipe), 128x128 crops, frozen backbone. ``schedule="poly"`` decays
    as ``(1 - i / iterations) ** poly_power`` instead (MMSegmentation's baseline schedule).
    """

    iterations: int = 600
    batch_size: int = 4
    crop_size: tuple[int, int] = (128, 128)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (200, 400)
    gamma: float = 0.1
    poly_power: float = 0.9
    aux_weight: float = 0.4
    freeze_backbone: bool = True
    freeze_decode_head: bool = False
    ignore_index: int = 255
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {self.iterations} and {self.batch_size}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) with positive sizes, got {self.crop_size}.")

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of ``lr`` during iteration ``iteration`` (0-based)."""
        if self.schedule == "poly":
            return (1 - iteration / self.iterations) ** self.poly_power
        return self.gamma ** sum(iteration >= m for m in self.milestones)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentationTrainConfig":
        return _from_dict(cls, data)
