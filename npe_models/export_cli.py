"""Command-line front ends of the exporters: ``npe-models export onnx`` and ``npe-models export hub``.

``add_onnx_arguments`` / ``add_hub_arguments`` fill an ``argparse`` parser and ``run_onnx`` /
``run_hub`` run the parsed arguments, returning an exit status; ``export/onnx_export.py``
and ``export/hub_export.py`` are thin scripts over them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

from .classification.checkpoint import load_trained_model
from .hub import CONFIG_NAME, hub_folder, load_from_hub, push_to_hub, read_hub_config, save_for_hub
from .models.segmentation import PEM_TYPES, NPESegmentationMixin, create_segmentation_model, parse_segmentation_model_name
from .npe import NPEHead
from .onnx import MIN_OPSET, check_parity, export_onnx, read_onnx_metadata
from .segmentation.checkpoint import load_segmentation_model
from .segmentation.config import SegmentationModelConfig

__all__ = [
    "LoadedModel",
    "add_model_arguments",
    "key_value_argument",
    "load_model_from_args",
    "read_label_names",
    "pem_form",
    "add_onnx_arguments",
    "run_onnx",
    "add_hub_arguments",
    "run_hub",
]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")
# Training settings that describe the machine or the bookkeeping, not the recipe: left out of model cards.
_NOT_RECIPE = ("data_dir", "download", "device", "channels_last", "eval_every", "eval_batch_size", "init", "deterministic")


@dataclass
class LoadedModel:
    """A model named on the command line, with what its source says about it."""

    model: nn.Module
    segmentation_config: Optional[SegmentationModelConfig] = None
    recipe: Optional[dict[str, Any]] = None


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The model to export: a registered name (with optional weights), a training run or a saved Hub folder."""
    parser.add_argument(
        "model",
        nargs=None if required else "?",
        help="registered model name (e.g. resnet32_npe16, unet_fcn_npe1), a run directory or weights file "
        "written by `npe-models train`, a folder written by save_for_hub, local-dir:DIR or hf-hub:ORG/NAME",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="class count for a registered name")
    parser.add_argument("--pem-type", choices=PEM_TYPES, default="linear", help="PEM type for a registered segmentation name")
    parser.add_argument("--pretrained", action="store_true", help="load the registered classifier's pretrained weights")
    parser.add_argument(
        "--weights", type=Path, default=None,
        help="weights for a registered name: a .safetensors file, or a torch file holding a state dict "
        "(alone or under 'model' / 'state_dict'; read with weights_only=True)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="NPE-LA strength to export with (default: the model's)")
    parser.add_argument(
        "--label-names", type=Path, default=None,
        help="class names: a JSON list (or {'classes': [...]}) or a text file with one name per line",
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} not found.")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"--weights {path} holds no state dict (name -> tensor); save the model's state_dict().")
    return state


def read_label_names(path: Optional[Path]) -> Optional[list[str]]:
    """Class names from a JSON list, a JSON ``{"classes": [...]}`` or a text file with one name per line."""
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(names, dict) and "classes" in names:
        names = names["classes"]
    if not isinstance(names, list):
        raise ValueError(f"{path} must hold a JSON list of class names or {{'classes': [...]}}.")
    return [str(name) for name in names]


def _set_alpha(model: nn.Module, alpha: float) -> None:
    if isinstance(model, NPESegmentationMixin):
        model.alpha = alpha
        return
    heads = [module for module in model.modules() if isinstance(module, NPEHead)]
    if not heads:
        raise ValueError("--alpha needs a model with PEMs; this one has none (a plain or already merged model).")
    for head in heads:
        head.alpha = float(alpha)


def _run_kind(path: Path) -> Optional[str]:
    """'hub', 'classification' or 'segmentation' for a folder or weights file this package wrote, else None."""
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if "architecture" in config:
            return "hub"
        return "segmentation" if isinstance(config.get("model"), dict) else "classification"
    if path.suffix == ".safetensors" and path.is_file():
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return "segmentation" if "segmentation_model" in metadata else "classification" if "config" in metadata else None
    return "classification" if path.suffix in (".pt", ".pth") and path.is_file() else None


def _recipe(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in _NOT_RECIPE and value is not None}


def _load_hub(source: str) -> LoadedModel:
    folder = hub_folder(source)
    config = read_hub_config(folder)
    settings = config.get("segmentation_model")
    return LoadedModel(load_from_hub(folder), SegmentationModelConfig.from_dict(settings) if settings else None)


def _load_run(path: Path, kind: str) -> LoadedModel:
    if kind == "segmentation":
        model, settings = load_segmentation_model(path)
        train = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")).get("train") if path.is_dir() else None
        return LoadedModel(model, settings, _recipe(train) if train else None)
    model, train_config = load_trained_model(path)
    return LoadedModel(model, None, _recipe(train_config.to_dict()) if train_config else None)


def _load_registered(args: argparse.Namespace) -> LoadedModel:
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if timm.is_model(args.model):
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    else:
        if args.pretrained:
            raise ValueError("--pretrained applies to classifiers; load segmentation weights with --weights.")
        model = create_segmentation_model(args.model, pem_type=args.pem_type, **kwargs)
    if args.weights is not None:
        try:
            model.load_state_dict(_read_state_dict(args.weights), strict=True)
        except RuntimeError as error:
            raise ValueError(f"--weights {args.weights} do not fit {args.model}: {error}") from error
    return LoadedModel(model)


def _is_segmentation_name(name: str) -> bool:
    try:
        parse_segmentation_model_name(name)
    except ValueError:
        return False
    return True


def _source_kind(source: str) -> Optional[str]:
    """'hub', 'registered', 'classification' or 'segmentation' (a training run or weights file), or None."""
    if source.startswith(_HUB_PREFIXES):
        return "hub"
    if timm.is_model(source) or _is_segmentation_name(source):
        return "registered"
    return _run_kind(Path(source))


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Build the model named on the command line, with its weights, in eval mode."""
    source = args.model
    kind = _source_kind(source)
    if kind not in (None, "registered") and (args.weights or args.pretrained or args.num_classes is not None):
        raise ValueError("--weights, --pretrained and --num-classes apply to registered names, not to saved models.")
    if kind == "registered":
        loaded = _load_registered(args)
    elif kind == "hub":
        loaded = _load_hub(source)
    elif kind is not None:
        loaded = _load_run(Path(source), kind)
    else:
        raise ValueError(
            f"unknown model {source!r}: not a registered name (see `npe-models list`), a training run, "
            "a weights file nor a Hub folder."
        )
    if args.alpha is not None:
        _set_alpha(loaded.model, args.alpha)
    loaded.model.eval()
    return loaded


def add_onnx_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``npe-models export onnx``."""
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, default=None, help="ONNX file to write (default: <model>.onnx)")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                        help="example input size (default: the model's)")
    parser.add_argument("--no-merge", dest="merge", action="store_false",
                        help="export the unmerged NPE-LA graph instead of folding the PEMs into the classifier")
    parser.add_argument("--dynamic-size", action=argparse.BooleanOptionalAction, default=None,
                        help="dynamic height and width (default: on for segmentation, off for classifiers)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--check", action="store_true",
                        help="compare with ONNX Runtime at batch 1 and 3 after exporting (max abs diff <= 1e-4)")
    return parser


def pem_form(metadata: Mapping[str, Any]) -> str:
    """How an export carries its PEMs, from its metadata: 'merged (16 PEMs)', 'unmerged (1 PEM)' or 'no PEMs'."""
    if not metadata.get("num_pems"):
        return "no PEMs"
    count = metadata["num_pems"]
    return f"{'merged' if metadata.get('merged') else 'unmerged'} ({count} PEM{'s' if count != 1 else ''})"


def _default_output(model_arg: str, suffix: str) -> Path:
    name = model_arg.rstrip("/").split("/")[-1].split(":")[-1] or "model"
    return Path(f"{name}{suffix}")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def run_onnx(args: argparse.Namespace) -> int:
    """Export to ONNX as parsed by ``add_onnx_arguments``; optionally check parity. Returns the exit status."""
    try:
        loaded = load_model_from_args(args)
        model = loaded.model
        output = args.output or _default_output(args.model, ".onnx")
        path = export_onnx(
            model, output, input_size=args.input_size, merge=args.merge, dynamic_size=args.dynamic_size,
            opset_version=args.opset, label_names=read_label_names(args.label_names), config=loaded.segmentation_config,
        )
    except (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, ImportError) as error:
        return _fail(str(error))
    metadata = read_onnx_metadata(path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB): {metadata['architecture']}, "
          f"{pem_form(metadata)}, input {metadata['input_size']}, opset {args.opset}")
    if not args.check:
        return 0
    result = check_parity(model, path)
    for (batch, height, width), diff in result.max_abs_diff.items():
        print(f"parity batch {batch} {height}x{width}: max abs diff {diff:.2e} "
              f"(outputs up to {result.max_abs_output[(batch, height, width)]:.2f})")
    print("parity ok" if result.passed else f"parity FAILED: {result.worst:.2e} > {result.atol:.0e}")
    return 0 if result.passed else 1


def key_value_argument(text: str) -> tuple[str, Any]:
    """argparse type for ``KEY=VALUE``: VALUE read as JSON when it parses (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_hub_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``npe-models export hub``."""
    add_model_arguments(parser)
    parser.add_argument("-o", "--output-dir", type=Path, default=None, help="folder to write (config, weights, card)")
    parser.add_argument("--repo-id", default=None, help="ORG/NAME on the Hugging Face Hub (usage snippet; target of --push)")
    parser.add_argument("--push", action="store_true", help="upload to --repo-id (needs a token: HF_TOKEN or --token)")
    parser.add_argument("--token", default=None, help="Hugging Face token (default: huggingface_hub's stored one)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--merge", action="store_true",
                        help="fold the PEMs into the classifier first and save the deployment form under the base name")
    parser.add_argument("--metric", type=key_value_argument, action="append", default=[], metavar="KEY=VALUE",
                        help="evaluation result for the model card, e.g. top1=80.1 many=91 medium=78 few=70 (repeatable)")
    parser.add_argument("--dataset", default=None, help="readable name of the evaluation data, e.g. 'CIFAR-10 test set'")
    parser.add_argument("--dataset-id", default=None, help="Hub dataset id of the evaluation data, e.g. cifar10")
    parser.add_argument("--split", default="test", help="evaluation split (default: test)")
    parser.add_argument("--recipe", type=key_value_argument, action="append", default=[], metavar="KEY=VALUE",
                        help="training setting for the model card, e.g. epochs=200 lr=0.1 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def run_hub(args: argparse.Namespace) -> int:
    """Write (and optionally upload) a Hub folder as parsed by ``add_hub_arguments``. Returns the exit status."""
    from timm.utils import reparameterize_model

    if args.push and not args.repo_id:
        return _fail("--push needs --repo-id ORG/NAME.")
    if not args.push and args.output_dir is None:
        return _fail("give --output-dir DIR, or --push with --repo-id.")
    try:
        loaded = load_model_from_args(args)
        model = reparameterize_model(loaded.model) if args.merge else loaded.model
        save_kwargs = dict(
            label_names=read_label_names(args.label_names), metrics=dict(args.metric) or None,
            dataset=args.dataset, dataset_id=args.dataset_id, split=args.split,
            recipe=dict(args.recipe) or loaded.recipe, config=loaded.segmentation_config,
        )
        if args.output_dir is not None:
            folder = save_for_hub(model, args.output_dir, repo_id=args.repo_id, overwrite=args.overwrite, **save_kwargs)
            print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
        if args.push:
            commit = push_to_hub(model, args.repo_id, token=args.token, private=args.private or None, **save_kwargs)
            print(f"uploaded to {commit.commit_url}")
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError) as error:
        return _fail(str(error))
    return 0
