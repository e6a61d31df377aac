"""Segmentation weights: ``model.safetensors`` with the task and model settings in its metadata, and loading it back.

Run directories have the layout of :mod:`npe_models.runs` (``config.json``, ``log.jsonl``,
``checkpoint.pt``, ``model.safetensors``); the weights file alone is enough to rebuild the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .. import runs
from ..npe import fill_missing_pem_params
from ..runs import WEIGHTS_FILE
from .config import SegmentationModelConfig, SegmentationRunConfig

__all__ = ["load_segmentation_model", "load_weights_for_pem_training", "save_segmentation_weights"]

PathLike = Union[str, Path]


def save_segmentation_weights(path: PathLike, model: nn.Module, model_config: SegmentationModelConfig) -> None:
    """The model's state_dict as safetensors (atomically), with the task and model settings in the metadata."""
    runs.save_weights(path, model, {"task": SegmentationRunConfig.task, "segmentation_model": model_config.to_dict()})


def _weights_file(source: Path) -> Path:
    path = source / WEIGHTS_FILE if source.is_dir() else source
    if not path.is_file() or path.suffix != ".safetensors":
        raise FileNotFoundError(
            f"'{source}' is neither a finished segmentation run directory (with {WEIGHTS_FILE}) nor a .safetensors "
            "file; train first, or point at the run directory's model.safetensors."
        )
    return path


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of segmentation weights; weights of another task are an error."""
    state, metadata = runs.read_weights(path)
    if metadata.get("task", SegmentationRunConfig.task) != SegmentationRunConfig.task:
        raise ValueError(f"'{path}' holds a {metadata['task']} model, not a segmentation one.")
    return state, metadata


def load_segmentation_model(source: PathLike) -> tuple[nn.Module, SegmentationModelConfig]:
    """A trained model (eval mode) and its settings, from a run directory or its ``model.safetensors``."""
    path = _weights_file(Path(source))
    state, metadata = _read_weights(path)
    if "segmentation_model" not in metadata:
        raise ValueError(f"'{path}' carries no segmentation model settings; was it written by npe-models train?")
    model_config = SegmentationModelConfig.from_dict(metadata["segmentation_model"])
    model = model_config.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"'{path}' does not fit model {model_config.name!r}: {error}") from error
    return model.eval(), model_config


def load_weights_for_pem_training(model: nn.Module, source: PathLike) -> None:
    """Load a trained model's weights (e.g. the plain baseline) into ``model``; PEMs missing from them stay fresh.

    Every other parameter and buffer must match, so a checkpoint of another architecture or
    class count fails with a clear error rather than loading partly.
    """
    path = _weights_file(Path(source))
    state, _ = _read_weights(path)
    state = fill_missing_pem_params(state, model)
    own = model.state_dict()
    state.update({name: value for name, value in own.items() if name.startswith("pems.") and name not in state})
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"'{path}' does not fit this model apart from its PEMs: {error}. Build the model with the same "
            "architecture, class count and options (e.g. aux_loss, base_channels) as the checkpoint."
        ) from error
