"""Training a segmentation model with NPE: frozen parts, random-crop batches, resumable iteration-based SGD.

The paper's protocol freezes a trained network (backbone, and optionally its decode head) and
trains PEMs on top. Frozen parts keep ``requires_grad=False`` and their BatchNorm (and dropout)
layers stay in eval mode, so their running statistics never change.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from ..classification.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    WEIGHTS_FILE,
    append_jsonl,
    atomic_write,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    write_json,
)
from ..models.segmentation import NPESegmentationMixin
from .checkpoint import save_segmentation_weights
from .config import SegmentationModelConfig, SegmentationTrainConfig
from .losses import segmentation_loss_terms
from .sampling import RandomCropBatches, normalize_images

__all__ = ["freeze_model_parts", "set_train_mode", "has_pems", "train_segmentation"]

_logger = logging.getLogger(__name__)
_RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "log_every"}


def has_pems(model: nn.Module) -> bool:
    """Whether the model carries unmerged PEMs (so ``forward_train`` and ``forward_logits_and_estimate`` work)."""
    return isinstance(model, NPESegmentationMixin) and (model.pems is not None or bool(model.npe_heads()))


def _is_pem_parameter(name: str) -> bool:
    """Linear PEMs live inside NPEHeads (``pem_weight`` / ``pem_bias``); fcn / replica PEMs under ``pems``."""
    return name.rsplit(".", 1)[-1] in ("pem_weight", "pem_bias") or name.split(".", 1)[0] == "pems"


def freeze_model_parts(model: nn.Module, backbone: bool = True, decode_head: bool = False) -> list[nn.Module]:
    """Stop gradients to the backbone and/or the decode head (with the auxiliary head); PEMs always train.

    Returns the frozen modules, which :func:`set_train_mode` keeps in eval mode.
    """
    parts = [model.backbone] if backbone else []
    if decode_head:
        parts.append(model.classifier)
        if getattr(model, "aux_classifier", None) is not None:
            parts.append(model.aux_classifier)
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


def _check_resumable(saved: dict[str, Any], config: SegmentationTrainConfig, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise ValueError(
            f"cannot resume '{path}': settings {changed} differ from the interrupted run "
            f"({ {k: saved.get(k) for k in changed} } then, { {k: current[k] for k in changed} } now). "
            "Use a new output directory or the same settings."
        )


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, batches: RandomCropBatches,
                iteration: int, config: SegmentationTrainConfig) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batches": batches.state_dict(),
        "iteration": iteration,
        "rng": capture_rng_state(),
        "config": config.to_dict(),
    }
    atomic_write(path, lambda temp: torch.save(state, temp))


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
    model.to(device)
    frozen = freeze_model_parts(model, config.freeze_backbone, config.freeze_decode_head)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("every parameter is frozen: unfreeze the decode head or train a model with PEMs.")
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    batches = RandomCropBatches(dataset, config.batch_size, config.crop_size, config.seed, config.flip,
                                config.ignore_index)
    npe = has_pems(model)
    train_main = any(p.requires_grad for name, p in model.named_parameters() if not _is_pem_parameter(name))
    start = 0
    output = Path(output_dir) if output_dir is not None else None
    if output is not None and (output / CHECKPOINT_FILE).is_file():
        if not resume:
            raise FileExistsError(f"{output} already holds a run; resume it (--resume) or choose another output.")
        state = load_checkpoint(output / CHECKPOINT_FILE, map_location=device)
        _check_resumable(state["config"], config, output / CHECKPOINT_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        restore_rng_state(state["rng"])
        start = state["iteration"]
        _logger.info("resuming %s at iteration %d", output, start)
    else:
        torch.manual_seed(config.seed)  # dropout draws from the global generator
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        run_config = {"model": model_config.to_dict(), "train": config.to_dict(), "data": data_info or {}}
        write_json(output / CONFIG_FILE, run_config)
    set_train_mode(model, frozen)
    record: dict[str, float] = {}
    for iteration in range(start, config.iterations):
        began = time.perf_counter()
        lr = config.lr * config.lr_factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, masks = batches.next_batch()
        images = normalize_images(images.to(device), model_config.mean, model_config.std)
        masks = masks.to(device)
        result = model.forward_train(images) if npe else model(images)
        terms = segmentation_loss_terms(
            result, masks, train_main=train_main, t=getattr(model, "t", 1), ignore_index=config.ignore_index,
            aux_weight=config.aux_weight,
        )
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            values = {k: v.item() for k, v in terms.items()}
            raise FloatingPointError(
                f"the loss became {loss.item()} at iteration {iteration + 1} ({values}); lower the learning rate "
                "and start a new run (or resume from the last checkpoint)."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"iteration": iteration + 1, "lr": lr, "loss": loss.item(),
                  **{k: v.item() for k, v in terms.items()}, "seconds": time.perf_counter() - began}
        if on_step is not None:
            on_step(iteration + 1, record)
        if output is not None:
            done = iteration + 1
            if done % config.log_every == 0 or done == config.iterations:
                append_jsonl(output / LOG_FILE, record)
            if done % config.checkpoint_every == 0 or done == config.iterations:
                _save_state(output / CHECKPOINT_FILE, model, optimizer, batches, done, config)
    if output is not None:
        save_segmentation_weights(output / WEIGHTS_FILE, model, model_config)
    model.eval()
    return record
