"""Run directories and checkpoints: atomic writes, resumable training state, final weights, model loading.

A run directory holds ``config.json`` (the resolved settings), ``log.jsonl`` (one line per epoch),
``checkpoint.pt`` (the latest epoch's full training state, loadable with
``torch.load(weights_only=True)``) and, once finished, ``model.safetensors`` and ``metrics.json``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from torch import nn

from .config import TrainConfig, num_pems_of

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "CHECKPOINT_FILE",
    "WEIGHTS_FILE",
    "METRICS_FILE",
    "atomic_write",
    "write_json",
    "read_jsonl",
    "append_jsonl",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "build_model",
    "load_trained_model",
    "read_saved_config",
    "check_num_classes",
]

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"

PathLike = Union[str, Path]


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (an empty list when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def capture_rng_state() -> dict[str, Any]:
    """torch's CPU and CUDA generator states, as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`capture_rng_state` (CUDA ones only where CUDA is in use)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    config: TrainConfig,
) -> None:
    """Everything needed to continue training after ``epoch`` completed epochs, written atomically."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": capture_rng_state(),
        "config": config.to_dict(),
    }
    atomic_write(path, lambda temp: torch.save(state, temp))


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"'{path}' is not a readable npe-models checkpoint ({error}).") from error


def save_weights(path: PathLike, model: nn.Module, config: Optional[TrainConfig] = None) -> None:
    """The model's state_dict as safetensors (atomically), with the training config in its metadata."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    metadata = {"format": "pt"}
    if config is not None:
        metadata["config"] = json.dumps(config.to_dict())
    atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The timm model a config names, with ``num_classes`` outputs (and its NPE settings when it has PEMs)."""
    if not timm.is_model(config.model.split(".", 1)[0]):
        raise ValueError(f"unknown model {config.model!r}; run `npe-models list` to see the available models.")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if num_pems_of(config.model):
        kwargs.update(npe_alpha=config.npe_alpha, npe_t=config.npe_t)
    return timm.create_model(config.model, **kwargs)


def check_num_classes(model: nn.Module, num_classes: int, source: str) -> None:
    """Raise a clear error when a model from ``source`` predicts a different number of classes than the data has."""
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != num_classes:
        raise ValueError(
            f"{source} has {model_classes} classes but the data set has {num_classes}; "
            "pass the --dataset the model was trained on."
        )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}


def _state_and_config(source: Path) -> tuple[dict[str, torch.Tensor], Optional[TrainConfig], str]:
    """Weights and training config from a run directory, a ``.safetensors`` file or a ``checkpoint.pt``."""
    if source.is_dir():
        if (source / WEIGHTS_FILE).is_file():
            source = source / WEIGHTS_FILE
        elif (source / CHECKPOINT_FILE).is_file():
            source = source / CHECKPOINT_FILE
        else:
            raise FileNotFoundError(
                f"run directory '{source}' has neither {WEIGHTS_FILE} nor {CHECKPOINT_FILE}: it has not finished an epoch."
            )
    if not source.is_file():
        raise FileNotFoundError(f"'{source}' is neither a run directory nor a checkpoint file.")
    if source.suffix == ".safetensors":
        state, metadata = _read_safetensors(source)
        config = TrainConfig.from_dict(json.loads(metadata["config"])) if "config" in metadata else None
        return state, config, str(source)
    checkpoint = load_checkpoint(source)
    if "model" not in checkpoint:
        raise ValueError(f"'{source}' has no 'model' entry; expected a checkpoint written by npe-models train.")
    config = TrainConfig.from_dict(checkpoint["config"]) if "config" in checkpoint else None
    return checkpoint["model"], config, str(source)


def _saved_num_classes(state: dict[str, torch.Tensor], model_name: str) -> Optional[int]:
    """Class count of a state_dict, read from the classifier named by the model's pretrained cfg."""
    classifier = get_pretrained_cfg(model_name.split(".", 1)[0]).classifier
    for key in (f"{classifier}.bias", f"{classifier}.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def read_saved_config(source: PathLike) -> Optional[TrainConfig]:
    """The training config stored with a run directory or checkpoint file (``None`` for bare weights)."""
    source = Path(source)
    if source.is_dir() and (source / CONFIG_FILE).is_file():
        return TrainConfig.from_dict(json.loads((source / CONFIG_FILE).read_text()))
    return _state_and_config(source)[1]


def load_trained_model(
    source: PathLike, model_name: Optional[str] = None, num_classes: Optional[int] = None
) -> tuple[nn.Module, Optional[TrainConfig]]:
    """A trained model (in eval mode) and its training config, from a run directory or a checkpoint file.

    ``model_name`` / ``num_classes`` are needed only for weights that carry no npe-models config;
    a given ``num_classes`` that disagrees with the weights is an error.
    """
    state, config, origin = _state_and_config(Path(source))
    if config is None:
        if model_name is None:
            raise ValueError(f"{origin} carries no training config: pass the model name (--model).")
        config = TrainConfig(model=model_name, method="npe" if num_pems_of(model_name) else "ce")
    if not timm.is_model(config.model.split(".", 1)[0]):
        raise ValueError(f"{origin} names unknown model {config.model!r}; run `npe-models list` to see the models.")
    saved_classes = _saved_num_classes(state, config.model)
    if saved_classes is None:
        raise ValueError(f"{origin} has no weights for {config.model}'s classifier; is it a checkpoint of another model?")
    if num_classes is not None and saved_classes != num_classes:
        raise ValueError(
            f"{origin} has {saved_classes} classes but the data set has {num_classes}; "
            "pass the --dataset the model was trained on."
        )
    model = build_model(config, saved_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{origin} does not fit model {config.model!r}: {error}") from error
    return model.eval(), config
