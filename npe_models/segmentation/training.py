"""Training a segmentation model with NPE: frozen parts, random-crop batches, iteration-based SGD.

The paper's protocol freezes a trained network (backbone, and optionally its decode head) and
trains PEMs on top. Frozen parts keep ``requires_grad=False`` and their BatchNorm (and dropout)
layers stay in eval mode, so their running statistics never change. Runs use the shared loop
of :mod:`npe_models.runs` (checkpoints, exact resumption, the log); :func:`train_run` builds a
run from its settings, which is what ``npe-models train`` calls.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import FOLDER_SEGMENTATION_LAYOUTS, SegmentationFolder, check_dataset, resolve_data_dir
from ..data.stare import StareSegmentation
from ..distributed import resolve_device
from ..models.smp import is_smp_model
from ..npe import has_pems
from ..runs import CHECKPOINT_FILE, WEIGHTS_FILE, TrainingLoop, check_out_dir, check_run_dir
from .checkpoint import load_weights_for_pem_training, save_segmentation_weights
from .config import SegmentationModelConfig, SegmentationRunConfig, SegmentationTrainConfig
from .losses import segmentation_loss_terms
from .sampling import RandomCropBatches, normalize_images

__all__ = [
    "backbone_and_heads",
    "freeze_model_parts",
    "set_train_mode",
    "has_pems",
    "train_segmentation",
    "segmentation_dataset",
    "class_pixel_counts",
    "train_run",
]

PathLike = Union[str, Path]


def _is_pem_parameter(name: str) -> bool:
    """Linear PEMs live inside NPEHeads (``pem_weight`` / ``pem_bias``); fcn / replica PEMs under ``pems``."""
    return name.rsplit(".", 1)[-1] in ("pem_weight", "pem_bias") or name.split(".", 1)[0] == "pems"


def backbone_and_heads(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The feature extractor and the decode heads of a segmentation model: torchvision's ``backbone`` with
    ``classifier`` (and ``aux_classifier``), an smp model's ``encoder`` with ``decoder`` and ``segmentation_head``."""
    if is_smp_model(model):
        return model.encoder, [model.decoder, model.segmentation_head]
    heads = [model.classifier]
    if getattr(model, "aux_classifier", None) is not None:
        heads.append(model.aux_classifier)
    return model.backbone, heads


def freeze_model_parts(model: nn.Module, backbone: bool = True, decode_head: bool = False) -> list[nn.Module]:
    """Stop gradients to the backbone (smp: encoder) and/or the decode heads; PEMs always train.

    Returns the frozen modules, which :func:`set_train_mode` keeps in eval mode.
    """
    features, heads = backbone_and_heads(model)
    parts = ([features] if backbone else []) + (heads if decode_head else [])
    for part in parts:
        for name, parameter in part.named_parameters():
            if not _is_pem_parameter(name):
                parameter.requires_grad_(False)
    return parts


def set_train_mode(model: nn.Module, frozen_parts: list[nn.Module]) -> None:
    """``model.train()``, then eval mode for every module inside a frozen part that holds no trainable parameter."""
    model.train()
    for part in frozen_parts:
        for module in part.modules():
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


class _SegmentationRun(TrainingLoop):
    """A segmentation run: one SGD step on a batch of random crops per iteration."""

    task = SegmentationRunConfig.task
    unit = "iteration"

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: SegmentationRunConfig,
        run_dir: Optional[PathLike],
        device: Union[str, torch.device],
        on_step: Optional[Callable[[int, dict[str, float]], None]],
    ) -> None:
        super().__init__(config, run_dir, config.train.iterations)
        train = config.train
        self.model, self.device, self.on_step = model.to(device), device, on_step
        frozen = freeze_model_parts(model, train.freeze_backbone, train.freeze_decode_head)
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("every parameter is frozen: unfreeze the decode head or train a model with PEMs.")
        self.optimizer = torch.optim.SGD(
            parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
        self.batches = RandomCropBatches(
            dataset, train.batch_size, train.crop_size, train.seed, train.flip, train.ignore_index
        )
        self.npe = has_pems(model)
        self.train_main = any(p.requires_grad for name, p in model.named_parameters() if not _is_pem_parameter(name))
        torch.manual_seed(train.seed)  # dropout draws from the global generator (a resumed run restores its state)
        set_train_mode(model, frozen)

    def checkpointed(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "batches": self.batches}

    def log_due(self, done: int) -> bool:
        return done % self.config.train.log_every == 0 or done == self.total

    def checkpoint_due(self, done: int) -> bool:
        return done % self.config.train.checkpoint_every == 0 or done == self.total

    def train_unit(self, index: int) -> dict[str, Any]:
        """Iteration ``index``: the scheduled learning rate, a batch of crops, the loss, one SGD step."""
        began, train, model_config = time.perf_counter(), self.config.train, self.config.model
        lr = train.lr * train.lr_factor(index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, masks = self.batches.next_batch()
        images = normalize_images(images.to(self.device), model_config.mean, model_config.std)
        result = self.model.forward_train(images) if self.npe else self.model(images)
        terms = segmentation_loss_terms(
            result,
            masks.to(self.device),
            train_main=self.train_main,
            t=getattr(self.model, "t", 1),
            ignore_index=train.ignore_index,
            aux_weight=train.aux_weight,
        )
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise self.non_finite(index, loss.item(), f" ({ {k: v.item() for k, v in terms.items()} })")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        record = {
            "iteration": index + 1,
            "lr": lr,
            "loss": loss.item(),
            **{k: v.item() for k, v in terms.items()},
            "seconds": time.perf_counter() - began,
        }
        if self.on_step is not None:
            self.on_step(index + 1, record)
        return record

    def finish(self, record: Optional[dict[str, Any]]) -> dict[str, float]:
        """The final weights (with the model settings) in the run directory; the model in eval mode."""
        if self.run_dir is not None:
            save_segmentation_weights(self.run_dir / WEIGHTS_FILE, self.model, self.config.model)
        self.model.eval()
        return record or {}


def train_segmentation(
    model: nn.Module,
    dataset: Dataset,
    config: SegmentationTrainConfig,
    model_config: SegmentationModelConfig,
    *,
    output_dir: Union[str, Path, None] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    data_info: Optional[dict[str, Any]] = None,
    on_step: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> dict[str, float]:
    """Train ``model`` on random crops of ``dataset``'s ``(uint8 image, mask)`` pairs; returns the last step's record.

    NPE models (with PEMs) train on ``CE + aux + dense_npe_loss``; plain models on ``CE + aux``.
    The frozen parts (``config.freeze_backbone`` / ``freeze_decode_head``) keep ``requires_grad=False``.
    With ``output_dir``, a checkpoint is written every ``checkpoint_every`` iterations, and with
    ``resume`` an interrupted run continues from it (without, an existing run is an error); the
    final weights go to ``model.safetensors``.
    ``config.json`` records the model and training settings and ``data_info`` (the data set used).
    ``on_step(iteration, record)`` is called after every iteration (for progress bars).
    """
    run_config = SegmentationRunConfig(model_config, config, dict(data_info or {}))
    if output_dir is not None:
        check_run_dir(output_dir, run_config, resume)
    return _SegmentationRun(model, dataset, run_config, output_dir, device, on_step).run(resume)


def segmentation_dataset(
    dataset: str,
    split: str,
    annotation: Optional[str] = "ah",
    data_dir: Optional[PathLike] = None,
    *,
    class_names: Optional[list[str]] = None,
    ignore_index: int = 255,
    reduce_zero_label: Optional[bool] = None,
) -> Dataset:
    """The ``split`` images of a segmentation data set, from ``data_dir`` (default:
    :func:`npe_models.data.resolve_data_dir`'s): STARE with ``annotation``'s masks, or a file data set
    (``seg_folder``, ``ade20k``: :class:`~npe_models.data.SegmentationFolder`, checked when opened) with the
    classes ``class_names`` (default: its own), ``ignore_index`` and ``reduce_zero_label`` (default: the data set's).
    """
    check_dataset(dataset, "segmentation")
    root = resolve_data_dir(data_dir)
    if dataset in FOLDER_SEGMENTATION_LAYOUTS:
        return SegmentationFolder(
            root,
            split,
            dataset,
            class_names=class_names,
            ignore_index=ignore_index,
            reduce_zero_label=reduce_zero_label,
        )
    return StareSegmentation(root, split, annotation or "ah")


def class_pixel_counts(dataset: Dataset, num_classes: int, ignore_index: int = 255) -> list[int]:
    """Labelled pixels of each class over ``dataset``'s masks (a file data set counted them when it was opened)."""
    counted = getattr(dataset, "class_pixels", None)
    if counted is not None:
        return [int(n) for n in counted]
    pixels = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        mask = dataset[index][1]
        labels = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
        pixels += np.bincount(labels.numpy().ravel(), minlength=num_classes)
    return [int(n) for n in pixels]


def _starting_model(config: SegmentationRunConfig, continuing: bool) -> nn.Module:
    """The model with the weights it starts from; none when it continues from a checkpoint, which replaces them."""
    if continuing:
        return config.model.build()
    data = config.data
    model = config.model.build(weights=data.get("weights"), weights_backbone=data.get("weights_backbone"))
    if data.get("init"):
        load_weights_for_pem_training(model, data["init"])
    elif config.train.freeze_backbone and not (data.get("weights") or data.get("weights_backbone")):
        warnings.warn(
            "the backbone is frozen but randomly initialised; pass init (--init), weights / weights_backbone "
            "(--weights, --weights-backbone) or freeze_backbone=False (--no-freeze-backbone).",
            stacklevel=3,
        )
    return model


class _ProgressReport:
    """``on_step`` for a tqdm-like bar: advances it to the iteration and shows the record's losses."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.shown = bar, 0

    def __call__(self, iteration: int, record: dict[str, float]) -> None:
        self.bar.update(iteration - self.shown)
        self.shown = iteration
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("iteration", "seconds")})


def _check_crop_fits(crop_size: tuple[int, int], dataset: Dataset) -> None:
    """A training crop may pad small images, but not exceed the largest image in both sides (a likely typo)."""
    sizes = getattr(dataset, "image_sizes", None)  # from the headers of image files
    sizes = sizes or [tuple(dataset[i][0].shape[-2:]) for i in range(len(dataset))]  # each image read once
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    if crop_size[0] > height and crop_size[1] > width:
        raise ValueError(
            f"crop_size (--crop-size) {crop_size[0]}x{crop_size[1]} is larger than every training image (at most "
            f"{height}x{width}); choose a crop no larger than the images."
        )


def train_run(
    config: SegmentationRunConfig,
    out_dir: PathLike,
    *,
    data_dir: Optional[PathLike] = None,
    resume: bool = False,
    device: Union[str, torch.device] = "auto",
    progress: Optional[Callable[..., Any]] = None,
) -> dict[str, float]:
    """Train the run ``config`` describes (see :func:`resolve_segmentation_config`) in ``out_dir``, or continue it.

    Builds the model, loads the weights it starts from (``config.data``: init, weights,
    weights_backbone), and trains it on the data set's training images (from ``data_dir``, else the folder the config
    records for a file data set, else :func:`~npe_models.data.resolve_data_dir`'s); returns the last
    iteration's record. Every file of a file data set is checked before anything is written. ``progress`` is a
    tqdm-like factory called as ``progress(total=, desc=, unit=)``.
    """
    check_out_dir(out_dir)  # before the data set is read
    data = config.data
    dataset = segmentation_dataset(
        data["dataset"],
        "train",
        data.get("annotation"),
        data_dir if data_dir is not None else data.get("data_dir"),
        class_names=config.model.class_names,
        ignore_index=config.train.ignore_index,
        reduce_zero_label=data.get("reduce_zero_label"),
    )
    _check_crop_fits(config.train.crop_size, dataset)
    pixels = class_pixel_counts(dataset, config.model.num_classes, config.train.ignore_index)
    config = dataclasses.replace(config, data={**data, "images": list(dataset.ids), "class_pixels": pixels})
    model = _starting_model(config, resume and (Path(out_dir) / CHECKPOINT_FILE).is_file())
    bar = progress(total=config.train.iterations, desc=f"train {config.model.name}", unit="it") if progress else None
    try:
        return train_segmentation(
            model,
            dataset,
            config.train,
            config.model,
            output_dir=out_dir,
            device=resolve_device(str(device)),
            resume=resume,
            data_info=config.data,
            on_step=_ProgressReport(bar) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
