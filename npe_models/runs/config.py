"""A run directory's settings and rules: ``config.json`` (the task and its settings, JSON-serialisable
dataclasses), which folder may be trained into, what may change on resume, and which task a run is."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

from ..files import WEIGHTS_FILE, PathLike, file_sha256, read_json, write_json
from ..outputs import check_output_dir
from .layout import CHECKPOINT_FILE, CONFIG_FILE, TASKS, WEIGHTS_SHA256
from .state import load_training_state, weights_metadata

__all__ = [
    "config_from_dict",
    "SerializableConfig",
    "setting_changes",
    "write_run_config",
    "read_run_config",
    "resumable_config",
    "record_weights_sha256",
    "check_out_dir",
    "check_run_dir",
    "run_task",
]


ConfigT = TypeVar("ConfigT")


# ----------------------------------------------------------------------------- settings


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _restored(field: dataclasses.Field, value: Any) -> Any:
    """A JSON value back in the field's form: tuples for tuple defaults, nested config dataclasses rebuilt."""
    if isinstance(field.default, tuple) and isinstance(value, list):
        return tuple(value)
    if field.default_factory is not dataclasses.MISSING and isinstance(value, Mapping):
        default = field.default_factory()
        if dataclasses.is_dataclass(default):
            return config_from_dict(type(default), value)
    return value


def config_from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
    """Rebuild a config dataclass from JSON data: unknown keys are an error, tuples and nested configs restored.

    A ``"task"`` key (written beside a run's settings) must match ``cls.task`` and is not a setting; keys
    in ``cls.legacy_names`` (settings renamed since a run was written) are read under their new names.
    """
    data = dict(data)
    for old, new in getattr(cls, "legacy_names", {}).items():
        if old in data and new not in data:
            data[new] = data.pop(old)
    task = getattr(cls, "task", None)
    if task is not None and "task" in data:
        found = data.pop("task")
        if found != task:
            raise ValueError(f"these are the settings of a {found} run, not of a {task} one ({cls.__name__}).")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} settings {unknown} (valid: {sorted(fields)}); the config was written by "
            "another version of npe-models or for another task."
        )
    return cls(**{name: _restored(fields[name], value) for name, value in data.items()})


def setting_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Collection[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ, as ``name -> (saved, current)``; sections compare key by key (``train.lr``).

    ``may_change`` names the settings allowed to differ (paths, hardware, the length of the run).
    """
    changes: dict[str, tuple[Any, Any]] = {}
    for key in [*saved, *(k for k in current if k not in saved)]:
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            inner = setting_changes(old, new, [n.split(".", 1)[1] for n in may_change if n.startswith(f"{key}.")])
            changes.update({f"{key}.{name}": values for name, values in inner.items()})
        elif key not in may_change and old != new:
            changes[key] = (old, new)
    return changes


class SerializableConfig:
    """Base of the settings dataclasses a run stores: ``to_dict`` for JSON, a strict ``from_dict``, ``differences``.

    ``task`` names the task whose run folder holds these settings (None for parts of them);
    ``may_change`` the settings a resumed run may change; ``legacy_names`` maps the names of renamed
    settings, as older run folders hold them, to today's.
    """

    task: ClassVar[Optional[str]] = None
    may_change: ClassVar[tuple[str, ...]] = ()
    legacy_names: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """Rebuild settings saved with ``to_dict``; unknown keys are an error (a config from another version)."""
        return config_from_dict(cls, data)

    def differences(self, other: SerializableConfig) -> dict[str, tuple[Any, Any]]:
        """Settings (other than those in ``may_change``) whose values differ: name -> (self's, other's)."""
        return setting_changes(self.to_dict(), other.to_dict(), self.may_change)


# ----------------------------------------------------------------------------- run directories


def write_run_config(run_dir: PathLike, task: str, settings: Mapping[str, Any]) -> None:
    """``config.json``: the task, then its settings."""
    write_json(Path(run_dir) / CONFIG_FILE, {"task": task, **settings})


def _config_task(data: Any, path: Path) -> str:
    """The task of a config.json, also for those written before it was recorded."""
    if isinstance(data, Mapping) and data.get("task") in TASKS:
        return data["task"]
    if isinstance(data, Mapping) and "task" not in data:
        if isinstance(data.get("model"), Mapping) and isinstance(data.get("train"), Mapping):
            return "segmentation"  # sections "model" / "train" / "data"
        if isinstance(data.get("model"), str):
            return "classification"  # a flat TrainConfig
    raise ValueError(f"'{path}' is not the config.json of an npe-models training run.")


def read_run_config(run_dir: PathLike, task: Optional[str] = None) -> dict[str, Any]:
    """A run's ``config.json``: the task and settings (legacy ones without a task included), not the weights' sha256.

    With ``task``, it must be that task's run.
    """
    path = Path(run_dir) / CONFIG_FILE
    data = read_json(path)
    found = _config_task(data, path)
    if task is not None and found != task:
        raise ValueError(f"{run_dir} holds a {found} run, not a {task} one; pass the options of a {found} run.")
    return {key: value for key, value in data.items() if key != WEIGHTS_SHA256}


def record_weights_sha256(run_dir: PathLike) -> None:
    """Record the sha256 of the run's ``model.safetensors`` in its ``config.json``; loading the weights checks it."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    write_json(run_dir / CONFIG_FILE, {**config, WEIGHTS_SHA256: file_sha256(run_dir / WEIGHTS_FILE)})


def resumable_config(run_dir: PathLike, task: str) -> dict[str, Any]:
    """The ``config.json`` of the run to resume in ``run_dir``; a clear error when there is none."""
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"nothing to resume in {run_dir}: it has no {CONFIG_FILE}. Start the run without --resume, "
            "or pass the --out of an existing run."
        )
    return read_run_config(run_dir, task)


def check_out_dir(run_dir: PathLike) -> None:
    """A clear error, before any work is done, when ``run_dir`` cannot be a run directory: a file, or not writable."""
    run_dir = Path(run_dir)
    existing = next(folder for folder in (run_dir, *run_dir.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise FileExistsError(f"--out {run_dir}: '{existing}' is a file, not a directory; choose another --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"--out {run_dir}: '{existing}' is not writable (a read-only file system, or no permission); "
            "choose another --out."
        )


def check_run_dir(run_dir: PathLike, config: SerializableConfig, resume: bool) -> None:
    """Refuse an --out that cannot be written, to overwrite a run (or restart a finished one that kept no checkpoint),
    or (``resume``) to continue a run with settings that differ from its config.json."""
    run_dir = Path(run_dir)
    check_out_dir(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        if (run_dir / CHECKPOINT_FILE).is_file():
            raise FileExistsError(f"{run_dir} has a {CHECKPOINT_FILE} but no {CONFIG_FILE}; use a new --out.")
        check_output_dir(run_dir, "training run", is_own=lambda _: False, option="--out")  # no run: new or empty
        return
    finished = (run_dir / WEIGHTS_FILE).is_file()
    if finished and not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileExistsError(
            f"{run_dir} holds a finished run whose {CHECKPOINT_FILE} was removed: training in it, with --resume or "
            f"without, would start over and overwrite its {WEIGHTS_FILE} and log. Use its weights as they are, or "
            "train again in another --out."
        )
    if not resume:
        state = "a finished run" if finished else "a run"
        raise FileExistsError(f"{run_dir} holds {state}; pass --resume to continue it, or choose another --out.")
    saved = type(config).from_dict(read_run_config(run_dir, config.task))
    changed = saved.differences(config)
    if changed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(
            f"cannot resume {run_dir} with different settings ({listed}); resume with the original settings "
            "or start a new run in another --out."
        )


def _weights_task(metadata: Mapping[str, Any], path: Path) -> str:
    if metadata.get("task") in TASKS:
        return metadata["task"]
    if "segmentation_model" in metadata:
        return "segmentation"
    if "config" in metadata:
        return "classification"
    raise ValueError(f"'{path}' records no task: its weights were not saved by an npe-models training run.")


def _checkpoint_task(state: Mapping[str, Any], path: Path) -> str:
    if state.get("task") in TASKS:
        return state["task"]
    for task, unit in (("classification", "epoch"), ("segmentation", "iteration")):
        if unit in state and "model" in state:
            return task
    raise ValueError(f"'{path}' is not an npe-models training checkpoint.")


def run_task(source: PathLike) -> str:
    """``"classification"`` or ``"segmentation"``: the task of a run directory, ``checkpoint.pt`` or weights file.

    Recognises the files written before the task was recorded, by their layout.
    """
    source = Path(source)
    if source.is_dir():
        present = [source / name for name in (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE) if (source / name).is_file()]
        if not present:
            raise FileNotFoundError(f"'{source}' holds none of {CONFIG_FILE}, {WEIGHTS_FILE}, {CHECKPOINT_FILE}.")
        source = present[0]
    if not source.is_file():
        raise FileNotFoundError(f"'{source}' is neither a run directory nor a file.")
    if source.suffix == ".json":
        return _config_task(read_json(source), source)
    if source.suffix == ".safetensors":
        return _weights_task(weights_metadata(source), source)
    return _checkpoint_task(load_training_state(source), source)
