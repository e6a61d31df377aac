"""Shipped segmentation weights by name (issue 45): ``load_model(name, pretrained=True)`` and ``npe-models evaluate /
export NAME --pretrained`` for ``unet_fcn_npe1`` (its DEFAULT weights) and ``<model>.<ENTRY>``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from npe_models.cli import main
from npe_models.data.stare import StareSegmentation
from npe_models.loading import SEGMENTATION, load_model
from npe_models.models.segmentation import create_segmentation_model
from npe_models.models.unet import UNet_FCN_Weights


@pytest.mark.parametrize(
    "name, builder, weights, pem_type",
    [
        ("unet_fcn_npe1", "unet_fcn_npe1", "DEFAULT", "fcn"),
        ("unet_fcn_npe1.STARE_NPE1_FCN", "unet_fcn_npe1", "STARE_NPE1_FCN", "fcn"),
        ("unet_fcn_npe1.STARE", "unet_fcn_npe1", "STARE", "linear"),
        ("unet_fcn.STARE", "unet_fcn", "STARE", None),
    ],
)
def test_pretrained_names_load_the_shipped_weights_and_their_settings(
    name: str, builder: str, weights: str, pem_type: str
) -> None:
    loaded = load_model(name, pretrained=True)
    meta = UNet_FCN_Weights.verify(weights).meta
    assert loaded.task == SEGMENTATION and loaded.source == name and loaded.dataset == "stare"
    assert loaded.class_names == meta["categories"] == ["background", "vessel"]
    settings = loaded.segmentation_config
    assert settings.name == builder and settings.num_classes == 2
    assert settings.mean == tuple(meta["mean"]) and settings.std == tuple(meta["std"])
    assert {**settings.model_kwargs, "aux_loss": settings.aux_loss} == meta["model_kwargs"]
    assert getattr(loaded.model, "pem_type", None) == pem_type and not loaded.model.training
    reference = create_segmentation_model(builder, weights=weights).state_dict()
    trained = [key for key in reference if not (pem_type == "linear" and "pem" in key)]  # fresh PEMs differ
    assert all(torch.equal(loaded.model.state_dict()[key], reference[key]) for key in trained)
    rebuilt = settings.build()  # the config alone rebuilds the architecture the weights fit
    rebuilt.load_state_dict(loaded.model.state_dict())


def _mean_dice(prediction: torch.Tensor, mask: torch.Tensor) -> float:
    dice = [2 * ((prediction == c) & (mask == c)).sum() / ((prediction == c).sum() + (mask == c).sum()) for c in (0, 1)]
    return float(sum(dice) / 2)


def test_default_weights_segment_a_real_stare_image_as_recorded(data_dir: Path) -> None:
    """The quick check the weights record (one image, whole, 'vk' masks), through load_model at alpha 0 and NPE-LA."""
    check = UNet_FCN_Weights.DEFAULT.meta["quick_check"]
    dataset = StareSegmentation(data_dir, "val", check["annotation"])
    image, mask = dataset[dataset.ids.index(check["image"])]
    for alpha in ("0", "0.1"):
        loaded = load_model("unet_fcn_npe1", pretrained=True, npe_alpha=float(alpha))
        settings = loaded.segmentation_config
        mean, std = torch.tensor(settings.mean)[:, None, None], torch.tensor(settings.std)[:, None, None]
        with torch.no_grad():
            logits = loaded.model(((image.float() / 255 - mean) / std)[None])["out"]
        assert logits.shape == (1, 2, *mask.shape)
        assert _mean_dice(logits.argmax(1)[0], mask) == pytest.approx(check["mean_dice"][alpha], abs=0.01)


def test_evaluate_pretrained_name_on_stare(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "unet_fcn_npe1", "--pretrained", "--data-dir", str(data_dir), "--device", "cpu"]
    assert main([*args, "--mode", "whole", "--annotation", "ah", "--alpha", "0", "0.1", "--out", str(out)]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]["ah"]
    dice = {setting: row["mean_dice"] for setting, row in results.items()}
    assert len(dice) == 2 and all(value > 0.85 for value in dice.values()), dice


def test_export_onnx_and_hub_from_pretrained_names(tmp_path: Path) -> None:
    onnx_file = tmp_path / "unet.onnx"
    args = ["export", "onnx", "unet_fcn_npe1.STARE", "--pretrained", "-o", str(onnx_file)]
    assert main([*args, "--input-size", "3", "64", "64", "--check"]) == 0
    assert onnx_file.is_file()
    hub = tmp_path / "hub"
    assert main(["export", "hub", "unet_fcn", "--pretrained", "-o", str(hub)]) == 0
    from_hub, shipped = load_model(hub), load_model("unet_fcn", pretrained=True)
    assert from_hub.task == SEGMENTATION and from_hub.segmentation_config == shipped.segmentation_config
    state = shipped.model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in from_hub.model.state_dict().items())


@pytest.mark.parametrize(
    "name, message",
    [
        ("deeplabv3_resnet50_npe1", r"deeplabv3_resnet50_npe1 has no shipped weights; .*'unet_fcn_npe1'.*weights=FILE"),
        ("unet_fcn.BOGUS", r"unet_fcn has no weights entry 'BOGUS'; its entries are \['STARE', 'STARE_NPE1_FCN'\]"),
        ("unet_fcn_npe16", r"holds 1 trained PEM\(s\), not 16; name unet_fcn_npe16.STARE"),
    ],
)
def test_names_without_shipped_weights_fail_listing_what_is_shipped(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(name, pretrained=True)


def test_entry_names_need_pretrained_and_refuse_other_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="names shipped segmentation weights: load them with pretrained=True"):
        load_model("unet_fcn.STARE")
    with pytest.raises(ValueError, match="have 2 classes, not 5"):
        load_model("unet_fcn_npe1", pretrained=True, num_classes=5)
    with pytest.raises(ValueError, match="give 'fcn' PEMs, not pem_type='linear'"):
        load_model("unet_fcn_npe1", pretrained=True, pem_type="linear")
    assert main(["evaluate", "fcn_resnet50_npe1", "--pretrained"]) != 0
    assert "fcn_resnet50_npe1 has no shipped weights" in capsys.readouterr().err
