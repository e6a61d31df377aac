"""Command line for segmentation: training and evaluation of the NPE segmentation models on STARE.

``npe_models.cli`` routes ``npe-models train`` / ``evaluate`` here when
``is_segmentation_model(--model)`` holds (``add_train_arguments`` / ``run_train`` and
``add_evaluate_arguments`` / ``run_evaluate``); ``python -m npe_models.segmentation.cli
train|evaluate ...`` runs the same code directly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.stare import STARE_ANNOTATIONS, STARE_CLASSES, STARE_SPLITS, StareSegmentation
from ..engine.checkpoint import write_json
from ..models.segmentation import DEFAULT_SEGMENTATION_ALPHA, PEM_TYPES, parse_segmentation_model_name
from .checkpoint import load_segmentation_model, load_weights_for_pem_training
from .config import SCHEDULES, SegmentationModelConfig, SegmentationTrainConfig
from .evaluation import EVAL_MODES, evaluate_segmentation
from .metrics import SegmentationMetrics
from .training import has_pems, train_segmentation

__all__ = ["is_segmentation_model", "add_train_arguments", "run_train", "add_evaluate_arguments", "run_evaluate", "main"]

SEGMENTATION_DATASETS = {"stare": STARE_CLASSES}
_TRAIN_DEFAULTS = SegmentationTrainConfig()


def is_segmentation_model(name: str) -> bool:
    """Whether ``name`` is a segmentation model this package builds (``unet_fcn``, ``deeplabv3_resnet50_npe16`` ...)."""
    try:
        parse_segmentation_model_name(name)
    except (TypeError, ValueError):
        return False
    return True


def _size(text: str) -> tuple[int, int]:
    """``128`` or ``128x96`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 128 or 128x96, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 128 or 128x96, got {text!r}")
    return (parts[0], parts[-1])


def _model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="stare", choices=sorted(SEGMENTATION_DATASETS), help="data set")
    parser.add_argument("--data-dir", default=os.environ.get("NPE_DATA_DIR"),
                        help="root of the data sets (holding stare/stare.npz); default $NPE_DATA_DIR")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def _dataset(args: argparse.Namespace, split: str, annotation: str) -> Dataset:
    if not args.data_dir:
        raise FileNotFoundError("no data directory: pass --data-dir (e.g. ../shared/data) or set NPE_DATA_DIR.")
    return StareSegmentation(args.data_dir, split, annotation)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option ``run_train`` reads, including ``--model``; call it on a fresh (sub)parser."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True,
                       help="unet_fcn, deeplabv3_resnet50, ... (plain baseline) or <arch>_npe<K> (K PEMs)")
    model.add_argument("--num-pems", type=int, default=None, help="PEMs for a plain architecture name")
    model.add_argument("--pem-type", default="linear", choices=PEM_TYPES, help="PEM architecture")
    model.add_argument("--alpha", type=float, default=DEFAULT_SEGMENTATION_ALPHA,
                       help="NPE-LA strength stored in the model (evaluate can try others)")
    model.add_argument("--num-classes", type=int, default=None, help="default: the data set's class count")
    model.add_argument("--aux-loss", action="store_true", help="add the auxiliary FCN head (not LR-ASPP)")
    model.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                       help="extra builder argument, e.g. base_channels=32 for unet_fcn (repeatable)")
    model.add_argument("--weights", default=None, help="torchvision weights of the base model, e.g. DEFAULT")
    model.add_argument("--weights-backbone", default=None, help="torchvision backbone weights, e.g. IMAGENET1K_V1")
    model.add_argument("--init-from", default=None,
                       help="run directory or .safetensors to start from (e.g. the baseline); PEMs stay fresh")
    data = parser.add_argument_group("data")
    _add_data_arguments(data)
    data.add_argument("--annotation", default="ah", choices=sorted(STARE_ANNOTATIONS), help="STARE training masks")
    train = parser.add_argument_group("training")
    train.add_argument("--output", required=True, help="run directory (resumed when it holds a checkpoint)")
    train.add_argument("--iterations", type=int, default=_TRAIN_DEFAULTS.iterations)
    train.add_argument("--batch-size", type=int, default=_TRAIN_DEFAULTS.batch_size)
    train.add_argument("--crop-size", type=_size, default=_TRAIN_DEFAULTS.crop_size, help="random crop, e.g. 128")
    train.add_argument("--lr", type=float, default=_TRAIN_DEFAULTS.lr)
    train.add_argument("--momentum", type=float, default=_TRAIN_DEFAULTS.momentum)
    train.add_argument("--weight-decay", type=float, default=_TRAIN_DEFAULTS.weight_decay)
    train.add_argument("--schedule", default=_TRAIN_DEFAULTS.schedule, choices=SCHEDULES)
    train.add_argument("--milestones", type=int, nargs="*", default=list(_TRAIN_DEFAULTS.milestones),
                       help="multistep: iterations where lr is multiplied by --gamma")
    train.add_argument("--gamma", type=float, default=_TRAIN_DEFAULTS.gamma)
    train.add_argument("--aux-weight", type=float, default=_TRAIN_DEFAULTS.aux_weight)
    train.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction,
                       default=_TRAIN_DEFAULTS.freeze_backbone, help="freeze the backbone (BatchNorm in eval mode)")
    train.add_argument("--freeze-decode-head", action="store_true", help="also freeze the decode and aux heads")
    train.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    train.add_argument("--seed", type=int, default=_TRAIN_DEFAULTS.seed)
    train.add_argument("--checkpoint-every", type=int, default=_TRAIN_DEFAULTS.checkpoint_every)


def run_train(args: argparse.Namespace) -> int:
    """Build, train and save a segmentation model from parsed arguments; returns the exit status."""
    classes = SEGMENTATION_DATASETS[args.dataset]
    dataset = _dataset(args, "train", args.annotation)
    model_config = SegmentationModelConfig(
        name=args.model, num_classes=args.num_classes or len(classes), num_pems=args.num_pems,
        pem_type=args.pem_type, alpha=args.alpha, aux_loss=args.aux_loss or None,
        model_kwargs=dict(args.model_arg), class_names=list(classes),
    )
    model = model_config.build(weights=args.weights, weights_backbone=args.weights_backbone)
    if args.init_from:
        load_weights_for_pem_training(model, args.init_from)
    elif args.freeze_backbone and not (args.weights or args.weights_backbone):
        print("warning: freezing a randomly initialised backbone; pass --init-from, --weights(-backbone) "
              "or --no-freeze-backbone", file=sys.stderr)
    config = SegmentationTrainConfig(
        iterations=args.iterations, batch_size=args.batch_size, crop_size=args.crop_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        milestones=tuple(args.milestones), gamma=args.gamma, aux_weight=args.aux_weight,
        freeze_backbone=args.freeze_backbone, freeze_decode_head=args.freeze_decode_head, flip=not args.no_flip,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    data_info = {"dataset": args.dataset, "annotation": args.annotation, "images": list(dataset.ids),
                 "init_from": args.init_from, "weights": args.weights, "weights_backbone": args.weights_backbone}
    with tqdm(total=config.iterations, desc=f"train {args.model}", unit="it") as bar:
        def on_step(iteration: int, record: dict[str, float]) -> None:
            bar.n = iteration
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("iteration", "seconds")})

        record = train_segmentation(model, dataset, config, model_config, output_dir=args.output,
                                    device=args.device, data_info=data_info, on_step=on_step)
    print(f"finished {config.iterations} iterations; last step: "
          + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "iteration"))
    print(f"weights: {Path(args.output) / 'model.safetensors'}")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option ``run_evaluate`` reads; call it on a fresh (sub)parser."""
    parser.add_argument("--checkpoint", required=True, help="segmentation run directory or its model.safetensors")
    _add_data_arguments(parser)
    parser.add_argument("--split", default="val", choices=STARE_SPLITS)
    parser.add_argument("--annotation", nargs="+", default=["ah", "vk"], choices=sorted(STARE_ANNOTATIONS),
                        help="STARE masks to score against (each gives its own table)")
    parser.add_argument("--alpha", type=float, nargs="+", default=None,
                        help="NPE-LA strengths, all from one forward pass; 0 = main logits. "
                             "Default: 0 and the model's alpha")
    parser.add_argument("--mode", default="slide", choices=EVAL_MODES, help="whole-image or sliding-window inference")
    parser.add_argument("--crop-size", type=_size, default=(128, 128), help="slide window size")
    parser.add_argument("--stride", type=_size, default=(85, 85), help="slide window stride")
    parser.add_argument("--overlays", type=int, default=0, help="write overlay PNGs for the first N images")
    parser.add_argument("--overlay-dir", default=None, help="default: <checkpoint dir>/overlays")
    parser.add_argument("--output-json", default=None, help="write every metric to this JSON file")


def _alpha_label(alpha: float) -> str:
    return "main logits (alpha 0)" if alpha == 0 else f"NPE-LA alpha={alpha:g}"


def _print_table(title: str, results: dict[float, SegmentationMetrics]) -> None:
    """Per alpha: Dice, accuracy and IoU per class (up to 10 classes) and their means (percent), then pixel accuracy."""
    first = next(iter(results.values()))
    names = list(first.class_names or range(len(first.confusion))) if len(first.confusion) <= 10 else []
    print(f"\n{title}")
    header = ["setting"] + [f"{metric} {n}" for metric in ("Dice", "Acc", "IoU") for n in names + ["mean"]] + ["aAcc"]
    print(" | ".join(header))
    for alpha, metrics in results.items():
        cells = [_alpha_label(alpha)]
        for per_class, mean in ((metrics.dice, metrics.mean_dice), (metrics.accuracy, metrics.mean_accuracy),
                                (metrics.iou, metrics.mean_iou)):
            cells += [f"{100 * float(v):.2f}" for v in per_class[: len(names)]] + [f"{100 * mean:.2f}"]
        cells.append(f"{100 * metrics.pixel_accuracy:.2f}")
        print(" | ".join(cells))


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained segmentation model from parsed arguments; returns the exit status."""
    model, model_config = load_segmentation_model(args.checkpoint)
    alphas = args.alpha if args.alpha is not None else ([0.0, model_config.alpha] if has_pems(model) else [0.0])
    checkpoint_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    overlay_root = Path(args.overlay_dir) if args.overlay_dir else checkpoint_dir / "overlays"
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "mode": args.mode, "alphas": alphas, "results": {}}
    for annotation in args.annotation:
        dataset = _dataset(args, args.split, annotation)
        with tqdm(total=len(dataset), desc=f"evaluate {annotation}", unit="image") as bar:
            results = evaluate_segmentation(
                model, dataset, num_classes=model_config.num_classes, mean=model_config.mean, std=model_config.std,
                alphas=alphas, mode=args.mode, crop_size=args.crop_size, stride=args.stride, device=args.device,
                class_names=model_config.class_names, overlay_dir=overlay_root / annotation,
                num_overlays=args.overlays, on_image=lambda _: bar.update(1),
            )
        _print_table(f"{args.dataset} {args.split} ({annotation} masks, {len(dataset)} images, {args.mode})", results)
        report["results"][annotation] = {str(a): m.to_dict() for a, m in results.items()}
    if args.overlays:
        print(f"\noverlays (image with ground truth, then each alpha): {overlay_root}")
    if args.output_json:
        write_json(args.output_json, report)
        print(f"metrics: {args.output_json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m npe_models.segmentation.cli train|evaluate ...``."""
    parser = argparse.ArgumentParser(prog="python -m npe_models.segmentation.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="train a segmentation model"))
    add_evaluate_arguments(commands.add_parser("evaluate", help="evaluate a trained segmentation model"))
    args = parser.parse_args(argv)
    try:
        return run_train(args) if args.command == "train" else run_evaluate(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
