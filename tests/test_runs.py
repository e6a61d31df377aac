"""The shared run machinery: files, weights, settings, the resume check, the task of a run and the training loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from npe_models import classification
from npe_models.classification import TrainConfig
from npe_models.classification.checkpoint import save_weights as save_classifier_weights
from npe_models.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    WEIGHTS_FILE,
    NonFiniteLossError,
    SerializableConfig,
    TrainingLoop,
    append_jsonl,
    atomic_write,
    check_run_dir,
    config_from_dict,
    load_training_state,
    read_json,
    read_jsonl,
    read_run_config,
    read_weights,
    resumable_config,
    run_task,
    save_training_state,
    save_weights,
    setting_changes,
    write_json,
    write_run_config,
)
from npe_models.segmentation import SegmentationModelConfig, SegmentationRunConfig, save_segmentation_weights

LEGACY = Path(__file__).parent / "fixtures" / "runs_v0_1"


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"top1": 1.0})

    def fail(temp: Path) -> None:
        temp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert read_json(target) == {"top1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_invalid_json_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        read_json(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    append_jsonl(log, {"epoch": 1, "loss": 2.0})
    append_jsonl(log, {"epoch": 2, "loss": 1.5})
    with open(log, "a") as handle:
        handle.write('{"epoch": 3, "lo')  # interrupted while writing
    with pytest.warns(UserWarning, match="torn"):
        assert read_jsonl(log) == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    log.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=f"{LOG_FILE}' line 2"):
        read_jsonl(log)
    assert read_jsonl(tmp_path / "none.jsonl") == []


@dataclass
class _Part(SerializableConfig):
    size: tuple[int, int] = (4, 4)
    names: list[str] = field(default_factory=list)


@dataclass
class _RunSettings(SerializableConfig):
    task: ClassVar[str] = "classification"
    may_change: ClassVar[tuple[str, ...]] = ("device", "part.names")

    lr: float = 0.1
    device: str = "cpu"
    part: _Part = field(default_factory=_Part)


def test_config_from_dict_restores_tuples_and_sections_and_rejects_unknown_keys() -> None:
    settings = _RunSettings(lr=0.5, part=_Part((2, 3), ["a"]))
    data = json.loads(json.dumps(settings.to_dict()))
    assert data == {"lr": 0.5, "device": "cpu", "part": {"size": [2, 3], "names": ["a"]}}
    assert _RunSettings.from_dict(data) == settings and isinstance(_RunSettings.from_dict(data).part.size, tuple)
    assert _RunSettings.from_dict({**data, "task": "classification"}) == settings
    with pytest.raises(ValueError, match=r"unknown _RunSettings settings \['momentum'\]"):
        _RunSettings.from_dict({**data, "momentum": 0.9})
    with pytest.raises(ValueError, match="settings of a segmentation run"):
        _RunSettings.from_dict({**data, "task": "segmentation"})
    with pytest.raises(ValueError, match="unknown _Part settings"):
        config_from_dict(_Part, {"task": "classification"})  # a part of the settings has no task


def test_differences_name_each_change_except_those_allowed() -> None:
    saved = _RunSettings(lr=0.1, device="cuda", part=_Part((4, 4), ["a"]))
    current = _RunSettings(lr=0.2, device="cpu", part=_Part((4, 8), ["b"]))
    assert saved.differences(current) == {"lr": (0.1, 0.2), "part.size": ([4, 4], [4, 8])}
    assert setting_changes({"a": 1}, {"a": 1, "b": 2}) == {"b": (None, 2)}
    old = TrainConfig(model="resnet20", method="ce")
    legacy = json.loads(json.dumps(old.to_dict()))  # config.json of a run written before the task was recorded
    assert "task" not in legacy and TrainConfig.from_dict(legacy).differences(old) == {}
    assert TrainConfig.from_dict({**legacy, "task": "classification", "device": "cuda"}).differences(old) == {}


def test_check_run_dir_refuses_to_overwrite_or_to_resume_with_changed_settings(tmp_path: Path) -> None:
    settings = _RunSettings()
    check_run_dir(tmp_path / "new", settings, resume=False)
    write_run_config(tmp_path, "classification", settings.to_dict())
    assert read_run_config(tmp_path)["task"] == "classification"
    with pytest.raises(FileExistsError, match="--resume"):
        check_run_dir(tmp_path, settings, resume=False)
    check_run_dir(tmp_path, _RunSettings(device="cuda", part=_Part(names=["x"])), resume=True)
    with pytest.raises(ValueError, match=r"lr: 0\.1 -> 0\.3, part\.size: \[4, 4\] -> \[1, 1\]"):
        check_run_dir(tmp_path, _RunSettings(lr=0.3, part=_Part((1, 1))), resume=True)
    with pytest.raises(ValueError, match="holds a classification run, not a segmentation one"):
        check_run_dir(tmp_path, SegmentationRunConfig(), resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resumable_config(tmp_path / "new", "classification")


def test_weights_metadata_round_trip(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    save_weights(tmp_path / "w.safetensors", model, {"task": "segmentation", "settings": {"a": [1, 2]}, "note": "x"})
    state, metadata = read_weights(tmp_path / "w.safetensors")
    assert metadata == {"format": "pt", "task": "segmentation", "settings": {"a": [1, 2]}, "note": "x"}
    assert torch.equal(state["weight"], model.weight.detach())
    with pytest.raises(ValueError, match="must name the task"):
        save_weights(tmp_path / "bare.safetensors", model, {})
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors' is not a readable safetensors file"):
        read_weights(tmp_path / "bad.safetensors")


def test_run_task_of_new_and_legacy_runs(tmp_path: Path) -> None:
    for name, task in (
        ("classification_npe4_interrupted", "classification"),
        ("segmentation_unet_npe1_interrupted", "segmentation"),
    ):
        assert "task" not in read_json(LEGACY / name / CONFIG_FILE)
        assert run_task(LEGACY / name) == run_task(LEGACY / name / CHECKPOINT_FILE) == task
        assert run_task(LEGACY / name / CONFIG_FILE) == task
        legacy_weights = tmp_path / f"{name}.safetensors"  # weights metadata as they were written before
        key = "config" if task == "classification" else "segmentation_model"
        save_file({"w": torch.zeros(1)}, str(legacy_weights), metadata={"format": "pt", key: "{}"})
        assert run_task(legacy_weights) == task
    save_classifier_weights(tmp_path / "cls" / WEIGHTS_FILE, nn.Linear(2, 2))
    save_segmentation_weights(tmp_path / "seg" / WEIGHTS_FILE, nn.Linear(2, 2), SegmentationModelConfig())
    assert run_task(tmp_path / "cls") == "classification" and run_task(tmp_path / "seg") == "segmentation"
    save_training_state(tmp_path / "state.pt", {"task": "segmentation", "model": {}})
    assert run_task(tmp_path / "state.pt") == "segmentation"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of"):
        run_task(tmp_path / "empty")
    save_training_state(tmp_path / "other.pt", {"weights": torch.zeros(1)})
    with pytest.raises(ValueError, match="not an npe-models training checkpoint"):
        run_task(tmp_path / "other.pt")


def test_non_finite_loss_error_is_shared_and_keeps_both_old_types() -> None:
    assert classification.NonFiniteLossError is NonFiniteLossError
    assert issubclass(NonFiniteLossError, RuntimeError) and issubclass(NonFiniteLossError, FloatingPointError)


@dataclass
class _ToySettings(SerializableConfig):
    task: ClassVar[str] = "classification"
    may_change: ClassVar[tuple[str, ...]] = ("steps",)

    steps: int = 6
    lr: float = 0.1


class _ToyLoop(TrainingLoop):
    """Noisy gradient descent on one number: every step draws from the global generator."""

    task = "classification"
    unit = "step"

    def __init__(
        self,
        config: _ToySettings,
        run_dir: Optional[Path],
        stop_at: Optional[int] = None,
        explode_at: Optional[int] = None,
    ) -> None:
        super().__init__(config, run_dir, config.steps)
        torch.manual_seed(0)
        self.model, self.stop_at, self.explode_at = nn.Module(), stop_at, explode_at
        self.model.register_buffer("value", torch.tensor(5.0))

    def checkpointed(self) -> dict[str, Any]:
        return {"model": self.model}

    def checkpoint_due(self, done: int) -> bool:
        return done % 2 == 0 or done == self.total

    def train_unit(self, index: int) -> dict[str, Any]:
        if index == self.stop_at:
            raise KeyboardInterrupt
        value = self.model.value
        loss = value**2 * (float("nan") if index == self.explode_at else 1.0)
        if not torch.isfinite(loss):
            raise self.non_finite(index, loss.item())
        value -= self.config.lr * (2 * value + torch.randn(()))
        return {"step": index + 1, "loss": loss.item()}

    def finish(self, record: Optional[dict[str, Any]]) -> float:
        return float(self.model.value)


def test_training_loop_resumes_exactly_and_drops_log_records_after_the_checkpoint(tmp_path: Path) -> None:
    config = _ToySettings()
    straight = _ToyLoop(config, tmp_path / "straight").run()
    assert _ToyLoop(config, None).run() == straight  # in memory: no run directory
    run = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _ToyLoop(config, run, stop_at=3).run()
    assert load_training_state(run / CHECKPOINT_FILE)["step"] == 2
    assert [r["step"] for r in read_jsonl(run / LOG_FILE)] == [1, 2, 3]
    with open(run / LOG_FILE, "a") as handle:
        handle.write('{"step": 4, "lo')
    with pytest.warns(UserWarning, match="torn"):
        assert _ToyLoop(config, run).run(resume=True) == straight
    assert read_jsonl(run / LOG_FILE) == read_jsonl(tmp_path / "straight" / LOG_FILE)
    assert read_json(run / CONFIG_FILE) == {"task": "classification", "steps": 6, "lr": 0.1}
    longer = _ToySettings(steps=8)
    assert _ToyLoop(longer, run).run(resume=True) == _ToyLoop(longer, tmp_path / "long").run()


def test_resuming_a_finished_run_without_its_checkpoint_is_refused_and_keeps_its_files(tmp_path: Path) -> None:
    run = tmp_path / "finished"
    _ToyLoop(_ToySettings(), run).run()
    save_file({"w": torch.ones(1)}, str(run / WEIGHTS_FILE))
    (run / CHECKPOINT_FILE).unlink()  # as the zoo keeps a finished run: weights and log, no checkpoint
    kept = {name: (run / name).read_bytes() for name in (WEIGHTS_FILE, LOG_FILE, CONFIG_FILE)}
    with pytest.raises(FileExistsError, match="finished run whose checkpoint.pt was removed.*another --out"):
        _ToyLoop(_ToySettings(), run).run(resume=True)
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_resuming_a_run_whose_checkpoint_was_lost_is_refused_and_keeps_its_log(tmp_path: Path) -> None:
    run = tmp_path / "lost"
    with pytest.raises(KeyboardInterrupt):
        _ToyLoop(_ToySettings(), run, stop_at=3).run()
    (run / CHECKPOINT_FILE).unlink()  # as a git-ignored checkpoint is lost with the machine it was on
    log = (run / LOG_FILE).read_bytes()
    with pytest.raises(FileNotFoundError, match="log reaches step 3 but its checkpoint.pt is missing.*another --out"):
        _ToyLoop(_ToySettings(), run).run(resume=True)
    assert (run / LOG_FILE).read_bytes() == log


def test_resuming_a_run_stopped_before_its_first_checkpoint_starts_it_over(tmp_path: Path) -> None:
    run = tmp_path / "early"
    with pytest.raises(KeyboardInterrupt):
        _ToyLoop(_ToySettings(), run, stop_at=1).run()
    assert not (run / CHECKPOINT_FILE).exists() and [r["step"] for r in read_jsonl(run / LOG_FILE)] == [1]
    assert _ToyLoop(_ToySettings(), run).run(resume=True) == _ToyLoop(_ToySettings(), tmp_path / "straight").run()


def test_training_loop_reports_a_non_finite_loss_with_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="during step 1; .* No checkpoint had been written yet") as error:
        _ToyLoop(_ToySettings(), tmp_path / "early", explode_at=0).run()
    assert "--resume" not in str(error.value)
    with pytest.raises(NonFiniteLossError, match=r"\(nan\) during step 4; .*\(after step 2\) is kept in .*or --resume"):
        _ToyLoop(_ToySettings(), tmp_path / "late", explode_at=3).run()
    assert load_training_state(tmp_path / "late" / CHECKPOINT_FILE)["step"] == 2
    with pytest.raises(NonFiniteLossError, match="no run directory, so nothing was saved"):
        _ToyLoop(_ToySettings(), None, explode_at=1).run()
