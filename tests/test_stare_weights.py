"""The STARE weights shipped with the package: torchvision's weights API, offline loading, sha256, recorded Dice."""

from __future__ import annotations

import shutil

import pytest
import torch
import torchvision
from package_stare import STARE_ALPHAS, stare_metrics, stare_quick_check

import npe_models.models.unet as unet
from npe_models.models.unet import UNet_FCN_Weights, unet_fcn
from npe_models.segmentation.config import SegmentationModelConfig

NPE, BASELINE = UNet_FCN_Weights.STARE_NPE1_FCN, UNet_FCN_Weights.STARE


def _config(weights) -> SegmentationModelConfig:
    meta = weights.meta
    return SegmentationModelConfig(
        name="unet_fcn_npe1",
        num_classes=len(meta["categories"]),
        pem_type="fcn",
        class_names=meta["categories"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )


def test_get_model_weights_lists_the_baseline_and_its_npe_form() -> None:
    assert torchvision.models.get_model_weights("unet_fcn_npe1") is UNet_FCN_Weights
    assert list(UNet_FCN_Weights) == [BASELINE, NPE] and UNet_FCN_Weights.DEFAULT is NPE
    for weights in (BASELINE, NPE):
        assert {"recipe", "iterations", "_metrics", "num_params", "categories"} <= set(weights.meta)
        assert set(weights.meta["_metrics"]) == {"STARE-val-ah", "STARE-val-vk"}
    assert set(NPE.meta["_metrics"]["STARE-val-ah"]) == {f"{alpha:g}" for alpha in STARE_ALPHAS}
    assert NPE.meta["iterations"]["baseline"] == BASELINE.meta["iterations"]
    assert BASELINE.meta["_metrics"]["STARE-val-vk"]["0"] == NPE.meta["_metrics"]["STARE-val-vk"]["0"]


def test_npe_form_and_baseline_load_offline_from_one_file() -> None:
    npe = torchvision.models.get_model("unet_fcn_npe1", weights="DEFAULT")
    state = NPE.get_state_dict()
    assert npe.pem_type == "fcn" and npe.num_pems == 1
    assert all(torch.equal(value, state[key]) for key, value in npe.state_dict().items())
    assert sum(p.numel() for p in npe.parameters()) == NPE.meta["num_params"]
    baseline = unet_fcn(weights=BASELINE)
    assert sum(p.numel() for p in baseline.parameters()) == BASELINE.meta["num_params"]
    assert all(torch.equal(value, state[key]) for key, value in baseline.state_dict().items())
    fresh = torchvision.models.get_model("unet_fcn_npe1", weights="STARE")  # the baseline, a fresh linear PEM
    assert fresh.pem_type == "linear" and fresh.get_submodule("classifier.4").pem_weight.abs().max() < 0.01
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in baseline.state_dict().items())


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("unet_fcn_npe16", {}, "1 trained .fcn. PEM.*weights=.STARE. .the network alone. for fresh PEMs"),
        ("unet_fcn_npe1", {"pem_type": "linear"}, "pem_type='fcn'"),
        ("unet_fcn_npe1", {"base_channels": 8}, "trained with base_channels="),
        ("unet_fcn_npe1", {"num_classes": 3}, "trained with num_classes=2"),
    ],
)
def test_weights_fix_what_they_were_trained_with(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        torchvision.models.get_model(name, weights="DEFAULT", **kwargs)


def test_unknown_weights_name_lists_the_entries() -> None:
    with pytest.raises(ValueError, match=r"'STARE_V9' is not a weights entry of unet_fcn; choose one of \['STARE'"):
        torchvision.models.get_model("unet_fcn_npe1", weights="STARE_V9")


def test_corrupted_weights_file_fails_its_sha256(tmp_path, monkeypatch) -> None:
    shutil.copy(unet.WEIGHTS_DIR / NPE.meta["file"], tmp_path / NPE.meta["file"])
    with open(tmp_path / NPE.meta["file"], "r+b") as file:
        file.seek(-4, 2)
        file.write(b"\0\0\0\0")
    monkeypatch.setattr(unet, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="corrupted.*reinstall npe-models"):
        torchvision.models.get_model("unet_fcn_npe1", weights="DEFAULT")


def test_npe_form_reproduces_its_recorded_quick_check(data_dir) -> None:
    recorded = NPE.meta["quick_check"]
    measured = stare_quick_check(
        torchvision.models.get_model("unet_fcn_npe1", weights="DEFAULT"), _config(NPE), data_dir
    )
    assert measured["image"] == recorded["image"]
    for alpha, value in recorded["mean_dice"].items():
        assert abs(100 * measured["mean_dice"][alpha] - 100 * value) < 0.1, alpha


@pytest.mark.slow
def test_npe_form_reproduces_its_recorded_validation_dice(data_dir) -> None:
    measured = stare_metrics(torchvision.models.get_model("unet_fcn_npe1", weights="DEFAULT"), _config(NPE), data_dir)
    for split, by_alpha in NPE.meta["_metrics"].items():
        for alpha, recorded in by_alpha.items():
            got = measured[split][alpha]
            assert abs(100 * got["mean_dice"] - 100 * recorded["mean_dice"]) < 0.1, (split, alpha)
            assert all(abs(100 * a - 100 * b) < 0.1 for a, b in zip(got["dice"], recorded["dice"])), (split, alpha)
