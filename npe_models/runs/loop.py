"""The training-loop skeleton both task engines run on: resume, log, checkpoint, finish, in one run directory."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Optional

from torch import nn

from ..files import PathLike, append_jsonl, read_jsonl, remove_temporaries, write_jsonl
from .config import SerializableConfig, check_run_dir, record_weights_sha256, write_run_config
from .layout import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, WEIGHTS_FILE
from .lock import locked_dir
from .state import (
    NonFiniteLossError,
    capture_rng_state,
    load_training_state,
    non_finite_tensors,
    restore_rng_state,
    save_training_state,
)

__all__ = ["TrainingLoop"]

logger = logging.getLogger(__name__)


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
        remove_temporaries(self.run_dir)
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
