"""Command line for segmentation: training and evaluation of the NPE segmentation models on STARE.

``npe-models train`` / ``evaluate`` plug these hooks in as a task: their parsers already define
the shared options (``--model``, ``--dataset``, ``--data-dir``, ``--device``, ``--batch-size``,
``--lr``, ``--momentum``, ``--weight-decay``, ``--seed``, ``--out``, ``--resume``; evaluate's
``source`` and ``--merge``), which the hooks read, and ``add_*_arguments`` add the segmentation
options, reusing options another task already defined with the same meaning (``--npe-alpha``,
``--npe-t``, ``--init``, ``--milestones``, ``--gamma``). ``python -m npe_models.segmentation.cli
train|evaluate ...`` builds the same command on its own.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from timm.utils import reparameterize_model
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.stare import STARE_ANNOTATIONS, STARE_CLASSES, STARE_SPLITS, StareSegmentation
from ..classification.checkpoint import write_json
from ..classification.distributed import resolve_device
from ..export_cli import key_value_argument
from ..models.segmentation import DEFAULT_SEGMENTATION_ALPHA, PEM_TYPES, parse_segmentation_model_name
from .checkpoint import load_segmentation_model, load_weights_for_pem_training
from .config import SCHEDULES, SegmentationModelConfig, SegmentationTrainConfig
from .evaluation import EVAL_MODES, evaluate_segmentation
from .metrics import SegmentationMetrics
from .training import has_pems, train_segmentation

__all__ = [
    "SEGMENTATION_DATASETS",
    "is_segmentation_model",
    "add_train_arguments",
    "run_train",
    "add_evaluate_arguments",
    "run_evaluate",
    "main",
]

SEGMENTATION_DATASETS = {"stare": STARE_CLASSES}
_TRAIN_DEFAULTS = SegmentationTrainConfig()


def is_segmentation_model(name: Optional[str]) -> bool:
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


def _add_unless_defined(group: Any, *flags: str, **kwargs: Any) -> None:
    """Add an option another task (or the shared parser) may already define with the same meaning."""
    try:
        group.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass  # defined already: the run functions read it and fill in the segmentation default


def _setting(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def _add_shared_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    """The options ``npe-models`` shares between tasks, for the stand-alone command."""
    if training:
        parser.add_argument("--model", required=True,
                            help="unet_fcn, deeplabv3_resnet50, ... (plain baseline) or <arch>_npe<K> (K PEMs)")
        parser.add_argument("--out", required=True, help="run directory (config.json, log.jsonl, checkpoint.pt, "
                            "model.safetensors)")
        parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        parser.add_argument("--batch-size", type=int, help=f"crops per step (default: {_TRAIN_DEFAULTS.batch_size})")
        parser.add_argument("--lr", type=float, help=f"initial SGD learning rate (default: {_TRAIN_DEFAULTS.lr})")
        parser.add_argument("--momentum", type=float, help=f"SGD momentum (default: {_TRAIN_DEFAULTS.momentum})")
        parser.add_argument("--weight-decay", type=float,
                            help=f"weight decay (default: {_TRAIN_DEFAULTS.weight_decay})")
        parser.add_argument("--seed", type=int, help="seed of crops, flips and dropout (default: 0)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    else:
        parser.add_argument("source", help="segmentation run directory or its model.safetensors")
        parser.add_argument("--out", help="folder for metrics.json and overlays (default: RUN/eval)")
        parser.add_argument("--merge", action="store_true", help="fold linear PEMs into the classifier first")
    parser.add_argument("--dataset", choices=sorted(SEGMENTATION_DATASETS), help="data set (default: stare)")
    parser.add_argument("--data-dir", help="root of the data sets, holding stare/stare.npz (default: $NPE_DATA_DIR)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")


def _dataset(args: argparse.Namespace, split: str, annotation: str) -> Dataset:
    dataset = _setting(args, "dataset", "stare")
    if dataset not in SEGMENTATION_DATASETS:
        raise ValueError(f"{dataset!r} is not a segmentation data set; use one of {sorted(SEGMENTATION_DATASETS)}.")
    data_dir = _setting(args, "data_dir", os.environ.get("NPE_DATA_DIR"))
    if not data_dir:
        raise FileNotFoundError("no data directory: pass --data-dir (e.g. ../shared/data) or set NPE_DATA_DIR.")
    return StareSegmentation(data_dir, split, annotation)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the segmentation training options to ``npe-models train``'s parser (which holds the shared ones)."""
    group = parser.add_argument_group("segmentation (STARE; --model unet_fcn, <arch>_npe<K>, ...)")
    group.add_argument("--num-pems", type=int, help="PEMs for a plain architecture name (default: none / from name)")
    group.add_argument("--pem-type", choices=PEM_TYPES, help="PEM architecture (default: linear)")
    group.add_argument("--num-classes", type=int, help="default: the data set's class count")
    group.add_argument("--aux-loss", action="store_true", help="add the auxiliary FCN head (not for LR-ASPP)")
    group.add_argument("--model-arg", type=key_value_argument, action="append", default=[], metavar="KEY=VALUE",
                       help="extra builder argument, e.g. base_channels=32 for unet_fcn (repeatable)")
    group.add_argument("--weights", help="torchvision weights of the base model, e.g. DEFAULT (downloads)")
    group.add_argument("--weights-backbone", help="torchvision backbone weights, e.g. IMAGENET1K_V1 (downloads)")
    group.add_argument("--annotation", choices=sorted(STARE_ANNOTATIONS), help="STARE training masks (default: ah)")
    group.add_argument("--iterations", type=int, help=f"SGD steps (default: {_TRAIN_DEFAULTS.iterations})")
    group.add_argument("--crop-size", type=_size, help="random training crop, e.g. 128 or 128x96 (default: 128)")
    group.add_argument("--lr-schedule", choices=SCHEDULES,
                       help="multistep (at --milestones) or poly (default: multistep)")
    group.add_argument("--aux-weight", type=float,
                       help=f"auxiliary loss weight (default: {_TRAIN_DEFAULTS.aux_weight})")
    group.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                       help="freeze the backbone, BatchNorm in eval mode (default: on)")
    group.add_argument("--freeze-decode-head", action="store_true", help="also freeze the decode and aux heads")
    group.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    group.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default: 100)")
    _add_unless_defined(group, "--npe-alpha", type=float, help="NPE-LA strength stored in the model")
    _add_unless_defined(group, "--npe-t", type=int, choices=(0, 1), help="PEM sign convention t (default: 1)")
    _add_unless_defined(group, "--init", help="trained run directory or .safetensors to start from")
    _add_unless_defined(group, "--milestones", type=int, nargs="*", help="steps at which lr is multiplied by --gamma")
    _add_unless_defined(group, "--gamma", type=float, help="multistep factor (default: 0.1)")


def _train_config(args: argparse.Namespace) -> SegmentationTrainConfig:
    defaults = _TRAIN_DEFAULTS
    return SegmentationTrainConfig(
        iterations=_setting(args, "iterations", defaults.iterations),
        batch_size=_setting(args, "batch_size", defaults.batch_size),
        crop_size=_setting(args, "crop_size", defaults.crop_size),
        lr=_setting(args, "lr", defaults.lr),
        momentum=_setting(args, "momentum", defaults.momentum),
        weight_decay=_setting(args, "weight_decay", defaults.weight_decay),
        schedule=_setting(args, "lr_schedule", defaults.schedule),
        milestones=tuple(_setting(args, "milestones", defaults.milestones)),
        gamma=_setting(args, "gamma", defaults.gamma),
        aux_weight=_setting(args, "aux_weight", defaults.aux_weight),
        freeze_backbone=_setting(args, "freeze_backbone", defaults.freeze_backbone),
        freeze_decode_head=bool(args.freeze_decode_head),
        flip=not args.no_flip,
        seed=_setting(args, "seed", defaults.seed),
        checkpoint_every=_setting(args, "checkpoint_every", defaults.checkpoint_every),
    )


def run_train(args: argparse.Namespace) -> int:
    """Build, train and save a segmentation model from parsed arguments; returns the exit status."""
    if not is_segmentation_model(args.model):
        raise ValueError(f"--model {args.model!r} is not a segmentation model; e.g. unet_fcn or unet_fcn_npe1.")
    classes = SEGMENTATION_DATASETS[_setting(args, "dataset", "stare")]
    annotation = _setting(args, "annotation", "ah")
    dataset = _dataset(args, "train", annotation)
    model_config = SegmentationModelConfig(
        name=args.model, num_classes=_setting(args, "num_classes", len(classes)), num_pems=args.num_pems,
        pem_type=_setting(args, "pem_type", "linear"), alpha=_setting(args, "npe_alpha", DEFAULT_SEGMENTATION_ALPHA),
        t=_setting(args, "npe_t", 1), aux_loss=args.aux_loss or None, model_kwargs=dict(args.model_arg),
        class_names=list(classes),
    )
    config = _train_config(args)
    model = model_config.build(weights=args.weights, weights_backbone=args.weights_backbone)
    if args.init:
        load_weights_for_pem_training(model, args.init)
    elif config.freeze_backbone and not (args.weights or args.weights_backbone):
        print("warning: the backbone is frozen but randomly initialised; pass --init, --weights(-backbone) "
              "or --no-freeze-backbone", file=sys.stderr)
    data_info = {"dataset": _setting(args, "dataset", "stare"), "annotation": annotation, "images": list(dataset.ids),
                 "init": args.init, "weights": args.weights, "weights_backbone": args.weights_backbone}
    device = resolve_device(_setting(args, "device", "auto"))
    with tqdm(total=config.iterations, desc=f"train {args.model}", unit="it",
              disable=bool(getattr(args, "no_progress", False))) as bar:
        def on_step(iteration: int, record: dict[str, float]) -> None:
            bar.n = iteration
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("iteration", "seconds")})

        record = train_segmentation(model, dataset, config, model_config, output_dir=args.out, device=device,
                                    resume=bool(args.resume), data_info=data_info, on_step=on_step)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "iteration")
    print(f"finished {config.iterations} iterations{'; last step: ' + summary if summary else ''}")
    print(f"weights: {Path(args.out) / 'model.safetensors'}")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the segmentation evaluation options to ``npe-models evaluate``'s parser (which holds the shared ones)."""
    group = parser.add_argument_group("segmentation (STARE)")
    group.add_argument("--split", choices=STARE_SPLITS, help="STARE images to score (default: val)")
    group.add_argument("--annotation", nargs="+", choices=sorted(STARE_ANNOTATIONS),
                       help="STARE masks to score against, one table each (default: ah vk)")
    group.add_argument("--alpha", type=float, nargs="+",
                       help="NPE-LA strengths, all from one forward pass; 0 = main logits (default: 0 and the model's)")
    group.add_argument("--mode", choices=EVAL_MODES, help="whole-image or sliding-window inference (default: slide)")
    group.add_argument("--crop-size", type=_size, help="slide window (default: 128)")
    group.add_argument("--stride", type=_size, help="slide stride (default: 85)")
    group.add_argument("--overlays", type=int, default=0, help="overlay PNGs for the first N images (default: 0)")


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
    model, model_config = load_segmentation_model(args.source)
    if getattr(args, "merge", False):
        model = reparameterize_model(model)
    default_alphas = [0.0, model_config.alpha] if has_pems(model) else [0.0]
    alphas = _setting(args, "alpha", default_alphas)
    source = Path(args.source)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "eval"
    mode = _setting(args, "mode", "slide")
    split = _setting(args, "split", "val")
    device = resolve_device(_setting(args, "device", "auto"))
    report: dict[str, Any] = {"source": str(source), "merged": bool(getattr(args, "merge", False)), "mode": mode,
                              "split": split, "alphas": alphas, "results": {}}
    for annotation in _setting(args, "annotation", ["ah", "vk"]):
        dataset = _dataset(args, split, annotation)
        with tqdm(total=len(dataset), desc=f"evaluate {annotation}", unit="image") as bar:
            results = evaluate_segmentation(
                model, dataset, num_classes=model_config.num_classes, mean=model_config.mean, std=model_config.std,
                alphas=alphas, mode=mode, crop_size=_setting(args, "crop_size", (128, 128)),
                stride=_setting(args, "stride", (85, 85)), device=device, class_names=model_config.class_names,
                overlay_dir=out / "overlays" / annotation, num_overlays=args.overlays,
                on_image=lambda _: bar.update(1),
            )
        _print_table(f"{split} images with '{annotation}' masks ({len(dataset)}), {mode} inference", results)
        report["results"][annotation] = {str(a): m.to_dict() for a, m in results.items()}
    write_json(out / "metrics.json", report)
    print(f"\nmetrics{' and overlays (ground truth, then each alpha)' if args.overlays else ''}: {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m npe_models.segmentation.cli train|evaluate ...``."""
    parser = argparse.ArgumentParser(prog="python -m npe_models.segmentation.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a segmentation model")
    _add_shared_arguments(train, training=True)
    add_train_arguments(train)
    evaluate = commands.add_parser("evaluate", help="evaluate a trained segmentation model")
    _add_shared_arguments(evaluate, training=False)
    add_evaluate_arguments(evaluate)
    args = parser.parse_args(argv)
    try:
        return run_train(args) if args.command == "train" else run_evaluate(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
