"""Data faults (issue 44): images of every PIL mode read to the right RGB values; folder scans that skip hidden
entries, symlink loops and repeats and say so; split lists with repeated or conflicting lines, bad labels, other
encodings or a BOM; unreadable files found before training; unbounded --image-size / --workers; a CIFAR meta file
that would run code when unpickled."""

from __future__ import annotations

import colorsys
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from npe_models import cli, predict
from npe_models.classification import resolve_config
from npe_models.data import load_cifar_class_names, load_image_folder, load_long_tailed
from npe_models.data.files import scan_image_folder
from npe_models.data.images import read_image, to_rgb
from npe_models.data.scan import IMAGE_EXTENSIONS, ImageFiles, collect_images

# --- 15. the CIFAR meta file is read without running code -------------------------------------------------------


class _Payload:
    """Unpickling calls ``function(*arguments)``: a file appears where the payload ran."""

    def __init__(self, function, *arguments) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def _write_meta(root: Path, content) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    path = folder / "batches.meta"
    path.write_bytes(pickle.dumps(content, protocol=2))
    return path


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("via", ["os.system", "builtins.open"])
def test_a_cifar_meta_file_with_a_payload_is_refused_without_running_it(tmp_path, via):
    marker = tmp_path / "payload_ran"
    payload = _Payload(os.system, f"touch {marker}") if via == "os.system" else _Payload(open, str(marker), "w")
    path = _write_meta(tmp_path, {"label_names": CLASSES, "payload": payload})
    with pytest.raises(ValueError) as error:
        load_cifar_class_names(tmp_path, "cifar10")
    assert not marker.exists()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_plain_cifar_meta_file_still_gives_its_names(tmp_path):
    _write_meta(tmp_path, {"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072})
    assert load_cifar_class_names(tmp_path, "cifar10") == tuple(CLASSES)


# --- 13. --image-size and --workers have upper bounds -------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--image-size", "100000", "image_size (--image-size) must be an integer >= 8 and <= 4096; got 100000."),
        ("--workers", "100000", "workers (--workers) must be an integer >= 0 and <= 256; got 100000."),
    ],
)
def test_huge_image_size_and_workers_are_refused_before_any_data_loads(capsys, tmp_path, option, value, message):
    missing = tmp_path / "no_such_data"  # the data are never looked at: the setting is refused first
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--model", "resnet20", "--device", "cpu"]
    code = cli.main([*argv, "--dataset", "folder", "--data-dir", str(missing), option, value])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="must be an integer >= 8 and <= 4096"):
        resolve_config(dataset="folder", model="resnet20", method="ce", image_size=4097)
    assert resolve_config(dataset="folder", model="resnet20", method="ce", image_size=4096, workers=256).workers == 256


# --- 5. every PIL mode reads to the RGB values of its 8-bit RGB equivalent ----------------------------------------

_RNG = np.random.default_rng(44)
_RGB = _RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # the 8-bit RGB image each colour file stands for
_GRAY = _RNG.permutation(256).astype(np.uint8).reshape(16, 16)  # every gray level once: the one-channel files' image
_ALPHA = _RNG.integers(128, 256, (16, 16), dtype=np.uint8)  # premultiplied images lose <= 1 level at alpha >= 128


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _set_extra_samples_associated(path: Path) -> None:
    """Mark a little-endian TIFF's alpha as associated (premultiplied): PIL then opens LA as La."""
    data = path.read_bytes()
    entry = (338).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    at = data.index(entry) + len(entry)
    assert data[at : at + 2] == (2).to_bytes(2, "little")
    path.write_bytes(data[:at] + (1).to_bytes(2, "little") + data[at + 2 :])


def _pgm16(path: Path, gray16: np.ndarray) -> None:
    height, width = gray16.shape
    path.write_bytes(b"P5\n%d %d\n65535\n" % (width, height) + gray16.astype(">u2").tobytes())


def _write_mode_case(case: str, folder: Path) -> tuple[Path, str, np.ndarray]:
    """A file of ``case``'s mode, the mode PIL must open it as, and its 8-bit RGB equivalent."""
    gray, rgb = _GRAY, _RGB
    if case == "1 (bilevel png)":
        path = folder / "bilevel.png"
        Image.fromarray(gray > 127).save(path)
        return path, "1", _gray_rgb(np.where(gray > 127, 255, 0).astype(np.uint8))
    if case == "L (png)":
        Image.fromarray(gray).save(path := folder / "gray.png")
        return path, "L", _gray_rgb(gray)
    if case in ("P (png)", "P with a transparent colour (png)"):
        palette = _RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        index = _RNG.integers(0, 256, gray.shape, dtype=np.uint8)
        image = Image.fromarray(index, "L").convert("P")
        image.putpalette(palette.tobytes())
        extra = {"transparency": 7} if "transparent" in case else {}
        image.save(path := folder / "palette.png", **extra)
        return path, "P", palette[index]  # alpha dropped: a transparent entry reads as its palette colour
    if case == "PA (tiff)":
        palette = _RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        index = _RNG.integers(0, 256, gray.shape, dtype=np.uint8)
        image = Image.fromarray(index, "L").convert("P")
        image.putpalette(palette.tobytes())
        image = image.convert("PA")
        image.putalpha(Image.fromarray(_ALPHA))
        image.save(path := folder / "palette_alpha.tif")
        return path, "PA", palette[index]
    if case == "LA (png)":
        Image.fromarray(np.stack([gray, _ALPHA], 2), "LA").save(path := folder / "gray_alpha.png")
        return path, "LA", _gray_rgb(gray)  # alpha dropped
    if case == "La (premultiplied tiff)":
        premultiplied = np.rint(gray * (_ALPHA / 255.0)).astype(np.uint8)
        Image.fromarray(np.stack([premultiplied, _ALPHA], 2), "LA").save(path := folder / "gray_alpha.tif")
        _set_extra_samples_associated(path)
        return path, "La", _gray_rgb(gray)  # unpremultiplied, then alpha dropped
    if case == "RGBA (png)":
        Image.fromarray(np.concatenate([rgb, _ALPHA[..., None]], 2), "RGBA").save(path := folder / "rgba.png")
        return path, "RGBA", rgb
    if case == "CMYK (tiff)":
        cmyk = _RNG.integers(0, 256, (*gray.shape, 4), dtype=np.uint8)
        Image.fromarray(cmyk, "CMYK").save(path := folder / "cmyk.tif")
        c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
        return path, "CMYK", np.rint((255 - c) * (255 - k) / 255).astype(np.uint8)
    if case == "YCbCr (tiff)":
        ycc = _RNG.integers(16, 240, (*gray.shape, 3), dtype=np.uint8)
        Image.fromarray(ycc, "YCbCr").save(path := folder / "ycbcr.tif")
        y, cb, cr = (ycc[..., i].astype(float) for i in range(3))  # JFIF: full-range BT.601
        r, g, b = y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)
        return path, "YCbCr", np.clip(np.rint(np.stack([r, g, b], 2)), 0, 255).astype(np.uint8)
    if case == "I;16 (16-bit png)":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path := folder / "gray16.png")
        return path, "I;16", _gray_rgb(gray)
    if case == "I;16B (big-endian 16-bit tiff)":
        Image.fromarray((gray.astype(np.uint16) * 257).astype(">u2")).save(path := folder / "gray16be.tif")
        return path, "I;16B", _gray_rgb(gray)
    if case == "I (16-bit pgm)":
        _pgm16(path := folder / "gray16.pgm", gray.astype(np.uint16) * 257)
        return path, "I", _gray_rgb(gray)
    if case == "I (32-bit int tiff)":
        values = np.rint(gray.astype(np.float64) * ((2**31 - 1) / 255)).astype(np.int32)
        Image.fromarray(values).save(path := folder / "gray32.tif")
        return path, "I", _gray_rgb(gray)
    if case == "F (float tiff in [0, 1])":
        Image.fromarray((gray / 255).astype(np.float32)).save(path := folder / "float.tif")
        return path, "F", _gray_rgb(gray)
    raise AssertionError(case)


MODE_CASES = [
    "1 (bilevel png)",
    "L (png)",
    "P (png)",
    "P with a transparent colour (png)",
    "PA (tiff)",
    "LA (png)",
    "La (premultiplied tiff)",
    "RGBA (png)",
    "CMYK (tiff)",
    "YCbCr (tiff)",
    "I;16 (16-bit png)",
    "I;16B (big-endian 16-bit tiff)",
    "I (16-bit pgm)",
    "I (32-bit int tiff)",
    "F (float tiff in [0, 1])",
]


@pytest.mark.parametrize("case", MODE_CASES)
def test_every_mode_reads_as_its_8_bit_rgb_equivalent(tmp_path, case):
    path, mode, expected = _write_mode_case(case, tmp_path)
    with Image.open(path) as opened:
        assert opened.mode == mode  # the file exercises the mode it is named after
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (expected.shape[1], expected.shape[0])
    difference = np.abs(np.asarray(image, dtype=np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{case}: max abs difference {difference.max()}"


@pytest.mark.parametrize("mode", ["HSV", "LAB", "RGBa", "La"])
def test_modes_without_a_file_format_here_read_as_their_rgb_equivalent(mode):
    if mode == "HSV":
        hsv = _RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(hsv, "HSV")
        expected = np.array([[colorsys.hsv_to_rgb(*(pixel / 255)) for pixel in row] for row in hsv]) * 255
    elif mode == "LAB":
        image = Image.fromarray(_RGB).convert("LAB")
        lab_to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        expected = np.asarray(ImageCms.applyTransform(image, lab_to_srgb), dtype=np.float64)
    elif mode == "RGBa":
        premultiplied = np.rint(_RGB * (_ALPHA[..., None] / 255.0)).astype(np.uint8)
        image = Image.fromarray(np.concatenate([premultiplied, _ALPHA[..., None]], 2), "RGBA")
        image = Image.frombytes("RGBa", image.size, image.tobytes())
        expected = _RGB
    else:
        premultiplied = np.rint(_GRAY * (_ALPHA / 255.0)).astype(np.uint8)
        image = Image.frombytes("La", (16, 16), np.stack([premultiplied, _ALPHA], 2).tobytes())
        expected = _gray_rgb(_GRAY)
    difference = np.abs(np.asarray(to_rgb(image), dtype=np.float64) - np.rint(expected))
    assert difference.max() <= 1, f"{mode}: max abs difference {difference.max()}"


@pytest.mark.parametrize("values", [[0.0, 2.5], [0.0, float("nan")], [-1.0, 0.5]])
def test_a_float_image_outside_0_1_is_refused_with_its_name(tmp_path, values):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    with pytest.raises(ValueError) as error:
        read_image(path)
    message = str(error.value)
    assert message.startswith(f"cannot read image {path} (a float image with values in") and "\n" not in message


# --- 6, 7. folder scans: symlink loops, files reached twice, hidden entries, other extensions -----------------------


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def _tree(root: Path, counts: dict[str, int]) -> None:
    for split in ("train", "val"):
        for name, count in counts.items():
            for n in range(count if split == "train" else 1):
                _png(root / split / name / f"{n}.png", 10 * n)


def test_a_symlink_loop_is_not_followed_and_no_file_counts_twice(tmp_path):
    _tree(tmp_path, {"cat": 3, "dog": 2})
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    os.symlink(".", cat / "loop")  # the issue's `ln -s . train/cat/loop`: the class counted 41 times
    os.symlink("../cat", dog / "cats")  # another class's folder, reached a second time
    os.symlink("0.png", dog / "again.png")  # the same file under a second name
    data = load_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.counts.tolist() == [3, 2]
    assert len(set(map(os.path.realpath, data.train.paths))) == len(data.train) == 5
    assert data.skipped == {"symlink loop": (cat / "loop",), "reached twice": (dog / "again.png", dog / "cats")}
    assert "1 symlink loop (a link to a folder that holds it)" in data.skipped_summary()


# Each alone: two loops in one folder make the unguarded walk exponential.
LOOPS = {
    "to the folder that holds it": ("train/cat/up", ".."),
    "beside the class folders": ("train/itself", "."),
    "one level down": ("train/cat/deeper/x", "../deeper"),
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_other_symlink_loops_are_not_followed(tmp_path, loop):
    _tree(tmp_path, {"cat": 3, "dog": 2})
    _png(tmp_path / "train" / "cat" / "deeper" / "3.png")
    link, target = LOOPS[loop]
    os.symlink(target, tmp_path / link)
    data = load_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.counts.tolist() == [4, 2]
    assert data.skipped == {"symlink loop": (tmp_path / link,)}


def test_a_linked_folder_that_does_not_loop_is_followed(tmp_path):
    _tree(tmp_path / "data", {"cat": 2, "dog": 2})
    _png(tmp_path / "elsewhere" / "more_cats" / "a.png")
    os.symlink(tmp_path / "elsewhere" / "more_cats", tmp_path / "data" / "train" / "cat" / "more")
    assert load_image_folder(tmp_path / "data").counts.tolist() == [3, 2]


def _junk_tree(root: Path) -> None:
    _tree(root, {"cat": 2, "dog": 2})
    _png(root / "train" / ".ipynb_checkpoints" / "0-checkpoint.png")  # Jupyter's hidden folder: no class
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / "cat" / "anim.gif")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "README.md").write_text("a file beside the class folders")
    (root / "val" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def test_hidden_entries_and_other_extensions_are_skipped_and_reported(tmp_path, caplog):
    _junk_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="npe_models.data.files"):
        data = load_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.counts.tolist() == [2, 2]
    assert not any(Path(path).name.startswith(".") for path in data.train.paths)
    assert {reason: len(paths) for reason, paths in data.skipped.items()} == {
        "hidden": 3,
        "unsupported extension": 2,
        "outside class folders": 1,
    }
    summary = data.skipped_summary()
    assert summary.startswith("skipped 6 entries: ") and "\n" not in summary
    assert "3 hidden" in summary and "2 with an unsupported extension: .gif 1, .txt 1" in summary
    assert "1 outside the class folders" in summary
    assert [record.getMessage() for record in caplog.records] == [f"folder data set {tmp_path}: {summary}"]


def test_predict_collects_a_folder_by_the_same_rules_and_says_what_it_skipped(tmp_path, caplog):
    _junk_tree(tmp_path)
    os.symlink(".", tmp_path / "train" / "cat" / "loop")
    with caplog.at_level(logging.WARNING, logger="npe_models.predict"):
        images = predict.collect_images([tmp_path / "train", tmp_path / "train" / "dog" / "0.png"])
    assert isinstance(images, ImageFiles)
    assert sorted(map(str, images)) == sorted(scan_image_folder(tmp_path / "train")[0].paths)
    assert len(images) == 4 and images[0:2] == list(images.paths[:2])  # the dog image given twice counts once
    assert images.skipped_counts == {"hidden": 2, "unsupported extension": 3, "symlink loop": 1, "reached twice": 1}
    assert caplog.records and caplog.records[0].getMessage() == f"predict: {images.skipped_summary()}"


def test_the_folder_scan_keeps_torchvisions_order_for_a_plain_tree(tmp_path):
    from torchvision.datasets.folder import make_dataset

    for relative in ["a/2.png", "a/10.png", "a/b/1.png", "a-b/0.png", "a/B.JPG", "b/x/y/z.webp", "b/0.png"]:
        _png(tmp_path / "train" / relative)
    images, names = scan_image_folder(tmp_path / "train")
    expected = make_dataset(str(tmp_path / "train"), {name: i for i, name in enumerate(names)}, IMAGE_EXTENSIONS)
    assert list(zip(images.paths, images.labels.tolist())) == expected


def test_collect_images_names_what_it_skipped_in_a_folder_without_images(tmp_path):
    _png(tmp_path / "only" / ".hidden.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "only" / "anim.gif")
    with pytest.raises(ValueError) as error:
        collect_images([tmp_path / "only"])
    assert str(error.value).startswith(f"no images in folder {tmp_path / 'only'} (searched recursively for .jpg")
    assert str(error.value).endswith(
        "; skipped 2 entries: 1 hidden (name starts with '.'): "
        f"{tmp_path / 'only' / '.hidden.png'}; 1 with an unsupported extension: .gif 1)."
    )
    empty = collect_images([tmp_path / "only"], allow_empty=True)
    assert len(empty) == 0 and empty.skipped_counts == {"hidden": 1, "unsupported extension": 1}


# --- 8, 12. split lists: repeated or conflicting lines, bad labels, other encodings, a BOM -------------------------


def _lists(root: Path) -> tuple[Path, list[str]]:
    """Ten images of two classes under ``root/img`` and ImageNet-LT-format lists over them; the train list's lines."""
    lines = [f"img/{name}/{n}.png {label}" for label, name in enumerate(["cat", "dog"]) for n in range(5)]
    for line in lines:
        _png(root / line.split()[0])
    (root / "lists").mkdir()
    (root / "lists" / "ImageNet_LT_test.txt").write_text("\n".join(lines) + "\n")
    return root / "lists" / "ImageNet_LT_train.txt", lines


def _list_error(root: Path) -> str:
    with pytest.raises(ValueError) as error:
        load_long_tailed("imagenet_lt", root, split_dir=str(root / "lists"))
    assert "\n" not in str(error.value)
    return str(error.value)


def test_repeated_lines_of_a_split_list_are_refused_naming_them(tmp_path):
    train, lines = _lists(tmp_path)
    train.write_text("\n".join(lines + lines * 20) + "\n")  # 200 repeated lines: 200 more images before
    message = _list_error(tmp_path)
    assert message.startswith(
        f"{train}: 200 line(s) list an image a second time (line 11 repeats line 1, line 12 repeats line 2, line 13 "
        "repeats line 3, line 14 repeats line 4, line 15 repeats line 5, ...), which would count it twice"
    )
    train.write_text("\n".join([*lines, "./img/cat/0.png 0"]) + "\n")  # the same file, written another way
    assert _list_error(tmp_path).startswith(f"{train}: 1 line(s) list an image a second time (line 11 repeats line 1)")


def test_an_image_listed_under_two_labels_is_refused_naming_the_lines(tmp_path):
    train, lines = _lists(tmp_path)
    train.write_text("\n".join([*lines, "", "img/cat/3.png 1"]) + "\n")
    assert _list_error(tmp_path) == (
        f"{train}: 1 line(s) list an image already listed under another label (img/cat/3.png: line 4 says 0, "
        "line 12 says 1); an image has one class: remove the wrong lines."
    )


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("img/cat/0.png 99999999999999999999", ":11: label 99999999999999999999 is too large; labels are class"),
        ("img/cat/0.png \u00b2", ":11: expected 'relative/path label' (a whole number 0..C-1 as label), got"),
        ("img/cat/0.png -2", ":11: label -2 is negative; labels are class indices 0..C-1."),
    ],
)
def test_a_bad_label_names_the_list_and_line(tmp_path, bad_line, message):
    train, lines = _lists(tmp_path)
    train.write_text("\n".join([*lines, bad_line]) + "\n", encoding="utf-8")
    assert _list_error(tmp_path).startswith(f"{train}{message}")


def test_a_list_in_another_encoding_names_the_line(tmp_path):
    train, lines = _lists(tmp_path)
    train.write_bytes(("\n".join([*lines[:2], "img/caf\u00e9/0.png 0", *lines[2:]]) + "\n").encode("latin-1"))
    assert _list_error(tmp_path) == f"{train}:3: not UTF-8 text (byte 0xe9); save the list as UTF-8."


def test_a_byte_order_mark_is_dropped(tmp_path):
    train, lines = _lists(tmp_path)
    train.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # as Notepad writes UTF-8
    data = load_long_tailed("imagenet_lt", tmp_path, split_dir=str(tmp_path / "lists"))
    assert data.train.paths[0] == str(tmp_path / "img" / "cat" / "0.png") and data.counts.tolist() == [5, 5]


def test_an_overflowing_label_is_one_line_on_the_command_line(tmp_path, capsys):
    train, lines = _lists(tmp_path)
    train.write_text("\n".join([*lines, "img/cat/0.png 99999999999999999999"]) + "\n")
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--model", "resnet20", "--device", "cpu"]
    options = ["--dataset", "imagenet_lt", "--data-dir", str(tmp_path), "--split-dir", str(tmp_path / "lists")]
    assert cli.main([*argv, *options]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"npe-models train: error: {train}:11: label 99999999999999999999 is too large; labels are class "
        "indices 0..C-1.\n"
    )


# --- 10. unreadable files are found, all at once, before training ------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "not an image":
        path.write_text("<html>404 Not Found</html>")
    else:  # a header cut short
        path.write_bytes(path.read_bytes()[:40])


def test_every_unreadable_file_is_named_before_training_in_one_error(tmp_path, capsys):
    _tree(tmp_path, {"cat": 6, "dog": 6})
    bad = [tmp_path / "train" / name / f"{n}.png" for name in ("cat", "dog") for n in range(6)]
    for number, path in enumerate(bad):
        _damage(path, ["empty", "not an image", "cut short"][number % 3])
    _damage(tmp_path / "val" / "dog" / "0.png", "empty")
    with pytest.raises(ValueError) as error:
        load_image_folder(tmp_path)
    message = str(error.value)
    first = bad[0]
    assert message.startswith(
        f"cannot read 13 of the 14 image files of {tmp_path / 'train'}, {tmp_path / 'val'}: {first} (empty file), "
        f"{bad[1]} (not an image PIL can open, or its header is damaged), {bad[2]} (not an image PIL can open"
    )
    assert message.endswith(" and 3 more; replace these files or leave them out.") and "\n" not in message
    assert message.count(" (") == 10  # the first ten named
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--model", "resnet20", "--device", "cpu"]
    assert cli.main([*argv, "--dataset", "folder", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"npe-models train: error: {message}\n"


def test_a_missing_listed_image_is_found_before_training(tmp_path):
    train, lines = _lists(tmp_path)
    train.write_text("\n".join(lines) + "\n")
    (tmp_path / "img" / "dog" / "3.png").unlink()
    assert _list_error(tmp_path) == (
        f"cannot read image {tmp_path / 'img' / 'dog' / '3.png'} (no such file); replace the file or leave it out. "
        f"It is part of {train}."
    )


def test_evaluate_refuses_huge_image_size_and_workers_as_training_does(tmp_path, capsys) -> None:
    """The bounds live with the file data sets (check_file_loading): evaluate's --image-size / --workers meet them
    too, before any file is read."""
    from npe_models import cli

    for option, value in (("--image-size", "100000"), ("--workers", "100000")):
        argv = ["evaluate", "resnet32_npe16", "--pretrained", "--dataset", "folder", "--data-dir", str(tmp_path)]
        code = cli.main([*argv, option, value, "--out", str(tmp_path / "eval"), "--no-progress"])
        err = capsys.readouterr().err
        name = option[2:].replace("-", "_")
        assert code == 1 and f"{name} ({option}) must be an integer >= " in err and f"got {value}." in err, err
