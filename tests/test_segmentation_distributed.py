"""Segmentation training under torchrun (2 CPU processes, gloo) on a seg_folder: the global batch is split over
the processes and the PEMs train as in one process (issue 45)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from npe_models.cli import main
from npe_models.segmentation import SegmentationModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread is faster on a shared CPU

REPO = Path(__file__).resolve().parents[1]


def _seg_folder(root: Path) -> Path:
    """Six 40x44 training images with masks of two classes (no ignored pixel, so every crop counts alike)."""
    for kind in ("images", "masks"):
        for split in ("train", "val"):
            (root / kind / split).mkdir(parents=True)
    for i in range(6):
        image = np.random.default_rng(i).integers(0, 256, (40, 44, 3), dtype=np.uint8)
        mask = np.zeros((40, 44), dtype=np.uint8)
        mask[4 + i : 24 + i, 8:30] = 1
        image[mask == 1] //= 2
        split = "val" if i == 5 else "train"
        Image.fromarray(image).save(root / "images" / split / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def _train(out: Path, *options: str) -> list[str]:
    return ["train", "--out", str(out), "--device", "cpu", "--no-progress", *options]


def _torchrun(arguments: list[str]) -> None:
    """``npe-models <arguments>`` in two CPU processes (gloo); the end of their output when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "-m", "npe_models.cli", *arguments],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_trains_the_pems_as_one_process_does(tmp_path: Path) -> None:
    """Frozen backbone and decode head (BatchNorm in eval mode) and crops without ignored pixels make the gradient of
    the global batch independent of how the processes split it."""
    data = ("--dataset", "seg_folder", "--data-dir", str(_seg_folder(tmp_path / "data")))
    shape = ("--model-arg", "base_channels=4", "--crop-size", "24", "--batch-size", "4")
    baseline = ("--model", "unet_fcn", *shape, "--iterations", "1", "--no-freeze-backbone")
    assert main(_train(tmp_path / "base", *data, *baseline)) == 0
    pems = (*data, "--model", "unet_fcn_npe1", *shape, "--init", str(tmp_path / "base"), "--freeze-decode-head")
    pems = (*pems, "--iterations", "3")
    assert main(_train(tmp_path / "one", *pems, "--lr", "0.5", "--workers", "0")) == 0
    _torchrun(_train(tmp_path / "two", *pems, "--lr", "0.5", "--workers", "1"))
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    base = load_file(tmp_path / "base" / "model.safetensors")
    assert all(torch.equal(one[key], base[key]) for key in base)  # frozen: only the fresh PEM trained
    assert {"classifier.4.pem_weight", "classifier.4.pem_bias"} <= one.keys() - base.keys()
    logs = [
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("one", "two")
    ]
    assert [r["iteration"] for r in logs[1]] == [3]  # logged every 10 iterations and at the end
    assert logs[1][0]["loss"] == pytest.approx(logs[0][0]["loss"], rel=1e-5)  # the mean over the processes


@pytest.mark.filterwarnings("ignore:the backbone is frozen but randomly initialised")
def test_torchrun_trains_a_model_whose_aux_head_gets_no_gradient(tmp_path: Path) -> None:
    """At --aux-weight 0 no loss term reaches the aux head, which DistributedDataParallel refused while it was
    trainable; frozen now, it stays as it started, as the frozen backbone does. The decode head trains as in one
    process up to its dropout and BatchNorm batch statistics, which see each process's share of the batch."""
    data = ("--dataset", "seg_folder", "--data-dir", str(_seg_folder(tmp_path / "data")))
    shape = ("--model-arg", "base_channels=4", "--crop-size", "24", "--batch-size", "4", "--iterations", "2")
    aux = (*data, "--model", "unet_fcn", "--aux-loss", "--aux-weight", "0", *shape)
    assert main(_train(tmp_path / "one", *aux, "--workers", "0")) == 0
    _torchrun(_train(tmp_path / "two", *aux, "--workers", "1"))
    torch.manual_seed(0)  # --seed: fresh weights start alike in every run
    settings = json.loads((tmp_path / "one" / "config.json").read_text())["model"]
    start = SegmentationModelConfig.from_dict(settings).build().state_dict()
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys() == start.keys() and any(key.startswith("aux_classifier.") for key in one)
    for key in one:
        if key.startswith(("aux_classifier.", "backbone.")):
            assert torch.equal(one[key], start[key]) and torch.equal(two[key], start[key]), key
        else:  # the runs differ far less than training moved them
            moved, apart = (
                (a.double() - b.double()).abs().max() for a, b in ((one[key], start[key]), (two[key], one[key]))
            )
            assert 0 < moved and apart < moved / 2, (key, moved, apart)
