"""The ``npe-models`` command: ``train``, ``evaluate``, ``export`` and ``list``.

Each task (image classification on long-tailed CIFAR here) registers the data sets it serves
and its train / evaluate handlers in ``TASKS``; the subcommands pick the task from the data
set, so other tasks plug in beside classification without changing the shared options.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from .classification.config import TrainConfig

__all__ = ["main", "build_parser", "Task", "TASKS"]

_PROG = "npe-models"
_TAG_DATASET = re.compile(r"(cifar10|cifar100)_lt_r(\d+(?:\.\d+)?)")
_EPILOG_TRAIN = """examples:
  # NPE with 16 PEMs on CIFAR-10-LT (rho = 100), recipe HP-2, data from a folder with train.npz/test.npz
  npe-models train --model resnet32_npe16 --data-dir ../shared/data --out runs/npe16_hp2
  # the same data downloaded by torchvision into ./data
  npe-models train --model resnet32_npe16 --data-dir data --download --out runs/npe16_hp2
  # baselines: CE, logit-adjusted loss, then cRT and post-hoc LA from the CE run
  npe-models train --model resnet32 --method ce --out runs/ce_hp2
  npe-models train --model resnet32 --method la --tau 1 --out runs/la_hp2
  npe-models train --method crt --init runs/ce_hp2 --out runs/crt_hp2
  npe-models train --method posthoc_la --init runs/ce_hp2 --out runs/posthoc_la_hp2
  # continue an interrupted run (its settings are read from RUN/config.json)
  npe-models train --out runs/npe16_hp2 --resume
  # two processes (gloo on CPU, nccl on GPUs)
  torchrun --nproc_per_node 2 -m npe_models.cli train --model resnet32_npe16 --out runs/ddp
"""
_EPILOG_EVALUATE = """examples:
  npe-models evaluate runs/npe16_hp2                  # a run directory (final or latest weights)
  npe-models evaluate runs/npe16_hp2/checkpoint.pt    # a checkpoint file
  npe-models evaluate runs/npe16_hp2 --merge          # PEMs folded into the classifier first
  npe-models evaluate runs/ce_hp2 --posthoc-tau 1     # also score post-hoc logit adjustment
  npe-models evaluate resnet32_npe16.cifar10_lt_r100_hp2 --pretrained --data-dir ../shared/data
"""


def _default_data_dir() -> str:
    return os.environ.get("NPE_DATA_DIR", "data")


@dataclass(frozen=True)
class Task:
    """A task's data sets and subcommand handlers; ``add_*_arguments`` add its own options to the subparsers."""

    datasets: tuple[str, ...]
    add_train_arguments: Callable[[argparse.ArgumentParser], None]
    add_evaluate_arguments: Callable[[argparse.ArgumentParser], None]
    train: Callable[[argparse.Namespace], int]
    evaluate: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- classification


def _add_classification_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .classification.config import METHODS, RECIPES

    group = parser.add_argument_group("classification (long-tailed CIFAR)")
    group.add_argument("--method", choices=METHODS, help="training method (default: npe for models with PEMs, else ce)")
    group.add_argument("--recipe", choices=sorted(RECIPES), help="hyperparameter recipe of the paper (default: hp2)")
    group.add_argument("--rho", type=float, help="imbalance ratio, largest / smallest class (default: 100)")
    group.add_argument("--max-per-class", type=int, help="images in the largest class (default: all), for quick runs")
    group.add_argument("--tau", type=float, help="logit-adjustment strength for la and posthoc_la (default: 1)")
    group.add_argument("--init", help="trained CE run directory or checkpoint, for crt and posthoc_la")
    group.add_argument("--npe-alpha", type=float, help="NPE-LA strength alpha at inference (default: 1)")
    group.add_argument("--npe-t", type=int, choices=(0, 1), help="PEM sign convention t (default: 1)")
    group.add_argument("--schedule", choices=("step", "cosine"), help="learning-rate schedule (default: step; crt: cosine)")
    group.add_argument("--milestones", type=int, nargs="*", help="epochs at which a step schedule multiplies lr by --gamma")
    group.add_argument("--gamma", type=float, help="step schedule factor (default: 0.1)")
    group.add_argument("--eval-every", type=int, help="test-set evaluation every N epochs, 0 for the last only (default: 10)")


def _add_classification_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("classification (long-tailed CIFAR)")
    group.add_argument("--rho", type=float, help="imbalance ratio of the training set the groups come from (default: the run's)")
    group.add_argument("--max-per-class", type=int, help="largest training class size (default: the run's)")
    group.add_argument("--posthoc-tau", type=float, help="also score post-hoc LA, logits - tau * log prior")
    group.add_argument("--sets", nargs="+", choices=("full", "exact", "jpeg_twins"),
                       help="test sets to score (default: all available)")


_TRAIN_SETTINGS = (
    "model", "rho", "max_per_class", "data_dir", "download", "epochs", "batch_size", "lr", "momentum",
    "weight_decay", "schedule", "milestones", "gamma", "tau", "npe_alpha", "npe_t", "init", "seed",
    "deterministic", "device", "amp", "channels_last", "eval_every", "eval_batch_size", "dataset",
)


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given on the command line (unset options are None)."""
    return {name: getattr(args, name) for name in _TRAIN_SETTINGS if getattr(args, name, None) is not None}


def _resolve_train_config(args: argparse.Namespace) -> "TrainConfig":
    """The run's settings: the recipe plus the given options, or on --resume the run's config.json plus them."""
    from .classification.checkpoint import CONFIG_FILE, read_saved_config
    from .classification.config import METHODS_FROM_CE, TrainConfig, num_pems_of, resolve_config

    given = _given_settings(args)
    saved_path = Path(args.out) / CONFIG_FILE
    if args.resume and saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        saved.pop("device", None)  # the machine's, not the run's: a run may move between GPU and CPU machines
        if args.method is not None:
            saved["method"] = args.method
        if args.recipe is not None:
            saved["recipe"] = args.recipe
        return TrainConfig.from_dict({**saved, **given})
    given.setdefault("data_dir", _default_data_dir())
    method = args.method
    if method is None:
        method = "npe" if num_pems_of(given.get("model", "resnet32_npe16")) else "ce"
    if method in METHODS_FROM_CE and "model" not in given and args.init:
        init_config = read_saved_config(args.init)
        if init_config is not None:
            given["model"] = init_config.model
    return resolve_config(args.recipe or "hp2", method, **given)


def _train_classification(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .classification.train import train

    config = _resolve_train_config(args)
    progress = None if args.no_progress else tqdm
    try:
        with logging_redirect_tqdm():
            result = train(config, args.out, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {_PROG} train --out {args.out} --resume", file=sys.stderr)
        return 130
    if result.metrics is None:
        return 0
    if result.already_finished:
        print(f"{result.run_dir} is already finished ({result.epochs_done} epochs); nothing to do.")
    _print_metrics(result.metrics)
    print(f"run directory: {result.run_dir}")
    return 0


def _tag_dataset(name: str) -> tuple[Optional[str], Optional[float]]:
    """Data set and rho from a pretrained tag such as ``cifar10_lt_r100_hp2``."""
    match = _TAG_DATASET.search(name)
    return (match.group(1), float(match.group(2))) if match else (None, None)


def _load_evaluation_model(args: argparse.Namespace):
    """The model to evaluate and its training config (``None`` for timm names)."""
    import timm

    from .classification.checkpoint import load_trained_model

    source = Path(args.source)
    if source.exists():
        return load_trained_model(source, args.model)
    if not timm.is_model(args.source.split(".", 1)[0]):
        raise FileNotFoundError(
            f"'{args.source}' is neither a run directory, a checkpoint file nor a model name "
            "(see `npe-models list`)."
        )
    if not args.pretrained:
        raise ValueError(f"'{args.source}' is a model name: pass --pretrained to evaluate its pretrained weights.")
    try:
        cfg = timm.models.get_pretrained_cfg(args.source)
    except RuntimeError as error:
        raise ValueError(f"{error} See `npe-models list --pretrained`.") from error
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict):
        raise ValueError(f"'{args.source}' has no pretrained weights; see `npe-models list --pretrained`.")
    try:
        model = timm.create_model(args.source, pretrained=True)
    except (RuntimeError, OSError) as error:
        raise ValueError(f"could not load pretrained weights for '{args.source}': {error}") from error
    return model.eval(), None


def _evaluate_classification(args: argparse.Namespace) -> int:
    import timm.utils
    import torch

    from .data.cifar import CIFAR_NUM_CLASSES, load_cifar_lt
    from .classification.checkpoint import check_num_classes, write_json
    from .classification.distributed import resolve_device
    from .classification.evaluate import evaluate_model
    from .classification.plots import save_evaluation_plots

    model, config = _load_evaluation_model(args)
    tag_dataset, tag_rho = _tag_dataset(args.source)
    dataset = args.dataset or (config.dataset if config else tag_dataset) or "cifar10"
    rho = args.rho or (config.rho if config else tag_rho) or 100.0
    max_per_class = args.max_per_class or (config.max_per_class if config else None)
    data_dir = args.data_dir or (config.data_dir if config else None) or _default_data_dir()
    check_num_classes(model, CIFAR_NUM_CLASSES[dataset], args.source)
    data = load_cifar_lt(data_dir, dataset, rho, bool(args.download), max_per_class)
    if args.merge:
        model = timm.utils.reparameterize_model(model)
    device = resolve_device(args.device or "auto")
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    metrics = evaluate_model(
        model, data, device, args.eval_batch_size or 500, args.posthoc_tau, bool(args.channels_last), bool(args.amp), args.sets
    )
    metrics = {"source": args.source, "merged": bool(args.merge), "dataset": dataset, "rho": rho, **metrics}
    out = Path(args.out) if args.out else (Path(args.source) / "eval" if Path(args.source).is_dir() else Path("eval") / Path(args.source).name)
    title = f"{Path(args.source).name}{' merged' if args.merge else ''} {dataset}-LT rho={rho:g}"
    first_set = next(iter(metrics["sets"]))
    save_evaluation_plots(metrics, out, "full" if "full" in metrics["sets"] else first_set, title)
    write_json(out / "metrics.json", metrics)
    _print_metrics(metrics)
    print(f"metrics and plots: {out}")
    return 0


def _format(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:6.2f}"


def _print_metrics(metrics: dict[str, Any]) -> None:
    """A table of accuracy per test set and prediction variant, and the NPE prior diagnostics."""
    print(f"{'set':<11} {'variant':<11} {'top-1':>6} {'bal.':>6} {'many':>6} {'medium':>6} {'few':>6}")
    for set_name, scores in metrics["sets"].items():
        for variant, values in scores.items():
            if variant == "prior":
                continue
            row = " ".join(_format(values[k]) for k in ("top1", "balanced", "many", "medium", "few"))
            print(f"{set_name:<11} {variant:<11} {row}")
    for set_name, scores in metrics["sets"].items():
        if "prior" in scores:
            prior = scores["prior"]
            print(
                f"NPE estimate vs log count ({set_name}): Pearson {_format(prior['pearson'])}, "
                f"Spearman {_format(prior['spearman'])}, slope {_format(prior['slope'])}"
            )


TASKS: dict[str, Task] = {
    "classification": Task(
        datasets=("cifar10", "cifar100"),
        add_train_arguments=_add_classification_train_arguments,
        add_evaluate_arguments=_add_classification_evaluate_arguments,
        train=_train_classification,
        evaluate=_evaluate_classification,
    ),
    "segmentation": Task(
        datasets=("stare",),
        add_train_arguments=lambda parser: _segmentation_cli().add_train_arguments(parser),
        add_evaluate_arguments=lambda parser: _segmentation_cli().add_evaluate_arguments(parser),
        train=lambda args: _segmentation_cli().run_train(args),
        evaluate=lambda args: _segmentation_cli().run_evaluate(args),
    ),
}


def _segmentation_cli():
    from .segmentation import cli

    return cli


def _dataset_of_model(model: Optional[str]) -> Optional[str]:
    """Segmentation models train on STARE unless told otherwise; classifiers on the classification default."""
    return "stare" if model and _segmentation_cli().is_segmentation_model(model) else None


def _task_for_dataset(dataset: Optional[str]) -> Task:
    for task in TASKS.values():
        if dataset is None or dataset in task.datasets:
            return task
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(_all_datasets())}.")


def _all_datasets() -> list[str]:
    return [name for task in TASKS.values() for name in task.datasets]


# ----------------------------------------------------------------------------- shared subcommands


def _saved_dataset(source: str) -> Optional[str]:
    """The data set a run directory or checkpoint was trained on, if it records one."""
    from .classification.checkpoint import read_saved_config

    path = Path(source)
    if not path.exists():
        return _tag_dataset(source)[0]
    run_dir = path if path.is_dir() else path.parent
    if (run_dir / "config.json").is_file():
        segmentation_data = json.loads((run_dir / "config.json").read_text()).get("data")
        if isinstance(segmentation_data, dict):  # segmentation runs keep their data settings in a section
            return segmentation_data.get("dataset")
    config = read_saved_config(path)
    return config.dataset if config else None


def _run_train(args: argparse.Namespace) -> int:
    dataset = args.dataset
    if dataset is None and args.resume:
        from .classification.checkpoint import read_saved_config

        if Path(args.out).is_dir():
            saved = read_saved_config(args.out)
            dataset = saved.dataset if saved else None
    return _task_for_dataset(dataset or _dataset_of_model(args.model)).train(args)


def _run_evaluate(args: argparse.Namespace) -> int:
    dataset = args.dataset or _saved_dataset(args.source) or _dataset_of_model(args.model)
    return _task_for_dataset(dataset).evaluate(args)


def _run_list(args: argparse.Namespace) -> int:
    import timm

    from .models._bundled import bundled_checkpoints

    names = timm.list_models(args.filter or "", pretrained=args.pretrained)
    ours = [n for n in names if timm.models.model_entrypoint(n.split(".", 1)[0]).__module__.startswith("npe_models.")]
    if not args.pretrained:
        print("\n".join(f"{name:<45} {_model_summary(name)}" for name in ours) or "no models match.")
        return 0
    trained = [name for name in ours if name in bundled_checkpoints()]
    print("Checkpoints trained by npe-models (bundled; timm.create_model(name, pretrained=True)):")
    for name in trained:
        print(f"  {name:<45} {_model_summary(name)}")
    if not trained:
        print("  none yet." if not args.filter else "  none match.")
    base = [name for name in ours if name not in trained]
    if base:
        print("Base architectures' own weights with fresh PEMs (to fine-tune):")
        for name in base:
            print(f"  {name:<45} {_model_summary(name)}")
    return 0


def _model_summary(name: str) -> str:
    """A pretrained tag's description (what it was trained on, its accuracy), else the model's docstring."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if "." in name else None
    if cfg is not None and cfg.description:
        return cfg.description
    doc = (timm.models.model_entrypoint(name.split(".", 1)[0]).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def _add_shared_run_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=_all_datasets(), help="data set (default: cifar10, or the run's)")
    data.add_argument(
        "--data-dir", help="folder with train.npz/test.npz (or a <dataset>/ subfolder with them), or torchvision's "
        "download folder (default: $NPE_DATA_DIR, else ./data)",
    )
    data.add_argument("--download", action="store_true", default=None, help="download the data set with torchvision")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    hardware.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    hardware.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                          help="channels-last memory format (default: on for training)")
    hardware.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default: 500)")
    if not training:
        return
    optim = parser.add_argument_group("optimisation (defaults from --recipe)")
    optim.add_argument("--epochs", type=int, help="training epochs")
    optim.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    optim.add_argument("--lr", type=float, help="initial learning rate of SGD")
    optim.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    optim.add_argument("--weight-decay", type=float, help="L2 weight decay on every parameter")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="run directory (config.json, log.jsonl, checkpoint.pt, results)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    run.add_argument("--seed", type=int, help="random seed (default: 0)")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="deterministic kernels: two CPU runs give identical weights")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``npe-models`` command."""
    from . import export_cli

    parser = argparse.ArgumentParser(
        prog=_PROG, description="Neural Prior Estimation (NPE): train, evaluate and list long-tailed recognition models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model (NPE or a baseline)", epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on a long-tailed data set; writes RUN/config.json, log.jsonl, checkpoint.pt every epoch, "
        "and model.safetensors, metrics.json and plots at the end.",
    )
    train.add_argument("--model", help="timm model name, e.g. resnet32_npe16 or resnet32 (see `npe-models list`)")
    _add_shared_run_arguments(train, training=True)
    for task in TASKS.values():
        task.add_train_arguments(train)
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a run, a checkpoint or a pretrained model", epilog=_EPILOG_EVALUATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Accuracy overall, balanced and per Many/Medium/Few group, per class and the confusion matrix "
        "on the full test set, its exact images (and their JPEG twins when present); for NPE models both NPE-LA and "
        "unadjusted logits and the estimate's correlation with the log training counts. Writes metrics.json and plots.",
    )
    evaluate.add_argument("source", help="run directory, checkpoint.pt / .safetensors file, or timm model name")
    evaluate.add_argument("--pretrained", action="store_true", help="load the named timm model's pretrained weights")
    evaluate.add_argument("--merge", action="store_true", help="fold the PEMs into the classifier before evaluating")
    evaluate.add_argument("--model", help="model name, for .safetensors weights that do not record it")
    evaluate.add_argument("--out", help="output folder (default: RUN/eval, or ./eval/<name>)")
    _add_shared_run_arguments(evaluate, training=False)
    for task in TASKS.values():
        task.add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)

    export = commands.add_parser("export", help="export a model to ONNX or to a Hugging Face Hub folder")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx_parser = formats.add_parser("onnx", help="ONNX file (PEMs merged where they merge), checked against ONNX Runtime")
    export_cli.add_onnx_arguments(onnx_parser).set_defaults(handler=export_cli.run_onnx)
    hub_parser = formats.add_parser("hub", help="Hub folder: config.json, model.safetensors and a model card; optional upload")
    export_cli.add_hub_arguments(hub_parser).set_defaults(handler=export_cli.run_hub)

    listing = commands.add_parser("list", help="list the models (and pretrained tags) npe-models provides")
    listing.add_argument("filter", nargs="?", help="wildcard filter, e.g. 'resnet32*'")
    listing.add_argument("--pretrained", action="store_true", help="list pretrained tags only")
    listing.set_defaults(handler=_run_list)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``npe-models`` command; returns the exit status."""
    from .classification.train import NonFiniteLossError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError) as error:
        print(f"{_PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped early (`npe-models list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
