"""STARE on real data: the split, and a short baseline -> frozen -> PEM run through the command line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npe_models.data.stare import StareSegmentation, stare_file
from npe_models.segmentation.cli import main


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
    status = main(["evaluate", str(run), "--data-dir", str(data_dir), "--device", "cpu", "--mode", "whole",
                   "--alpha", *alphas, "--annotation", *annotations, "--overlays", "1"])
    assert status == 0
    return json.loads((run / "eval" / "metrics.json").read_text())["results"]


def test_short_stare_run_baseline_then_frozen_pem(data_dir: Path, tmp_path: Path) -> None:
    common = ["--data-dir", str(data_dir), "--device", "cpu", "--model-arg", "base_channels=8",
              "--crop-size", "64", "--batch-size", "4"]
    baseline, npe = tmp_path / "baseline", tmp_path / "npe"
    assert main(["train", "--model", "unet_fcn", "--no-freeze-backbone", "--iterations", "20", "--lr", "0.05",
                 "--lr-schedule", "poly", "--out", str(baseline), *common]) == 0
    assert main(["train", "--model", "unet_fcn_npe1", "--freeze-decode-head", "--iterations", "20",
                 "--milestones", "10", "15", "--init", str(baseline), "--out", str(npe), *common]) == 0
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
