"""What a model built by this package is: architecture, task, classes, PEMs, NPE-LA settings, preprocessing.

``describe_model`` is what both exporters record (the Hub's ``config.json``, the ONNX file's
metadata), ``check_weights_fit`` checks saved weights against the architecture a
description names and ``model_stats`` counts its parameters and MACs, both on the meta
device. Nothing here needs huggingface_hub or onnx.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import timm
import torch
from timm.models import get_model_args
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3

from ._version import __version__
from .models import npe_model_name, parse_npe_name
from .models.segmentation import (
    SEGMENTATION_ARCHITECTURES,
    NPESegmentationMixin,
    UNetBackbone,
    parse_segmentation_model_name,
)
from .models.smp import is_smp_model
from .npe import DEFAULT_NPE_ALPHA, DEFAULT_NPE_T, NPEHead, has_pems, npe_heads
from .segmentation.config import SegmentationModelConfig

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "SEGMENTATION_INPUT_SIZE",
    "TARGET_PRIOR_KEY",
    "ModelDescription",
    "ModelStats",
    "describe_model",
    "check_weights_fit",
    "model_stats",
]

CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"
SEGMENTATION_INPUT_SIZE = (3, 512, 512)
"""Nominal input size recorded for segmentation models, which take any size."""
TARGET_PRIOR_KEY = "target_prior"
"""The ``pretrained_cfg`` entry where ``npe_models.adapt.adapt_prior`` records the prior folded into a model."""

_NPE_ARG_PREFIX = "npe_"


@dataclass(frozen=True)
class ModelDescription:
    """What a model is, as a Hub config or an ONNX file records it: enough to rebuild it and feed it."""

    architecture: str
    """Registered name that rebuilds these weights (the base name for a merged NPE model)."""
    task: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_pems: int = 0
    """PEMs the model was built with; 0 for a plain model."""
    merged: bool = False
    """True when the PEMs were folded into the classifier (``reparameterize_model``)."""
    alpha: Optional[float] = None
    t: Optional[int] = None
    npe_architecture: Optional[str] = None
    """The NPE name the model was built as (``resnet32_npe16``), also for a merged model."""
    label_names: Optional[tuple[str, ...]] = None
    model_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the registered builder of ``architecture``."""
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = None
    crop_mode: Optional[str] = None
    """How timm's eval transform resizes and crops for a classifier (``timm.data.create_transform``)."""
    target_prior: Optional[dict[str, Any]] = None
    """The deployment prior folded into the bias (``npe_models.adapt.adapt_prior``): prior, calibration, data."""
    pretrained_tag: Optional[str] = None
    """The tag of the classifier's ``pretrained_cfg`` (``cifar10_lt_r100_hp2``): the weights timm built it for."""

    def npe_config(self) -> dict[str, Any]:
        """The ``npe`` section of ``config.json``: the method's settings, for people and tools."""

        return {
            "task": self.task,
            "num_pems": self.num_pems,
            "merged": self.merged,
            "alpha": self.alpha,
            "t": self.t,
            "npe_architecture": self.npe_architecture,
            **({TARGET_PRIOR_KEY: self.target_prior} if self.target_prior else {}),
            "package": "npe-models",
            "package_version": __version__,
        }


def _is_timm_classifier(model: nn.Module) -> bool:
    return hasattr(model, "pretrained_cfg") and hasattr(model, "get_classifier")


def _label_names(label_names: Optional[Sequence[str]], cfg_names: Any, num_classes: int) -> Optional[tuple[str, ...]]:
    """Given label names, else the cfg's; checked against the class count."""
    names = label_names if label_names is not None else cfg_names
    if names is None:
        return None
    if isinstance(names, Mapping):
        names = [names[key] for key in sorted(names, key=int)]
    names = tuple(str(name) for name in names)
    if len(names) != num_classes:
        raise ValueError(
            f"label_names has {len(names)} entries but the model has {num_classes} classes; "
            "pass one name per class, in label order."
        )
    return names


def _describe_classifier(model: nn.Module, label_names: Optional[Sequence[str]]) -> ModelDescription:
    cfg = model.pretrained_cfg
    name = cfg.get("architecture")
    if not name:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with timm.create_model "
            "so that it can be described and rebuilt."
        )
    if model.num_classes < 1:
        raise ValueError("the model has no classifier (num_classes=0); save or export a model with classes.")
    args = get_model_args(model)
    heads = npe_heads(model)
    base, num_pems = parse_npe_name(name)
    if heads and not num_pems:
        raise ValueError(
            f"{name} with PEMs added by add_npe is not a registered architecture, so it cannot be rebuilt unmerged; "
            "merge it with timm.utils.reparameterize_model to save it as a plain "
            f"{name}, or use a registered <arch>_npe<K> model."
        )
    if heads:
        head = heads[0]
        npe = dict(num_pems=head.num_pems, merged=False, alpha=head.alpha, t=head.t, npe_architecture=name)
        args.update(npe_alpha=head.alpha, npe_t=head.t)
        architecture = name
    elif num_pems:
        npe = dict(
            num_pems=num_pems,
            merged=True,
            alpha=float(getattr(model, "npe_alpha", args.get("npe_alpha", DEFAULT_NPE_ALPHA))),
            t=int(getattr(model, "npe_t", args.get("npe_t", DEFAULT_NPE_T))),
            npe_architecture=name,
        )
        args = {key: value for key, value in args.items() if not key.startswith(_NPE_ARG_PREFIX)}
        architecture = base
    else:
        npe = {}
        architecture = name
    if not timm.is_model(architecture):
        raise ValueError(
            f"the model would be saved as {architecture!r}, which timm does not know; "
            "merge an add_npe model with reparameterize_model, or use a registered architecture."
        )
    return ModelDescription(
        architecture=architecture,
        task=CLASSIFICATION,
        num_classes=model.num_classes,
        input_size=tuple(cfg["input_size"]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=cfg.get("interpolation"),
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
        label_names=_label_names(label_names, cfg.get("label_names"), model.num_classes),
        target_prior=cfg.get(TARGET_PRIOR_KEY),
        pretrained_tag=cfg.get("tag") or None,
        model_args=args,
        **npe,
    )


def _is_segmentation_model(model: nn.Module) -> bool:
    return isinstance(model, (DeepLabV3, FCN, LRASPP)) or is_smp_model(model)


def _final_classifier(model: nn.Module) -> nn.Module:
    """The conv (or NPEHead) that produces a segmentation model's logits."""
    if is_smp_model(model):
        return model.segmentation_head[0]
    return model.classifier.low_classifier if isinstance(model, LRASPP) else model.classifier[-1]


def _segmentation_num_classes(model: nn.Module) -> int:
    final = _final_classifier(model)
    return final.num_classes if isinstance(final, NPEHead) else final.out_channels


def _is_merged_segmentation(model: nn.Module) -> bool:
    """An NPE segmentation model whose linear PEMs ``reparameterize_model`` folded into the classifier."""
    return isinstance(model, NPESegmentationMixin) and not has_pems(model)


def _inferred_segmentation_configs(model: nn.Module) -> list[SegmentationModelConfig]:
    """Every registered architecture with the model's classes, PEMs and options: candidates to match by weights."""
    npe = isinstance(model, NPESegmentationMixin)
    merged = _is_merged_segmentation(model)
    settings: dict[str, Any] = dict(
        num_classes=_segmentation_num_classes(model),
        aux_loss=True if getattr(model, "aux_classifier", None) is not None else None,
    )
    if npe and not merged:
        settings.update(num_pems=model.num_pems, pem_type=model.pem_type, npe_alpha=model.alpha, npe_t=model.t)
    if is_smp_model(model):  # its name (architecture and encoder) cannot be told from its weights: it records it
        built = getattr(model, "build_cfg", None)
        if built is None:
            return []
        name, model_kwargs = built["architecture"], dict(built["model_kwargs"])
        return [SegmentationModelConfig(name=name, model_kwargs=model_kwargs, **settings)]
    if isinstance(model.backbone, UNetBackbone):
        unet_kwargs = {"base_channels": model.backbone.out_channels, "num_stages": len(model.backbone.encoder)}
        return [SegmentationModelConfig(name="unet_fcn", model_kwargs=unet_kwargs, **settings)]
    return [SegmentationModelConfig(name=arch, **settings) for arch in SEGMENTATION_ARCHITECTURES if arch != "unet_fcn"]


def _segmentation_config(model: nn.Module, config: Optional[SegmentationModelConfig]) -> SegmentationModelConfig:
    """The given settings, or the registered architecture whose parameter shapes match the model's."""
    if config is not None:
        return config
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    for candidate in _inferred_segmentation_configs(model):
        reference = _build_on_meta(candidate.name, SEGMENTATION, candidate.to_dict())
        if not _weights_mismatch({k: v.shape for k, v in reference.state_dict().items()}, shapes):
            return candidate
    raise ValueError(
        f"could not tell which registered architecture this {type(model).__name__} is; pass "
        "config=SegmentationModelConfig(name=..., ...) as the model was built (load_segmentation_model returns it)."
    )


def _describe_segmentation(
    model: nn.Module, label_names: Optional[Sequence[str]], config: Optional[SegmentationModelConfig]
) -> ModelDescription:
    config = _segmentation_config(model, config)
    arch, _ = parse_segmentation_model_name(config.name)
    npe = isinstance(model, NPESegmentationMixin)
    merged = _is_merged_segmentation(model)
    if merged:  # the linear PEMs were folded into the classifier: the weights are the base architecture's
        config = dataclasses.replace(config, name=arch, num_pems=None)
    elif npe:  # saved under its NPE name, which carries the PEM count
        config = dataclasses.replace(config, name=npe_model_name(arch, model.num_pems), num_pems=model.num_pems)
    num_classes = _segmentation_num_classes(model)
    names = _label_names(label_names, config.class_names, num_classes)
    config = dataclasses.replace(config, num_classes=num_classes, class_names=list(names) if names else None)
    return ModelDescription(
        architecture=config.name,
        task=SEGMENTATION,
        num_classes=num_classes,
        input_size=SEGMENTATION_INPUT_SIZE,
        mean=tuple(config.mean),
        std=tuple(config.std),
        num_pems=model.num_pems if npe else 0,
        merged=merged,
        alpha=model.alpha if npe else None,
        t=model.t if npe else None,
        npe_architecture=npe_model_name(arch, model.num_pems) if npe else None,
        label_names=names,
        model_args=config.to_dict(),
    )


def describe_model(
    model: nn.Module,
    label_names: Optional[Sequence[str]] = None,
    config: Optional[SegmentationModelConfig] = None,
) -> ModelDescription:
    """Architecture, task, classes, PEMs, NPE-LA settings and preprocessing of a model built by this package.

    A merged NPE model is described by its base architecture, which rebuilds its weights. A
    segmentation model is matched to its registered architecture by its parameter shapes
    unless ``config`` (how it was built, with its input normalisation) is given.
    """
    if _is_timm_classifier(model):
        return _describe_classifier(model, label_names)
    if _is_segmentation_model(model):
        return _describe_segmentation(model, label_names, config)
    raise TypeError(
        f"expected a timm classifier built with timm.create_model or a segmentation model from "
        f"create_segmentation_model, got {type(model).__name__}."
    )


def _build_on_meta(architecture: str, task: str, model_args: Mapping[str, Any]) -> nn.Module:
    """A parameter-free (meta device) instance, to compare parameter names and shapes."""
    with torch.device("meta"):
        if task == SEGMENTATION:
            return SegmentationModelConfig.from_dict(dict(model_args)).build()
        return timm.create_model(architecture, pretrained=False, **model_args)


def _weights_mismatch(expected: Mapping[str, torch.Size], found: Mapping[str, Sequence[int]]) -> list[str]:
    """Human-readable differences between two ``name -> shape`` maps; empty when they agree."""
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in found if key not in expected]
    problems += [
        f"{key} has shape {tuple(found[key])}, expected {tuple(shape)}"
        for key, shape in expected.items()
        if key in found and tuple(found[key]) != tuple(shape)
    ]
    return problems


def check_weights_fit(
    architecture: str, task: str, model_args: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], where: str
) -> None:
    """Raise a clear ValueError when weights (``name -> shape``) do not fit the described architecture.

    The reference is built on the meta device, so the check costs no memory even for large models.
    """
    reference = _build_on_meta(architecture, task, model_args)
    expected = {key: value.shape for key, value in reference.state_dict().items()}
    problems = _weights_mismatch(expected, shapes)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"the weights in {where} do not fit {architecture!r} with {dict(model_args)}: {shown}. "
            "The weights file and config.json must come from the same save_for_hub call."
        )


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of a described model for one image at its input size, as timm's model cards report them."""

    params: int
    macs: int
    """Multiply-accumulates of one eval-mode forward (half the FLOPs ``FlopCounterMode`` counts)."""
    unpooled_shape: Optional[tuple[int, ...]] = None
    """Shape of ``forward_features`` for one image, without the batch axis (classifiers)."""
    num_features: Optional[int] = None
    """Width of the pooled embedding ``forward_head(pre_logits=True)`` returns (classifiers)."""


def model_stats(description: ModelDescription) -> ModelStats:
    """Parameters, MACs and embedding shapes of the described model, counted on the meta device (no weights needed)."""
    model = _build_on_meta(description.architecture, description.task, description.model_args).eval()
    image = torch.empty(1, *description.input_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    params = sum(p.numel() for p in model.parameters())
    if description.task != CLASSIFICATION:
        return ModelStats(params=params, macs=counter.get_total_flops() // 2)
    with torch.no_grad():
        unpooled = tuple(model.forward_features(image).shape[1:])
    return ModelStats(
        params=params,
        macs=counter.get_total_flops() // 2,
        unpooled_shape=unpooled,
        num_features=model.num_features,
    )
