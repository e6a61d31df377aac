"""The ``npe-models`` command: builds the parser and dispatches each subcommand to the library.

``train`` and ``evaluate`` serve two tasks, image classification (long-tailed CIFAR) and semantic
segmentation (STARE), chosen from the model, the data set or the run being resumed; ``export
onnx|hub`` and ``list`` serve every model. The work is done by library functions a Python user
can call; this module turns options into their arguments and prints what they return.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from timm.utils import reparameterize_model
from tqdm.contrib.logging import logging_redirect_tqdm

from . import classification, predict, segmentation
from ._cli_args import (
    EPILOG_EVALUATE,
    EPILOG_PREDICT,
    EPILOG_TRAIN,
    adapt_options,
    add_adapt_parser,
    add_evaluate_arguments,
    add_export_arguments,
    add_list_arguments,
    add_predict_arguments,
    add_train_arguments,
    check_predict_options,
    classification_evaluate_options,
    not_none,
    reject_other_task_options,
    segmentation_evaluate_options,
)
from .adapt import adapt_source, format_adaptation
from .classification import TrainConfig, format_metrics, resolve_train_config, train
from .data import SEGMENTATION_DATASETS, check_dataset
from .hub import has_pretrained_card, pretrained_card, push_to_hub, save_for_hub
from .loading import evaluation_dir, load_model, read_label_names, source_kind
from .models import is_segmentation_model, list_registered
from .npe import set_alpha
from .onnx import check_parity, export_onnx, format_parity, onnx_summary
from .runs import NonFiniteLossError, run_task
from .segmentation import SegmentationModelConfig, SegmentationTrainConfig, format_metrics_table

__all__ = ["main", "build_parser"]

_PROG = "npe-models"


def _progress(args: argparse.Namespace):
    """tqdm as the progress factory of the library's loops, or None with --no-progress."""
    if getattr(args, "no_progress", False):
        return None
    from tqdm import tqdm

    return tqdm


def _given(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The options given on the command line that are fields of ``config_cls`` (unset options are None)."""
    names = {field.name for field in dataclasses.fields(config_cls)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def _is_segmentation_run(args: argparse.Namespace) -> bool:
    if args.dataset is not None:
        check_dataset(args.dataset)
        return args.dataset in SEGMENTATION_DATASETS
    if args.model is not None:
        return is_segmentation_model(args.model)
    if segmentation.shipped_init(args.init) is not None:  # train --init unet_fcn_npe1: shipped weights name the model
        return True
    return args.resume and Path(args.out).is_dir() and run_task(args.out) == "segmentation"


def _train(args: argparse.Namespace) -> int:
    task = "segmentation" if _is_segmentation_run(args) else "classification"
    reject_other_task_options(args, task)
    if task == "segmentation":
        return _train_segmentation(args)
    config = resolve_train_config(args.out, args.resume, **_given(args, TrainConfig))
    result = train(config, args.out, resume=args.resume, progress=_progress(args), tensorboard=bool(args.tensorboard))
    if result.already_finished:
        print(f"{result.run_dir} is already finished ({result.epochs_done} epochs); nothing to do.")
    if result.metrics is not None:
        print(format_metrics(result.metrics))
        print(f"run directory: {result.run_dir}")
    return 0


def _train_segmentation(args: argparse.Namespace) -> int:
    given = {**_given(args, SegmentationModelConfig), **_given(args, SegmentationTrainConfig)}
    settings = dict(
        model=args.model,
        model_kwargs=dict(args.model_arg) or None,
        dataset=args.dataset,
        annotation=args.annotation,
        data_dir=args.data_dir,
        reduce_zero_label=args.reduce_zero_label,
        init=args.init,
        weights=args.weights,
        weights_backbone=args.weights_backbone,
    )
    config = segmentation.resolve_segmentation_config(args.out, args.resume, **given, **settings)
    record = segmentation.train_run(
        config,
        args.out,
        data_dir=args.data_dir,  # None: the folder a file data set's run records, else resolve_data_dir's
        resume=args.resume,
        device=args.device or "auto",
        progress=_progress(args),
    )
    last = f"; last loss {record['loss']:.4g}" if record else ""
    print(f"finished {config.train.iterations} iterations{last}")
    print(f"weights: {Path(args.out) / 'model.safetensors'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if source_kind(args.source) == "registered" and not args.pretrained:
        raise ValueError(f"'{args.source}' is a model name: pass --pretrained to evaluate its pretrained weights.")
    loaded = load_model(args.source, pretrained=args.pretrained, model_name=args.model)
    model = reparameterize_model(loaded.model) if args.merge else loaded.model
    out = Path(args.out) if args.out else evaluation_dir(args.source)
    about = {"source": args.source, "merged": bool(args.merge)}
    reject_other_task_options(args, loaded.task, "evaluation")
    if loaded.task == "segmentation":
        options = segmentation_evaluate_options(args, loaded, about)
        results = segmentation.evaluate_run(
            model, loaded.segmentation_config, out, progress=_progress(args), inputs=[args.source], **options
        )
        for annotation, table in results.items():
            print(format_metrics_table(f"\n'{annotation}' masks", table))
    else:
        if args.npe_alpha is not None:
            set_alpha(model, _one_alpha(args.npe_alpha))
        options = classification_evaluate_options(args, loaded, about)
        result = classification.evaluate_run(
            model, out, progress=_progress(args), overwrite=args.overwrite, inputs=[args.source], **options
        )
        print(format_metrics(result.metrics))
        print("plots:", *result.plots, sep="\n  ")
    print(f"metrics and plots: {out}")
    return 0


def _one_alpha(alphas: Sequence[float]) -> float:
    if len(alphas) != 1:
        raise ValueError(
            f"a classifier is evaluated at one NPE-LA strength; got --npe-alpha {' '.join(map(str, alphas))}."
        )
    return alphas[0]


def _load_for_export(args: argparse.Namespace):
    loaded = load_model(
        args.model,
        pretrained=args.pretrained,
        num_classes=args.num_classes,
        weights=args.weights,
        pem_type=args.pem_type,
        npe_alpha=args.npe_alpha,
    )
    return loaded, read_label_names(args.label_names)


def _export_onnx(args: argparse.Namespace) -> int:
    loaded, label_names = _load_for_export(args)
    path = export_onnx(
        loaded.model,
        args.output or Path(f"{loaded.name}.onnx"),
        input_size=args.input_size,
        merge=args.merge,
        dynamic_size=args.dynamic_size,
        opset_version=args.opset,
        label_names=label_names,
        config=loaded.segmentation_config,
        overwrite=args.overwrite,
        inputs=[args.model, args.weights, args.label_names],
    )
    print(onnx_summary(path))
    if not args.check:
        return 0
    result = check_parity(loaded.model, path)
    print(format_parity(result))
    return 0 if result.passed else 1


def _export_hub(args: argparse.Namespace) -> int:
    if args.push and not args.repo_id:
        raise ValueError("--push needs --repo-id ORG/NAME.")
    if not args.push and args.output_dir is None:
        raise ValueError("give --output-dir DIR, or --push with --repo-id.")
    loaded, label_names = _load_for_export(args)
    model = reparameterize_model(loaded.model) if args.merge else loaded.model
    shipped = args.pretrained and not args.merge and has_pretrained_card(args.model)
    given = not_none(
        label_names=label_names,
        metrics=dict(args.metric) or None,
        dataset=args.dataset,
        dataset_id=args.dataset_id,
        recipe=dict(args.recipe) or loaded.recipe,
        repo_id=args.repo_id,
    )
    card = {
        **(pretrained_card(args.model) if shipped else {}),
        **given,
        "split": args.split,
        "config": loaded.segmentation_config,
    }
    if args.output_dir is not None:
        inputs = [args.model, args.weights, args.label_names]
        folder = save_for_hub(model, args.output_dir, overwrite=args.overwrite, inputs=inputs, **card)
        print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    if args.push:
        card.pop("repo_id")
        commit = push_to_hub(model, args.repo_id, token=args.token, private=args.private or None, **card)
        print(f"uploaded to {commit.commit_url}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for title, rows in list_registered(args.filter or "", pretrained=args.pretrained).items():
        print(title)
        print("\n".join(f"  {name:<45} {summary}" for name, summary in rows) or "  none match.")
    return 0


def _predict(args: argparse.Namespace) -> int:
    check_predict_options(args)
    if args.out is not None:
        masks = predict.predict_masks(
            args.source,
            args.images,
            args.out,
            pretrained=args.pretrained,
            npe_alpha=args.npe_alpha,
            mode=args.mode,
            crop_size=args.crop_size,
            stride=args.stride,
            overlays=args.overlays,
            overwrite=args.overwrite,
            device=args.device,
            progress=_progress(args),
        )
        print(predict.format_masks(masks, "json" if args.format == "json" else "table"))
        return 0
    classifier = predict.load_image_classifier(
        args.source, pretrained=args.pretrained, model_name=args.model, npe_alpha=args.npe_alpha, device=args.device
    )
    top_k = 5 if args.top_k is None else args.top_k
    predictions = predict.predict_images(
        classifier, args.images, top_k=top_k, batch_size=args.batch_size, progress=_progress(args)
    )
    print(predict.format_predictions(predictions, args.format))
    return 0


def _adapt(args: argparse.Namespace) -> int:
    print(format_adaptation(adapt_source(**adapt_options(args))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``npe-models`` command."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Neural Prior Estimation (NPE): train, evaluate, "
        "adapt, export and list long-tailed recognition models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    train = commands.add_parser(
        "train",
        help="train a model (NPE or a baseline)",
        epilog=EPILOG_TRAIN,
        formatter_class=raw,
        description="Train on a long-tailed data set; writes RUN/"
        "config.json, log.jsonl, checkpoint.pt, then model.safetensors, metrics.json, plots.",
    )
    add_train_arguments(train)
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a run, a checkpoint or a pretrained model",
        epilog=EPILOG_EVALUATE,
        formatter_class=raw,
        description="Accuracy overall, "
        "balanced, per group and class, NPE diagnostics (classification); Dice, IoU and "
        "accuracy per NPE-LA strength (segmentation). Writes metrics.json and plots.",
    )
    add_evaluate_arguments(evaluate)
    export = commands.add_parser("export", help="export a model to ONNX or to a Hugging Face Hub folder")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser("onnx", help="ONNX file (PEMs merged where they merge), checked against ONNX Runtime")
    hub = formats.add_parser("hub", help="Hub folder: config.json, model.safetensors and a model card; optional upload")
    add_export_arguments(onnx, hub)
    listing = commands.add_parser("list", help="list the models (and pretrained tags) npe-models provides")
    add_list_arguments(listing)
    predict = commands.add_parser(
        "predict",
        help="top-k classes of images or folders of images",
        epilog=EPILOG_PREDICT,
        formatter_class=raw,
        description="Classify images with any model npe-models loads.",
    )
    add_predict_arguments(predict)
    adapt = add_adapt_parser(commands)
    for subparser, handler in (
        (train, _train),
        (evaluate, _evaluate),
        (onnx, _export_onnx),
        (hub, _export_hub),
        (listing, _list),
        (predict, _predict),
        (adapt, _adapt),
    ):
        subparser.set_defaults(handler=handler)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``npe-models`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            return args.handler(args)
    except (ValueError, TypeError, OSError, ImportError, NonFiniteLossError) as error:
        if isinstance(error, BrokenPipeError):  # piped into a reader that stopped early (`npe-models list | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            print(f"{_PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = f"; continue with: {_PROG} train --out {args.out} --resume" if args.command == "train" else ""
        print(f"\ninterrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
