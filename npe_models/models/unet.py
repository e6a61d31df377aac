"""UNet-FCN: a UNet (UNet-S5-D16 layout) with an FCN head in torchvision's ``FCN`` form, and its weights trained
here on STARE (``UNet_FCN_Weights``), bundled with the package. Its NPE forms come from
:mod:`npe_models.models.segmentation`, like torchvision's segmentation models'."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Optional, Union

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import Weights, WeightsEnum
from torchvision.models.segmentation.fcn import FCN
from torchvision.transforms._presets import SemanticSegmentation  # torchvision's own weights' preset

from ._bundled import WEIGHTS_DIR, bundled_weights_meta, check_weights_file
from ._registry import npe_model_name

__all__ = ["UNetBackbone", "UNet_FCN_Weights", "bundled_segmentation_weights", "unet_fcn", "weights_settings"]


class _DoubleConv(nn.Sequential):
    """Two 3x3 conv - BatchNorm - ReLU layers: one UNet stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _UpBlock(nn.Module):
    """UNet decoder stage: upsample to the skip's size, 1x1 conv to its width, concatenate, two 3x3 convs."""

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, skip_channels, 1, bias=False), nn.BatchNorm2d(skip_channels), nn.ReLU(inplace=True)
        )
        self.convs = _DoubleConv(2 * skip_channels, skip_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.reduce(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.convs(torch.cat([skip, x], dim=1))


class UNetBackbone(nn.Module):
    """UNet encoder-decoder laid out as MMSegmentation's UNet-S5-D16 (the paper's STARE backbone).

    ``num_stages`` encoder stages of two 3x3 convs, widths ``base_channels * 2**i``, max-pooling
    between them (total stride 16 for 5 stages), and a mirrored decoder. Returns torchvision's
    feature dict: ``"out"`` is the last decoder stage (full resolution, ``base_channels`` wide) and
    ``"aux"`` the stage before it (half resolution, ``2 * base_channels``). Any input size works.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_stages: int = 5) -> None:
        super().__init__()
        if num_stages < 2:
            raise ValueError(f"num_stages must be >= 2 (an encoder and a decoder stage), got {num_stages}.")
        widths = [base_channels * 2**i for i in range(num_stages)]
        self.encoder = nn.ModuleList([_DoubleConv(in_channels, widths[0])])
        self.encoder.extend(nn.Sequential(nn.MaxPool2d(2), _DoubleConv(a, b)) for a, b in zip(widths, widths[1:]))
        self.decoder = nn.ModuleList(_UpBlock(b, a) for a, b in reversed(list(zip(widths, widths[1:]))))
        self.out_channels = widths[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = [skips.pop()]
        for block in self.decoder:
            outputs.append(block(outputs[-1], skips.pop()))
        return OrderedDict(out=outputs[-1], aux=outputs[-2])


def _unet_fcn_head(in_channels: int, channels: int, num_classes: int) -> nn.Sequential:
    """MMSegmentation's one-conv ``FCNHead`` in torchvision's layout: conv-BN-ReLU, dropout, 1x1 classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(channels, num_classes, 1),
    )


def _bundled_weights(name: str) -> Weights:
    """A ``Weights`` entry for the bundled file ``name`` of ``manifest.json``'s segmentation section."""
    meta = bundled_weights_meta(name)
    return Weights(
        url=(WEIGHTS_DIR / meta["file"]).as_uri(),
        transforms=functools.partial(SemanticSegmentation, resize_size=None, mean=meta["mean"], std=meta["std"]),
        meta={**meta, "name": name},
    )


class UNet_FCN_Weights(WeightsEnum):
    """UNet-FCN weights trained by npe-models on STARE (``benchmarks/bench_segmentation.py stare``), bundled.

    ``STARE_NPE1_FCN`` (the default) is the baseline with one trained ``fcn`` PEM, trained on the
    frozen baseline; ``STARE`` is the baseline alone. Both come from one file: the baseline is the
    NPE form's network without its PEM. ``meta`` holds the recipe, the iterations and the
    validation metrics; ``unet_fcn(weights=)`` loads the network, ``unet_fcn_npe1(weights=)``
    the baseline with a fresh PEM (``STARE``) or with its trained PEM (``STARE_NPE1_FCN``).
    """

    STARE = _bundled_weights("unet_fcn.stare")
    STARE_NPE1_FCN = _bundled_weights("unet_fcn_npe1.stare_fcn")
    DEFAULT = STARE_NPE1_FCN

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The bundled file's weights, its sha256 checked first (nothing is downloaded)."""
        path = WEIGHTS_DIR / self.meta["file"]
        check_weights_file(path, self.meta["sha256"], self.meta["name"])
        return safetensors.torch.load_file(str(path))


def bundled_segmentation_weights() -> list[tuple[str, str]]:
    """``(builder weights=ENTRY, what it is and scores)`` for each bundled segmentation weights entry."""
    rows = []
    for weights in UNet_FCN_Weights:
        meta, scores = weights.meta, weights.meta["_metrics"]["STARE-val-ah"]
        builder = npe_model_name("unet_fcn", 1) if meta["num_pems"] else "unet_fcn"
        adjusted = [alpha for alpha in scores if alpha != "0"]
        best = max(adjusted, key=lambda alpha: scores[alpha]["mean_dice"], default=None)
        iterations = meta["iterations"]["baseline"] if meta["num_pems"] else meta["iterations"]
        summary = (
            f"STARE UNet-FCN, {iterations:,} iterations: mDice {100 * scores['0']['mean_dice']:.2f} "
            "on the 'ah' validation masks"
        )
        if best is not None:
            summary += (
                f"; with its trained {meta['pem_type']} PEM, {100 * scores[best]['mean_dice']:.2f} "
                f"at NPE-LA alpha {best}"
            )
        rows.append((f"{builder} weights={weights.name}", summary))
    return rows


def weights_settings(weights: Weights, given: dict[str, Any]) -> dict[str, Any]:
    """The builder arguments ``weights`` were trained with; a different value among ``given`` is an error."""
    fixed = {"num_classes": len(weights.meta["categories"]), **weights.meta["model_kwargs"]}
    for key, value in fixed.items():
        if given.get(key) is not None and given[key] != value:
            raise ValueError(f"{weights.meta['name']} was trained with {key}={value!r}; got {key}={given[key]!r}.")
    return {**given, **fixed}


def _network_state(weights: Weights, model: nn.Module) -> dict[str, Tensor]:
    """The entries of ``weights``' state dict that ``model`` has: the network without the PEMs of an NPE form."""
    state = weights.get_state_dict()
    return {key: state[key] for key in model.state_dict()}


def unet_fcn(
    *,
    weights: Optional[Union[UNet_FCN_Weights, str]] = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    aux_loss: Optional[bool] = None,
    weights_backbone: None = None,
    base_channels: Optional[int] = None,
    num_stages: Optional[int] = None,
    **kwargs: Any,
) -> FCN:
    """UNet (UNet-S5-D16 layout) with an FCN head, as torchvision's ``FCN``; 2 classes by default (STARE).

    ``weights`` (``UNet_FCN_Weights`` or a member's name) loads a STARE network trained here and
    fixes the class count, width and aux head to its own; by default 64 base channels, 5 stages.
    ``aux_loss=True`` adds an FCN head on the half-resolution decoder stage.
    """
    weights = UNet_FCN_Weights.verify(weights)
    if weights_backbone is not None:
        raise ValueError("unet_fcn has no separate backbone weights; leave weights_backbone None (weights= loads all).")
    if kwargs:
        raise TypeError(f"unet_fcn got unexpected arguments {sorted(kwargs)}.")
    settings = dict(num_classes=num_classes, aux_loss=aux_loss, base_channels=base_channels, num_stages=num_stages)
    if weights is not None:
        settings = weights_settings(weights, settings)
    backbone = UNetBackbone(3, settings["base_channels"] or 64, settings["num_stages"] or 5)
    width, num_classes = backbone.out_channels, settings["num_classes"] or 2
    classifier = _unet_fcn_head(width, width, num_classes)
    aux_classifier = _unet_fcn_head(2 * width, width, num_classes) if settings["aux_loss"] else None
    model = FCN(backbone, classifier, aux_classifier)
    if weights is not None:
        model.load_state_dict(_network_state(weights, model))
    return model
