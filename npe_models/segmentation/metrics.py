"""Segmentation metrics from a confusion matrix: per-class IoU, Dice and accuracy, their means, pixel accuracy.

Definitions follow MMSegmentation: a class's accuracy is its recall (correct pixels over its
ground-truth pixels); a class with no ground truth and no prediction has undefined (NaN)
IoU and Dice and is left out of the means, as is the accuracy of a class with no ground truth.

Long-tailed groups (:func:`pixel_share_groups`): a class is Many when it holds at least 1 % of the labelled
training pixels, Few below 0.1 % (a class without training pixels included), Medium in between; each group's mean
IoU and accuracy are the means over its classes (NaN classes left out), beside mIoU and mAcc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = [
    "confusion_matrix",
    "SegmentationMetrics",
    "format_metrics_table",
    "PIXEL_GROUPS",
    "PIXEL_GROUP_RULE",
    "pixel_share_groups",
]

PIXEL_GROUPS = ("many", "medium", "few")
MANY_SHARE, FEW_SHARE = 0.01, 0.001
PIXEL_GROUP_RULE = "share of labelled training pixels: many >= 1%, few < 0.1%, medium in between"


def pixel_share_groups(class_pixels: Sequence[int]) -> list[str]:
    """Each class's group (``many`` / ``medium`` / ``few``) by its share of the labelled training pixels
    (:data:`PIXEL_GROUP_RULE`)."""
    total = max(sum(int(n) for n in class_pixels), 1)
    shares = [int(n) / total for n in class_pixels]
    return ["many" if s >= MANY_SHARE else "few" if s < FEW_SHARE else "medium" for s in shares]


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(C, C)`` int64 counts, rows the target class and columns the predicted one; ``ignore_index`` pixels skipped."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have one shape.")
    valid = target != ignore_index
    target, prediction = target[valid].long(), prediction[valid].long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"target holds labels in [{int(target.min())}, {int(target.max())}] but num_classes={num_classes} "
            f"(and ignore_index={ignore_index}); check the label encoding."
        )
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).cpu()


@dataclass
class SegmentationMetrics:
    """Metrics of one confusion matrix (rows target, columns prediction); per-class values are float64 tensors."""

    confusion: Tensor
    class_names: Optional[Sequence[str]] = None
    groups: Optional[Sequence[str]] = None
    """Each class's group (see :func:`pixel_share_groups`), for the per-group means; None: no groups."""

    @property
    def _true_positive(self) -> Tensor:
        return self.confusion.diagonal().double()

    @property
    def _target_area(self) -> Tensor:
        return self.confusion.sum(1).double()

    @property
    def _predicted_area(self) -> Tensor:
        return self.confusion.sum(0).double()

    @property
    def iou(self) -> Tensor:
        """Per-class intersection over union."""
        return self._true_positive / (self._target_area + self._predicted_area - self._true_positive)

    @property
    def dice(self) -> Tensor:
        """Per-class Dice (F1): ``2 TP / (target area + predicted area)``."""
        return 2 * self._true_positive / (self._target_area + self._predicted_area)

    @property
    def accuracy(self) -> Tensor:
        """Per-class accuracy (recall): correct pixels over the class's ground-truth pixels."""
        return self._true_positive / self._target_area

    @property
    def mean_iou(self) -> float:
        return float(self.iou.nanmean())

    @property
    def mean_dice(self) -> float:
        return float(self.dice.nanmean())

    @property
    def mean_accuracy(self) -> float:
        return float(self.accuracy.nanmean())

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels over all counted pixels (MMSegmentation's aAcc)."""
        return float(self._true_positive.sum() / self.confusion.sum().clamp(min=1))

    def group_means(self, values: Tensor) -> dict[str, Optional[float]]:
        """The mean of per-class ``values`` over each group's classes (NaN left out; None for an empty group)."""
        if self.groups is None:
            return {}
        means: dict[str, Optional[float]] = {}
        for group in PIXEL_GROUPS:
            chosen = values[[g == group for g in self.groups]]
            mean = float(chosen.nanmean()) if chosen.numel() else float("nan")
            means[group] = None if mean != mean else mean
        return means

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers (NaN kept as None) for JSON: per-class lists and the means (and per group, with groups)."""
        names = list(self.class_names) if self.class_names else [str(i) for i in range(len(self.confusion))]

        def as_list(values: Tensor) -> list[Optional[float]]:
            return [None if torch.isnan(v) else float(v) for v in values]

        return {
            "classes": names,
            "iou": as_list(self.iou),
            "dice": as_list(self.dice),
            "accuracy": as_list(self.accuracy),
            "mean_iou": self.mean_iou,
            "mean_dice": self.mean_dice,
            "mean_accuracy": self.mean_accuracy,
            "pixel_accuracy": self.pixel_accuracy,
            **(
                {
                    "groups": list(self.groups),
                    "group_mean_iou": self.group_means(self.iou),
                    "group_mean_accuracy": self.group_means(self.accuracy),
                }
                if self.groups is not None
                else {}
            ),
            "confusion": self.confusion.tolist(),
        }


def _setting_label(alpha: float) -> str:
    return "main logits (alpha 0)" if alpha == 0 else f"NPE-LA alpha={alpha:g}"


def format_metrics_table(title: str, results: Mapping[float, SegmentationMetrics]) -> str:
    """One row per NPE-LA strength: Dice, accuracy and IoU per class (up to 10 classes) and their means, in percent,
    then the pixel accuracy, then (with groups) the mean IoU of the Many, Medium and Few classes."""
    first = next(iter(results.values()))
    names = list(first.class_names or range(len(first.confusion))) if len(first.confusion) <= 10 else []
    header = ["setting"] + [f"{metric} {n}" for metric in ("Dice", "Acc", "IoU") for n in names + ["mean"]] + ["aAcc"]
    grouped = first.groups is not None
    header += [f"IoU {group}" for group in PIXEL_GROUPS] if grouped else []
    lines = [title, " | ".join(header)]
    for alpha, metrics in results.items():
        cells = [_setting_label(alpha)]
        for per_class, mean in (
            (metrics.dice, metrics.mean_dice),
            (metrics.accuracy, metrics.mean_accuracy),
            (metrics.iou, metrics.mean_iou),
        ):
            cells += [f"{100 * float(v):.2f}" for v in per_class[: len(names)]] + [f"{100 * mean:.2f}"]
        cells.append(f"{100 * metrics.pixel_accuracy:.2f}")
        if grouped:
            cells += ["-" if v is None else f"{100 * v:.2f}" for v in metrics.group_means(metrics.iou).values()]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
