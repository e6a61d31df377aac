"""Faults on the way out (issue 44): weights that do not fit a name fail in one line, class names from folders are
escaped for each output (Hub card, predict's table; CSV and JSON stay exact), and `npe-models adapt` refuses what
would write a meaningless prior (segmentation models, images of another size, too few unlabeled images) and reads
image folders with the model's own eval transform."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from npe_models import adapt, cli
from npe_models.hub import save_for_hub
from npe_models.predict import ImagePrediction, format_predictions

PACKAGE = Path(__file__).resolve().parents[1] / "npe_models"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v0_1"


def _error(capsys, argv: list[str]) -> str:
    """The command's error output, which must be one line without a traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_weights_that_do_not_fit_a_registered_name_fail_in_one_line(capsys, tmp_path) -> None:
    """The bundled STARE UNet (16 channels, fcn PEM) given to unet_fcn_npe1 (64 channels, linear PEM): one line with
    the counts, one example each and the fix, instead of torch's 119-line state_dict report."""
    weights = next((PACKAGE / "weights").glob("unet_fcn*.safetensors"))
    err = _error(capsys, ["export", "onnx", "unet_fcn_npe1", "--weights", str(weights), "-o", str(tmp_path / "m.onnx")])
    assert "2 tensors missing (e.g. 'classifier.4.pem_weight')" in err
    assert "12 unexpected (e.g. 'aux_classifier.0.weight')" in err
    assert "of another shape (e.g. 'backbone.encoder.0.0.weight': (16, 3, 3, 3) in the file, (64, 3, 3, 3)" in err
    assert "--pem-type" in err and "records its model" in err
    assert not (tmp_path / "m.onnx").exists()


ODD_NAMES = ["<script>alert(1)</script>", "a|b\nc", "\x1b[31mred"]


@pytest.fixture(scope="module")
def odd_hub_folder(tmp_path_factory) -> Path:
    """A 3-class resnet20 saved as a Hub folder with class names a folder tree could give: HTML, a table pipe, a
    newline and a terminal colour code."""
    folder = tmp_path_factory.mktemp("odd") / "hub"
    save_for_hub(timm.create_model("resnet20", num_classes=3), folder, label_names=ODD_NAMES)
    return folder


def test_class_names_are_escaped_in_the_model_card_and_kept_exact_in_its_config(odd_hub_folder) -> None:
    card = (odd_hub_folder / "README.md").read_text()
    assert json.loads((odd_hub_folder / "config.json").read_text())["label_names"] == ODD_NAMES
    assert "<script>" not in card and "\x1b" not in card
    (classes,) = [line for line in card.splitlines() if line.startswith("- Classes:")]
    assert classes == r"- Classes: 3 (&lt;script&gt;alert(1)&lt;/script&gt;, a\|b\\nc, \\x1b\[31mred)"


def test_predict_escapes_class_names_in_its_table_and_keeps_them_exact_in_csv_and_json(
    odd_hub_folder, tmp_path, capsys
) -> None:
    image = tmp_path / "odd\nname.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    argv = ["predict", str(odd_hub_folder), str(image), "--top-k", "3", "--no-progress"]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and len(table.splitlines()) == 4  # the header and one line per class
    assert all(visible in table for visible in (r"odd\nname.png", r"a|b\nc", r"\x1b[31mred", "<script>"))
    assert cli.main([*argv, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(row["class"] for row in rows) == sorted(ODD_NAMES) and {row["path"] for row in rows} == {str(image)}
    assert cli.main([*argv, "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["path"] == str(image) and sorted(c["class"] for c in record["classes"]) == sorted(ODD_NAMES)
    lone_return = [ImagePrediction(image, [(0, "carriage\rreturn", 1.0)])]  # unquoted, it ends a CSV record
    (row,) = csv.DictReader(io.StringIO(format_predictions(lone_return, "csv")))
    assert row["class"] == "carriage\rreturn"


def _npz(path: Path, count: int, size: int = 32, labels=None) -> str:
    """``count`` random images ``size`` x ``size`` (labels 0..9 in turn unless given) as adapt's npz file."""
    images = np.random.default_rng(count).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(path, x=images, y=np.arange(count) % 10 if labels is None else labels)
    return str(path)


@pytest.mark.parametrize("source", ["segmentation run", "unet_fcn_npe1"])
def test_adapt_refuses_segmentation_models_in_one_line(source, capsys, tmp_path) -> None:
    """A segmentation run used to fail with "AttributeError: 'NPEFCN' object has no attribute 'pretrained_cfg'"."""
    if source == "segmentation run":
        source = str(shutil.copytree(FIXTURES / "segmentation_unet_npe1_interrupted", tmp_path / "run"))
    data = _npz(tmp_path / "images.npz", 100)
    argv = ["adapt", source, "--unlabeled", data, "--calibration", data, "--out", str(tmp_path / "adapted")]
    err = _error(capsys, argv + (["--pretrained"] if source == "unet_fcn_npe1" else []))
    assert f"{source} is a segmentation model; adapt estimates the class mix of whole images" in err
    assert not (tmp_path / "adapted").exists()


def test_adapt_prints_class_names_with_visible_escapes(tmp_path) -> None:
    result = adapt.PriorAdaptation(
        timm.create_model("resnet20", num_classes=3),
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        "em",
        adapt.Calibration(1.0, torch.zeros(3, dtype=torch.float64)),
        "test",
        tmp_path,
        ODD_NAMES,
    )
    text = adapt.format_adaptation(result)
    assert "\x1b" not in text and r"a|b\nc" in text and r"\x1b[31mred" in text
    assert len(text.splitlines()) == 6  # the heading, one line per class, the temperature, the files


ADAPT = ["adapt", "resnet32_npe16", "--pretrained"]


@pytest.mark.parametrize("size", [4, 64])
def test_adapt_refuses_images_of_another_size_than_the_models_input(size, capsys, tmp_path) -> None:
    """64x64 or 4x4 arrays fed as they are to a 32x32 model gave a one-hot prior (top-1 11.9 % instead of 72 %)."""
    calibration = _npz(tmp_path / "calibration.npz", 100)
    odd = _npz(tmp_path / "odd.npz", 100, size)
    err = _error(capsys, [*ADAPT, "--unlabeled", odd, "--calibration", calibration, "--out", str(tmp_path / "a")])
    assert f"the unlabeled images of {odd} are {size}x{size}, but resnet32_npe16 takes 32x32 images" in err
    err = _error(capsys, [*ADAPT, "--unlabeled", calibration, "--calibration", odd, "--out", str(tmp_path / "b")])
    assert f"the calibration images of {odd} are {size}x{size}, but resnet32_npe16 takes 32x32 images" in err


@pytest.mark.parametrize("count", [1, 99])
def test_adapt_refuses_fewer_than_ten_unlabeled_images_per_class(count, capsys, tmp_path) -> None:
    """One unlabeled image gave a one-hot prior; the rule: at least 10 per class on average, 100 for CIFAR-10."""
    unlabeled, calibration = _npz(tmp_path / "few.npz", count), _npz(tmp_path / "calibration.npz", 100)
    err = _error(capsys, [*ADAPT, "--unlabeled", unlabeled, "--calibration", calibration, "--out", str(tmp_path / "a")])
    assert f"{count} unlabeled image{'s' if count > 1 else ''} ({unlabeled}) are too few" in err
    assert "at least 100 (10 per class on average)" in err
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def cifar_npz(data_dir, tmp_path_factory) -> dict[str, str]:
    """Real CIFAR-10 test images as adapt's npz files: 300 unlabeled (30 per class), 200 labeled (20 per class)."""
    from npe_models.data import load_cifar

    folder, test = tmp_path_factory.mktemp("cifar_npz"), load_cifar(data_dir, train=False)
    first = {count: np.concatenate([np.flatnonzero(test.labels == c)[:count] for c in range(10)]) for count in (30, 50)}
    unlabeled, labeled = first[30], np.setdiff1d(first[50], first[30])
    np.savez(folder / "unlabeled.npz", x=test.images[unlabeled])
    np.savez(folder / "calibration.npz", x=test.images[labeled], y=test.labels[labeled])
    return {"unlabeled": str(folder / "unlabeled.npz"), "calibration": str(folder / "calibration.npz")}


def test_adapt_measures_the_estimates_bootstrap_spread_and_warns_when_it_is_large(
    cifar_npz, tmp_path, monkeypatch
) -> None:
    """The stability rule: a bootstrap over the unlabeled images gives each class's standard deviation, returned,
    recorded and printed; above MAX_PRIOR_STD (0.05) adapt warns (here forced by lowering the threshold)."""
    options = dict(pretrained=True, unlabeled=cifar_npz["unlabeled"], calibration=cifar_npz["calibration"])
    result = adapt.adapt_source("resnet32_npe16", out=tmp_path / "stable", **options)
    assert result.prior_std.shape == (10,) and 0.005 < float(result.prior_std.max()) <= adapt.MAX_PRIOR_STD
    assert result.warning is None and "bootstrap standard deviation of the prior up to" in result.data
    assert "bootstrap standard deviation" in json.loads((tmp_path / "stable" / "prior.json").read_text())["data"]
    assert " +- " in adapt.format_adaptation(result) and "warning" not in adapt.format_adaptation(result)
    monkeypatch.setattr("npe_models.adapt.source.MAX_PRIOR_STD", 0.001)
    with pytest.warns(UserWarning, match="the estimated class mix is unstable: over 30 bootstrap resamples of the 300"):
        result = adapt.adapt_source("resnet32_npe16", out=tmp_path / "unstable", **options)
    assert "warning: the estimated class mix is unstable" in adapt.format_adaptation(result)


def test_the_bootstrap_spread_shrinks_with_more_unlabeled_images() -> None:
    """Class means far apart, a fixed mix: the spread of EM's estimate falls about as 1 / sqrt(images)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 4000, replacement=True, generator=generator)
    logits = 4.0 * torch.nn.functional.one_hot(labels, 3) + torch.randn(4000, 3, generator=generator)
    small, large = (adapt.prior_spread(logits[:count], adapt.em_prior) for count in (100, 4000))
    assert float(small.max()) > 4 * float(large.max()) and 0.02 < float(small.max()) < 0.1


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SKEW = [4] * 5 + [16] * 5  # unlabeled images per class: 100, most from the last five classes


def _png(path: Path, pixels: np.ndarray, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image if size == 32 else image.resize((size, size), Image.Resampling.NEAREST)).save(path)


@pytest.fixture(scope="module")
def image_folders(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Real CIFAR-10 test images as PNG files: an unlabeled tree (100 images, skewed to the last five classes, in
    nested folders, beside a hidden image and a text file that are skipped), the same images at 64x64, a calibration
    tree of class folders (10 images per class) and the same images as npz files."""
    from npe_models.data import load_cifar

    root, test = tmp_path_factory.mktemp("adapt_folders"), load_cifar(data_dir, train=False)
    rows = {c: np.flatnonzero(test.labels == c) for c in range(10)}
    unlabeled = np.concatenate([rows[c][:count] for c, count in enumerate(SKEW)])
    labeled = np.concatenate([rows[c][20:30] for c in range(10)])
    for number, row in enumerate(unlabeled):
        nested = Path("day1") if number % 2 else Path("day2", "camera b")
        _png(root / "unlabeled" / nested / f"{number:03d}.png", test.images[row])
        _png(root / "unlabeled64" / nested / f"{number:03d}.png", test.images[row], 64)
    _png(root / "unlabeled" / "day1" / ".hidden.png", test.images[rows[0][99]])
    (root / "unlabeled" / "day1" / "notes.txt").write_text("not an image")
    for row in labeled:
        _png(root / "calibration" / CIFAR10[test.labels[row]] / f"{row}.png", test.images[row])
    np.savez(root / "unlabeled.npz", x=test.images[unlabeled])
    np.savez(root / "calibration.npz", x=test.images[labeled], y=test.labels[labeled])
    names = ("unlabeled", "unlabeled64", "calibration", "unlabeled.npz", "calibration.npz")
    return {name: root / name for name in names}


@pytest.mark.filterwarnings("ignore:the estimated class mix is unstable")
def test_adapt_reads_image_folders_as_predict_does_and_gets_the_prior_of_the_same_arrays(
    image_folders, tmp_path, capsys
) -> None:
    """`npe-models adapt --unlabeled DIR --calibration CLASS_DIR` end to end: the PNG files give the prior the same
    images give as arrays (the 32x32 model's eval transform leaves 32x32 images as they are), the hidden file and the
    text file are skipped, and the record says how the files were read."""
    folders = ["--unlabeled", str(image_folders["unlabeled"]), "--calibration", str(image_folders["calibration"])]
    assert cli.main([*ADAPT, *folders, "--out", str(tmp_path / "folders")]) == 0
    assert "on 100 unlabeled images of" in capsys.readouterr().out
    record = json.loads((tmp_path / "folders" / "prior.json").read_text())
    assert "(image files, resized to 32x32 by the model's eval transform)" in record["data"]
    arrays = adapt.adapt_source(
        "resnet32_npe16",
        str(image_folders["unlabeled.npz"]),
        str(image_folders["calibration.npz"]),
        tmp_path / "arrays",
        pretrained=True,
    )
    np.testing.assert_allclose(record["prior"], arrays.prior.numpy(), atol=1e-4)
    assert sum(record["prior"][5:]) > 0.6  # the skew: 80 of the 100 images are of the last five classes


@pytest.mark.filterwarnings("ignore:the estimated class mix is unstable")
def test_adapt_resizes_image_files_of_another_size_with_the_models_eval_transform(image_folders, tmp_path) -> None:
    """The same images as 64x64 PNG files (refused as 64x64 arrays) are resized to the model's 32x32 by its eval
    transform, which the record says, and the estimate keeps the mix's skew to the last five classes."""
    unlabeled = str(image_folders["unlabeled64"])
    result = adapt.adapt_source(
        "resnet32_npe16", unlabeled, str(image_folders["calibration"]), tmp_path / "adapted", pretrained=True
    )
    assert f"100 unlabeled images of {unlabeled} (image files, resized to 32x32 by the model's eval" in result.data
    assert float(result.prior[5:].sum()) > 0.6


@pytest.mark.parametrize("change", ["unknown class", "missing class"])
def test_calibration_class_folders_must_be_the_models_classes(change, image_folders, tmp_path, capsys) -> None:
    calibration = Path(shutil.copytree(image_folders["calibration"], tmp_path / "calibration"))
    if change == "unknown class":
        (calibration / "truck").rename(calibration / "lorry")
        expected = "has class folders the model does not know: 'lorry'; the model's classes are 'airplane', "
    else:
        shutil.rmtree(calibration / "cat")
        shutil.rmtree(calibration / "dog")
        expected = "has no class folder for 'cat', 'dog': calibration needs labeled images of every class"
    folders = ["--unlabeled", str(image_folders["unlabeled.npz"]), "--calibration", str(calibration)]
    err = _error(capsys, [*ADAPT, *folders, "--out", str(tmp_path / "adapted")])
    assert f"calibration folder {calibration} {expected}" in err
