"""Bad input gets one clear line naming the setting or file and what to do: settings out of range, options of
the other task (train, evaluate), damaged npz files, a headless model given to add_npe, the device of a resumed run."""

from __future__ import annotations

import importlib
import json
import logging
import os

import numpy as np
import pytest
import timm
import torch

import npe_models
from npe_models import cli
from npe_models.classification import resolve_train_config
from npe_models.data import load_cifar_lt

CLASSIFIER = ["--model", "resnet20", "--device", "cpu"]
SEGMENTER = ["--model", "unet_fcn", "--device", "cpu"]

# (command-line options, the error it must print)
BAD_SETTINGS = {
    "lr nan": (CLASSIFIER + ["--lr", "nan"], "lr (--lr) must be a finite number > 0; got nan."),
    "lr inf": (CLASSIFIER + ["--lr", "inf"], "lr (--lr) must be a finite number > 0; got inf."),
    "npe alpha nan": (["--model", "resnet20_npe4", "--npe-alpha", "nan"], "npe_alpha (--npe-alpha) must be a finite"),
    "epochs 0": (CLASSIFIER + ["--epochs", "0"], "epochs (--epochs) must be >= 1 for method 'ce'; got 0."),
    "epochs -3": (CLASSIFIER + ["--epochs", "-3"], "epochs (--epochs) must be an integer >= 0; got -3."),
    "gamma -1": (CLASSIFIER + ["--gamma", "-1"], "gamma (--gamma) must be a finite number > 0; got -1.0."),
    "milestones -5": (
        CLASSIFIER + ["--milestones", "-5"],
        "milestones (--milestones) must be an integer >= 1; got -5.",
    ),
    "seed -1": (CLASSIFIER + ["--seed", "-1"], "seed (--seed) must be an integer >= 0 and < 4294967296; got -1."),
    "momentum 1": (CLASSIFIER + ["--momentum", "1"], "momentum (--momentum) must be a finite number >= 0 and < 1"),
    "weight decay nan": (CLASSIFIER + ["--weight-decay", "nan"], "weight_decay (--weight-decay) must be a finite"),
    "rho inf": (CLASSIFIER + ["--rho", "inf"], "rho (--rho) must be a finite number >= 1; got inf."),
    "tau nan": (CLASSIFIER + ["--method", "la", "--tau", "nan"], "tau (--tau) must be a finite number; got nan."),
    "batch size 0": (CLASSIFIER + ["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1; got 0."),
    "accum steps 3": (CLASSIFIER + ["--accum-steps", "3"], "batch_size 64 must be divisible by accum_steps 3."),
    "segmentation option to a classifier": (
        ["--model", "resnet20_npe4", "--num-pems", "8", "--pem-type", "fcn"],
        "option(s) --num-pems, --pem-type belong to segmentation training, but this is a classification run",
    ),
    "classification option to a segmenter": (
        SEGMENTER + ["--rho", "10", "--method", "la"],
        "option(s) --method, --rho belong to classification training, but this is a segmentation run",
    ),
    "classification data options to a segmenter": (
        SEGMENTER + ["--image-size", "64", "--eval-batch-size", "4"],
        "option(s) --image-size, --eval-batch-size belong to classification training, but this is a segmentation run",
    ),
    "segmentation lr nan": (SEGMENTER + ["--lr", "nan"], "lr (--lr) must be a finite number > 0; got nan."),
    "segmentation alpha nan": (
        ["--model", "unet_fcn_npe1", "--npe-alpha", "nan"],
        "npe_alpha (--npe-alpha) must be a finite",
    ),
    "segmentation iterations 0": (
        SEGMENTER + ["--iterations", "0"],
        "iterations (--iterations) must be an integer >= 1",
    ),
    "segmentation seed -1": (SEGMENTER + ["--seed", "-1"], "seed (--seed) must be an integer >= 0"),
}


def _train_error(capsys, out, options) -> str:
    code = cli.main(["train", "--out", str(out), "--no-progress", *options])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_refused_before_anything_is_created(case, capsys, tmp_path, data_dir):
    options, message = BAD_SETTINGS[case]
    err = _train_error(capsys, tmp_path / "run", [*options, "--data-dir", str(data_dir)])
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


EVALUATE_OTHER_TASK = {
    # model, options of the other task, the error
    "classification options to a segmenter": (
        "unet_fcn_npe1",
        ["--sets", "exact", "--workers", "2", "--amp"],
        "option(s) --sets, --workers, --amp belong to classification evaluation, but this is a segmentation model",
    ),
    "segmentation options to a classifier": (
        "resnet32_npe16",
        ["--mode", "whole", "--overlays", "2"],
        "option(s) --mode, --overlays belong to segmentation evaluation, but this is a classification model",
    ),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_OTHER_TASK))
def test_evaluate_refuses_the_other_tasks_options_before_writing(case, capsys, tmp_path):
    model, options, message = EVALUATE_OTHER_TASK[case]
    code = cli.main(["evaluate", model, "--pretrained", "--out", str(tmp_path / "eval"), "--no-progress", *options])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "eval").exists()


def test_a_crop_larger_than_every_image_is_refused_before_the_run_starts(capsys, tmp_path, data_dir):
    err = _train_error(capsys, tmp_path / "run", SEGMENTER + ["--crop-size", "5000", "--data-dir", str(data_dir)])
    assert "crop_size (--crop-size) 5000x5000 is larger than every training image (at most 605x700)" in err
    assert not (tmp_path / "run").exists()


def _npz(folder, **arrays) -> None:
    folder.mkdir(exist_ok=True)
    test = dict(x=np.zeros((10, 32, 32, 3), np.uint8), y=np.arange(10))
    np.savez(folder / "test.npz", **test)
    np.savez(folder / "train.npz", **arrays)


DAMAGED_NPZ = {
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[:500]), "is not a readable npz file (BadZipFile)"),
    "random bytes": (lambda path: path.write_bytes(os.urandom(4000)), "is not a readable npz file (ValueError)"),
    "empty": (lambda path: path.write_bytes(b""), "is not a readable npz file (EOFError)"),
    "fewer labels than images": (
        lambda path: np.savez(path, x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(19) % 10),
        "'y' must hold one label per image: 20 images but labels of shape (19,).",
    ),
    "no images": (lambda path: np.savez(path, y=np.arange(20) % 10), "has no array x; expected x (images) and y"),
    "pickled labels": (
        lambda path: np.savez(path, x=np.zeros((20, 32, 32, 3), np.uint8), y=np.array([None] * 20, dtype=object)),
        "is not a readable npz file (ValueError)",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_NPZ))
def test_damaged_npz_files_name_the_file(case, tmp_path):
    _npz(tmp_path / "data", x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(20) % 10)
    damage, message = DAMAGED_NPZ[case]
    damage(tmp_path / "data" / "train.npz")
    with pytest.raises(ValueError) as error:
        load_cifar_lt(tmp_path / "data", rho=2)
    assert message in str(error.value) and "train.npz" in str(error.value)
    assert "allow_pickle" not in str(error.value)


def test_add_npe_refuses_a_model_without_a_classifier():
    with pytest.raises(ValueError, match=r"no classifier \(num_classes=0\).*reset_classifier\(N\)"):
        npe_models.add_npe(timm.create_model("resnet20", num_classes=0))
    headless = timm.create_model("resnet20_npe4", num_classes=0)  # timm's embedding convention still works
    headless.reset_classifier(10)
    assert npe_models.has_pems(headless)


def test_a_resumed_run_keeps_its_device_unless_this_machine_lacks_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, expected in (("cpu", "cpu"), ("cuda:3", "auto")):
        run = tmp_path / device.replace(":", "_")
        run.mkdir()
        config = resolve_train_config(run, False, model="resnet20", device=device).to_dict()
        (run / "config.json").write_text(json.dumps({"task": "classification", **config}))
        with caplog.at_level(logging.WARNING):
            assert resolve_train_config(run, True).device == expected
    assert "trained on cuda:3, which this machine lacks: it continues on cpu" in caplog.text


@pytest.mark.parametrize("opset", ["999", "17"])
def test_an_opset_outside_the_exporters_range_is_refused_before_exporting(opset, capsys, tmp_path):
    code = cli.main(["export", "onnx", "resnet20", "--output", str(tmp_path / "m.onnx"), "--opset", opset])
    err = capsys.readouterr().err
    assert code == 1 and "opset_version (--opset) must be an integer from 18" in err and f"got {opset}." in err
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()


def test_half_precision_models_export_and_match_onnx_runtime(tmp_path):
    from npe_models.onnx import check_parity, export_onnx

    half = timm.create_model("resnet20_npe4").eval().half()
    result = check_parity(half, export_onnx(half, tmp_path / "half.onnx"))
    assert result.passed and 0 < max(result.max_abs_diff.values()) < 0.5
    with pytest.raises(ValueError, match="bfloat16 model does not export to ONNX"):
        export_onnx(half.to(torch.bfloat16), tmp_path / "bf16.onnx")
    assert not (tmp_path / "bf16.onnx").exists()


def test_a_run_that_fails_in_its_first_epoch_leaves_no_run_to_remove(tmp_path, capsys, monkeypatch):
    _npz(tmp_path / "data", x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(20) % 10)
    command = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        *CLASSIFIER,
        "--data-dir",
        str(tmp_path / "data"),
        "--rho",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--eval-every",
        "0",
    ]
    run_class = importlib.import_module("npe_models.classification.train")._Run

    def diverge(self, epoch):
        raise ValueError("diverged")

    monkeypatch.setattr(run_class, "train_epoch", diverge)
    assert cli.main(command) == 1 and "diverged" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()
    monkeypatch.undo()
    assert cli.main(command) == 0  # the same command again, no rm needed
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()


def test_unlabeled_images_need_no_labels_but_calibration_images_do(tmp_path):
    from npe_models.adapt import read_images
    from npe_models.data import load_image_npz

    np.savez(tmp_path / "unlabeled.npz", x=np.zeros((3, 32, 32, 3), np.uint8))
    assert load_image_npz(tmp_path / "unlabeled.npz", labeled=False).labels.tolist() == [0, 0, 0]
    assert len(read_images(str(tmp_path / "unlabeled.npz"), tmp_path, labeled=False)) == 3
    with pytest.raises(ValueError, match="has no array y; expected x"):
        read_images(str(tmp_path / "unlabeled.npz"), tmp_path, labeled=True)


@pytest.mark.parametrize("value", [-1.0, float("nan")])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_library_and_the_command_line_refuse_the_same_npe_alpha_with_one_message(
    task, value, capsys, tmp_path, data_dir
) -> None:
    """The NPE head owns the range of npe_alpha: timm.create_model, create_segmentation_model, set_alpha and
    `npe-models train --npe-alpha` refuse the same values with the same message."""
    message = f"npe_alpha (--npe-alpha) must be a finite number >= 0; got {value!r}."
    if task == "classification":
        model, build = "resnet20_npe4", lambda: timm.create_model("resnet20_npe4", npe_alpha=value)
    else:
        model = "unet_fcn_npe1"
        build = lambda: npe_models.create_segmentation_model(model, num_classes=2, npe_alpha=value)  # noqa: E731
    with pytest.raises(ValueError) as built:
        build()
    with pytest.raises(ValueError) as set_later:
        npe_models.set_alpha(timm.create_model("resnet20_npe4"), value)
    err = _train_error(
        capsys, tmp_path / "run", ["--model", model, "--npe-alpha", str(value), "--data-dir", str(data_dir)]
    )
    assert str(built.value) == str(set_later.value) == message
    assert err.strip().endswith(message), err
