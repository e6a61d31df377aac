"""What a run directory stores besides its settings: final weights (safetensors with their settings in the
metadata, never non-finite) and the resumable training state (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..files import PathLike, atomic_write, file_sha256, read_json
from .layout import CONFIG_FILE, TASKS, WEIGHTS_FILE, WEIGHTS_SHA256

__all__ = [
    "NonFiniteLossError",
    "capture_rng_state",
    "restore_rng_state",
    "non_finite_tensors",
    "require_finite",
    "save_weights",
    "read_weights",
    "weights_metadata",
    "save_training_state",
    "load_training_state",
]


class NonFiniteLossError(RuntimeError, FloatingPointError):
    """The training loss or the weights became NaN or infinite; the run stopped and kept its last good checkpoint.

    Also a ``FloatingPointError``, which segmentation training raised before the engines shared this error.
    """


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


# ----------------------------------------------------------------------------- weights and training state


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` (a state_dict) that hold a NaN or an infinity."""
    return [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def require_finite(tensors: Mapping[str, Any], origin: PathLike) -> None:
    """Raise a clear error when weights loaded from ``origin`` hold NaN or infinite values (a diverged training)."""
    bad = non_finite_tensors(tensors)
    if bad:
        raise ValueError(
            f"'{origin}' holds non-finite weights ({len(bad)} of {len(tensors)} tensors, e.g. {bad[0]!r}): they "
            "were saved after the training diverged. Train again (with a lower learning rate) or restore the file."
        )


def save_weights(path: PathLike, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """The model's state_dict as safetensors (atomically), with ``metadata`` (which names the task) in its header.

    String values are stored as they are, others as JSON; :func:`read_weights` decodes them.
    Non-finite weights are refused: nothing is written.
    """
    if metadata.get("task") not in TASKS:
        raise ValueError(f"weights metadata must name the task, one of {TASKS}; got {metadata.get('task')!r}.")
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteLossError(
            f"refusing to write non-finite weights to '{path}' ({len(bad)} of {len(tensors)} tensors, e.g. {bad[0]!r})."
        )
    header = {"format": "pt", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    data = safetensors_bytes(tensors, metadata=header)  # in memory first: a full disk is then a plain OSError
    atomic_write(path, lambda temp: temp.write_bytes(data))


def _decoded(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(
        f"'{path}' is not a readable safetensors file ({error}); it is truncated or corrupted: "
        "re-run the training that wrote it, or restore it."
    )


def weights_metadata(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: _decoded(value) for key, value in (handle.metadata() or {}).items()}
    except (SafetensorError, OSError) as error:
        raise _unreadable(path, error) from error


def _check_recorded_sha256(path: Path) -> None:
    """A run directory's ``model.safetensors`` must have the sha256 its ``config.json`` recorded, if it has one."""
    config = path.parent / CONFIG_FILE
    if path.name != WEIGHTS_FILE or not config.is_file():
        return
    recorded = read_json(config)
    expected = recorded.get(WEIGHTS_SHA256) if isinstance(recorded, Mapping) else None
    if expected is not None and file_sha256(path) != expected:
        raise ValueError(
            f"'{path}' does not match the sha256 recorded in '{config}': the file is corrupted or was replaced; "
            "re-run or restore it."
        )


def read_weights(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a ``.safetensors`` file and its metadata (JSON values decoded, others kept as strings).

    A run directory's weights are checked against the sha256 its config.json records; unreadable
    files and non-finite weights are errors naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' does not exist.")
    _check_recorded_sha256(path)
    metadata = weights_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise _unreadable(path, error) from error
    require_finite(tensors, path)
    return tensors, metadata


def save_training_state(path: PathLike, state: dict[str, Any]) -> None:
    """A checkpoint (tensors, numbers, strings and containers of them), written atomically.

    It is serialised in memory first, so a full disk is an ``OSError`` (``ENOSPC``) rather than
    an opaque error of torch's zip writer.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda temp: temp.write_bytes(buffer.getbuffer()))


def load_training_state(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_training_state`, loaded without unpickling arbitrary objects.

    Its model weights (``"model"``) must be finite.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"'{path}' is not a readable npe-models checkpoint ({error}).") from error
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        require_finite(state["model"], path)
    return state
