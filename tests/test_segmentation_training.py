"""Segmentation training and evaluation: frozen parts, resuming, crops, metrics, sliding windows, several alphas."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import npe_models
import npe_models.cli
import npe_models.segmentation.training as segmentation_training
from npe_models.models import is_segmentation_model
from npe_models.models.unet import UNet_FCN_Weights
from npe_models.runs import NonFiniteLossError, write_run_config
from npe_models.segmentation import (
    CropAugmentation,
    RandomCropBatches,
    SegmentationMetrics,
    SegmentationModelConfig,
    SegmentationTrainConfig,
    confusion_matrix,
    evaluate_segmentation,
    freeze_model_parts,
    load_segmentation_model,
    normalize_images,
    predict_logits,
    resolve_segmentation_config,
    segmentation_dataset,
    segmentation_loss_terms,
    set_train_mode,
    train_run,
    train_segmentation,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread is faster on a shared CPU


class _Blobs(Dataset):
    """Synthetic images: a bright square on a dark background, labelled 1 inside the square."""

    def __init__(self, count: int = 3, size: tuple[int, int] = (40, 44)) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images, self.masks = [], []
        for _ in range(count):
            mask = torch.zeros(size, dtype=torch.int64)
            top, left = (int(torch.randint(0, s - 12, (1,), generator=generator)) for s in size)
            mask[top : top + 12, left : left + 12] = 1
            noise = torch.randint(0, 60, (3, *size), generator=generator)
            self.images.append((noise + 150 * mask).to(torch.uint8))
            self.masks.append(mask)
        self.ids = [f"blob{i}" for i in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.masks[index]


def _model_config(name: str = "unet_fcn_npe2") -> SegmentationModelConfig:
    return SegmentationModelConfig(
        name=name, num_classes=2, aux_loss=True, model_kwargs={"base_channels": 4}, class_names=["background", "blob"]
    )


def _train_config(**overrides) -> SegmentationTrainConfig:
    settings = dict(iterations=3, batch_size=2, crop_size=(32, 32), checkpoint_every=2, lr=0.05)
    settings.update(overrides)
    return SegmentationTrainConfig(**settings)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {name for name, value in module.state_dict().items() if not torch.equal(value, before[name])}


def test_frozen_backbone_and_head_stay_unchanged_while_pems_train() -> None:
    model_config = _model_config()
    model = model_config.build()
    before = _snapshot(model)
    train_segmentation(model, _Blobs(), _train_config(freeze_backbone=True, freeze_decode_head=True), model_config)
    changed = _changed(before, model)
    assert changed == {"classifier.4.pem_weight", "classifier.4.pem_bias"}  # BatchNorm statistics included


def test_frozen_backbone_only_trains_heads_and_keeps_its_batchnorm_statistics() -> None:
    model_config = _model_config()
    model = model_config.build()
    before = _snapshot(model)
    train_segmentation(model, _Blobs(), _train_config(freeze_backbone=True), model_config)
    changed = _changed(before, model)
    assert not any(name.startswith("backbone.") for name in changed)
    assert "classifier.1.running_mean" in changed and "classifier.4.weight" in changed
    assert "classifier.4.pem_weight" in changed and "aux_classifier.4.weight" in changed


def test_aux_head_at_aux_weight_0_is_frozen_and_left_out_of_the_optimizer(tmp_path: Path) -> None:
    """No loss term reaches the aux head at aux weight 0: it is frozen (BatchNorm statistics too) and not optimised,
    so DistributedDataParallel meets no trainable parameter without a gradient."""
    model_config = _model_config()
    model = model_config.build()
    before = _snapshot(model)
    settings = _train_config(freeze_backbone=False, aux_weight=0)
    train_segmentation(model, _Blobs(), settings, model_config, output_dir=tmp_path / "run")
    changed = _changed(before, model)
    assert not any(name.startswith("aux_classifier.") for name in changed)
    assert "classifier.4.weight" in changed and any(name.startswith("backbone.") for name in changed)
    assert not any(p.requires_grad for p in model.aux_classifier.parameters())
    optimised = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert len(optimised["params"]) == sum(p.requires_grad for p in model.parameters())


def test_amp_trains_in_bfloat16_and_a_resumed_run_keeps_it(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """``--amp``: the forward pass and loss in bf16 autocast, recorded in config.json; --resume without it keeps it."""
    logits_dtypes = []

    def spy(output, *args, **kwargs):
        logits_dtypes.append(output.logits.dtype)
        return segmentation_loss_terms(output, *args, **kwargs)

    monkeypatch.setattr(segmentation_training, "segmentation_loss_terms", spy)
    run = tmp_path / "amp"
    cli = ["train", "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]
    model = ["--model", "unet_fcn_npe1", "--model-arg", "base_channels=4", "--no-freeze-backbone", "--amp"]
    shape = ["--batch-size", "1", "--crop-size", "32", "--iterations", "1"]
    assert npe_models.cli.main([*cli, *model, *shape]) == 0
    assert npe_models.cli.main([*cli, "--resume", "--iterations", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["amp"] is True
    assert logits_dtypes == [torch.bfloat16, torch.bfloat16]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)


def test_channels_last_feeds_the_model_channels_last_inputs_for_the_same_loss(
    data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """``--channels-last``: the model and its inputs in channels-last memory, recorded in config.json; about the same
    loss as without."""
    layouts = []
    forward = segmentation_training._TrainingForward.forward

    def spy(self, images):
        conv = next(m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d))
        layouts.append([x.is_contiguous(memory_format=torch.channels_last) for x in (images, conv.weight)])
        return forward(self, images)

    monkeypatch.setattr(segmentation_training._TrainingForward, "forward", spy)
    losses = {}
    for channels_last in (False, True):
        run = tmp_path / f"channels_last_{channels_last}"
        cli = ["train", "--out", str(run), "--data-dir", str(data_dir), "--no-progress", "--iterations", "1"]
        model = ["--model", "unet_fcn_npe1", "--model-arg", "base_channels=4", "--no-freeze-backbone"]
        flag = ["--channels-last"] if channels_last else []
        assert npe_models.cli.main([*cli, *model, "--batch-size", "2", "--crop-size", "32", *flag]) == 0
        assert json.loads((run / "config.json").read_text())["train"]["channels_last"] is channels_last
        losses[channels_last] = json.loads((run / "log.jsonl").read_text().splitlines()[-1])["loss"]
    assert layouts == [[False, False], [True, True]]
    # the same images and weights; dropout draws its mask in memory order, so only the masks differ
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)


def test_set_train_mode_keeps_frozen_modules_in_eval() -> None:
    model = _model_config().build()
    frozen = freeze_model_parts(model, backbone=True, decode_head=True)
    set_train_mode(model, frozen)
    assert not any(m.training for m in model.backbone.modules())
    assert not model.classifier[1].training and not model.classifier[3].training  # BatchNorm, Dropout
    assert model.classifier[4].training  # the NPEHead holding the trainable PEMs


def test_resumed_run_matches_uninterrupted_run(tmp_path: Path) -> None:
    model_config = _model_config()
    torch.manual_seed(0)
    straight = model_config.build()
    train_segmentation(
        straight,
        _Blobs(),
        _train_config(iterations=4, freeze_backbone=False),
        model_config,
        output_dir=tmp_path / "straight",
    )
    torch.manual_seed(0)
    interrupted = model_config.build()
    train_segmentation(
        interrupted,
        _Blobs(),
        _train_config(iterations=2, freeze_backbone=False),
        model_config,
        output_dir=tmp_path / "resumed",
    )
    resumed = model_config.build()  # fresh weights: everything must come from the checkpoint
    with pytest.raises(FileExistsError, match="resume"):
        train_segmentation(
            resumed,
            _Blobs(),
            _train_config(iterations=4, freeze_backbone=False),
            model_config,
            output_dir=tmp_path / "resumed",
        )
    record = train_segmentation(
        resumed,
        _Blobs(),
        _train_config(iterations=4, freeze_backbone=False),
        model_config,
        output_dir=tmp_path / "resumed",
        resume=True,
    )
    assert record["iteration"] == 4
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert (tmp_path / "resumed" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="lr"):
        train_segmentation(
            model_config.build(),
            _Blobs(),
            _train_config(iterations=5, freeze_backbone=False, lr=0.1),
            model_config,
            output_dir=tmp_path / "resumed",
            resume=True,
        )


def test_resolve_segmentation_config_for_fresh_and_resumed_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fresh = resolve_segmentation_config(
        run,
        False,
        model="unet_fcn_npe1",
        model_kwargs={"base_channels": 4},
        iterations=8,
        milestones=[2, 4],
        npe_alpha=None,
        init="baseline",
    )
    assert fresh.model == SegmentationModelConfig(
        name="unet_fcn_npe1", num_classes=2, model_kwargs={"base_channels": 4}, class_names=["background", "vessel"]
    )
    assert fresh.train == SegmentationTrainConfig(iterations=8, milestones=(2, 4))
    assert fresh.data == {
        "dataset": "stare",
        "annotation": "ah",
        "init": "baseline",
        "weights": None,
        "weights_backbone": None,
    }
    with pytest.raises(FileNotFoundError, match=f"nothing to resume in {run}"):
        resolve_segmentation_config(run, True)
    with pytest.raises(ValueError, match="pass the segmentation model"):
        resolve_segmentation_config(run, False, iterations=3)
    with pytest.raises(ValueError, match="unknown segmentation model 'resnet32_npe16'"):
        resolve_segmentation_config(run, False, model="resnet32_npe16")
    with pytest.raises(TypeError, match=r"unknown segmentation settings \['epochs'\]"):
        resolve_segmentation_config(run, False, model="unet_fcn", epochs=3)
    write_run_config(run, "segmentation", fresh.to_dict())
    resumed = resolve_segmentation_config(run, True, iterations=10, model="unet_fcn_npe1")
    assert resumed == dataclasses.replace(fresh, train=dataclasses.replace(fresh.train, iterations=10))


def test_segmentation_dataset_needs_a_data_directory(monkeypatch) -> None:
    monkeypatch.delenv("NPE_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="NPE_DATA_DIR"):
        segmentation_dataset("stare", "train", "ah")
    with pytest.raises(ValueError, match="must be a segmentation data set, one of stare"):
        segmentation_dataset("cifar10", "train", "ah", "data")


def test_random_crops_are_seeded_and_padded() -> None:
    dataset = _Blobs(count=2, size=(20, 24))
    augmentation = CropAugmentation((16, 30), flip=False, ignore_index=255)
    first = RandomCropBatches(dataset, 3, augmentation, seed=5).batch(0)
    second = RandomCropBatches(dataset, 3, augmentation, seed=5).batch(0)
    assert first[0].shape == (3, 3, 16, 30) and first[1].shape == (3, 16, 30)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    padded_columns = first[1][..., 24:]
    assert torch.all(padded_columns == 255)
    assert torch.all(first[0][..., 24:] == 0)


def test_metrics_against_hand_computed_values() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    confusion = confusion_matrix(prediction, target, num_classes=4, ignore_index=255)
    assert confusion.tolist() == [[1, 1, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    metrics = SegmentationMetrics(confusion)
    # class 0: TP 1, FN 2, FP 1; class 1: TP 2, FP 1; class 2: TP 1, FN 1; class 3: only a false positive
    torch.testing.assert_close(metrics.iou, torch.tensor([1 / 4, 2 / 3, 1 / 2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(metrics.dice, torch.tensor([2 / 5, 4 / 5, 2 / 3, 0.0], dtype=torch.float64))
    assert math.isnan(metrics.accuracy[3])
    torch.testing.assert_close(metrics.accuracy[:3], torch.tensor([1 / 3, 1.0, 1 / 2], dtype=torch.float64))
    assert metrics.mean_accuracy == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert metrics.mean_iou == pytest.approx((1 / 4 + 2 / 3 + 1 / 2) / 4)
    assert metrics.pixel_accuracy == pytest.approx(4 / 7)
    empty = SegmentationMetrics(confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2), 2))
    assert math.isnan(empty.iou[1]) and empty.mean_iou == 1.0
    with pytest.raises(ValueError, match="num_classes=2"):
        confusion_matrix(prediction, target, num_classes=2, ignore_index=255)


class _PointwiseNPE(nn.Module):
    """A 1x1-conv 'model' whose logits at a pixel depend only on that pixel: slide and whole inference must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict(out=self.conv(x))


def test_sliding_window_averages_to_whole_image_for_pointwise_model() -> None:
    model = _PointwiseNPE().eval()
    images = torch.randn(2, 3, 37, 50)
    whole, _ = predict_logits(model, images, "whole")
    slide, estimate = predict_logits(model, images, "slide", crop_size=(16, 20), stride=(11, 13), window_batch=3)
    assert estimate is None
    torch.testing.assert_close(slide, whole)
    bigger_than_image, _ = predict_logits(model, images, "slide", crop_size=(64, 64), stride=(32, 32))
    torch.testing.assert_close(bigger_than_image, whole)


def test_several_alphas_in_one_pass_match_the_models_own_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model_config = _model_config()
    model = model_config.build()
    head = model.classifier[-1]
    with torch.no_grad():
        head.pem_weight.normal_(std=0.5)
        head.pem_bias.view(head.num_pems, 2)[:, 1] = -5.0  # a large prior estimate for class 1
    dataset = _Blobs()
    results = evaluate_segmentation(
        model,
        dataset,
        num_classes=2,
        mean=model_config.mean,
        std=model_config.std,
        alphas=[0, 0.7],
        mode="whole",
        class_names=model_config.class_names,
        overlay_dir=tmp_path,
        num_overlays=2,
    )
    model.alpha = 0.7
    expected = torch.zeros(2, 2, dtype=torch.int64)
    with torch.no_grad():
        for image, mask in dataset:
            own = model(normalize_images(image[None], model_config.mean, model_config.std))["out"]  # NPE-LA itself
            expected += confusion_matrix(own.argmax(1)[0], mask, 2)
    assert torch.equal(results[0.7].confusion, expected)
    assert not torch.equal(results[0.0].confusion, results[0.7].confusion)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob0.png", "blob1.png"]
    with Image.open(tmp_path / "blob0.png") as overlay:
        assert overlay.size == (44 * 3, 40)  # ground truth, alpha 0, alpha 0.7 side by side
    plain = npe_models.create_segmentation_model("unet_fcn", base_channels=4)
    with pytest.raises(ValueError, match="alphas=\\[0\\]"):
        evaluate_segmentation(
            plain, dataset, num_classes=2, mean=model_config.mean, std=model_config.std, alphas=[0, 0.5]
        )


def test_is_segmentation_model() -> None:
    assert is_segmentation_model("unet_fcn") and is_segmentation_model("deeplabv3_resnet50_npe16")
    assert not is_segmentation_model("resnet32_npe16") and not is_segmentation_model("unet_fcn_npe")


def test_non_finite_loss_stops_training_with_a_clear_error() -> None:
    model_config = _model_config()
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        train_segmentation(model_config.build(), _Blobs(), _train_config(lr=1e30, freeze_backbone=False), model_config)


@pytest.mark.filterwarnings("error")
def test_init_by_name_starts_from_shipped_weights(data_dir: Path, tmp_path: Path) -> None:
    """``train --init unet_fcn.STARE``: the shipped network's settings and weights, fresh PEMs on top."""
    shipped = UNet_FCN_Weights.STARE.get_state_dict()
    run = tmp_path / "pems"
    settings = dict(iterations=1, batch_size=1, crop_size=(32, 32), freeze_decode_head=True, data_dir=data_dir)
    config = resolve_segmentation_config(run, False, model="unet_fcn_npe1", init="unet_fcn.STARE", **settings)
    assert config.model.model_kwargs == {"num_stages": 5, "base_channels": 16} and config.model.aux_loss
    assert config.data["init"] == "unet_fcn.STARE" and config.model.pem_type == "linear"
    train_run(config, run, data_dir=data_dir, device="cpu")
    trained = load_segmentation_model(run)[0].state_dict()
    assert all(torch.equal(trained[key], value) for key, value in shipped.items() if key in trained)
    assert {key for key in trained if "pem" in key} and not {key for key in shipped if "pem" in key} & set(trained)
    cli = ["train", "--init", "unet_fcn_npe1", "--out", str(tmp_path / "cli"), "--data-dir", str(data_dir)]
    cli += ["--iterations", "1", "--batch-size", "1", "--crop-size", "32", "--no-progress"]
    assert npe_models.cli.main(cli) == 0
    default = json.loads((tmp_path / "cli" / "config.json").read_text())  # the shipped name gives the model
    assert (default["model"]["name"], default["model"]["pem_type"]) == ("unet_fcn_npe1", "fcn")
    with pytest.raises(ValueError, match="loads shipped weights; drop --weights"):
        resolve_segmentation_config(tmp_path / "other", False, init="unet_fcn_npe1", weights="DEFAULT")
