"""Evaluating segmentation models: whole-image or sliding-window inference, several NPE-LA strengths from one
forward pass (NPE-LA is ``z - alpha * eta``), per-class metrics and overlay images of the predictions.

Inference defaults to sliding 128x128 windows every 85 pixels at the image's own resolution (STARE's protocol);
ADE20K follows MMSegmentation's ADE20K test pipeline (:data:`DATASET_EVAL_DEFAULTS`): each image resized to fit
``scale`` (2048, 512) keeping its aspect ratio, whole-image inference, the logits resized back to the label's size.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.utils import draw_segmentation_masks

from ..distributed import resolve_device
from ..npe import has_pems
from ..outputs import check_output_dir, is_evaluation_dir
from ..runs import atomic_write, locked_dir, write_json
from .config import SegmentationModelConfig, is_folder_dataset
from .losses import DEFAULT_IGNORE_INDEX
from .metrics import PIXEL_GROUP_RULE, PIXEL_GROUPS, SegmentationMetrics, confusion_matrix, pixel_share_groups
from .sampling import normalize_images
from .training import class_pixel_counts, segmentation_dataset

__all__ = [
    "DATASET_EVAL_DEFAULTS",
    "dataset_inference",
    "input_multiple",
    "DEFAULT_CROP_SIZE",
    "DEFAULT_MODE",
    "DEFAULT_STRIDE",
    "EVAL_MODES",
    "predict_image_logits",
    "predict_logits",
    "evaluate_segmentation",
    "evaluate_run",
    "overlay_panels",
    "class_palette",
]

EVAL_MODES = ("whole", "slide")
DEFAULT_MODE, DEFAULT_CROP_SIZE, DEFAULT_STRIDE = "slide", (128, 128), (85, 85)
DATASET_EVAL_DEFAULTS: dict[str, dict[str, Any]] = {"ade20k": {"mode": "whole", "scale": (2048, 512)}}
"""Inference settings a data set's evaluation uses unless given (MMSegmentation's ADE20K test pipeline)."""


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``size`` with windows of ``crop`` every ``stride``, the last one flush with the edge."""
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def input_multiple(model: nn.Module) -> int:
    """What an input's height and width must be a multiple of: the model's own ``input_multiple`` (an ONNX export
    run as a model states its export's), an smp model's encoder output stride, else 1."""
    if hasattr(model, "input_multiple"):
        return model.input_multiple
    return model.encoder.output_stride if getattr(model, "requires_divisible_input_shape", False) else 1


def _logits_and_estimate(model: nn.Module, images: Tensor, npe: bool) -> tuple[Tensor, Optional[Tensor]]:
    """The model's logits (and estimate), the input zero-padded at the bottom and right to the size the model
    takes (smp models: a multiple of 32), the padding cropped off again."""
    height, width = images.shape[-2:]
    multiple = input_multiple(model)
    padded = F.pad(images, (0, -width % multiple, 0, -height % multiple))
    logits, estimate = model.forward_logits_and_estimate(padded) if npe else (model(padded)["out"], None)
    return logits[..., :height, :width], None if estimate is None else estimate[..., :height, :width]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    mode: str = "whole",
    crop_size: Optional[tuple[int, int]] = None,
    stride: Optional[tuple[int, int]] = None,
    window_batch: int = 16,
) -> tuple[Tensor, Optional[Tensor]]:
    """Main logits ``z`` and, for a model with PEMs, the estimate ``eta`` (else None); each ``(B, C, H, W)``.

    ``mode="slide"`` runs ``crop_size`` windows every ``stride`` pixels (``window_batch`` at a
    time) and averages the overlaps, as MMSegmentation's slide inference does.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {EVAL_MODES}, got {mode!r}.")
    npe = has_pems(model)
    if mode == "whole":
        return _logits_and_estimate(model, images, npe)
    if crop_size is None or stride is None or min(*crop_size, *stride) < 1:
        raise ValueError(f"slide mode needs positive crop_size and stride, got {crop_size} and {stride}.")
    height, width = images.shape[-2:]
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    windows = [
        (top, left)
        for top in _window_starts(height, crop_h, stride[0])
        for left in _window_starts(width, crop_w, stride[1])
    ]
    batch = images.shape[0]
    logits_sum: Optional[Tensor] = None
    estimate_sum: Optional[Tensor] = None
    count = images.new_zeros(1, 1, height, width)
    per_call = max(1, window_batch // batch)
    for first in range(0, len(windows), per_call):
        group = windows[first : first + per_call]
        crops = torch.cat([images[:, :, top : top + crop_h, left : left + crop_w] for top, left in group])
        logits, estimate = _logits_and_estimate(model, crops, npe)
        if logits_sum is None:
            logits_sum = images.new_zeros(batch, logits.shape[1], height, width)
            estimate_sum = None if estimate is None else torch.zeros_like(logits_sum)
        for i, (top, left) in enumerate(group):
            part = slice(i * batch, (i + 1) * batch)
            logits_sum[:, :, top : top + crop_h, left : left + crop_w] += logits[part]
            if estimate_sum is not None:
                estimate_sum[:, :, top : top + crop_h, left : left + crop_w] += estimate[part]
            count[:, :, top : top + crop_h, left : left + crop_w] += 1
    return logits_sum / count, None if estimate_sum is None else estimate_sum / count


def _fit_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """MMSegmentation's ``Resize(scale, keep_ratio=True)``: the size, aspect ratio kept, whose longer side fits the
    larger bound of ``scale`` and whose shorter side fits the smaller one (one of them reached)."""
    height, width = size
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def predict_image_logits(
    model: nn.Module,
    image: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    mode: str = DEFAULT_MODE,
    crop_size: Optional[tuple[int, int]] = DEFAULT_CROP_SIZE,
    stride: Optional[tuple[int, int]] = DEFAULT_STRIDE,
    scale: Optional[tuple[int, int]] = None,
    device: Union[str, torch.device] = "cpu",
) -> tuple[Tensor, Optional[Tensor]]:
    """:func:`predict_logits` of one uint8 image ``(3, H, W)``, first resized to fit ``scale`` when given (bilinear,
    rounded to uint8 as MMSegmentation's test ``Resize``); logits and estimate come back at ``(H, W)``."""
    size = tuple(image.shape[-2:])
    inputs = image[None].to(device)
    if scale is not None and _fit_size(size, scale) != size:
        resized = F.interpolate(inputs.float(), _fit_size(size, scale), mode="bilinear", align_corners=False)
        inputs = resized.round().clamp(0, 255).to(torch.uint8)
    logits, estimate = predict_logits(model, normalize_images(inputs, mean, std), mode, crop_size, stride)
    if logits.shape[-2:] != size:  # bilinear resizing is linear, so NPE-LA commutes with it
        logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        estimate = None if estimate is None else F.interpolate(estimate, size, mode="bilinear", align_corners=False)
    return logits, estimate


def class_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct, fixed RGB colours (evenly spaced hues)."""
    colours = [colorsys.hsv_to_rgb(i / max(num_classes, 1), 0.9, 1.0) for i in range(num_classes)]
    return [tuple(int(255 * c) for c in rgb) for rgb in colours]


def overlay_panels(
    image: Tensor,
    label_maps: Sequence[Tensor],
    num_classes: int,
    background_class: Optional[int] = 0,
    opacity: float = 0.5,
) -> Tensor:
    """uint8 ``(3, H, W * n)``: the image with each label map drawn over it, side by side; background undrawn."""
    palette = class_palette(num_classes)
    drawn = [c for c in range(num_classes) if c != background_class]
    panels = []
    for labels in label_maps:
        masks = torch.stack([labels == c for c in drawn]) if drawn else torch.zeros(0, *labels.shape, dtype=torch.bool)
        colours = [palette[c] for c in drawn]
        panels.append(draw_segmentation_masks(image.cpu(), masks.cpu(), alpha=opacity, colors=colours))
    return torch.cat(panels, dim=-1)


def _write_overlay(path: Path, panels: Tensor) -> None:
    picture = Image.fromarray(panels.permute(1, 2, 0).contiguous().numpy())
    atomic_write(path, lambda temp: picture.save(temp, format="PNG"))


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    alphas: Sequence[float] = (0.0,),
    mode: str = "whole",
    crop_size: Optional[tuple[int, int]] = None,
    stride: Optional[tuple[int, int]] = None,
    scale: Optional[tuple[int, int]] = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    device: Union[str, torch.device] = "cpu",
    class_names: Optional[Sequence[str]] = None,
    overlay_dir: Union[str, Path, None] = None,
    num_overlays: int = 0,
    on_image: Optional[Callable[[int], None]] = None,
    groups: Optional[Sequence[str]] = None,
) -> dict[float, SegmentationMetrics]:
    """Metrics of NPE-LA at every alpha in ``alphas`` over ``dataset``'s ``(uint8 image, mask)`` pairs, one pass.

    ``scale`` resizes each image to fit it before inference (:func:`predict_image_logits`); the metrics are at the
    masks' resolution. alpha 0 is the main logits ``z`` (the baseline when the main head was frozen). A model
    without PEMs (plain, or merged by ``reparameterize_model``) is evaluated as it is, under
    alpha 0 only. With ``overlay_dir``, the first ``num_overlays`` images get a PNG: the ground
    truth, then the prediction at each alpha, drawn over the image. ``groups`` (each class's Many / Medium / Few
    group, :func:`~npe_models.segmentation.metrics.pixel_share_groups`) adds the per-group means.
    """
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas must name at least one NPE-LA strength (0 for the main logits).")
    npe = has_pems(model)
    if not npe and alphas != [0.0]:
        raise ValueError(
            f"{type(model).__name__} has no PEMs (plain or merged), so only its own output can be evaluated: "
            "pass alphas=[0]."
        )
    model.eval().to(device)
    confusions = {a: torch.zeros(num_classes, num_classes, dtype=torch.int64) for a in alphas}
    ids = getattr(dataset, "ids", None)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        inference = dict(mode=mode, crop_size=crop_size, stride=stride, scale=scale, device=device)
        logits, estimate = predict_image_logits(model, image, mean, std, **inference)
        predictions = {}
        for alpha in alphas:
            adjusted = logits if alpha == 0 or estimate is None else logits - alpha * estimate
            predictions[alpha] = adjusted.argmax(1)[0].cpu()
            confusions[alpha] += confusion_matrix(predictions[alpha], mask, num_classes, ignore_index)
        if overlay_dir is not None and index < num_overlays:
            name = ids[index] if ids is not None else f"{index:04d}"
            panels = overlay_panels(image, [mask, *predictions.values()], num_classes)
            _write_overlay(Path(overlay_dir) / f"{name}.png", panels)
        if on_image is not None:
            on_image(index)
    return {a: SegmentationMetrics(confusions[a], class_names, groups) for a in alphas}


def _annotations_of(dataset: str, annotations: Optional[Sequence[str]]) -> Sequence[str]:
    """The mask sets to score: STARE's two annotations by default, the one ``masks`` set of a file data set."""
    folder = is_folder_dataset(dataset)
    if annotations is None:
        return ("masks",) if folder else ("ah", "vk")
    if folder and list(annotations) != ["masks"]:
        raise ValueError(f"annotations (--annotation) name STARE's masks; {dataset} has one mask per image.")
    return annotations


def _class_groups(class_pixels: Sequence[int], model_config: SegmentationModelConfig) -> tuple[Any, dict[str, Any]]:
    """Each class's Many / Medium / Few group by its training pixels, and what metrics.json records of them."""
    if len(class_pixels) != model_config.num_classes:
        raise ValueError(f"{len(class_pixels)} class pixel counts for a model of {model_config.num_classes} classes.")
    groups = pixel_share_groups(class_pixels)
    names = model_config.class_names or [str(i) for i in range(model_config.num_classes)]
    record = {
        "class_pixels": [int(n) for n in class_pixels],
        "group_rule": PIXEL_GROUP_RULE,
        "class_groups": {g: [n for n, group in zip(names, groups) if group == g] for g in PIXEL_GROUPS},
    }
    return groups, record


def _opened(
    dataset: str,
    split: str,
    annotation: str,
    data_dir: Union[str, Path, None],
    *,
    class_names: Optional[Sequence[str]],
    ignore_index: int,
    reduce_zero_label: Optional[bool],
) -> Dataset:
    """One split of the data set to score: STARE's images with ``annotation``'s masks, or a file data set's images
    and masks (read with the model's class names)."""
    folder = is_folder_dataset(dataset)
    return segmentation_dataset(
        dataset,
        split,
        None if folder else annotation,
        data_dir,
        class_names=class_names if folder else None,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
    )


def _scoring_settings(
    model_config: SegmentationModelConfig, ignore_index: int, groups: Any, **inference: Any
) -> dict[str, Any]:
    """What evaluate_segmentation needs to know of the model and the classes (its classes, their names and groups,
    its input normalisation, the label to ignore) and of the ``inference`` (mode, scale, windows, alphas...)."""
    return {
        "num_classes": model_config.num_classes,
        "mean": model_config.mean,
        "std": model_config.std,
        "class_names": model_config.class_names,
        "ignore_index": ignore_index,
        "groups": groups,
        **inference,
    }


def _scored_data(
    dataset: str,
    split: str,
    annotations: Sequence[str],
    data_dir: Union[str, Path, None],
    model_config: SegmentationModelConfig,
    ignore_index: int,
    reduce_zero_label: Optional[bool],
    class_pixels: Optional[Sequence[int]],
) -> tuple[dict[str, Dataset], Sequence[int]]:
    """The images to score per annotation (read with the model's class names), and the training pixels per class
    (counted from the training split when the run does not record them)."""
    settings = dict(
        class_names=model_config.class_names, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label
    )
    data = {annotation: _opened(dataset, split, annotation, data_dir, **settings) for annotation in annotations}
    if class_pixels is None:
        training = _opened(dataset, "train", annotations[0], data_dir, **settings)
        class_pixels = class_pixel_counts(training, model_config.num_classes, ignore_index)
    return data, class_pixels


def dataset_inference(
    dataset: Optional[str], *, mode: Optional[str] = None, scale: Optional[tuple[int, int]] = None
) -> dict[str, Any]:
    """The inference a data set is evaluated with: ``mode`` and ``scale`` (resize to fit; absent when none) as given,
    else the data set's :data:`DATASET_EVAL_DEFAULTS`, else sliding windows at the image's own size."""
    defaults = DATASET_EVAL_DEFAULTS.get(dataset or "", {})
    inference: dict[str, Any] = {"mode": mode or defaults.get("mode", DEFAULT_MODE)}
    if scale or defaults.get("scale"):
        inference["scale"] = tuple(scale or defaults["scale"])
    return inference


def _score_annotation(
    model: nn.Module,
    images: Dataset,
    annotation: str,
    out_dir: Path,
    scoring: dict[str, Any],
    progress: Optional[Callable[..., Any]],
) -> dict[float, SegmentationMetrics]:
    """One annotation's scores (evaluate_segmentation with ``scoring``), its overlays under ``out_dir/overlays``."""
    bar = progress(total=len(images), desc=f"evaluate {annotation}", unit="image") if progress else None
    try:
        return evaluate_segmentation(
            model,
            images,
            **scoring,
            overlay_dir=out_dir / "overlays" / annotation,
            on_image=(lambda _: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def evaluate_run(
    model: nn.Module,
    model_config: SegmentationModelConfig,
    out_dir: Union[str, Path],
    *,
    data_dir: Union[str, Path, None] = None,
    dataset: str = "stare",
    split: str = "val",
    annotations: Optional[Sequence[str]] = None,
    alphas: Optional[Sequence[float]] = None,
    mode: Optional[str] = None,
    crop_size: tuple[int, int] = DEFAULT_CROP_SIZE,
    stride: tuple[int, int] = DEFAULT_STRIDE,
    scale: Optional[tuple[int, int]] = None,
    overlays: int = 0,
    device: Union[str, torch.device] = "auto",
    progress: Optional[Callable[..., Any]] = None,
    about: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    inputs: Sequence[Union[str, Path]] = (),
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduce_zero_label: Optional[bool] = None,
    class_pixels: Optional[Sequence[int]] = None,
) -> dict[str, dict[float, SegmentationMetrics]]:
    """Score a trained model on ``dataset``'s ``split`` against each annotation's masks; write ``metrics.json``
    (and the first ``overlays`` overlay PNGs per annotation) to ``out_dir``.

    ``alphas`` default to 0 (the main logits) and the model's own NPE-LA strength when it has PEMs. ``mode`` and
    ``scale`` default to the data set's inference (:func:`dataset_inference`). ``progress`` is a tqdm-like factory.
    ``out_dir`` must be new, empty or an earlier evaluation (replaced with ``overwrite``), and not one of ``inputs``.

    ``annotations`` default to STARE's ``ah`` and ``vk``; a file data set (``seg_folder``, ``ade20k``) has one mask
    per image, reported as ``masks``, read with ``ignore_index`` and ``reduce_zero_label`` (default: the data
    set's). The classes are grouped into Many / Medium / Few by ``class_pixels`` (the run's training pixels per
    class; counted from the training split when not given) and each group's mean IoU and accuracy reported.
    """
    check_output_dir(
        out_dir, "evaluation", is_own=is_evaluation_dir, overwrite=overwrite, inputs=inputs, option="--out"
    )
    alphas = list(alphas) if alphas is not None else [0.0, model_config.npe_alpha] if has_pems(model) else [0.0]
    out_dir, inference = Path(out_dir), dataset_inference(dataset, mode=mode, scale=scale)
    report: dict[str, Any] = {**(about or {}), "dataset": dataset, "split": split, "alphas": alphas}
    report.update({key: list(value) if key == "scale" else value for key, value in inference.items()})
    annotations = _annotations_of(dataset, annotations)
    data, class_pixels = _scored_data(
        dataset, split, annotations, data_dir, model_config, ignore_index, reduce_zero_label, class_pixels
    )
    groups, grouping = _class_groups(class_pixels, model_config)
    report.update(grouping)
    windows = dict(crop_size=crop_size, stride=stride, num_overlays=overlays, device=resolve_device(str(device)))
    scoring = _scoring_settings(model_config, ignore_index, groups, alphas=alphas, **inference, **windows)
    with locked_dir(out_dir):  # one evaluation at a time writes the folder (its overlays, then metrics.json)
        results = {
            annotation: _score_annotation(model, images, annotation, out_dir, scoring, progress)
            for annotation, images in data.items()
        }
        report["results"] = {annotation: _scores_record(scores) for annotation, scores in results.items()}
        write_json(out_dir / "metrics.json", report)
    return results


def _scores_record(scores: dict[float, SegmentationMetrics]) -> dict[str, Any]:
    """One annotation's metrics per alpha, as metrics.json records them."""
    return {str(alpha): metrics.to_dict() for alpha, metrics in scores.items()}
