"""Model families, one module each; importing a module registers its models with timm (or torchvision).

``_registry`` holds what the families share: the ``<arch>_npe<K>`` name parser and
``register_variants``; ``timm_npe`` the one NPE mechanism for classifiers (``add_npe``).
"""

import fnmatch
from typing import Any

import timm

from . import segmentation, smp  # noqa: F401  (importing registers the segmentation models with torchvision)
from ._bundled import shipped_checkpoints
from ._registry import npe_model_name, parse_npe_name, register_variants
from .cifar_resnet import CifarResNet
from .segmentation import bundled_segmentation_weights, is_segmentation_model
from .timm_npe import add_npe

__all__ = [
    "CifarResNet",
    "add_npe",
    "is_segmentation_model",
    "list_classifiers",
    "list_registered",
    "npe_model_name",
    "parse_npe_name",
    "register_variants",
]


def list_classifiers(npe_only: bool = False) -> list[str]:
    """Names of the timm classifiers this package registers (optionally only those with PEMs)."""
    names = [
        name for name in timm.list_models() if timm.models.model_entrypoint(name).__module__.startswith(__package__)
    ]
    return [name for name in names if parse_npe_name(name)[1]] if npe_only else names


def _summary(name: str) -> str:
    """A pretrained tag's description (what it was trained on, its accuracy), else the model's first docstring line."""
    cfg = timm.models.get_pretrained_cfg(name) if "." in name else None
    if cfg is not None and cfg.description:
        return cfg.description
    doc = (timm.models.model_entrypoint(name.split(".", 1)[0]).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def _shipped_summary(name: str, entry: dict[str, Any]) -> str:
    """A shipped checkpoint's line, marked when the wheel leaves its file out (a source checkout has it)."""
    return _summary(name) if entry["bundled"] else f"[not bundled: source checkout or Hub] {_summary(name)}"


def list_registered(pattern: str = "", pretrained: bool = False) -> dict[str, list[tuple[str, str]]]:
    """This package's timm classifiers matching a wildcard ``pattern``, as ``{section title: [(name, summary)]}``.

    With ``pretrained``, pretrained tags in two sections: the checkpoints trained by npe-models
    (bundled) and the base architectures' own weights with fresh PEMs (for fine-tuning).
    """
    ours = [
        name
        for name in timm.list_models(pattern, pretrained=pretrained)
        if timm.models.model_entrypoint(name.split(".", 1)[0]).__module__.startswith(__package__)
    ]
    if not pretrained:
        return {"Models (timm.create_model(name)):": [(name, _summary(name)) for name in ours]}
    shipped = shipped_checkpoints()
    trained = [name for name in ours if name in shipped]
    return {
        "Checkpoints trained by npe-models (timm.create_model(name, pretrained=True); bundled unless marked):": [
            (name, _shipped_summary(name, shipped[name])) for name in trained
        ],
        "Base architectures' own weights with fresh PEMs (to fine-tune):": [
            (name, _summary(name)) for name in ours if name not in trained
        ],
        "Segmentation weights trained by npe-models (bundled; npe_models.create_segmentation_model(name, weights=...), "
        "_npe names also torchvision.models.get_model):": [
            row for row in bundled_segmentation_weights() if fnmatch.fnmatch(row[0].split()[0], pattern or "*")
        ],
    }
