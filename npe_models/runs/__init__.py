"""The run folder every task trains in, and the training-loop skeleton both task engines run on.

A run directory holds ``config.json`` (the task and its resolved settings; once finished, also the
sha256 of the weights), ``log.jsonl`` (one record per logged epoch or iteration), ``checkpoint.pt``
(the full training state, loadable with ``torch.load(weights_only=True)``) and, once finished,
``model.safetensors`` (weights with the task and settings in their metadata) and, for
classification, ``metrics.json``; ``.lock`` is held by the one process writing it. The modules
here hold one concern each: :mod:`.config` the settings and the rules of a run folder, :mod:`.lock`
the lock, :mod:`.state` the weights and training state, :mod:`.loop` the loop (:class:`TrainingLoop`):
a task supplies the step, its log record and its final files.
"""

from ..files import WEIGHTS_FILE, append_jsonl, atomic_write, read_json, read_jsonl, write_json, write_jsonl
from .config import (
    SerializableConfig,
    check_out_dir,
    check_run_dir,
    config_from_dict,
    read_run_config,
    record_weights_sha256,
    resumable_config,
    run_task,
    setting_changes,
    write_run_config,
)
from .layout import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, METRICS_FILE, TASKS, WEIGHTS_SHA256
from .lock import LOCK_FILE, RunDirLockedError, locked_dir
from .loop import TrainingLoop
from .state import (
    NonFiniteLossError,
    capture_rng_state,
    load_training_state,
    non_finite_tensors,
    read_weights,
    require_finite,
    restore_rng_state,
    save_training_state,
    save_weights,
)

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
