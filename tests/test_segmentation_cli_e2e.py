"""`npe-models` end to end on segmentation folders (issue 45): train, resume, evaluate, predict masks and export
to ONNX, for an smp model and a torchvision-style model, on ``seg_folder`` and ADE20K-layout trees of real images.

The trees are the conftest's tiny CIFAR-10 mosaics (benchmarks/make_cifar_mosaic.py): 64x64 images of four CIFAR-10
tiles, each tile's pixels labelled with its class; in the ADE20K layout the labels are shifted up by one, as
ADE20K's zero label is reduced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from npe_models.cli import main
from npe_models.data import ADE20K_CLASSES
from npe_models.segmentation.evaluation import predict_image_logits

pytestmark = pytest.mark.usefixtures("one_thread")

_SIDE = 64
_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# layout -> the validation images' folder
_VAL_IMAGES = {"seg_folder": Path("images") / "val", "ade20k": Path("images") / "validation"}
# (model, layout, extra train options): an smp U-Net with a small decoder, a narrow UNet-FCN (a torchvision FCN) and
# torchvision's LR-ASPP (its ONNX export alone takes about 30 s)
_SMP_OPTIONS = ["--model-arg", "encoder_depth=3", "--model-arg", "decoder_channels=[16,8,8]"]
_UNET_OPTIONS = ["--model-arg", "base_channels=4", "--model-arg", "num_stages=3", "--no-freeze-backbone"]
_CASES = [
    pytest.param("smp:unet:tu-resnet10t_npe1", "seg_folder", _SMP_OPTIONS, id="smp"),
    pytest.param("unet_fcn_npe1", "ade20k", _UNET_OPTIONS, id="unet_fcn"),
    pytest.param("lraspp_mobilenet_v3_large_npe1", "ade20k", ["--no-freeze-backbone"], id="lraspp"),
]


@pytest.mark.parametrize(("model", "layout", "options"), _CASES)
def test_train_resume_evaluate_predict_export(model, layout, options, cifar_mosaics, tmp_path: Path) -> None:
    tree, run = cifar_mosaics[0] / layout, tmp_path / "run"
    train = ["train", "--model", model, "--dataset", layout, "--data-dir", str(tree), "--out", str(run), *options]
    common = ["--crop-size", "64", "--batch-size", "2", "--checkpoint-every", "1", "--no-progress"]
    assert main([*train, "--iterations", "2", *common]) == 0
    assert main(["train", "--out", str(run), "--resume", "--iterations", "3", "--no-progress"]) == 0
    iterations = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert iterations[-1] == 3 and iterations == sorted(set(iterations))  # resumed, not restarted

    assert main(["evaluate", str(run), "--npe-alpha", "0", "0.5", "--no-progress"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # ADE20K: MMSegmentation's test pipeline (whole images resized to fit 2048x512); seg_folder: sliding windows
    expected = {"mode": "whole", "scale": [2048, 512]} if layout == "ade20k" else {"mode": "slide"}
    assert {key: metrics.get(key) for key in ("mode", "scale")} == {"scale": None, **expected}
    names = list(ADE20K_CLASSES[: len(_CLASSES)]) if layout == "ade20k" else list(_CLASSES)
    assert names[0] in json.dumps(metrics) and names[-1] in json.dumps(metrics)

    val_images = tree / _VAL_IMAGES[layout]
    assert main(["predict", str(run), str(val_images), "--out", str(tmp_path / "masks"), "--no-progress"]) == 0
    for image in val_images.iterdir():
        mask = np.asarray(Image.open(tmp_path / "masks" / image.with_suffix(".png").name))
        assert mask.shape == (_SIDE, _SIDE)
    record = json.loads((tmp_path / "masks" / "masks.json").read_text())
    assert {key: record.get(key) for key in ("mode", "scale")} == {"scale": None, **expected}  # as evaluated

    onnx_file = tmp_path / "model.onnx"
    export = ["export", "onnx", str(run), "-o", str(onnx_file), "--input-size", "3", "64", "64", "--check"]
    assert main(export) == 0 and onnx_file.is_file()


class _SizeSpy(torch.nn.Module):
    """Logits that are a function of position, at the input's size; remembers the sizes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.sizes.append(tuple(images.shape[-2:]))
        rows = torch.linspace(0, 1, images.shape[-2])[:, None].expand(images.shape[-2:])
        return {"out": torch.stack([rows, 1 - rows])[None].expand(len(images), -1, -1, -1)}


def test_an_image_resized_to_fit_the_scale_gets_logits_at_its_own_size() -> None:
    spy, image = _SizeSpy(), torch.zeros(3, 48, 64, dtype=torch.uint8)
    logits, estimate = predict_image_logits(spy, image, (0.5,) * 3, (0.25,) * 3, mode="whole", scale=(2048, 512))
    assert spy.sizes == [(512, 683)]  # the shorter side reaches 512 before the longer one reaches 2048
    assert logits.shape == (1, 2, 48, 64) and estimate is None
    at_scale = spy(torch.zeros(1, 3, 512, 683))["out"]
    assert torch.equal(logits, F.interpolate(at_scale, (48, 64), mode="bilinear", align_corners=False))
    predict_image_logits(spy, image, (0.5,) * 3, (0.25,) * 3, mode="whole")
    assert spy.sizes[-1] == (48, 64)  # no scale: the image's own size
