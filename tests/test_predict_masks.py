"""`npe-models predict --out`: class-index mask PNGs of a segmentation model (issue 45, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from npe_models.cli import main
from npe_models.hub import save_for_hub
from npe_models.predict import predict_masks
from npe_models.segmentation import SegmentationModelConfig, save_segmentation_weights
from npe_models.segmentation.evaluation import class_palette
from npe_models.segmentation.masks import MASKS_FILE

CLASSES = ["background", "vessel", "blob"]
UNET, SMP = "unet_fcn_npe1", "smp:fpn:tu-resnet10t_npe1"  # smp models take sizes divisible by 32: inference pads
MODEL_KWARGS = {UNET: {"base_channels": 4}, SMP: {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}}


def _settings(name: str = UNET) -> SegmentationModelConfig:
    return SegmentationModelConfig(
        name=name, num_classes=3, num_pems=1, model_kwargs=MODEL_KWARGS[name], class_names=CLASSES
    )


def _model(name: str = UNET) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _settings(name).build().eval()
    with torch.no_grad():  # no class favoured by the bias, PEM weights large enough that NPE-LA changes the argmax
        for head in model.npe_heads():
            head.bias.zero_()
            head.pem_weight.normal_(0, 3)
    return model


def _run(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    folder = tmp_path_factory.mktemp("run") / "run"
    folder.mkdir()
    save_segmentation_weights(folder / "model.safetensors", _model(name), _settings(name))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_for_hub(_model(), tmp_path_factory.mktemp("hub") / "unet", config=_settings())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory, UNET)


@pytest.fixture(scope="module")
def smp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("segmentation_models_pytorch")
    return _run(tmp_path_factory, SMP)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (140, 150, 3), dtype=np.uint8)).save(folder / "sub" / "b.png")
    return folder


def test_masks_from_a_hub_folder_have_the_image_size_palette_and_classes(hub: Path, photos: Path, tmp_path) -> None:
    out = tmp_path / "out"
    predictions = predict_masks(hub, [photos], out, overlays=True)
    assert [p.mask for p in predictions] == [out / "a.png", out / "sub" / "b.png"]
    palette = [v for colour in class_palette(3) for v in colour]
    for prediction, size in zip(predictions, [(50, 37), (150, 140)]):
        with Image.open(prediction.mask) as mask:
            assert mask.mode == "P" and mask.size == size and prediction.size == size
            assert mask.getpalette()[: len(palette)] == palette
            values = np.asarray(mask)
        assert values.max() < 3
        with Image.open(prediction.overlay) as overlay:
            assert overlay.size == size
        fractions = [f for _, _, f in prediction.fractions]
        assert sum(fractions) == pytest.approx(1.0)
        assert fractions == pytest.approx([np.mean(values == c) for c in range(3)])
        assert [name for _, name, _ in prediction.fractions] == CLASSES
    assert json.loads((out / MASKS_FILE).read_text())["kind"] == "npe-models masks"


def test_cli_from_a_run_json_out_rules_and_alpha(run: Path, photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["predict", str(run), str(photos / "sub" / "b.png"), "--out", str(out), "--mode", "whole"]
    assert main([*args, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1 and records[0]["mask"] == str(out / "b.png")
    assert sum(c["fraction"] for c in records[0]["classes"]) == pytest.approx(1.0)
    assert [c["class"] for c in records[0]["classes"]] == CLASSES
    default = np.asarray(Image.open(out / "b.png"))

    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err  # an earlier prediction: only with it
    assert main([*args, "--overwrite", "--alpha", "0"]) == 0
    assert not np.array_equal(np.asarray(Image.open(out / "b.png")), default), "alpha 0 gives the main logits"

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["predict", str(run), str(photos), "--out", str(other)]) == 1
    assert "holds no mask prediction" in capsys.readouterr().err
    assert main(["predict", str(run), str(photos), "--out", str(photos)]) == 1  # the output would be an input
    assert (other / "notes.txt").read_text() == "mine"


def test_tasks_crossed_get_one_line_messages(run: Path, photos: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(run), str(photos)]) == 1
    err = capsys.readouterr().err.strip()
    assert "segmentation model" in err and "--out" in err and "\n" not in err
    classifier = tmp_path / "clf"
    save_for_hub(timm.create_model("resnet20_npe4", num_classes=3), classifier)
    assert main(["predict", str(classifier), str(photos), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert "classification model" in err and "segmentation" in err and "\n" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("source", "mode"),
    # the smp model in whole mode: the 37x50 and 140x150 images padded to multiples of 32, as the run pads them
    [("run", []), ("smp_run", ["--mode", "whole"])],
)
def test_masks_from_an_onnx_export_equal_the_runs(
    source: str, mode: list[str], photos: Path, tmp_path: Path, capsys, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("onnxruntime")
    run = request.getfixturevalue(source)
    exported = tmp_path / "model.onnx"
    assert main(["export", "onnx", str(run), "-o", str(exported), "--input-size", "3", "64", "64"]) == 0
    assert main(["predict", str(run), str(photos), "--out", str(tmp_path / "torch"), *mode]) == 0
    assert main(["predict", str(exported), str(photos), "--out", str(tmp_path / "onnx"), "--json", *mode]) == 0
    capsys.readouterr()
    for name in ("a.png", Path("sub") / "b.png"):
        from_run, from_onnx = (np.asarray(Image.open(tmp_path / folder / name)) for folder in ("torch", "onnx"))
        assert from_run.shape == from_onnx.shape and np.array_equal(from_run, from_onnx)
    assert main(["predict", str(exported), str(photos), "--out", str(tmp_path / "a"), "--alpha", "0"]) == 1
    assert "export again with the alpha you want" in capsys.readouterr().err
