"""One loader for every model npe-models can name: ``load_model(source)`` -> :class:`LoadedModel`.

A source is a run directory of ``npe-models train``, its ``checkpoint.pt`` or ``model.safetensors``
(any weights file a training run wrote, new or legacy), a registered name with or without a
pretrained tag (``resnet32_npe16``, ``resnet32_npe16.cifar10_lt_r100_hp2`` with ``pretrained=True``,
``unet_fcn_npe1``), a folder written by ``save_for_hub``, ``local-dir:DIR`` or ``hf-hub:ORG/NAME``.
The task comes from what the source records (``npe_models.runs.run_task``, the Hub config's
``npe.task``, the registry the name is in), never from guessing. Evaluation, export, the Hub and
ONNX code all load through here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from torch import nn

from . import runs
from .classification.checkpoint import load_trained_model
from .hub import hub_folder, hub_segmentation_config, hub_task, is_hub_folder, load_from_hub, read_hub_config
from .models._bundled import forget_pretrained_weights
from .models.segmentation import create_segmentation_model, parse_segmentation_model_name
from .npe import set_alpha
from .segmentation.checkpoint import load_segmentation_model
from .segmentation.config import (
    SEGMENTATION_DATASETS,
    SegmentationModelConfig,
    SegmentationRunConfig,
    pretrained_segmentation_config,
)

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "LoadedModel",
    "load_model",
    "source_kind",
    "read_label_names",
    "tag_training_data",
    "require_pretrained_weights",
    "evaluation_dir",
]

CLASSIFICATION, SEGMENTATION = runs.TASKS
PathLike = Union[str, os.PathLike]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")
_TAG_DATA = re.compile(r"(?:^|\.)(cifar10|cifar100)_lt_r(\d+(?:\.\d+)?)")
# Training settings that describe the machine or the bookkeeping, not the recipe: left out of model cards.
_NOT_RECIPE = (
    "data_dir",
    "download",
    "device",
    "channels_last",
    "compile",
    "eval_every",
    "eval_batch_size",
    "init",
    "deterministic",
)
_UNKNOWN_SOURCE = (
    "unknown model {source!r}: neither a run directory, a checkpoint or weights file, a Hub folder (DIR, local-dir:DIR "
    "or hf-hub:ORG/NAME) nor a registered name; check the path, or see `npe-models list` for the names."
)


@dataclass
class LoadedModel:
    """A model in eval mode with what its source says about it: the task, how it was trained, on what data."""

    model: nn.Module
    task: str
    """``"classification"`` or ``"segmentation"``."""
    source: str
    config: Optional[Any] = None
    """The training config when the source has one (``TrainConfig`` / ``SegmentationRunConfig``)."""
    segmentation_config: Optional[SegmentationModelConfig] = None
    """How a segmentation model was built (architecture, PEMs, classes, input normalisation), when known."""
    dataset: Optional[str] = None
    """The data set the model was trained on, when known (from its config or its pretrained tag)."""
    rho: Optional[float] = None
    max_per_class: Optional[int] = None
    data_dir: Optional[str] = None
    class_names: Optional[list[str]] = None

    @property
    def name(self) -> str:
        """A short name for files derived from this model: the last part of the source (``model`` if none)."""
        return self.source.rstrip("/").split("/")[-1].split(":")[-1] or "model"

    def data_settings(self) -> dict[str, Any]:
        """What is known of the data the model was trained on, as ``evaluate_run`` takes it (data set, rho, folders)."""
        settings = dict(dataset=self.dataset, rho=self.rho, max_per_class=self.max_per_class, data_dir=self.data_dir)
        if self.task == CLASSIFICATION and self.config is not None:
            settings.update(split_dir=self.config.split_dir, image_size=self.config.image_size)
        return {name: value for name, value in settings.items() if value is not None}

    @property
    def recipe(self) -> Optional[dict[str, Any]]:
        """The training settings worth showing on a model card (no paths, devices or bookkeeping)."""
        if self.config is None:
            return None
        settings = self.config.to_dict()["train"] if self.task == SEGMENTATION else self.config.to_dict()
        return {k: v for k, v in settings.items() if k not in _NOT_RECIPE and v is not None}


def evaluation_dir(source: str) -> Path:
    """Where ``npe-models evaluate`` writes by default: ``RUN/eval`` for a run directory or a file in one, else
    ``./eval/<name>`` for a registered or Hub name."""
    path = Path(source)
    if path.is_dir():
        return path / "eval"
    return path.parent / "eval" if path.is_file() else Path("eval") / source.replace(":", "_").replace("/", "_")


def read_label_names(path: Optional[PathLike]) -> Optional[list[str]]:
    """Class names from a JSON list, a JSON ``{"classes": [...]}`` or a text file with one name per line."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label names file {path} not found; give a JSON list or a text file, one name a line.")
    text = path.read_text(encoding="utf-8")
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(names, dict) and "classes" in names:
        names = names["classes"]
    if not isinstance(names, list):
        raise ValueError(f"{path} must hold a JSON list of class names or {{'classes': [...]}}.")
    return [str(name) for name in names]


def tag_training_data(name: str) -> tuple[Optional[str], Optional[float]]:
    """Data set and rho a pretrained tag names: ``resnet32_npe16.cifar10_lt_r100_hp2`` -> ``("cifar10", 100.0)``."""
    match = _TAG_DATA.search(name.split(".", 1)[1] if "." in name else "")
    return (match.group(1), float(match.group(2))) if match else (None, None)


def require_pretrained_weights(name: str) -> None:
    """A clear error, instead of timm's warning and random weights, when ``name[.tag]`` has no pretrained weights."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown tag
        raise ValueError(f"{error} See `npe-models list --pretrained` for the tags.") from error
    if cfg is None or not (cfg.has_weights or cfg.state_dict):
        architecture, _, tag = name.partition(".")
        tags = [found.split(".", 1)[1] for found in timm.list_pretrained(f"{architecture}.*")]
        hint = (
            f"its pretrained tags are {tags}: name one as '{architecture}.<tag>' (torch.hub: pretrained_cfg='<tag>')"
            if tags
            else "there are no pretrained weights for it: load it with pretrained=False, or see "
            "`npe-models list --pretrained`"
        )
        raise ValueError(f"{name} has no {'' if tag else 'default '}pretrained weights; {hint}.")


def _is_registered(name: str) -> bool:
    if timm.is_model(name):
        return True
    try:
        parse_segmentation_model_name(name.partition(".")[0])  # <model>.<ENTRY>: a shipped weights entry
    except (TypeError, ValueError):
        return False
    return True


def source_kind(source: PathLike) -> str:
    """``"hub"``, ``"run"`` (a run directory or a file a run wrote) or ``"registered"``; or an error naming the fix."""
    text = os.fspath(source)
    if text.startswith(_HUB_PREFIXES) or (Path(text).is_dir() and is_hub_folder(text)):
        return "hub"
    if Path(text).exists():
        return "run"
    if _is_registered(text):
        return "registered"
    raise FileNotFoundError(_UNKNOWN_SOURCE.format(source=text))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or a torch file holding one (alone or under 'model' / 'state_dict')."""
    if path.suffix == ".safetensors":
        return runs.read_weights(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"weights file {path} holds no state dict (name -> tensor); save the model's state_dict().")
    runs.require_finite(state, path)
    return state


def _weights_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], error: RuntimeError) -> str:
    """How ``state`` differs from ``model``'s state dict, in one line: how many tensors are missing, unexpected and
    of another shape, with one example each (torch's own message, one line per tensor, only when none differ)."""
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state and tuple(own[key].shape) != tuple(state[key].shape)]
    parts = [f"{len(missing)} tensors missing (e.g. {missing[0]!r})"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {key!r}: {tuple(state[key].shape)} in the file, "
            f"{tuple(own[key].shape)} in the model)"
        )
    return ", ".join(parts) or " ".join(str(error).split())


def _load_registered(
    name: str, pretrained: bool, num_classes: Optional[int], weights: Optional[PathLike], pem_type: Optional[str]
) -> LoadedModel:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if timm.is_model(name):
        if pretrained:
            require_pretrained_weights(name)
        model, task = timm.create_model(name, pretrained=pretrained, **kwargs), CLASSIFICATION
    elif pretrained:
        return _load_pretrained_segmentation(name, num_classes, weights, pem_type)
    elif "." in name:
        raise ValueError(
            f"{name} names shipped segmentation weights: load them with pretrained=True (--pretrained), or give "
            f"{name.partition('.')[0]} alone for a fresh model."
        )
    else:
        model, task = create_segmentation_model(name, pem_type=pem_type or "linear", **kwargs), SEGMENTATION
    if weights is not None:
        state = _read_state_dict(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"weights {weights} do not fit {name}: {_weights_mismatch(model, state, error)}; give weights saved "
                f"from {name} built the same way (--num-classes, --pem-type), or load the run directory or "
                "model.safetensors that a training run wrote, which records its model."
            ) from error
    if not pretrained and task == CLASSIFICATION:
        forget_pretrained_weights(model)
    dataset, rho = tag_training_data(name) if pretrained else (None, None)
    names = model.pretrained_cfg.get("label_names") if pretrained else None
    return LoadedModel(model, task, name, dataset=dataset, rho=rho, class_names=list(names) if names else None)


def _load_pretrained_segmentation(
    name: str, num_classes: Optional[int], weights: Optional[PathLike], pem_type: Optional[str]
) -> LoadedModel:
    """``<model>`` (its DEFAULT weights) or ``<model>.<ENTRY>`` with the shipped weights, and the settings their meta
    records."""
    if weights is not None:
        raise ValueError(f"pretrained=True loads {name}'s shipped weights; give weights=FILE without it.")
    settings, entry = pretrained_segmentation_config(name)
    if num_classes is not None and num_classes != settings.num_classes:
        raise ValueError(f"{name}'s shipped weights have {settings.num_classes} classes, not {num_classes}.")
    if pem_type is not None and pem_type != settings.pem_type:
        raise ValueError(f"{name}'s shipped weights give {settings.pem_type!r} PEMs, not pem_type={pem_type!r}.")
    model = settings.build(weights=entry)
    tag = entry.meta["name"].partition(".")[2].split("_")[0]
    dataset = tag if tag in SEGMENTATION_DATASETS else None
    return LoadedModel(
        model, SEGMENTATION, name, segmentation_config=settings, dataset=dataset, class_names=settings.class_names
    )


def _load_hub(source: str) -> LoadedModel:
    folder = hub_folder(source)
    model = load_from_hub(source)
    if hub_task(folder) == SEGMENTATION:
        settings = hub_segmentation_config(folder)
        return LoadedModel(model, SEGMENTATION, source, segmentation_config=settings, class_names=settings.class_names)
    names = read_hub_config(folder).get("label_names")
    return LoadedModel(model, CLASSIFICATION, source, class_names=list(names) if names else None)


def _load_classification_run(path: Path, model_name: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    model, config = load_trained_model(path, model_name, num_classes)
    names = model.pretrained_cfg.get("label_names")
    names = list(names) if names else None
    if config is None:
        return LoadedModel(model, CLASSIFICATION, str(path), class_names=names)
    return LoadedModel(
        model,
        CLASSIFICATION,
        str(path),
        config,
        dataset=config.dataset,
        rho=config.rho,
        max_per_class=config.max_per_class,
        data_dir=config.data_dir,
        class_names=names,
    )


def _segmentation_checkpoint(run_dir: Path, checkpoint: Path) -> tuple[nn.Module, SegmentationModelConfig]:
    """The model of an unfinished segmentation run: its checkpoint's weights, built as its config.json says."""
    settings = SegmentationRunConfig.from_dict(runs.read_run_config(run_dir, SEGMENTATION)).model
    model = settings.build()
    try:
        model.load_state_dict(runs.load_training_state(checkpoint)["model"])
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"'{checkpoint}' does not hold weights of {settings.name!r} ({error}).") from error
    return model, settings


def _load_segmentation_run(path: Path, num_classes: Optional[int]) -> LoadedModel:
    """A segmentation run directory (finished or not), its ``checkpoint.pt``, or a segmentation weights file."""
    if path.suffix == ".safetensors" or (path / runs.WEIGHTS_FILE).is_file():
        model, settings = load_segmentation_model(path)
        run_dir = path if path.is_dir() else None
    else:  # an unfinished run, or its checkpoint: config.json says how to build the model
        run_dir = path if path.is_dir() else path.parent
        model, settings = _segmentation_checkpoint(run_dir, path / runs.CHECKPOINT_FILE if path.is_dir() else path)
    if num_classes is not None and settings.num_classes != num_classes:
        raise ValueError(f"{path} has {settings.num_classes} classes, not num_classes={num_classes}.")
    loaded = LoadedModel(model, SEGMENTATION, str(path), segmentation_config=settings, class_names=settings.class_names)
    if run_dir is not None and (run_dir / runs.CONFIG_FILE).is_file():
        loaded.config = SegmentationRunConfig.from_dict(runs.read_run_config(run_dir, SEGMENTATION))
        loaded.dataset, loaded.data_dir = loaded.config.data.get("dataset"), loaded.config.data.get("data_dir")
    return loaded


def _load_run(path: Path, model_name: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    """A run directory or a file a run wrote; bare weights load as the classifier ``model_name`` names."""
    try:
        task = runs.run_task(path)
    except ValueError as error:
        if path.suffix != ".safetensors":
            raise
        if model_name is None:
            raise ValueError(
                f"{error} For bare classifier weights pass model_name= (--model) naming the model."
            ) from error
        task = CLASSIFICATION  # bare weights: load_trained_model builds model_name for them
    if task == SEGMENTATION:
        if model_name is not None:
            raise ValueError(f"model_name applies to bare classifier weights; {path} records its segmentation model.")
        return _load_segmentation_run(path, num_classes)
    return _load_classification_run(path, model_name, num_classes)


def load_model(
    source: PathLike,
    *,
    pretrained: bool = False,
    model_name: Optional[str] = None,
    num_classes: Optional[int] = None,
    weights: Optional[PathLike] = None,
    pem_type: Optional[str] = None,
    npe_alpha: Optional[float] = None,
) -> LoadedModel:
    """Load the model ``source`` names, in eval mode, with its task, training config and data when known.

    For a registered name, ``pretrained`` loads its (tag's) pretrained weights, ``weights`` a
    state dict from a file, ``num_classes`` / ``pem_type`` shape it. For a saved model,
    ``model_name`` names the classifier of bare weights that record none, and ``num_classes``
    must agree with the weights. ``npe_alpha`` sets the NPE-LA strength (``npe_models.npe.set_alpha``).
    """
    text = os.fspath(source)
    kind = source_kind(text)
    if kind != "registered" and (pretrained or weights is not None or pem_type is not None):
        raise ValueError(
            f"pretrained, weights and pem_type apply to registered names, not to {text!r}, a saved model that "
            "carries its own weights and settings."
        )
    if kind == "registered":
        if model_name is not None:
            raise ValueError(f"model_name applies to bare weights files; {text!r} is itself a model name.")
        loaded = _load_registered(text, pretrained, num_classes, weights, pem_type)
    elif kind == "hub":
        if model_name is not None or num_classes is not None:
            raise ValueError(f"model_name and num_classes do not apply to {text!r}: its config.json records them.")
        loaded = _load_hub(text)
    else:
        loaded = _load_run(Path(text), model_name, num_classes)
    if npe_alpha is not None:
        set_alpha(loaded.model, npe_alpha)
    loaded.model.eval()
    return loaded
