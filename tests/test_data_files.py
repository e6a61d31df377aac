"""File data sources on real images: CIFAR-10 images written as PNG files into an ImageFolder tree and
ImageNet-LT-format split lists; training, resuming, evaluating and exporting on them; torchrun; bad trees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from npe_models import cli
from npe_models.classification import resolve_config, train
from npe_models.data import (
    FileBatchStream,
    epoch_order,
    load_cifar,
    load_image_folder,
    load_image_lists,
    load_long_tailed,
    long_tailed_counts,
)
from npe_models.data.files import image_transform
from npe_models.onnx import read_onnx_metadata

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_COUNTS = long_tailed_counts(10, 24, 8)  # [24, 19, 15, 12, 9, 7, 6, 4, 3, 3]: 102 images
VAL_PER_CLASS = 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_split(folder: Path, images: np.ndarray, labels: np.ndarray, counts) -> list[str]:
    """The first ``counts[c]`` images of each class as ``folder/<class>/<n>.png``; their paths relative to the root."""
    written = []
    for label, count in enumerate(counts):
        (folder / CLASSES[label]).mkdir(parents=True)
        for n, index in enumerate(np.flatnonzero(labels == label)[:count]):
            path = folder / CLASSES[label] / f"{n:03d}.png"
            Image.fromarray(images[index]).save(path)
            written.append(f"{folder.name}/{CLASSES[label]}/{path.name} {label}")
    return written


@pytest.fixture(scope="module")
def trees(data_dir, tmp_path_factory) -> dict[str, Path]:
    """``lt``: a long-tailed train/ and a val/ tree; ``balanced``: 12 training images a class; ``lists``:
    ImageNet-LT-format train and test lists over the ``lt`` tree (paths relative to it)."""
    root = tmp_path_factory.mktemp("files")
    train, test = load_cifar(data_dir, train=True), load_cifar(data_dir, train=False)
    train_lines = _write_split(root / "lt" / "train", train.images, train.labels, TRAIN_COUNTS)
    test_lines = _write_split(root / "lt" / "val", test.images, test.labels, [VAL_PER_CLASS] * 10)
    _write_split(root / "balanced" / "train", train.images, train.labels, [12] * 10)
    _write_split(root / "balanced" / "val", test.images, test.labels, [2] * 10)
    (root / "lists").mkdir()
    (root / "lists" / "ImageNet_LT_train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "lists" / "ImageNet_LT_test.txt").write_text("\n".join(test_lines) + "\n")
    return {"lt": root / "lt", "balanced": root / "balanced", "lists": root / "lists"}


def test_folder_source_takes_classes_from_folder_names_and_counts_from_train(trees):
    data = load_image_folder(trees["lt"])
    assert data.class_names == list(CLASSES) and data.counts.tolist() == TRAIN_COUNTS
    assert list(data.eval_sets) == ["val"] and len(data.eval_sets["val"]) == 10 * VAL_PER_CLASS
    assert data.rho is None and data.groups.tolist() == [1, 2, 2, 2, 2, 2, 2, 2, 2, 2]  # 24 is Medium, < 20 Few


def test_folder_source_with_rho_takes_the_long_tailed_subset_of_a_balanced_tree(trees):
    data = load_image_folder(trees["balanced"], rho=4)
    assert data.counts.tolist() == long_tailed_counts(10, 12, 4) and data.rho == 4


def test_split_lists_give_the_same_data_as_the_tree(trees):
    data = load_image_lists("imagenet_lt", trees["lt"], trees["lists"])
    folder = load_image_folder(trees["lt"])
    assert data.counts.tolist() == TRAIN_COUNTS and list(data.eval_sets) == ["test"]  # no val list: skipped
    assert sorted(data.train.paths) == sorted(folder.train.paths)
    assert data.eval_sets["test"].labels.tolist() == folder.eval_sets["val"].labels.tolist()


def _epoch(stream: FileBatchStream, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    stream.set_epoch(epoch)
    batches = list(stream)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_training_stream_augments_each_image_the_same_in_any_worker_or_process(trees):
    data = load_image_folder(trees["lt"])
    model = timm.create_model("resnet20")
    transform = image_transform(model, train=True)

    def stream(**options):
        return FileBatchStream(data.train, transform, 16, train=True, device="cpu", seed=3, **options)

    images, labels = _epoch(stream(workers=0), 1)
    assert images.shape == (len(data.train), 3, 32, 32)
    order = epoch_order(torch.from_numpy(data.train.labels), "uniform", 3, 1)
    assert labels.tolist() == data.train.labels[order.numpy()].tolist()
    again, _ = _epoch(stream(workers=2), 1)
    torch.testing.assert_close(images, again, rtol=0, atol=0)
    assert not torch.equal(images, _epoch(stream(workers=0), 2)[0])
    halves = [_epoch(stream(workers=0, rank=rank, world_size=2), 1)[0] for rank in (0, 1)]
    interleaved = torch.stack(halves, 1).flatten(0, 1)[: len(images)]  # rank r holds positions r, r + 2, ...
    torch.testing.assert_close(interleaved, images, rtol=0, atol=0)


def _run(out: Path, *options: str) -> list[str]:
    return ["train", "--out", str(out), "--device", "cpu", "--no-progress", "--workers", "0", *options]


def test_train_evaluate_and_export_on_a_folder(trees, tmp_path, capsys):
    run = tmp_path / "npe4"
    assert (
        cli.main(
            _run(
                run,
                "--model",
                "resnet20_npe4",
                "--dataset",
                "folder",
                "--data-dir",
                str(trees["lt"]),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--eval-batch-size",
                "16",
            )
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == list(CLASSES) and metrics["train_counts"] == TRAIN_COUNTS
    assert set(metrics["sets"]) == {"val"} and metrics["sets"]["val"]["npe_la"]["num_images"] == 40
    assert (run / "per_class_accuracy_val.png").is_file()
    assert cli.main(["evaluate", str(run), "--no-progress", "--workers", "0"]) == 0
    evaluated = json.loads((run / "eval" / "metrics.json").read_text())
    assert evaluated["sets"]["val"]["npe_la"] == metrics["sets"]["val"]["npe_la"]
    assert evaluated["groups"] == ["medium"] + ["few"] * 9
    onnx_file = tmp_path / "npe4.onnx"
    assert cli.main(["export", "onnx", str(run), "--output", str(onnx_file), "--check"]) == 0
    assert read_onnx_metadata(onnx_file)["class_names"] == list(CLASSES)
    capsys.readouterr()
    for source in (run, onnx_file):
        assert cli.main(["predict", str(source), str(trees["lt"] / "val" / "cat"), "--json", "--no-progress"]) == 0
        predictions = json.loads(capsys.readouterr().out)
        assert len(predictions) == VAL_PER_CLASS
        assert all(c["class"] in CLASSES for p in predictions for c in p["classes"]), predictions[0]


@pytest.mark.parametrize("model, dataset", [("resnet18_npe16", "folder"), ("resnet20_npe4", "imagenet_lt")])
def test_one_epoch_on_each_source(trees, tmp_path, model, dataset):
    config = resolve_config(
        "hp2",
        "npe",
        model=model,
        dataset=dataset,
        data_dir=str(trees["lt"]),
        split_dir=str(trees["lists"]),
        image_size=32,
        epochs=1,
        batch_size=34,
        workers=0,
        device="cpu",
        eval_every=0,
        eval_batch_size=40,
    )
    metrics = train(config, tmp_path / "run").metrics
    evaluation_set = "val" if dataset == "folder" else "test"
    assert metrics["sets"][evaluation_set]["npe_la"]["num_images"] == 40
    assert metrics["train_counts"] == TRAIN_COUNTS and "prior" in metrics["sets"][evaluation_set]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_resnet18_npe16_on_imagenet_lt_lists_resumes_exactly(trees, tmp_path, interrupt_training):
    config = resolve_config(
        "hp2",
        "npe",
        model="resnet18_npe16",
        dataset="imagenet_lt",
        data_dir=str(trees["lt"]),
        split_dir=str(trees["lists"]),
        image_size=32,
        epochs=2,
        batch_size=32,
        workers=0,
        device="cpu",
        deterministic=True,
        eval_every=0,
        eval_batch_size=40,
    )
    whole = train(config, tmp_path / "whole")
    assert whole.metrics["sets"]["test"]["npe_la"]["num_images"] == 40
    interrupt_training(1)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "parts")
    interrupt_training(None)
    train(config, tmp_path / "parts", resume=True)
    expected, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def _torchrun(*arguments: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "npe_models.cli",
        *arguments,
    ]
    done = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_on_a_folder_matches_one_process(trees, tmp_path):
    """cRT (frozen backbone and BatchNorm statistics) makes the gradient of a global batch independent of how
    it is split; full-network training is not compared (BatchNorm normalises each process's half batch)."""
    folder = ("--dataset", "folder", "--data-dir", str(trees["lt"]), "--batch-size", "20", "--eval-every", "0")
    assert cli.main(_run(tmp_path / "ce", "--model", "resnet20", "--epochs", "1", *folder)) == 0
    crt = ("--method", "crt", "--init", str(tmp_path / "ce"), "--epochs", "2", *folder)
    assert cli.main(_run(tmp_path / "one", *crt)) == 0
    _torchrun(*_run(tmp_path / "two", *crt))
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [record["images"] for record in log] == [102, 102]  # 2 processes x 51 images


def _damage_tree(root: Path, case: str) -> None:
    if case == "missing val split":
        shutil.rmtree(root / "lt" / "val")
    elif case == "class without images":
        for image in (root / "lt" / "train" / "cat").iterdir():
            image.unlink()
    elif case == "val class unknown to train":
        (root / "lt" / "val" / "unicorn").mkdir()
        shutil.copy(next((root / "lt" / "val" / "cat").iterdir()), root / "lt" / "val" / "unicorn" / "0.png")
    elif case == "label outside the list's range":
        with open(root / "lists" / "ImageNet_LT_test.txt", "a") as handle:
            handle.write("val/cat/000.png 10\n")
    elif case == "malformed list line":
        with open(root / "lists" / "ImageNet_LT_train.txt", "a") as handle:
            handle.write("train/cat/000.png three\n")
    elif case == "missing training list":
        (root / "lists" / "ImageNet_LT_train.txt").unlink()


BAD_TREES = {
    "missing val split": ("folder", "lt/val' is missing"),
    "class without images": ("folder", "lt/train/cat' has no images"),
    "val class unknown to train": ("folder", "class folders the training split lacks: unicorn"),
    "label outside the list's range": ("imagenet_lt", "ImageNet_LT_test.txt: label 10 (entry 41) is outside 0..9"),
    "malformed list line": ("imagenet_lt", "ImageNet_LT_train.txt:103: expected 'relative/path label'"),
    "missing training list": ("imagenet_lt", "ImageNet_LT_train.txt' does not exist; point --split-dir"),
}


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_trees_get_an_error_naming_the_file(trees, tmp_path, case):
    shutil.copytree(trees["lt"], tmp_path / "lt")
    shutil.copytree(trees["lists"], tmp_path / "lists")
    _damage_tree(tmp_path, case)
    dataset, message = BAD_TREES[case]
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        load_long_tailed(dataset, tmp_path / "lt", split_dir=str(tmp_path / "lists"))
    assert message in str(error.value)


def test_unreadable_image_stops_training_with_its_name(trees, tmp_path, capsys):
    shutil.copytree(trees["lt"], tmp_path / "lt")
    broken = tmp_path / "lt" / "train" / "dog" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    code = cli.main(
        _run(
            tmp_path / "run",
            "--model",
            "resnet20",
            "--dataset",
            "folder",
            "--data-dir",
            str(tmp_path / "lt"),
            "--epochs",
            "1",
            "--batch-size",
            "101",
        )
    )
    assert code == 1
    assert f"cannot read image {broken}" in capsys.readouterr().err
