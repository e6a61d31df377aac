"""Reading Hub folders back: a local path, ``local-dir:DIR`` or ``hf-hub:ORG/NAME``, checked before it loads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import safetensors
import safetensors.torch
import timm
from huggingface_hub import hf_hub_download
from torch import nn

from ..describe import (
    CLASSIFICATION,
    SEGMENTATION,
    TARGET_PRIOR_KEY,
    check_weights_fit,
)
from ..files import WEIGHTS_FILE
from ..models.segmentation import parse_segmentation_model_name
from ..segmentation.config import SegmentationModelConfig

__all__ = [
    "CONFIG_NAME",
    "CARD_NAME",
    "HUB_FILES",
    "hub_folder",
    "read_hub_config",
    "is_hub_folder",
    "hub_task",
    "hub_segmentation_config",
    "load_from_hub",
]

CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_FILE, CARD_NAME)
LOADER_TASKS = {CLASSIFICATION: "classification", SEGMENTATION: "segmentation"}  # the names runs and the loader use


def _resolve_source(source: Union[str, os.PathLike]) -> tuple[Path, str]:
    """Local folder holding the files (downloaded or cached for ``hf-hub:``), and the timm name that loads them."""
    text = os.fspath(source)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:") :].partition("@")
        config_file = hf_hub_download(repo, CONFIG_NAME, revision=revision or None)
        hf_hub_download(repo, WEIGHTS_FILE, revision=revision or None)
        return Path(config_file).parent, text
    folder = Path(text[len("local-dir:") :] if text.startswith("local-dir:") else text)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a directory; pass a folder written by save_for_hub, or 'hf-hub:ORG/NAME'."
        )
    return folder, f"local-dir:{folder}"


def hub_folder(source: Union[str, os.PathLike]) -> Path:
    """The local folder of a Hub source: a path, ``local-dir:DIR``, or ``hf-hub:ORG/NAME[@revision]`` (downloaded or
    cached).
    """
    return _resolve_source(source)[0]


def read_hub_config(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    """``config.json`` of a Hub folder, checked for the fields a loader needs."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by save_for_hub.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the model with save_for_hub.") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{path} has no 'architecture' string; re-export the model with save_for_hub.")
    return config


def weight_shapes(path: Path) -> dict[str, list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the folder has a config but no safetensors weights.")
    with safetensors.safe_open(str(path), framework="pt") as weights:
        return {key: weights.get_slice(key).get_shape() for key in weights.keys()}


def is_hub_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a folder written by ``save_for_hub``: its ``config.json`` names an architecture."""
    try:
        read_hub_config(path)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return False
    return True


def hub_task(folder: Union[str, os.PathLike]) -> str:
    """``"classification"`` or ``"segmentation"``: the task a Hub folder's config records (``npe.task``).

    A config without an ``npe`` section (a plain timm export) is a classifier.
    """
    task = read_hub_config(folder).get("npe", {}).get("task", CLASSIFICATION)
    if task not in LOADER_TASKS:
        raise ValueError(
            f"{Path(folder) / CONFIG_NAME} is for task {task!r}; expected {CLASSIFICATION} or {SEGMENTATION}."
        )
    return LOADER_TASKS[task]


def hub_segmentation_config(folder: Union[str, os.PathLike]) -> SegmentationModelConfig:
    """How the segmentation model in a Hub folder was built: the ``segmentation_model`` settings of its config."""
    path = Path(folder) / CONFIG_NAME
    settings = read_hub_config(folder).get("segmentation_model")
    if not isinstance(settings, dict):
        raise ValueError(f"{path} has no 'segmentation_model' settings; re-export it with save_for_hub.")
    try:
        config = SegmentationModelConfig.from_dict(dict(settings))
        parse_segmentation_model_name(config.name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
    return config


def _load_segmentation(folder: Path, **kwargs: Any) -> nn.Module:
    """Rebuild a segmentation model from its ``segmentation_model`` settings and load its weights strictly."""
    settings = hub_segmentation_config(folder)
    check_weights_fit(
        settings.name,
        SEGMENTATION,
        settings.to_dict(),
        weight_shapes(folder / WEIGHTS_FILE),
        str(folder / WEIGHTS_FILE),
    )
    model = settings.build(**kwargs)
    model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return model


def load_from_hub(source: Union[str, os.PathLike], **kwargs: Any) -> nn.Module:
    """Load a model saved by ``save_for_hub`` from a folder, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@revision]``.

    Checks first that the config names a known architecture and that every weight fits it.
    Classifiers load through timm (the result equals ``timm.create_model(source,
    pretrained=True)``; ``kwargs`` go to it), segmentation models through
    ``create_segmentation_model`` with their saved settings (``kwargs``: e.g.
    ``weights_backbone``).
    """
    folder, timm_name = _resolve_source(source)
    if hub_task(folder) == "segmentation":
        return _load_segmentation(folder, **kwargs)
    config = read_hub_config(folder)
    architecture = config["architecture"]
    if not timm.is_model(architecture):
        raise ValueError(
            f"{folder / CONFIG_NAME} names architecture {architecture!r}, which is not registered with timm; "
            "check the name, import the package that defines it, or upgrade npe-models."
        )
    weights = folder / WEIGHTS_FILE
    check_weights_fit(architecture, CLASSIFICATION, config.get("model_args", {}), weight_shapes(weights), str(weights))
    model = timm.create_model(timm_name, pretrained=True, **kwargs)
    if TARGET_PRIOR_KEY in config.get("npe", {}):  # a prior-adapted model keeps its record
        model.pretrained_cfg = {**model.pretrained_cfg, TARGET_PRIOR_KEY: config["npe"][TARGET_PRIOR_KEY]}
    return model
