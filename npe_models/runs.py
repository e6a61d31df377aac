"""The run folder every task trains in, and the training-loop skeleton both task engines run on.

A run directory holds ``config.json`` (the task and its resolved settings; once finished, also the
sha256 of the weights), ``log.jsonl`` (one record per logged epoch or iteration), ``checkpoint.pt``
(the full training state, loadable with ``torch.load(weights_only=True)``) and, once finished,
``model.safetensors`` (weights with the task and settings in their metadata) and, for
classification, ``metrics.json``; ``.lock`` is held by the one process writing it. This module
writes and reads those files (atomically, never with non-finite weights), checks that a resumed
run keeps its settings, and drives the loop (:class:`TrainingLoop`): a task supplies the step, its
log record and its final files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import os
import secrets
import socket
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .models._bundled import file_sha256

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "CHECKPOINT_FILE",
    "WEIGHTS_FILE",
    "METRICS_FILE",
    "LOCK_FILE",
    "WEIGHTS_SHA256",
    "TASKS",
    "NonFiniteLossError",
    "RunDirLockedError",
    "atomic_write",
    "locked_dir",
    "non_finite_tensors",
    "require_finite",
    "write_json",
    "read_json",
    "read_jsonl",
    "write_jsonl",
    "append_jsonl",
    "capture_rng_state",
    "restore_rng_state",
    "save_weights",
    "read_weights",
    "save_training_state",
    "load_training_state",
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
    "TrainingLoop",
]

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"  # held (flock) by the one process writing the directory
WEIGHTS_SHA256 = "weights_sha256"  # the config.json key recording the sha256 of the run's model.safetensors
TASKS = ("classification", "segmentation")

PathLike = Union[str, Path]
ConfigT = TypeVar("ConfigT")
logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError, FloatingPointError):
    """The training loss or the weights became NaN or infinite; the run stopped and kept its last good checkpoint.

    Also a ``FloatingPointError``, which segmentation training raised before the engines shared this error.
    """


class RunDirLockedError(OSError):
    """Another process holds the directory's lock: it is training (or evaluating) into the same folder."""


# ----------------------------------------------------------------------------- files


def _temporary_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, with the mode new files get (0666 less the umask)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temporary_beside(path)
    mode = temp.stat().st_mode & 0o777  # kept for writers that replace the file (safetensors writes one of 0600)
    try:
        write(temp)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _remove_temporaries(directory: Path) -> None:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``directory`` (holding its lock):
    its own ``.<name>.<random>.tmp`` and the ``.tmpXXXXXX`` safetensors writes inside them."""
    for leftover in [*directory.glob(".*.*.tmp"), *directory.glob(".tmp??????")]:
        leftover.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", leftover)


HOLDER_RECORD_WAIT_S = 2.0  # how long a refused process waits for the lock's holder to record itself


def _live_holder(lock: Path) -> Optional[str]:
    """The holder recorded in ``lock``, or None while the record is missing, half-written or left by a dead process
    on this host."""
    try:
        holder = json.loads(lock.read_text())
        pid, host, started = int(holder["pid"]), holder["host"], holder["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # the record of a killed run, not yet overwritten by the new holder
        except PermissionError:
            pass  # alive, owned by another user
    return f"pid {pid} on {host} since {started}"


def _lock_holder(lock: Path) -> str:
    """Who holds a lock, as its holder recorded it: ``pid 123 on host since 2026-01-01T12:00:00+00:00``.

    The holder writes its record just after taking the lock, so a process refused in between waits
    up to :data:`HOLDER_RECORD_WAIT_S` for it rather than naming nobody (or a dead run).
    """
    deadline = time.monotonic() + HOLDER_RECORD_WAIT_S
    while (holder := _live_holder(lock)) is None:
        if time.monotonic() >= deadline:
            return "a process that has not recorded itself yet"
        time.sleep(0.02)
    return holder


@contextlib.contextmanager
def locked_dir(directory: PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if needed), so only one process writes it at a time.

    The lock (``flock`` on :data:`LOCK_FILE`, which records its holder) dies with its process, so
    the lock file a killed run leaves behind never blocks the next one. Raises
    :class:`RunDirLockedError` naming the holder when another process has it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise RunDirLockedError(
            f"{directory} is in use by another npe-models process ({_lock_holder(lock)}); wait for it to finish "
            "or stop it, or choose another --out."
        ) from None
    try:
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
        yield directory
    finally:
        os.close(handle)  # which releases the lock


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: PathLike) -> Any:
    """The JSON data in ``path``; a missing or invalid file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not valid JSON ({error}); restore it or start a new run.") from error


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (an empty list when it does not exist).

    A last line that is not valid JSON (torn by an interruption while it was written) is dropped
    with a warning; an invalid line before it is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position + 1 < len(lines):
                raise ValueError(f"'{path}' line {number} is not valid JSON ({error}).") from error
            warnings.warn(f"'{path}': dropped its last line, torn by an interruption: {line[:80]!r}", stacklevel=2)
    return records


def write_jsonl(path: PathLike, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as a JSON-lines file, atomically (replacing what was there)."""
    atomic_write(path, lambda temp: temp.write_text("".join(json.dumps(r) + "\n" for r in records)))


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


def _weights_metadata(path: Path) -> dict[str, Any]:
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
    metadata = _weights_metadata(path)
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

    A ``"task"`` key (written beside a run's settings) must match ``cls.task`` and is not a setting.
    """
    data = dict(data)
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
    ``may_change`` the settings a resumed run may change.
    """

    task: ClassVar[Optional[str]] = None
    may_change: ClassVar[tuple[str, ...]] = ()

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
        return _weights_task(_weights_metadata(source), source)
    return _checkpoint_task(load_training_state(source), source)


# ----------------------------------------------------------------------------- the training loop


def _state_mismatch(module: nn.Module, state: Mapping[str, Any]) -> str:
    """How a state_dict differs from a module's, in one line: its missing, unexpected and reshaped tensors."""
    own = module.state_dict()
    reshaped = [key for key in own if key in state and own[key].shape != getattr(state[key], "shape", None)]
    differences = (
        ("missing", [key for key in own if key not in state]),
        ("unexpected", [key for key in state if key not in own]),
        ("of another shape", reshaped),
    )
    return ", ".join(f"{len(keys)} tensors {what}, e.g. {keys[0]!r}" for what, keys in differences if keys)


class TrainingLoop(ABC):
    """One training run over ``total`` units (epochs or iterations) in ``run_dir`` (or in memory, without one).

    :meth:`run` resumes from the checkpoint, writes ``config.json``, trains unit after unit, logs
    and checkpoints them, and finishes. The task supplies what to checkpoint, the training of one
    unit (with its log record), when to log and checkpoint, and the final files. Only the main
    process (``is_main``) writes.
    """

    task: ClassVar[str]
    unit: ClassVar[str]  # "epoch" or "iteration": the checkpoint's counter and the log's key
    restart_hint: ClassVar[str] = "lower the learning rate (--lr)"

    def __init__(
        self, config: SerializableConfig, run_dir: Optional[PathLike], total: int, is_main: bool = True
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.total = total
        self.is_main = is_main
        self.saved = 0  # units completed at the last checkpoint
        self._config_recorded = False

    @abstractmethod
    def checkpointed(self) -> dict[str, Any]:
        """The objects (model, optimiser, ...) whose ``state_dict`` a checkpoint holds, by name."""

    @abstractmethod
    def train_unit(self, index: int) -> dict[str, Any]:
        """Train unit ``index`` (0-based); return its log record (starting with the unit's number)."""

    @abstractmethod
    def finish(self, record: Optional[dict[str, Any]]) -> Any:
        """Write the final files and return the run's result (``record``: the last unit's, None if none ran)."""

    def log_due(self, done: int) -> bool:
        """Whether the record of unit ``done`` (1-based) goes into the log."""
        return True

    def checkpoint_due(self, done: int) -> bool:
        """Whether a checkpoint is written after unit ``done`` (1-based)."""
        return True

    def begin(self, start: int) -> None:  # noqa: B027 (an optional hook)
        """Called once the run knows the units already done (``start``, after resuming), before the first unit."""

    def after_unit(self, done: int, record: dict[str, Any]) -> None:  # noqa: B027 (an optional hook)
        """Called after unit ``done`` is logged and checkpointed (reporting, synchronising processes)."""

    def _kept(self) -> str:
        """What a run stopped by a non-finite value has kept, and how to go on."""
        if self.run_dir is None:
            kept = "The run has no run directory, so nothing was saved."
        elif self.saved:
            kept = f"The last good state (after {self.unit} {self.saved}) is kept in {self.run_dir / CHECKPOINT_FILE}."
        else:
            kept = "No checkpoint had been written yet."
        retry = ", or --resume to retry from the checkpoint" if self.run_dir is not None and self.saved else ""
        return f"{kept} To continue, {self.restart_hint} and start a new run{retry}."

    def non_finite(self, index: int, value: float, detail: str = "") -> NonFiniteLossError:
        """The error for a loss that became non-finite during unit ``index`` (0-based)."""
        return NonFiniteLossError(
            f"the training loss became non-finite ({value}) during {self.unit} {index + 1}{detail}; training stopped. "
            f"{self._kept()}"
        )

    def _require_finite_weights(self, done: int) -> None:
        """Stop before a checkpoint would save NaN or infinite weights (of any module in :meth:`checkpointed`)."""
        states = {name: part.state_dict() for name, part in self.checkpointed().items() if isinstance(part, nn.Module)}
        bad = [f"{name}.{key}" for name, state in states.items() for key in non_finite_tensors(state)]
        if bad:
            total = sum(len(state) for state in states.values())
            raise NonFiniteLossError(
                f"the weights became non-finite during {self.unit} {done} ({len(bad)} of {total} tensors, e.g. "
                f"{bad[0]!r}); training stopped without saving them. {self._kept()}"
            )

    def _resume(self) -> int:
        """Load the checkpoint in the run directory, if there is one; returns the units it had completed."""
        path = self.run_dir / CHECKPOINT_FILE
        if not path.is_file():
            self._refuse_lost_checkpoint()
            return 0
        state = load_training_state(path)
        for name, part in self.checkpointed().items():
            try:
                part.load_state_dict(state[name])
            except (KeyError, RuntimeError, ValueError) as error:
                found = _state_mismatch(part, state[name]) if isinstance(part, nn.Module) and name in state else error
                raise ValueError(
                    f"'{path}' does not fit this run's {name} ({found}): it is a checkpoint of another model or run. "
                    "Resume the run that wrote it with its own settings, or start a new run in another --out."
                ) from error
        restore_rng_state(state["rng"])
        self.saved = int(state[self.unit])
        logger.info("resuming %s after %s %d of %d", self.run_dir, self.unit, self.saved, self.total)
        return self.saved

    def _refuse_lost_checkpoint(self) -> None:
        """Refuse to resume a run whose log goes past a unit that was checkpointed but whose checkpoint is gone:
        it would silently start over and cut its log back to nothing."""
        logged = max((r.get(self.unit, 0) for r in read_jsonl(self.run_dir / LOG_FILE)), default=0)
        if any(self.checkpoint_due(done) for done in range(1, logged + 1)):
            raise FileNotFoundError(
                f"cannot resume {self.run_dir}: its log reaches {self.unit} {logged:,} but its {CHECKPOINT_FILE} "
                "is missing (deleted, or left behind on another machine), so training would start over and "
                f"overwrite the log. Bring the checkpoint back, or start the run again in another --out (or after "
                f"removing {self.run_dir})."
            )

    def _open_run_dir(self, start: int) -> None:
        """Remove the temporary files of writes an interruption cut short, record the settings of a run being
        continued, and drop log records of units after the checkpoint (and a torn last line)."""
        _remove_temporaries(self.run_dir)
        if start or (self.run_dir / CONFIG_FILE).is_file():
            self._record_config()
        log = self.run_dir / LOG_FILE
        if log.is_file():
            write_jsonl(log, [r for r in read_jsonl(log) if r.get(self.unit, 0) <= start])

    def _record_config(self) -> None:
        """``config.json``, written with the first unit's results (a run that fails before them leaves no run
        behind to remove) or at once when continuing one."""
        if not self._config_recorded:
            write_run_config(self.run_dir, self.task, self.config.to_dict())
            self._config_recorded = True

    def _write_checkpoint(self, done: int) -> None:
        """``checkpoint.pt`` after unit ``done``; when it cannot be written (a full disk), the previous one stays."""
        state = {
            **{name: part.state_dict() for name, part in self.checkpointed().items()},
            self.unit: done,
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
            "task": self.task,
        }
        path = self.run_dir / CHECKPOINT_FILE
        try:
            save_training_state(path, state)
        except OSError as error:
            kept = (
                (
                    f"the previous one (after {self.unit} {self.saved}) is kept in {path}; free some space (or fix "
                    "the cause) and continue with --resume"
                )
                if self.saved
                else "there is no earlier one to keep"
            )
            raise OSError(
                error.errno,
                f"could not write the checkpoint after {self.unit} {done} ({error.strerror or error}); {kept}.",
            ) from error
        self.saved = done

    def _save(self, done: int, record: dict[str, Any]) -> None:
        self._record_config()
        checkpoint = self.checkpoint_due(done)
        if checkpoint:
            self._require_finite_weights(done)
        if self.log_due(done):
            append_jsonl(self.run_dir / LOG_FILE, record)
        if checkpoint:
            self._write_checkpoint(done)

    def _start(self, resume: bool, writes: bool) -> int:
        """Check the run directory (again, now under its lock: another process may have started a run in it since),
        resume from its checkpoint and record the settings; returns the units already done."""
        if writes:
            check_run_dir(self.run_dir, self.config, resume)
        start = self._resume() if resume and self.run_dir is not None else 0
        if writes:
            self._open_run_dir(start)
        return start

    def run(self, resume: bool = False) -> Any:
        """Train from the checkpoint (``resume``) or from the start to ``total`` units, then finish.

        The main process holds the run directory's lock (:func:`locked_dir`) throughout, so a second
        process training into it fails at once instead of mixing its files in; the sha256 of the
        final weights goes into ``config.json``.
        """
        writes = self.run_dir is not None and self.is_main
        with locked_dir(self.run_dir) if writes else contextlib.nullcontext():
            start = self._start(resume, writes)
            self.begin(start)
            record = None
            for index in range(start, self.total):
                record = self.train_unit(index)
                if writes:
                    self._save(index + 1, record)
                self.after_unit(index + 1, record)
            if writes:
                self._record_config()
            result = self.finish(record)
            if writes and (self.run_dir / WEIGHTS_FILE).is_file():
                record_weights_sha256(self.run_dir)
        return result
