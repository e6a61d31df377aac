"""Class-index masks of image files from a segmentation model: :func:`predict_masks` runs the model at each
image's own resolution (whole image or sliding window, as :func:`~npe_models.segmentation.evaluation.predict_logits`
runs it in evaluation) and writes one palette PNG per image (mode ``P``, the evaluation overlays' colours,
:func:`~npe_models.segmentation.evaluation.class_palette`), optionally an overlay, and ``masks.json``.

The output folder follows :mod:`npe_models.outputs`: new, empty, or an earlier mask prediction (recognised by its
``masks.json``), the last replaced only with ``overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import read_image
from ..data.scan import ImageFiles
from ..distributed import resolve_device
from ..files import atomic_write, read_json, write_json
from ..npe import check_npe_alpha, has_pems
from ..outputs import check_output_dir
from ..runs import locked_dir
from .config import SegmentationModelConfig
from .evaluation import (
    DEFAULT_CROP_SIZE,
    DEFAULT_MODE,
    DEFAULT_STRIDE,
    EVAL_MODES,
    class_palette,
    overlay_panels,
    predict_image_logits,
)

__all__ = ["MASKS_FILE", "MaskPrediction", "is_mask_dir", "mask_names", "palette_image", "predict_masks"]

PathLike = Union[str, os.PathLike]
MASKS_FILE = "masks.json"
"""What marks a mask prediction folder: the list of the masks written, with each image's class pixel fractions."""
_KIND = "npe-models masks"
_OVERLAYS = "overlays"
_PALETTE_CLASSES = 256  # a mode 'P' PNG holds at most 256 palette entries


@dataclass(frozen=True)
class MaskPrediction:
    """One image's predicted mask: where it was written and the share of its pixels in each class."""

    path: Path
    mask: Path
    overlay: Optional[Path]
    size: tuple[int, int]
    """``(width, height)``, the image's and the mask's."""
    fractions: list[tuple[int, str, float]]
    """``(class index, class name, pixel fraction)`` for every class, in class order; the fractions sum to 1."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "mask": str(self.mask),
            "overlay": None if self.overlay is None else str(self.overlay),
            "width": self.size[0],
            "height": self.size[1],
            "classes": [{"index": i, "class": name, "fraction": f} for i, name, f in self.fractions],
        }


def is_mask_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an earlier mask prediction: a ``masks.json`` this module wrote, and no run."""
    marker = directory / MASKS_FILE
    if not marker.is_file() or (directory / "config.json").exists():
        return False
    try:
        return read_json(marker).get("kind") == _KIND
    except (ValueError, OSError, AttributeError):
        return False


def mask_names(images: ImageFiles, inputs: Sequence[PathLike]) -> list[Path]:
    """Each image's mask name inside the output folder: its path below the folder it was found in (an image given
    as a file: its name), with the suffix ``.png``. Two images that would share a name are an error."""
    names: list[Path] = []
    seen: dict[Path, Path] = {}
    for path, origin in zip(images.paths, images.origins):
        given = Path(os.fspath(inputs[origin])).expanduser()
        relative = path.relative_to(given) if given.is_dir() else Path(path.name)
        name = relative.with_suffix(".png")
        if name in seen or name.parts[0] in (MASKS_FILE, _OVERLAYS):
            other = seen.get(name, name)
            raise ValueError(
                f"the masks of {other} and {path} would both be written as {name}; predict them into separate folders."
            )
        seen[name] = path
        names.append(name)
    return names


def palette_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A class-index map ``(H, W)`` as a mode 'P' image with :func:`class_palette`'s colours."""
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    mask.putpalette([value for colour in class_palette(num_classes) for value in colour])
    return mask


def _check_settings(model: nn.Module, num_classes: int, npe_alpha: Optional[float], mode: str) -> None:
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}.")
    if num_classes > _PALETTE_CLASSES:
        raise ValueError(f"{num_classes} classes do not fit a palette PNG (at most {_PALETTE_CLASSES}).")
    if npe_alpha is not None:
        if not has_pems(model):
            raise ValueError(
                "the model has no PEMs (a plain model, or an NPE model merged with its alpha folded into its "
                "head), so alpha does not apply; drop it or use an unmerged NPE model."
            )
        check_npe_alpha(npe_alpha)


def _write_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda temp: picture.save(temp, format="PNG"))


def _predicted_labels(
    model: nn.Module,
    image: torch.Tensor,
    model_config: SegmentationModelConfig,
    alpha: float,
    inference: dict[str, Any],
) -> torch.Tensor:
    """The class-index map ``(H, W)`` of a uint8 image ``(3, H, W)``: the argmax of its NPE-LA logits
    ``z - alpha * eta`` (the main logits where ``alpha`` is 0 or the model has no estimate)."""
    logits, estimate = predict_image_logits(model, image, model_config.mean, model_config.std, **inference)
    if estimate is not None and alpha != 0:
        logits = logits - alpha * estimate
    return logits.argmax(1)[0].cpu()


def _write_mask(
    out_dir: Path,
    path: Path,
    name: Path,
    image: torch.Tensor,
    labels: torch.Tensor,
    model_config: SegmentationModelConfig,
    overlays: bool,
) -> MaskPrediction:
    """Write the mask PNG of ``labels`` (and with ``overlays`` the mask drawn over ``image``) as ``name``; return
    what was written with the share of the image's pixels in each class."""
    num_classes = model_config.num_classes
    _write_png(out_dir / name, palette_image(labels.numpy(), num_classes))
    overlay = None
    if overlays:
        overlay = out_dir / _OVERLAYS / name
        panels = overlay_panels(image, [labels], num_classes)
        _write_png(overlay, Image.fromarray(panels.permute(1, 2, 0).contiguous().numpy()))
    counts = torch.bincount(labels.flatten(), minlength=num_classes).tolist()
    class_names = model_config.class_names or [str(i) for i in range(num_classes)]
    fractions = [(c, class_names[c], counts[c] / labels.numel()) for c in range(num_classes)]
    size = (image.shape[2], image.shape[1])
    return MaskPrediction(path, out_dir / name, overlay, size, fractions)


def _masks_record(predictions: list[MaskPrediction], alpha: float, inference: dict[str, Any]) -> dict[str, Any]:
    """``masks.json``: the masks written and the inference settings that made them (window settings when sliding)."""
    mode, scale = inference["mode"], inference["scale"]
    record = {"kind": _KIND, "alpha": alpha, "mode": mode, "images": [p.to_dict() for p in predictions]}
    if mode == "slide":
        record.update(crop_size=list(inference["crop_size"]), stride=list(inference["stride"]))
    if scale is not None:
        record["scale"] = list(scale)
    return record


@torch.no_grad()
def predict_masks(
    model: nn.Module,
    model_config: SegmentationModelConfig,
    images: ImageFiles,
    out_dir: PathLike,
    *,
    names: Sequence[Path],
    npe_alpha: Optional[float] = None,
    mode: str = DEFAULT_MODE,
    crop_size: tuple[int, int] = DEFAULT_CROP_SIZE,
    stride: tuple[int, int] = DEFAULT_STRIDE,
    scale: Optional[tuple[int, int]] = None,
    overlays: bool = False,
    overwrite: bool = False,
    inputs: Sequence[PathLike] = (),
    device: Union[str, torch.device] = "auto",
    progress: Optional[Callable[..., Any]] = None,
) -> list[MaskPrediction]:
    """Write ``out_dir / names[i]``, the class-index mask of ``images[i]`` at its own resolution, and with
    ``overlays`` ``out_dir / "overlays" / names[i]`` (the mask drawn over the image); then ``masks.json``.

    ``npe_alpha`` is the NPE-LA strength (``z - alpha * eta``; 0: the main logits) of a model with PEMs, default
    the model's own (``model_config.npe_alpha``). ``mode``, ``crop_size``, ``stride`` and ``scale`` (resize to fit
    before inference) are evaluate's inference (default: sliding 128x128 windows every 85 pixels, no resizing); the
    masks are at the images' own size. ``out_dir`` must be new, empty or an earlier mask
    prediction (replaced with ``overwrite``), and not hold one of ``inputs``.
    """
    _check_settings(model, model_config.num_classes, npe_alpha, mode)
    if len(names) != len(images):
        raise ValueError(f"{len(names)} mask names for {len(images)} images.")
    out_dir = check_output_dir(
        out_dir, "mask prediction", is_own=is_mask_dir, overwrite=overwrite, inputs=inputs, option="--out"
    )
    alpha = (model_config.npe_alpha if npe_alpha is None else npe_alpha) if has_pems(model) else 0.0
    device = resolve_device(str(device))
    model.eval().to(device)
    inference = dict(mode=mode, crop_size=crop_size, stride=stride, scale=scale, device=device)
    bar = progress(total=len(images), desc="predict", unit="image", leave=False) if progress else None
    predictions = []
    with locked_dir(out_dir):
        for path, name in zip(images.paths, names):
            image = torch.from_numpy(np.asarray(read_image(path)).copy()).permute(2, 0, 1)
            labels = _predicted_labels(model, image, model_config, alpha, inference)
            predictions.append(_write_mask(out_dir, path, name, image, labels, model_config, overlays))
            if bar is not None:
                bar.update(1)
        write_json(out_dir / MASKS_FILE, _masks_record(predictions, alpha, inference))
    if bar is not None:
        bar.close()
    return predictions
