"""STARE on real data: the split, and a short baseline -> frozen -> PEM run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from npe_models.cli import main
from npe_models.data.stare import StareSegmentation, stare_file
from npe_models.runs import read_run_config
from npe_models.segmentation import load_segmentation_model, resolve_segmentation_config, train_run


def test_stare_split_and_annotations(data_dir: Path) -> None:
    train = StareSegmentation(data_dir, "train", "ah")
    val_ah = StareSegmentation(data_dir, "val", "ah")
    val_vk = StareSegmentation(data_dir, "val", "vk")
    assert len(train) == 10 and len(val_ah) == 8 and len(val_vk) == 10
    assert train.ids == sorted(train.ids) and max(train.ids) < min(val_vk.ids)
    assert set(val_vk.ids) - set(val_ah.ids) == {"im0235", "im0236"}  # no "ah" masks for these two
    image, mask = val_vk[0]
    assert image.shape == (3, 605, 700) and str(image.dtype) == "torch.uint8"
    assert set(mask.unique().tolist()) == {0, 1}
    with np.load(stare_file(data_dir)) as arrays:  # the "vk" masks really are the Kouznetsova annotations
        index = list(arrays["ids"]).index(val_vk.ids[0])
        assert np.array_equal(mask.numpy(), arrays["masks_vk"][index])
    with pytest.raises(FileNotFoundError, match="NPE_DATA_DIR"):
        StareSegmentation(data_dir / "missing")


def _evaluate(run: Path, data_dir: Path, alphas: list[str], annotations: list[str]) -> dict:
    status = main(
        [
            "evaluate",
            str(run),
            "--data-dir",
            str(data_dir),
            "--device",
            "cpu",
            "--mode",
            "whole",
            "--alpha",
            *alphas,
            "--annotation",
            *annotations,
            "--overlays",
            "1",
        ]
    )
    assert status == 0
    return json.loads((run / "eval" / "metrics.json").read_text())["results"]


def test_short_stare_run_baseline_then_frozen_pem(data_dir: Path, tmp_path: Path) -> None:
    common = [
        "--data-dir",
        str(data_dir),
        "--device",
        "cpu",
        "--model-arg",
        "base_channels=8",
        "--crop-size",
        "64",
        "--batch-size",
        "4",
    ]
    baseline, npe = tmp_path / "baseline", tmp_path / "npe"
    assert (
        main(
            [
                "train",
                "--model",
                "unet_fcn",
                "--no-freeze-backbone",
                "--iterations",
                "20",
                "--lr",
                "0.05",
                "--lr-schedule",
                "poly",
                "--out",
                str(baseline),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--model",
                "unet_fcn_npe1",
                "--freeze-decode-head",
                "--iterations",
                "20",
                "--milestones",
                "10",
                "15",
                "--init",
                str(baseline),
                "--out",
                str(npe),
                *common,
            ]
        )
        == 0
    )
    assert main(["train", "--model", "unet_fcn_npe1", "--iterations", "20", "--out", str(npe), *common]) == 1
    log = [json.loads(line) for line in (npe / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]) >= {"npe", "loss"} and "ce" not in log[-1]  # only the PEM trains
    assert log[-1]["npe"] < log[0]["npe"]

    plain = _evaluate(baseline, data_dir, ["0"], ["ah"])
    adjusted = _evaluate(npe, data_dir, ["0", "1", "0.2"], ["ah", "vk"])
    # alpha 0 of the frozen model is exactly the baseline: nothing frozen moved
    assert adjusted["ah"]["0.0"]["confusion"] == plain["ah"]["0.0"]["confusion"]
    for annotation, images in (("ah", 8), ("vk", 10)):
        assert np.sum(adjusted[annotation]["0.0"]["confusion"]) == images * 605 * 700
        assert sorted(adjusted[annotation]) == ["0.0", "0.2", "1.0"]
        for metrics in adjusted[annotation].values():
            assert 0 <= metrics["mean_dice"] <= 1 and len(metrics["dice"]) == 2
    assert (npe / "eval" / "overlays" / "ah" / "im0162.png").is_file()


class _Bar:
    """A stand-in for tqdm: records how far it went and what it showed."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.n, self.postfix, self.closed = total, desc, 0, None, False

    def update(self, steps: int) -> None:
        self.n += steps

    def set_postfix(self, values: dict) -> None:
        self.postfix = values

    def close(self) -> None:
        self.closed = True


def test_train_run_from_settings_baseline_then_pems(data_dir: Path, tmp_path: Path) -> None:
    common = dict(model_kwargs={"base_channels": 4}, iterations=2, batch_size=2, crop_size=(32, 32))
    baseline, npe = tmp_path / "baseline", tmp_path / "npe"
    config = resolve_segmentation_config(baseline, False, model="unet_fcn", **common)
    bars: list[_Bar] = []
    with pytest.warns(UserWarning, match="frozen but randomly initialised"):
        record = train_run(
            config,
            baseline,
            data_dir=data_dir,
            device="cpu",
            progress=lambda **kwargs: bars.append(_Bar(**kwargs)) or bars[-1],
        )
    assert record["iteration"] == 2 and (bars[0].n, bars[0].desc, bars[0].closed) == (2, "train unet_fcn", True)
    assert set(bars[0].postfix) == {"lr", "loss", "ce"}
    saved = read_run_config(baseline)
    assert saved["task"] == "segmentation" and saved["data"]["images"] == StareSegmentation(data_dir, "train").ids

    config = resolve_segmentation_config(
        npe, False, model="unet_fcn_npe1", init=str(baseline), freeze_decode_head=True, **common
    )
    train_run(config, npe, data_dir=data_dir, device="cpu")
    (plain, _), (adjusted, _) = load_segmentation_model(baseline), load_segmentation_model(npe)
    for name, value in plain.state_dict().items():  # everything but the PEMs stayed frozen at the baseline's values
        assert torch.equal(adjusted.state_dict()[name], value), name
