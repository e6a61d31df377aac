"""A training run a person can watch (issue 16 item 6): the run-level and step bars on stderr, the evaluation bar,
--no-progress, and TensorBoard scalars that equal the log."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from npe_models.cli import main
from npe_models.runs import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def _continuable(run, tmp_path, epochs: int):
    """A copy of a finished run whose config asks for ``epochs`` epochs, to continue with --resume."""
    copy = tmp_path / "continued"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "epochs": epochs}))
    for name in ("metrics.json", "model.safetensors"):
        (copy / name).unlink()
    return copy


def test_bars_go_to_stderr_of_a_piped_run(watched_run):
    """Not a terminal: the run-level bar (to 2/2 epochs), each epoch's step bar with loss and lr, and the evaluation
    bar all go to stderr; stdout keeps only the results."""
    _, done = watched_run
    for shown in ("training:", "2/2 [", "epoch 1/2:", "epoch 2/2:", "loss=", "lr=0.05", "top1=", "evaluate full:"):
        assert shown in done.stderr, shown
    assert "training:" not in done.stdout and "epoch 1/2:" not in done.stdout
    assert "npe_la" in done.stdout and "run directory:" in done.stdout


def test_no_progress_silences_the_bars_and_bars_change_nothing(capsys, watched_run, watched_run_args, tmp_path):
    """The same run without bars or TensorBoard shows none on stderr and trains bit-identical weights."""
    watched, _ = watched_run
    out = tmp_path / "quiet"
    assert main(["train", *watched_run_args, "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "training:" not in err and "it/s" not in err and "evaluate full:" not in err
    assert not (out / "tensorboard").exists()
    quiet, shown = load_file(str(out / "model.safetensors")), load_file(str(watched / "model.safetensors"))
    assert quiet.keys() == shown.keys() and all(torch.equal(quiet[k], shown[k]) for k in quiet)


def test_resumed_run_bar_starts_at_the_resumed_epoch(capsys, watched_run, tmp_path):
    run = _continuable(watched_run[0], tmp_path, epochs=3)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "training:  67%|" in err and "training:   0%|" not in err and "epoch 3/3:" in err and "epoch 2/3:" not in err


def test_tensorboard_scalars_equal_the_log(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = watched_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "loss",
        "loss_ce",
        "loss_npe",
        "lr",
        "train/top1",
        "test/full/top1",
        "test/full/medium",
        "test_unadjusted/full/top1",
        "test_estimate/full/pearson",
        "test_estimate/full/spearman",
    } <= tags
    assert "epoch" not in tags and "images" not in tags
    log = read_jsonl(run / "log.jsonl")
    for tag, value_of in (
        ("loss", lambda r: r["loss"]),
        ("test/full/top1", lambda r: r["test"]["full"]["top1"]),
        ("test_estimate/full/spearman", lambda r: r["test_estimate"]["full"]["spearman"]),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([value_of(r) for r in log], rel=1e-6), tag


def test_resumed_run_with_tensorboard_continues_the_event_files(watched_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _continuable(watched_run[0], tmp_path, epochs=3)
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--tensorboard"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("loss")] == [1, 2, 3]


def test_tensorboard_missing_is_a_clear_error_before_any_work(capsys, monkeypatch, tmp_path):
    """Without tensorboard installed, --tensorboard fails at once (before the data, here missing, is read)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package makes import raise
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tmp_path / "no_data"), "--out", str(out), "--tensorboard"]) == 1
    err = capsys.readouterr().err
    assert "pip install npe-models[tensorboard]" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not out.exists()


def test_tensorboard_is_refused_for_segmentation(capsys, tmp_path):
    assert main(["train", "--model", "unet_fcn_npe1", "--tensorboard", "--out", str(tmp_path / "seg")]) == 1
    assert "--tensorboard belong to classification training" in capsys.readouterr().err
