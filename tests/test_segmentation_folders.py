"""Segmentation data from image and mask files: the seg_folder and ADE20K layouts, their checks, the Many / Medium /
Few groups, and training, resuming and evaluating on them (issue 45)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npe_models.cli import main
from npe_models.data import ADE20K_CLASSES, SegmentationFolder
from npe_models.data.stare import StareSegmentation, stare_file
from npe_models.segmentation import (
    SegmentationTrainConfig,
    evaluate_run,
    load_segmentation_model,
    resolve_segmentation_config,
    segmentation_dataset,
    segmentation_model_config,
    train_run,
)
from npe_models.segmentation.metrics import SegmentationMetrics, pixel_share_groups

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread is faster on a shared CPU

SIZE = (24, 28)  # height, width


def _mask(seed: int, num_classes: int = 3) -> np.ndarray:
    """A mask with class 0 everywhere, a block of class 1 and a few pixels of the last class."""
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[4 + seed : 14 + seed, 6:20] = 1
    mask[0, : 2 + seed] = num_classes - 1
    return mask


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def _seg_folder(root: Path, train: int = 3, val: int = 2, palette: bool = False, classes: bool = True) -> Path:
    """A seg_folder tree of PNG images and class-index masks (palette masks with ``palette``)."""
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            seed = i + (10 if split == "val" else 0)
            Image.fromarray(_image(seed)).save(root / "images" / split / f"img{i}.png")
            mask = Image.fromarray(_mask(i % 3))
            if palette:
                mask = mask.convert("P")
                mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
            mask.save(root / "masks" / split / f"img{i}.png")
    if classes:
        (root / "classes.txt").write_text("road\ncar\nbike\n")
    return root


def _ade20k(root: Path) -> Path:
    """An ADEChallengeData2016 tree: JPEG images, masks with 0 = other and 1..150 the classes."""
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(2):
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(_image(i)).save(root / "images" / split / f"{name}.jpg", quality=95)
            mask = np.zeros(SIZE, dtype=np.uint8)  # "other": ignored
            mask[2:10, 2:10] = 1  # wall
            mask[12:20, 2:10] = 150  # flag
            Image.fromarray(mask).save(root / "annotations" / split / f"{name}.png")
    return root


def test_seg_folder_loads_images_masks_classes_and_pixel_counts(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "data", palette=True)
    (root / "images" / "train" / ".ipynb_checkpoints").mkdir()  # hidden entries are skipped, as for classification
    (root / "images" / "train" / "._img0.png").write_bytes(b"junk")
    train = SegmentationFolder(root, "train")
    assert train.ids == ["img0", "img1", "img2"] and train.classes == ["road", "car", "bike"]
    image, mask = train[1]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(_image(1)))
    assert torch.equal(mask, torch.from_numpy(_mask(1).astype(np.int64)))  # palette read as its indices
    expected = np.bincount(np.concatenate([_mask(i).ravel() for i in range(3)]), minlength=3)
    assert train.class_pixels.tolist() == expected.tolist()
    assert len(SegmentationFolder(root, "val")) == 2


def test_classes_from_json_from_masks_or_num_classes(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "data", classes=False)
    assert SegmentationFolder(root).classes == ["class 0", "class 1", "class 2"]  # the masks' largest value + 1
    assert SegmentationFolder(root, num_classes=5).classes == [f"class {i}" for i in range(5)]
    (root / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    assert SegmentationFolder(root).classes == ["a", "b", "c"]
    with pytest.raises(ValueError, match="names 3 classes but num_classes"):
        SegmentationFolder(root, num_classes=4)


def test_reduce_zero_label_and_ignore_index(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "data", classes=False)
    mask = np.array(Image.open(root / "masks" / "train" / "img0.png"))
    mask[-1, -1] = 255
    Image.fromarray(mask).save(root / "masks" / "train" / "img0.png")
    reduced = SegmentationFolder(root, reduce_zero_label=True)
    assert reduced.classes == ["class 0", "class 1"]
    labels = reduced[0][1]
    assert (labels[torch.from_numpy(mask == 0)] == 255).all() and labels[-1, -1] == 255
    assert torch.equal(
        labels[torch.from_numpy((mask > 0) & (mask < 255))],
        torch.from_numpy(mask[(mask > 0) & (mask < 255)] - 1).long(),
    )
    plain = SegmentationFolder(root)
    assert plain[0][1][-1, -1] == 255 and plain.class_pixels.sum() == 3 * SIZE[0] * SIZE[1] - 1
    with pytest.raises(ValueError, match="holds value 255, which is neither one of the 3 classes"):
        SegmentationFolder(root, num_classes=3, ignore_index=0)


def test_ade20k_layout_has_its_150_classes_and_reduces_label_zero(tmp_path: Path) -> None:
    root = _ade20k(tmp_path / "ADEChallengeData2016")
    train = segmentation_dataset("ade20k", "train", None, root)
    assert len(ADE20K_CLASSES) == 150 and train.classes == list(ADE20K_CLASSES)
    assert train.classes[0] == "wall" and train.classes[149] == "flag"
    _, mask = train[0]
    assert mask[0, 0] == 255 and mask[5, 5] == 0 and mask[15, 5] == 149
    assert train.class_pixels[0] == 2 * 64 and train.class_pixels[149] == 2 * 64 and train.class_pixels.sum() == 256
    assert len(segmentation_dataset("ade20k", "val", None, root)) == 2


def _break(root: Path, case: str) -> str:
    """Damage a good seg_folder tree; the file the error must name."""
    images, masks = root / "images" / "train", root / "masks" / "train"
    if case == "mask size":
        Image.fromarray(np.zeros((SIZE[0], SIZE[1] + 1), np.uint8)).save(masks / "img1.png")
        return str(masks / "img1.png")
    if case == "mask value":
        bad = _mask(0)
        bad[3, 3] = 7
        Image.fromarray(bad).save(masks / "img2.png")
        return str(masks / "img2.png")
    if case == "image without mask":
        Image.fromarray(_image(5)).save(images / "extra.jpg")
        return str(images / "extra.jpg")
    if case == "mask without image":
        Image.fromarray(_mask(0)).save(masks / "orphan.png")
        return str(masks / "orphan.png")
    if case == "rgb mask":
        Image.fromarray(np.stack([_mask(0)] * 3, -1)).save(masks / "img0.png")
        return str(masks / "img0.png")
    if case == "empty split":
        for path in [*images.iterdir(), *masks.iterdir()]:
            path.unlink()
        return str(images)
    if case == "damaged image":
        (images / "img0.png").write_bytes(b"not a png")
        return str(images / "img0.png")
    raise AssertionError(case)


BAD_DATA = {
    "mask size": "must have its image's size",
    "mask value": "holds value 7, which is neither one of the 3 classes",
    "image without mask": "has no mask",
    "mask without image": "has no image",
    "rgb mask": "an RGB colour mask, where class indices are expected",
    "empty split": "the train split is empty",
    "damaged image": "cannot read image",
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_line_naming_the_file_before_training(case: str, tmp_path: Path, capsys) -> None:
    root = _seg_folder(tmp_path / "data")
    named = _break(root, case)
    with pytest.raises(ValueError, match=BAD_DATA[case]) as error:
        SegmentationFolder(root, "train")
    assert named in str(error.value)
    out = tmp_path / "run"
    code = main(
        ["train", "--model", "unet_fcn_npe1", "--dataset", "seg_folder", "--data-dir", str(root), "--out", str(out)]
        + [
            "--no-progress",
            "--device",
            "cpu",
            "--model-arg",
            "base_channels=4",
            "--crop-size",
            "16",
            "--num-classes",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and named in err and err.count("\n") == 1, err
    assert not out.exists()


def test_pixel_share_groups_and_group_means() -> None:
    assert pixel_share_groups([9000, 980, 15, 5, 0]) == ["many", "many", "medium", "few", "few"]
    confusion = torch.tensor([[8, 2, 0], [0, 5, 5], [0, 0, 0]])
    metrics = SegmentationMetrics(confusion, ["a", "b", "c"], ["many", "many", "few"]).to_dict()
    assert metrics["group_mean_iou"]["many"] == pytest.approx((0.8 + 5 / 12) / 2)
    assert metrics["group_mean_iou"]["medium"] is None  # no class in the group
    assert metrics["group_mean_iou"]["few"] == 0.0 and metrics["group_mean_accuracy"]["few"] is None  # c: no target
    assert metrics["groups"] == ["many", "many", "few"]


def _train_args(root: Path, out: Path, iterations: int) -> list[str]:
    return [
        "train", "--model", "unet_fcn_npe1", "--no-freeze-backbone", "--dataset", "seg_folder", "--data-dir", str(root),
        "--out", str(out), "--iterations", str(iterations), "--batch-size", "2", "--crop-size", "16",
        "--model-arg", "base_channels=4", "--checkpoint-every", "2", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def test_train_resume_and_evaluate_on_a_seg_folder(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "data")
    run, whole = tmp_path / "run", tmp_path / "whole"
    torch.manual_seed(0)  # the fresh model's initialisation
    assert main(_train_args(root, run, 2)) == 0
    assert main(["train", "--out", str(run), "--resume", "--iterations", "3", "--no-progress"]) == 0
    torch.manual_seed(0)
    assert main(_train_args(root, whole, 3)) == 0
    resumed, _ = load_segmentation_model(run / "model.safetensors")
    straight, settings = load_segmentation_model(whole / "model.safetensors")
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), name
    assert settings.class_names == ["road", "car", "bike"] and settings.num_classes == 3
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "seg_folder" and config["data"]["data_dir"] == str(root.resolve())
    assert config["data"]["images"] == ["img0", "img1", "img2"]
    assert config["data"]["class_pixels"] == SegmentationFolder(root).class_pixels.tolist()
    # evaluate reads the data set and its folder from the run; whole images at their own resolution
    assert main(["evaluate", str(run), "--mode", "whole", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert report["dataset"] == "seg_folder" and list(report["results"]) == ["masks"]
    assert report["class_groups"] == {"many": ["road", "car"], "medium": ["bike"], "few": []}  # bike: 0.45 %
    scores = report["results"]["masks"]["0.0"]
    assert scores["classes"] == ["road", "car", "bike"] and len(scores["iou"]) == 3
    assert scores["group_mean_iou"]["many"] == pytest.approx(np.mean(scores["iou"][:2]))
    assert scores["group_mean_iou"]["medium"] == pytest.approx(scores["iou"][2])
    assert sum(map(sum, scores["confusion"])) == 2 * SIZE[0] * SIZE[1]


def _write_stare_as_seg_folder(data_dir: Path, root: Path, annotation: str = "ah") -> None:
    """The STARE array file's training and validation images and masks as a seg_folder (lossless PNG)."""
    (root).mkdir()
    (root / "classes.txt").write_text("background\nvessel\n")
    for split in ("train", "val"):
        stare = StareSegmentation(data_dir, split, annotation)
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for name, (image, mask) in zip(stare.ids, stare):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "images" / split / f"{name}.png")
            Image.fromarray(mask.numpy().astype(np.uint8)).save(root / "masks" / split / f"{name}.png")


def test_stare_written_as_a_seg_folder_trains_and_scores_as_the_array_file(data_dir: Path, tmp_path: Path) -> None:
    stare_file(data_dir)
    root = tmp_path / "stare_folder"
    _write_stare_as_seg_folder(data_dir, root)
    for split in ("train", "val"):  # the same images and masks reach the model, in the same order
        arrays, files = StareSegmentation(data_dir, split, "ah"), SegmentationFolder(root, split)
        assert arrays.ids == files.ids
        for (image_a, mask_a), (image_f, mask_f) in zip(arrays, files):
            assert torch.equal(image_a, image_f) and torch.equal(mask_a, mask_f)
    results, metrics = {}, {}
    for dataset, folder in (("stare", data_dir), ("seg_folder", root)):
        run = tmp_path / dataset
        config = resolve_segmentation_config(
            run,
            False,
            model="unet_fcn_npe1",
            dataset=dataset,
            data_dir=folder,
            model_kwargs={"base_channels": 4},
            freeze_backbone=False,
            iterations=2,
            batch_size=2,
            crop_size=(32, 32),
        )
        assert config.train == SegmentationTrainConfig(
            iterations=2, batch_size=2, crop_size=(32, 32), freeze_backbone=False
        )
        torch.manual_seed(0)  # the same initial model for both
        results[dataset] = train_run(config, run, data_dir=folder, device="cpu")
        model, settings = load_segmentation_model(run / "model.safetensors")
        scored = evaluate_run(
            model,
            settings,
            run / "eval",
            data_dir=folder,
            dataset=dataset,
            annotations=["ah"] if dataset == "stare" else None,
            mode="slide",
            crop_size=(128, 128),
            stride=(300, 300),
            device="cpu",
        )
        metrics[dataset] = next(iter(scored.values()))
        assert json.loads((run / "config.json").read_text())["data"]["images"] == StareSegmentation(data_dir).ids
    assert results["stare"]["loss"] == results["seg_folder"]["loss"]
    for alpha, stare_metrics in metrics["stare"].items():
        assert torch.equal(stare_metrics.confusion, metrics["seg_folder"][alpha].confusion)


def test_a_command_decodes_each_training_mask_once(tmp_path: Path, monkeypatch) -> None:
    """Without a class file the classes come from the training masks; training then opens the split again."""
    import npe_models.data.segfolder as segfolder

    root = _seg_folder(tmp_path / "data", train=3, classes=False)
    decoded = []
    original = segfolder.read_mask
    monkeypatch.setattr(segfolder, "read_mask", lambda path: decoded.append(Path(path).name) or original(path))
    config = resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn", dataset="seg_folder", data_dir=root)
    dataset = segmentation_dataset("seg_folder", "train", data_dir=root, class_names=config.model.class_names)
    assert config.model.class_names == ["class 0", "class 1", "class 2"] and len(dataset) == 3
    assert sorted(decoded) == ["img0.png", "img1.png", "img2.png"]
    Image.fromarray(_mask(1)).save(root / "masks" / "train" / "img0.png")  # a changed file is read again
    SegmentationFolder(root, "train")
    assert sorted(decoded) == ["img0.png", "img0.png", "img1.png", "img2.png"]


@pytest.mark.parametrize(("dataset", "classes"), [("ade20k", 150), ("stare", 2)])
def test_a_fixed_class_list_refuses_another_num_classes(dataset: str, classes: int) -> None:
    """ADE20K and STARE name their classes: --num-classes 10 would write a 10-class model with 150 (2) class names."""
    with pytest.raises(ValueError, match=f"{dataset} has {classes} classes, not --num-classes 10.*seg_folder"):
        segmentation_model_config("unet_fcn_npe1", dataset, num_classes=10)
