"""Segmentation weights: ``model.safetensors`` with the model settings in its metadata, and loading it back.

Run directories follow the classification engine's layout (``config.json``, ``log.jsonl``,
``checkpoint.pt``, ``model.safetensors``); the weights file alone is enough to rebuild the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..classification.checkpoint import WEIGHTS_FILE, atomic_write
from ..npe import fill_missing_pem_params
from .config import SegmentationModelConfig

__all__ = ["load_segmentation_model", "load_weights_for_pem_training", "save_segmentation_weights"]

PathLike = Union[str, Path]


def save_segmentation_weights(path: PathLike, model: nn.Module, model_config: SegmentationModelConfig) -> None:
    """The model's state_dict as safetensors (atomically), with its model settings in the metadata."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    metadata = {"format": "pt", "segmentation_model": json.dumps(model_config.to_dict())}
    atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def _weights_file(source: Path) -> Path:
    path = source / WEIGHTS_FILE if source.is_dir() else source
    if not path.is_file() or path.suffix != ".safetensors":
        raise FileNotFoundError(
            f"'{source}' is neither a finished segmentation run directory (with {WEIGHTS_FILE}) nor a .safetensors "
            "file; train first, or point at the run directory's model.safetensors."
        )
    return path


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}


def load_segmentation_model(source: PathLike) -> tuple[nn.Module, SegmentationModelConfig]:
    """A trained model (eval mode) and its settings, from a run directory or its ``model.safetensors``."""
    path = _weights_file(Path(source))
    state, metadata = _read_weights(path)
    if "segmentation_model" not in metadata:
        raise ValueError(f"'{path}' carries no segmentation model settings; was it written by npe-models train?")
    model_config = SegmentationModelConfig.from_dict(json.loads(metadata["segmentation_model"]))
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

