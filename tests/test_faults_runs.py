"""Faults in the run directory (issue 13): one writer per directory, no non-finite weights saved or loaded, weights
checked against their recorded sha256, unreadable files, full disks and leftovers, file modes, an unusable --out,
and a kill inside the checkpoint-write window."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from npe_models import classification, segmentation
from npe_models.classification import NonFiniteLossError, TrainConfig, resolve_config, train
from npe_models.cli import main
from npe_models.files import file_sha256
from npe_models.loading import load_model
from npe_models.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    RunDirLockedError,
    load_training_state,
    locked_dir,
    read_json,
    read_jsonl,
    read_weights,
    save_training_state,
    write_json,
    write_run_config,
)
from npe_models.segmentation import SegmentationModelConfig, SegmentationTrainConfig, train_segmentation

train_module = importlib.import_module("npe_models.classification.train")
segmentation_training = importlib.import_module("npe_models.segmentation.training")
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A 10-class toy set in the npz format (30 training, 6 test images per class): runs take seconds."""
    folder = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    for name, per_class in (("train", 30), ("test", 6)):
        labels = np.repeat(np.arange(10), per_class)
        np.savez(folder / f"{name}.npz", x=rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), y=labels)
    return folder


def _argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """The tiny command-line run of the issue."""
    return [
        "train",
        "--model",
        "resnet20",
        "--max-per-class",
        "20",
        "--rho",
        "10",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def _config(data_dir: Path, **overrides) -> TrainConfig:
    settings = dict(
        model="resnet20",
        data_dir=str(data_dir),
        rho=10,
        max_per_class=20,
        epochs=2,
        batch_size=16,
        device="cpu",
        eval_every=0,
    )
    return resolve_config("hp2", "ce", **{**settings, **overrides})


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    """A finished two-epoch run; tests change copies of it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_config(tiny_data), out)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


class _Blobs(Dataset):
    """Three synthetic images with a bright square labelled 1."""

    ids = ["blob0", "blob1", "blob2"]

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(40, 44, dtype=torch.int64)
        mask[4 + 8 * index : 16 + 8 * index, 10:22] = 1
        return (40 + 150 * mask).to(torch.uint8).expand(3, -1, -1).clone(), mask


def _segmentation_config() -> SegmentationModelConfig:
    return SegmentationModelConfig(
        name="unet_fcn_npe2", num_classes=2, model_kwargs={"base_channels": 4}, class_names=["background", "blob"]
    )


def _train_segmentation(out: Path, model: Optional[nn.Module] = None, on_step: Optional[Callable] = None) -> dict:
    """Four SGD steps of a tiny U-Net on the blobs, with a checkpoint every two."""
    config = _segmentation_config()
    settings = SegmentationTrainConfig(
        iterations=4, batch_size=2, crop_size=(32, 32), checkpoint_every=2, freeze_backbone=False
    )
    return train_segmentation(model or config.build(), _Blobs(), settings, config, output_dir=out, on_step=on_step)


def _one_line_error(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` (root only); skips the test where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# ----------------------------------------------------------------------------- 1. one writer per run directory


_START_TOGETHER = """
import os, sys, time
from pathlib import Path
from npe_models.cli import main  # the slow imports first, then both processes start training at the same moment
ready = Path(sys.argv[1])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("data", ["tiny", pytest.param("cifar10", marks=pytest.mark.slow)])
def test_two_trainings_started_at_once_on_one_out_leave_one_consistent_run(data, request, tmp_path):
    data_dir = request.getfixturevalue("tiny_data" if data == "tiny" else "data_dir")
    out, ready = tmp_path / "run", tmp_path / "ready"
    ready.mkdir()
    processes = {
        seed: subprocess.Popen(
            [sys.executable, "-c", _START_TOGETHER, str(ready), *_argv(data_dir, out, "--seed", seed)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("0", "1")
    }
    done = {seed: (process, process.communicate(timeout=600)[1]) for seed, process in processes.items()}
    codes = sorted(process.returncode for process, _ in done.values())
    assert codes == [0, 1], {seed: stderr[-2000:] for seed, (_, stderr) in done.items()}
    seed, winner = next((seed, process) for seed, (process, _) in done.items() if process.returncode == 0)
    refused = next(stderr for process, stderr in done.values() if process.returncode == 1).strip().splitlines()
    assert refused[-1].startswith(
        f"npe-models train: error: {out} is in use by another npe-models process (pid {winner.pid} on "
    ), refused
    assert read_json(out / CONFIG_FILE)["seed"] == int(seed)
    assert [record["epoch"] for record in read_jsonl(out / LOG_FILE)] == [1, 2]
    metrics = read_json(out / METRICS_FILE)
    assert metrics["training"]["epochs"] == 2 and metrics["config"]["seed"] == int(seed)
    checkpoint = load_training_state(out / CHECKPOINT_FILE)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["seed"] == int(seed)
    assert read_weights(out / WEIGHTS_FILE)[1]["config"]["seed"] == int(seed)  # and its sha256 is the recorded one


def test_a_held_lock_refuses_trainings_and_evaluations_naming_its_holder(
    tiny_data, finished_run, tmp_path, capsys, monkeypatch
):
    holder = re.escape(f"in use by another npe-models process (pid {os.getpid()} on ")
    out = tmp_path / "run"
    with locked_dir(out):
        assert main(_argv(tiny_data, out)) == 1
        assert re.search(holder, capsys.readouterr().err)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "the refused run wrote nothing"
        with pytest.raises(RunDirLockedError, match=holder):
            _train_segmentation(out)
        model = load_model(finished_run).model
        with pytest.raises(RunDirLockedError, match=holder):
            classification.evaluate_run(model, out, data_dir=tiny_data, rho=10, max_per_class=20, device="cpu")
        monkeypatch.setattr("npe_models.segmentation.evaluation.segmentation_dataset", lambda *args, **kwargs: _Blobs())
        with pytest.raises(RunDirLockedError, match=holder):
            segmentation.evaluate_run(_segmentation_config().build(), _segmentation_config(), out, device="cpu")
    assert main(_argv(tiny_data, out)) == 0, "released when its holder is done"
    assert isinstance(RunDirLockedError("x"), OSError), "npe-models' main reports it as one line"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_process_refused_before_the_holder_recorded_itself_waits_for_the_record(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_FILE
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "long ago"}))
    handle = os.open(lock, os.O_RDWR)  # the new holder has the lock; the killed run's record is still in the file
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        live = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"})
        recorder = threading.Timer(0.3, lock.write_text, [live])
        recorder.start()
        with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()} on .* since now"):
            with locked_dir(out):
                pass
        recorder.join()
        lock.write_text("")
        monkeypatch.setattr("npe_models.runs.lock.HOLDER_RECORD_WAIT_S", 0.1)
        with pytest.raises(RunDirLockedError, match="a process that has not recorded itself yet"):
            with locked_dir(out):
                pass
    finally:
        os.close(handle)


def test_the_run_directory_is_checked_again_under_its_lock(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = train_module._Run.__init__

    def another_process_finishes_meanwhile(self, *args):
        original(self, *args)  # this run has passed its first check and loaded its data
        monkeypatch.setattr(train_module._Run, "__init__", original)
        train(_config(tiny_data, seed=1), out)

    monkeypatch.setattr(train_module._Run, "__init__", another_process_finishes_meanwhile)
    with pytest.raises(FileExistsError, match="holds a finished run"):
        train(_config(tiny_data), out)
    assert read_json(out / CONFIG_FILE)["seed"] == 1 and len(read_jsonl(out / LOG_FILE)) == 2


_HANG_BEFORE_SECOND_CHECKPOINT_RENAME = """
import os, sys, time
from pathlib import Path
replace, renames = os.replace, []
def hang_in_the_window(source, target):
    if Path(target).name == "checkpoint.pt":
        renames.append(target)
        if len(renames) == 2:  # the checkpoint of epoch 2 is written to its temporary file, not yet renamed
            Path(sys.argv[1]).write_text("in the window")
            time.sleep(600)
    replace(source, target)
os.replace = hang_in_the_window
from npe_models.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_kill_in_the_checkpoint_write_window_leaves_a_loadable_checkpoint_and_its_leftovers_block_nothing(
    tiny_data, tmp_path
):
    out, marker = tmp_path / "run", tmp_path / "in_window"
    process = subprocess.Popen(
        [sys.executable, "-c", _HANG_BEFORE_SECOND_CHECKPOINT_RENAME, str(marker), *_argv(tiny_data, out)],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.kill()
    stderr = process.communicate()[1]
    assert marker.exists(), stderr[-3000:]
    assert load_training_state(out / CHECKPOINT_FILE)["epoch"] == 1
    leftovers = list(out.glob(f".{CHECKPOINT_FILE}.*.tmp"))
    assert len(leftovers) == 1 and load_training_state(leftovers[0])["epoch"] == 2, "killed after the whole write"
    assert f'"pid": {process.pid}' in (out / LOCK_FILE).read_text(), "the lock file of the killed process stays"
    assert main(_argv(tiny_data, out, "--resume")) == 0
    assert not list(out.glob(".*.tmp")), "the next start removes the leftovers"
    assert [record["epoch"] for record in read_jsonl(out / LOG_FILE)] == [1, 2]
    assert read_json(out / METRICS_FILE)["training"]["epochs"] == 2


# ----------------------------------------------------------------------------- 2. non-finite weights


def _poison_after(monkeypatch, epoch: int) -> None:
    """Make the model's classifier NaN at the end of ``epoch`` (1-based), whose loss is still finite."""
    original = train_module._Run.train_epoch

    def diverging(self, index):
        record = original(self, index)
        if index + 1 == epoch:
            with torch.no_grad():
                self.model.get_classifier().weight.fill_(float("nan"))
        return record

    monkeypatch.setattr(train_module._Run, "train_epoch", diverging)


def test_non_finite_weights_are_never_checkpointed_nor_saved(tiny_data, tmp_path, monkeypatch):
    _poison_after(monkeypatch, epoch=2)
    with pytest.raises(
        NonFiniteLossError,
        match=r"weights became non-finite during epoch 2 .*'model\.fc\.weight'"
        r".* The last good state \(after epoch 1\) is kept in .*checkpoint\.pt",
    ) as error:
        train(_config(tiny_data, epochs=3), tmp_path / "late")
    _one_line_error(error)
    checkpoint = load_training_state(tmp_path / "late" / CHECKPOINT_FILE)  # which refuses non-finite weights
    assert checkpoint["epoch"] == 1 and not (tmp_path / "late" / WEIGHTS_FILE).exists()
    assert [record["epoch"] for record in read_jsonl(tmp_path / "late" / LOG_FILE)] == [1]

    _poison_after(monkeypatch, epoch=1)
    with pytest.raises(NonFiniteLossError, match="during epoch 1 .* No checkpoint had been written yet"):
        train(_config(tiny_data, epochs=1), tmp_path / "only")
    assert not (tmp_path / "only" / CHECKPOINT_FILE).exists() and not (tmp_path / "only" / WEIGHTS_FILE).exists()


def test_non_finite_segmentation_weights_are_never_saved(tmp_path):
    def poison(iteration, record):
        if iteration == 4:  # the last iteration, which ends with a checkpoint and the final weights
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))

    model = _segmentation_config().build()
    with pytest.raises(NonFiniteLossError, match=r"during iteration 4 .*\(after iteration 2\) is kept"):
        _train_segmentation(tmp_path / "run", model, on_step=poison)
    assert load_training_state(tmp_path / "run" / CHECKPOINT_FILE)["iteration"] == 2
    assert not (tmp_path / "run" / WEIGHTS_FILE).exists()


def test_non_finite_weights_written_by_an_older_version_are_refused_on_resume_and_load(tiny_data, run_copy):
    for name in (WEIGHTS_FILE, METRICS_FILE):
        (run_copy / name).unlink()
    state = load_training_state(run_copy / CHECKPOINT_FILE)
    state["model"]["fc.weight"][0, 0] = float("nan")
    save_training_state(run_copy / CHECKPOINT_FILE, {**state, "epoch": 1})
    with pytest.raises(ValueError, match="checkpoint.pt' holds non-finite weights \\(1 of .*'fc.weight'") as error:
        train(_config(tiny_data), run_copy, resume=True)
    _one_line_error(error)
    with pytest.raises(ValueError, match="holds non-finite weights"):
        load_model(run_copy)


# ----------------------------------------------------------------------------- 3. weights checked on load


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # in the tensor data: the header stays readable
    path.write_bytes(bytes(data))


def test_weights_record_their_sha256_and_a_changed_file_is_refused(run_copy, tmp_path, capsys):
    assert read_json(run_copy / CONFIG_FILE)[WEIGHTS_SHA256] == file_sha256(run_copy / WEIGHTS_FILE)
    assert load_model(run_copy).config.seed == 0, "the recorded sha256 is not a setting"
    _flip_a_byte(run_copy / WEIGHTS_FILE)
    for source in (run_copy, run_copy / WEIGHTS_FILE):
        with pytest.raises(ValueError, match="does not match the sha256 recorded in") as error:
            load_model(source)
        _one_line_error(error, str(run_copy / CONFIG_FILE), "corrupted or was replaced; re-run or restore it")
    assert main(["evaluate", str(run_copy), "--no-progress"]) == 1
    assert "does not match the sha256 recorded in" in capsys.readouterr().err

    _train_segmentation(tmp_path / "segmentation")
    weights = tmp_path / "segmentation" / WEIGHTS_FILE
    assert read_json(tmp_path / "segmentation" / CONFIG_FILE)[WEIGHTS_SHA256] == file_sha256(weights)
    load_model(tmp_path / "segmentation")
    _flip_a_byte(weights)
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_model(tmp_path / "segmentation")


def _without_recorded_sha256(run_dir: Path) -> None:
    """The config.json of a run written before the weights' sha256 was recorded."""
    config = read_json(run_dir / CONFIG_FILE)
    write_json(run_dir / CONFIG_FILE, {key: value for key, value in config.items() if key != WEIGHTS_SHA256})


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_unreadable_weights_are_one_line_errors_naming_the_file(run_copy, tmp_path, damage):
    weights = run_copy / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_model(run_copy)
    loose = tmp_path / "loose" / WEIGHTS_FILE  # no config.json beside it: no sha256 to compare with
    loose.parent.mkdir()
    shutil.copy(weights, loose)
    with pytest.raises(ValueError, match="is not a readable safetensors file") as error:
        load_model(loose, model_name="resnet20")
    _one_line_error(error, str(loose), "truncated or corrupted")
    _without_recorded_sha256(run_copy)
    with pytest.raises(ValueError, match="is not a readable safetensors file") as error:
        load_model(run_copy)
    _one_line_error(error, str(weights), "truncated or corrupted")


def test_non_finite_weights_in_a_weights_file_are_refused(run_copy):
    state, metadata = read_weights(run_copy / WEIGHTS_FILE)
    state["fc.bias"][3] = float("inf")
    header = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    save_file(state, str(run_copy / WEIGHTS_FILE), metadata=header)  # by hand: save_weights refuses to write it
    _without_recorded_sha256(run_copy)
    with pytest.raises(ValueError, match="model.safetensors' holds non-finite weights \\(1 of .*'fc.bias'") as error:
        load_model(run_copy)
    _one_line_error(error)


def test_invalid_config_json_is_an_error_naming_it(tiny_data, run_copy, capsys):
    (run_copy / CONFIG_FILE).write_text('{"model": "resnet20", ')
    with pytest.raises(ValueError, match=f"'{run_copy / CONFIG_FILE}' is not valid JSON"):
        load_model(run_copy)
    assert main(_argv(tiny_data, run_copy, "--resume")) == 1
    assert f"'{run_copy / CONFIG_FILE}' is not valid JSON" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_on_resume_is_a_clear_error(tiny_data, finished_run, tmp_path, capsys):
    other = _config(tiny_data, model="resnet32")
    write_run_config(tmp_path / "run", other.task, other.to_dict())
    shutil.copy(finished_run / CHECKPOINT_FILE, tmp_path / "run" / CHECKPOINT_FILE)  # a resnet20's
    with pytest.raises(
        ValueError,
        match=r"checkpoint.pt' does not fit this run's model \(\d+ tensors missing, e\.g\. "
        r"'layer1\.3\.",
    ) as error:
        train(other, tmp_path / "run", resume=True)
    _one_line_error(error, "checkpoint of another model or run")
    assert main(_argv(tiny_data, tmp_path / "run", "--resume", "--model", "resnet32")) == 1
    assert "does not fit this run's model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 4. full disks and leftovers


def _check_full_disk(error: pytest.ExceptionInfo, out: Path) -> None:
    assert error.value.errno == errno.ENOSPC
    _one_line_error(
        error,
        "could not write the checkpoint after epoch 2 (No space left on device); the previous "
        f"one (after epoch 1) is kept in {out / CHECKPOINT_FILE}",
        "--resume",
    )
    assert load_training_state(out / CHECKPOINT_FILE)["epoch"] == 1
    assert not list(out.glob(".*.tmp")) and not (out / WEIGHTS_FILE).exists()


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    write_bytes, checkpoints = Path.write_bytes, []

    def full_disk(path: Path, data) -> int:
        if path.name.startswith(f".{CHECKPOINT_FILE}."):
            checkpoints.append(path)
            if len(checkpoints) == 2:  # after epoch 2
                write_bytes(path, bytes(data)[:1000])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError) as error:
        train(_config(tiny_data), out)
    monkeypatch.undo()
    _check_full_disk(error, out)
    for leftover in (f".{CHECKPOINT_FILE}.0123456789ab.tmp", f".{CONFIG_FILE}.ba9876543210.tmp", ".tmpAbC123"):
        (out / leftover).write_bytes(b"left by an interrupted write")
    assert train(_config(tiny_data), out, resume=True).metrics["training"]["epochs"] == 2
    assert sorted(p.name for p in out.glob(".*")) == [LOCK_FILE], "the next start removed the leftovers"


def test_a_really_full_tmpfs_while_checkpointing_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    with _tmpfs(tmp_path / "small", "size=3m") as small:  # room for one resnet20 checkpoint (2.2 MB), not two
        with pytest.raises(OSError) as error:
            train(_config(tiny_data), small / "run")
        _check_full_disk(error, small / "run")
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        assert train(_config(tiny_data), small / "run", resume=True).metrics["training"]["epochs"] == 2


# ----------------------------------------------------------------------------- 5. file modes


def test_written_files_get_the_mode_the_umask_gives(tiny_data, tmp_path):
    previous = os.umask(0o027)
    try:
        train(_config(tiny_data, epochs=1), tmp_path / "run")
    finally:
        os.umask(previous)
    for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_FILE, LOG_FILE, LOCK_FILE):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name


# ----------------------------------------------------------------------------- 6. an unusable --out


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """A folder nobody may write: a read-only tmpfs as root, else a folder without write permission."""
    if os.geteuid() == 0:
        with _tmpfs(folder, "ro,size=64k"):
            yield folder
        return
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


def _no_data(*args, **kwargs):
    raise AssertionError("the data was loaded before the --out was checked")


def test_an_out_that_is_a_file_or_read_only_is_refused_before_the_data_is_loaded(
    tiny_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(train_module, "load_long_tailed", _no_data)
    monkeypatch.setattr(segmentation_training, "segmentation_dataset", _no_data)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    segmentation_args = [
        "train",
        "--model",
        "unet_fcn_npe1",
        "--dataset",
        "stare",
        "--data-dir",
        str(tiny_data),
        "--iterations",
        "2",
        "--no-progress",
        "--out",
    ]
    for out in (afile, afile / "run"):
        for argv in (_argv(tiny_data, out), [*segmentation_args, str(out)]):
            assert main(argv) == 1
            assert f"'{afile}' is a file, not a directory; choose another --out" in capsys.readouterr().err
    with _read_only(tmp_path / "read_only") as folder:
        for argv in (_argv(tiny_data, folder / "run"), [*segmentation_args, str(folder / "run")]):
            assert main(argv) == 1
            assert f"'{folder}' is not writable" in capsys.readouterr().err
        assert not list(folder.iterdir())
