"""``npe-models predict`` and ``npe_models.predict`` on real CIFAR-10 test images written as PNG files:
the bundled NPE model, its NPE-LA strength, a run directory, bare weights, a Hub folder and an ONNX file, the
output formats, and a clear one-line error for each bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image

from npe_models.classification import TrainConfig, save_weights
from npe_models.cli import main
from npe_models.data import load_cifar
from npe_models.hub import save_for_hub
from npe_models.loading import load_model
from npe_models.onnx import export_onnx
from npe_models.predict import format_predictions, load_image_classifier, predict_images

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "resnet32_npe16"
MERGED = "resnet32.cifar10_lt_r100_hp2_npe16_merged"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 2
# The model scores 80.9% on the 1,000 exact test images; 20 of them, 2 per class, must give at least 12 right.
MIN_CORRECT = 12


@pytest.fixture(scope="module")
def images(data_dir, tmp_path_factory) -> tuple[Path, list[Path], np.ndarray, np.ndarray]:
    """The first exact (lossless) test images of each class as PNG files in class folders: the folder, the paths,
    the pixels and the labels."""
    test = load_cifar(data_dir, "cifar10", train=False)
    exact = np.flatnonzero(test.exact)
    chosen = np.concatenate([exact[test.labels[exact] == c][:PER_CLASS] for c in range(10)])
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index in chosen:
        path = folder / CIFAR10[test.labels[index]] / f"test_{index:05d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(test.images[index]).save(path)
        paths.append(path)
    return folder, paths, test.images[chosen], test.labels[chosen]


@pytest.fixture(scope="module")
def npe_model() -> torch.nn.Module:
    return load_model(MODEL, pretrained=True).model


@pytest.fixture(scope="module")
def direct_logits(npe_model, images) -> tuple[torch.Tensor, torch.Tensor]:
    """NPE-LA logits ``model(x)`` and unadjusted logits of the images normalised by hand (what the eval
    transform must reproduce for 32x32 inputs)."""
    pixels = torch.from_numpy(images[2]).permute(0, 3, 1, 2).float() / 255
    cfg = npe_model.pretrained_cfg
    x = (pixels - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return npe_model(x), npe_model.forward_train(x).logits


@pytest.fixture(scope="module")
def exports(npe_model, tmp_path_factory) -> dict[str, Path]:
    """The bundled model as a Hub folder, a merged ONNX file, the same file without the resize/crop metadata
    (as exports before it was recorded), a run directory and bare weights."""
    folder = tmp_path_factory.mktemp("exports")
    onnx_path = export_onnx(npe_model, folder / "model.onnx")
    proto = onnx.load(str(onnx_path))
    kept = [prop for prop in proto.metadata_props if prop.key not in ("interpolation", "crop_pct", "crop_mode")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(folder / "old.onnx"))
    save_weights(folder / "run" / "model.safetensors", npe_model, TrainConfig(model=MODEL))
    save_weights(folder / "bare.safetensors", npe_model)
    return {
        "hub": save_for_hub(npe_model, folder / "hub"),
        "onnx": onnx_path,
        "old_onnx": folder / "old.onnx",
        "run": folder / "run",
        "bare": folder / "bare.safetensors",
    }


def _top1(predictions) -> list[int]:
    return [p.classes[0][0] for p in predictions]


def _probabilities(predictions) -> torch.Tensor:
    """Per image, the probability of each class (top_k = the class count), in class order."""
    return torch.tensor([[prob for _, _, prob in sorted(p.classes)] for p in predictions])


def _predict_json(capsys, *argv: str) -> tuple[list[dict], str]:
    """The JSON on stdout (nothing else may be there) and what went to stderr."""
    assert main(["predict", *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_pretrained_on_files_matches_the_model_and_is_mostly_right(images, direct_logits):
    _, paths, _, labels = images
    predictions = predict_images(load_image_classifier(MODEL, pretrained=True), paths, batch_size=8)
    assert [p.path for p in predictions] == paths
    assert _top1(predictions) == direct_logits[0].argmax(1).tolist()
    assert sum(np.array(_top1(predictions)) == labels) >= MIN_CORRECT
    for prediction in predictions:
        probs = [prob for _, _, prob in prediction.classes]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert [name for _, name, _ in prediction.classes] == [CIFAR10[i] for i, _, _ in prediction.classes]


def test_top_k_is_capped_at_the_class_count_and_gives_the_softmax(images, direct_logits):
    predictions = predict_images(load_image_classifier(MODEL, pretrained=True), images[1], top_k=50, batch_size=8)
    assert all(len(p.classes) == 10 for p in predictions)
    torch.testing.assert_close(_probabilities(predictions), direct_logits[0].softmax(1), atol=1e-5, rtol=0)


def test_alpha_zero_gives_the_unadjusted_probabilities(images, direct_logits):
    plain = predict_images(
        load_image_classifier(MODEL, pretrained=True, npe_alpha=0), images[1], top_k=10, batch_size=8
    )
    torch.testing.assert_close(_probabilities(plain), direct_logits[1].softmax(1), atol=1e-5, rtol=0)
    assert (_probabilities(plain) - direct_logits[0].softmax(1)).abs().max() > 0.05, "NPE-LA must change them"


def test_folder_through_the_command_line_with_json(capsys, images, direct_logits):
    folder, paths, _, _ = images
    argv = [MODEL, "--pretrained", str(folder), "--json", "--batch-size", "8"]
    records, err = _predict_json(capsys, *argv, "--top-k", "3")
    assert [Path(r["path"]) for r in records] == sorted(paths)
    expected = dict(zip(paths, direct_logits[0].argmax(1).tolist()))
    assert [r["classes"][0]["index"] for r in records] == [expected[Path(r["path"])] for r in records]
    assert all(len(r["classes"]) == 3 for r in records)
    assert all(c["class"] == CIFAR10[c["index"]] for r in records for c in r["classes"])
    assert "predict" in err  # the progress bar, on stderr
    assert _predict_json(capsys, *argv, "--no-progress")[1] == ""


def test_csv_and_table_output(capsys, images):
    _, paths, _, _ = images
    argv = ["predict", MODEL, "--pretrained", *map(str, paths[:3]), "--top-k", "2"]
    assert main([*argv, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(Path(r["path"]), int(r["rank"])) for r in rows] == [(p, rank) for p in paths[:3] for rank in (1, 2)]
    assert all(r["class"] == CIFAR10[int(r["index"])] and 0 <= float(r["probability"]) <= 1 for r in rows)
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "rank", "class", "probability"] and len(table) == 1 + 3 * 2


def test_alpha_through_the_command_line(capsys, images):
    _, paths, _, _ = images
    default, err = _predict_json(capsys, MODEL, "--pretrained", str(paths[0]), "--json", "--top-k", "10")
    plain, _ = _predict_json(capsys, MODEL, "--pretrained", str(paths[0]), "--json", "--top-k", "10", "--alpha", "0")
    assert default[0]["classes"] != plain[0]["classes"]
    assert err == "", "no progress bar for image files"


@pytest.mark.parametrize("kind", ["hub", "onnx", "old_onnx", "run", "bare"])
def test_saved_forms_give_the_same_top1(kind, images, exports, direct_logits):
    options = {"model_name": MODEL} if kind == "bare" else {}
    classifier = load_image_classifier(exports[kind], **options)
    predictions = predict_images(classifier, images[1], batch_size=8)
    assert _top1(predictions) == direct_logits[0].argmax(1).tolist()
    if kind in ("hub", "onnx", "old_onnx"):
        assert classifier.class_names == CIFAR10
    else:  # the names the loader finds for a run or weights file, when it records them
        recorded = load_model(exports[kind], **options).class_names
        assert classifier.class_names == (recorded or [str(c) for c in range(10)])


def test_class_indices_stand_in_for_unrecorded_names(images, tmp_path):
    model = timm.create_model("resnet20_npe4", num_classes=7)
    save_weights(tmp_path / "run" / "model.safetensors", model, TrainConfig(model="resnet20_npe4"))
    (prediction,) = predict_images(load_image_classifier(tmp_path / "run"), images[1][:1], top_k=7)
    assert sorted(name for _, name, _ in prediction.classes) == [str(c) for c in range(7)]
    assert all(name == str(index) for index, name, _ in prediction.classes)


def test_format_predictions_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="table, json, csv"):
        format_predictions([], "xml")


def _error(capsys, *argv: str) -> str:
    assert main(["predict", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("npe-models predict: error: ")
    return captured.err


def test_clear_errors_for_bad_images(capsys, images, tmp_path):
    image = str(images[1][0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "broken.png").write_bytes(b"not a PNG file")
    given = ["resnet32_npe16", "--pretrained"]
    assert "missing.png not found" in _error(capsys, *given, str(tmp_path / "missing.png"))
    assert "no images in folder" in _error(capsys, *given, str(tmp_path / "empty"))
    assert "notes.txt is not an image file" in _error(capsys, *given, str(tmp_path / "empty" / "notes.txt"))
    assert f"cannot read image {tmp_path / 'broken.png'}" in _error(capsys, *given, image, str(tmp_path / "broken.png"))


def test_clear_errors_for_bad_model_sources(capsys, images, exports, tmp_path):
    image = str(images[1][0])
    (tmp_path / "bad.onnx").write_text("not an ONNX file")
    assert "is an image, not a model" in _error(capsys, image, image)
    assert "pass --pretrained" in _error(capsys, MODEL, image)
    assert "unknown model 'no_such_model'" in _error(capsys, "no_such_model", image)
    assert "unet_fcn_npe1 is a segmentation model" in _error(capsys, "unet_fcn_npe1", image)
    assert "not a readable ONNX file" in _error(capsys, str(tmp_path / "bad.onnx"), image)
    assert "ONNX file" in _error(capsys, str(tmp_path / "missing.onnx"), image)


def test_alpha_on_a_model_without_pems_is_an_error(capsys, images, exports):
    image = str(images[1][0])
    assert "has no PEMs" in _error(capsys, MERGED, "--pretrained", image, "--alpha", "0.5")
    assert "PEMs were merged at export" in _error(capsys, str(exports["onnx"]), image, "--alpha", "0.5")
