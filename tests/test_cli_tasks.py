"""`npe-models` routes segmentation models to the segmentation task and exports through `export onnx|hub`."""

from __future__ import annotations

import json

import onnx
import pytest

from npe_models.cli import build_parser, main


def test_segmentation_model_trains_through_npe_models_train(tmp_path, data_dir) -> None:
    out = tmp_path / "seg"
    status = main(
        [
            "train",
            "--model",
            "unet_fcn_npe1",
            "--model-arg",
            "base_channels=4",
            "--iterations",
            "1",
            "--crop-size",
            "32",
            "--batch-size",
            "1",
            "--no-freeze-backbone",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--no-progress",
        ]
    )
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["dataset"] == "stare" and config["model"]["name"] == "unet_fcn_npe1"
    assert (out / "model.safetensors").is_file()


def test_export_onnx_subcommand(tmp_path) -> None:
    target = tmp_path / "resnet20.onnx"
    assert main(["export", "onnx", "resnet20_npe4", "--num-classes", "10", "-o", str(target)]) == 0
    model = onnx.load(str(target))
    assert {p.key for p in model.metadata_props} >= {"architecture", "alpha"}


def test_export_requires_a_format(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export"])
    assert "FORMAT" in capsys.readouterr().err


def test_each_option_is_defined_once_and_both_tasks_read_it() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--model",
            "unet_fcn_npe1",
            "--out",
            "run",
            "--milestones",
            "5",
            "9",
            "--lr-schedule",
            "poly",
            "--crop-size",
            "64x48",
            "--model-arg",
            "base_channels=8",
            "--npe-alpha",
            "0.2",
        ]
    )
    assert args.milestones == [5, 9] and args.crop_size == (64, 48) and args.model_arg == [("base_channels", 8)]
    assert args.schedule == "poly" and args.npe_alpha == 0.2
    assert parser.parse_args(["train", "--out", "run", "--alpha", "0.5"]).npe_alpha == 0.5  # one option, two spellings
    assert parser.parse_args(["evaluate", "run", "--npe-alpha", "0", "0.1"]).npe_alpha == [0.0, 0.1]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "run", "--crop-size", "0x4"])


def test_segmentation_run_resumes_without_naming_its_task(tmp_path, data_dir) -> None:
    out = tmp_path / "seg"
    common = [
        "--model-arg",
        "base_channels=4",
        "--crop-size",
        "32",
        "--batch-size",
        "1",
        "--no-freeze-backbone",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    assert main(["train", "--model", "unet_fcn_npe1", "--iterations", "2", "--checkpoint-every", "1", *common]) == 0
    (out / "model.safetensors").unlink()
    assert main(["train", "--out", str(out), "--resume", "--data-dir", str(data_dir), "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file()


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "typo"), "--resume", "--no-progress"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
