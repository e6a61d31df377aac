"""`npe-models` routes segmentation models to the segmentation task and exports through `export onnx|hub`."""
from __future__ import annotations

import json

import onnx
import pytest

from npe_models.cli import main


def test_segmentation_model_trains_through_npe_models_train(tmp_path, data_dir) -> None:
    out = tmp_path / "seg"
    status = main([
        "train", "--model", "unet_fcn_npe1", "--model-arg", "base_channels=4", "--iterations", "1",
        "--crop-size", "32", "--batch-size", "1", "--no-freeze-backbone", "--out", str(out),
        "--data-dir", str(data_dir), "--no-progress",
    ])
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
