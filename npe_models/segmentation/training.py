"""Training a segmentation model with NPE: frozen parts, random-crop batches, iteration-based SGD.

The paper's protocol freezes a trained network (backbone, and optionally its decode head) and
trains PEMs on top. Frozen parts keep ``requires_grad=False`` and their BatchNorm (and dropout)
layers stay in eval mode, so their running statistics never change. Runs use the shared loop
of :mod:`npe_models.runs` (checkpoints, exact resumption, the log); :func:`train_run` builds a
run from its settings, which is what ``npe-models train`` calls. Under ``torchrun`` every process
trains its share of each global batch (DistributedDataParallel; gloo on CPU, nccl on CUDA) and
rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ..data import FOLDER_SEGMENTATION_LAYOUTS, SegmentationFolder, check_dataset, resolve_data_dir
from ..data.files import default_workers
from ..data.stare import StareSegmentation
from ..distributed import DistributedContext, all_reduce_sum, barrier, bf16_autocast, init_distributed
from ..models.smp import is_smp_model
from ..npe import has_pems
from ..runs import CHECKPOINT_FILE, WEIGHTS_FILE, TrainingLoop, check_out_dir, check_run_dir
from .checkpoint import load_weights_for_pem_training, save_segmentation_weights
from .config import SegmentationModelConfig, SegmentationRunConfig, SegmentationTrainConfig, shipped_init
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


def _aux_head(model: nn.Module) -> Optional[nn.Module]:
    """The auxiliary head (torchvision's ``aux_classifier``), or None for a model without one (smp models)."""
    return getattr(model, "aux_classifier", None)


def backbone_and_heads(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The feature extractor and the decode heads of a segmentation model: torchvision's ``backbone`` with
    ``classifier`` (and ``aux_classifier``), an smp model's ``encoder`` with ``decoder`` and ``segmentation_head``."""
    if is_smp_model(model):
        return model.encoder, [model.decoder, model.segmentation_head]
    aux = _aux_head(model)
    return model.backbone, [model.classifier] + ([aux] if aux is not None else [])


def freeze_model_parts(
    model: nn.Module, backbone: bool = True, decode_head: bool = False, aux_head: bool = False
) -> list[nn.Module]:
    """Stop gradients to the backbone (smp: encoder), the decode heads and/or the auxiliary head; PEMs always train.

    ``aux_head`` freezes the auxiliary head alone, for an aux loss weight of 0: no loss term would reach it, so it
    would get no gradient (an error under DistributedDataParallel). Returns the frozen modules, which
    :func:`set_train_mode` keeps in eval mode.
    """
    features, heads = backbone_and_heads(model)
    parts = ([features] if backbone else []) + (heads if decode_head else [])
    aux = _aux_head(model)
    if aux_head and aux is not None and aux not in parts:
        parts.append(aux)
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


class _TrainingForward(nn.Module):
    """The training forward pass (an NPE model's ``forward_train``) as a module, so DistributedDataParallel can wrap
    it."""

    def __init__(self, model: nn.Module, npe: bool) -> None:
        super().__init__()
        self.model, self.npe = model, npe

    def forward(self, images: torch.Tensor) -> Any:
        return self.model.forward_train(images) if self.npe else self.model(images)


def _training_batches(dataset: Dataset, train: SegmentationTrainConfig, context: DistributedContext) -> Any:
    """The run's :class:`RandomCropBatches`; ``workers`` defaults to the CPUs for files, 0 for arrays in memory."""
    workers = train.workers
    if workers is None:
        workers = default_workers(context.world_size) if isinstance(dataset, SegmentationFolder) else 0
    return RandomCropBatches(
        dataset,
        train.batch_size,
        train.augmentation(),
        train.seed,
        rank=context.rank,
        world_size=context.world_size,
        workers=workers,
        pin_memory=context.device.type == "cuda",
    )


class _SegmentationRun(TrainingLoop):
    """A segmentation run: one SGD step on a batch of augmented crops per iteration."""

    task = SegmentationRunConfig.task
    unit = "iteration"

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: SegmentationRunConfig,
        run_dir: Optional[PathLike],
        context: DistributedContext,
        on_step: Optional[Callable[[int, dict[str, float]], None]],
    ) -> None:
        super().__init__(config, run_dir, config.train.iterations, is_main=context.is_main)
        train = config.train
        memory_format = torch.channels_last if train.channels_last else torch.preserve_format
        self.model = model.to(context.device, memory_format=memory_format)
        self.context, self.device = context, context.device
        self.on_step = on_step if context.is_main else None
        frozen = freeze_model_parts(
            model, train.freeze_backbone, train.freeze_decode_head, aux_head=not train.aux_weight
        )
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("every parameter is frozen: unfreeze the decode head or train a model with PEMs.")
        self.optimizer = torch.optim.SGD(
            parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
        self.batches = _training_batches(dataset, train, context)
        self.npe = has_pems(model)
        self.train_main = any(p.requires_grad for name, p in model.named_parameters() if not _is_pem_parameter(name))
        self.forward = _TrainingForward(model, self.npe)
        if context.enabled:
            self.forward = DistributedDataParallel(self.forward)
        torch.manual_seed(train.seed)  # dropout draws from the global generator (a resumed run restores its state)
        set_train_mode(model, frozen)

    def checkpointed(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "batches": self.batches}

    def log_due(self, done: int) -> bool:
        return done % self.config.train.log_every == 0 or done == self.total

    def checkpoint_due(self, done: int) -> bool:
        return done % self.config.train.checkpoint_every == 0 or done == self.total

    def _loss_terms(self, index: int) -> dict[str, torch.Tensor]:
        """This process's loss terms on its share of iteration ``index``'s batch (in bf16 autocast with ``amp``)."""
        images, masks = self.batches.batch(index)
        model_config = self.config.model
        images = normalize_images(images.to(self.device, non_blocking=True), model_config.mean, model_config.std)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with bf16_autocast(self.device, self.config.train.amp):
            return segmentation_loss_terms(
                self.forward(images),
                masks.to(self.device, non_blocking=True),
                train_main=self.train_main,
                t=getattr(self.model, "t", 1),
                ignore_index=self.config.train.ignore_index,
                aux_weight=self.config.train.aux_weight,
            )

    def _mean_over_processes(self, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> dict[str, float]:
        """The loss and its terms averaged over the processes, for the log and the finite check (same on all)."""
        values = torch.stack([loss.detach(), *(term.detach() for term in terms.values())]).float()
        values = all_reduce_sum(values, self.context) / self.context.world_size
        return dict(zip(["loss", *terms], values.tolist()))

    def train_unit(self, index: int) -> dict[str, Any]:
        """Iteration ``index``: the scheduled learning rate, a batch of crops, the loss, one SGD step."""
        began, train = time.perf_counter(), self.config.train
        lr = train.lr * train.lr_factor(index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        terms = self._loss_terms(index)
        loss = sum(terms.values())
        logged = self._mean_over_processes(terms, loss)
        if not all(np.isfinite(list(logged.values()))):
            raise self.non_finite(index, logged["loss"], f" ({ {k: v for k, v in logged.items() if k != 'loss'} })")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        record = {"iteration": index + 1, "lr": lr, **logged, "seconds": time.perf_counter() - began}
        if self.on_step is not None:
            self.on_step(index + 1, record)
        return record

    def finish(self, record: Optional[dict[str, Any]]) -> dict[str, float]:
        """The final weights (with the model settings) in the run directory; the model in eval mode."""
        self.batches.close()
        if self.run_dir is not None and self.is_main:
            save_segmentation_weights(self.run_dir / WEIGHTS_FILE, self.model, self.config.model)
        barrier(self.context)
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
    Under ``torchrun`` every process calls this with its own copy of the model; ``config.batch_size`` is the global
    batch, split over the processes, and rank 0 writes ``output_dir``.
    """
    run_config = SegmentationRunConfig(model_config, config, dict(data_info or {}))
    started_group = not dist.is_initialized()
    context = init_distributed(str(device))
    try:
        if output_dir is not None:
            check_run_dir(output_dir, run_config, resume)
        barrier(context)  # every process has checked the folder before rank 0 writes into it
        run = _SegmentationRun(model, dataset, run_config, output_dir, context, on_step)
        try:
            return run.run(resume)
        finally:
            run.batches.close()
    finally:
        if context.enabled and started_group and dist.is_initialized():
            dist.destroy_process_group()


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
    """The model with the weights it starts from (``init``: a run, a weights file or shipped weights by name);
    none when it continues from a checkpoint, which replaces them."""
    if continuing:
        return config.model.build()
    data = config.data
    torch.manual_seed(config.train.seed)  # fresh parts start alike in every torchrun process and every rerun
    shipped = shipped_init(data.get("init"))
    weights = shipped[1] if shipped is not None else data.get("weights")
    model = config.model.build(weights=weights, weights_backbone=data.get("weights_backbone"))
    if data.get("init") and shipped is None:
        load_weights_for_pem_training(model, data["init"])
    elif config.train.freeze_backbone and not (shipped or data.get("weights") or data.get("weights_backbone")):
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
    if config.train.augment == "crop":  # MMSegmentation's pipeline rescales first: its crop may pad any image
        _check_crop_fits(config.train.crop_size, dataset)
    pixels = class_pixel_counts(dataset, config.model.num_classes, config.train.ignore_index)
    config = dataclasses.replace(config, data={**data, "images": list(dataset.ids), "class_pixels": pixels})
    model = _starting_model(config, resume and (Path(out_dir) / CHECKPOINT_FILE).is_file())
    main = progress is not None and os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 shows the bar
    bar = progress(total=config.train.iterations, desc=f"train {config.model.name}", unit="it") if main else None
    try:
        return train_segmentation(
            model,
            dataset,
            config.train,
            config.model,
            output_dir=out_dir,
            device=device,
            resume=resume,
            data_info=config.data,
            on_step=_ProgressReport(bar) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
