"""Validate ONNX exports with ONNX Runtime: parity with PyTorch, CIFAR-10 accuracy, int8 quantisation.

    python export/onnx_validate.py resnet32_npe16 --weights model.safetensors --quantize
    python export/onnx_validate.py local-dir:hub/resnet32_npe16 --onnx resnet32_npe16.onnx
    python export/onnx_validate.py --sweep            # every registered model, random weights, non-trivial PEMs
    python export/onnx_validate.py --sweep unet_fcn_npe16 --pem-type replica

For one model: export it (or take the existing ``--onnx`` file), compare PyTorch's eval
output with ONNX Runtime's at batch 1 and 3, and for a 10-class classifier evaluate both on
the CIFAR-10 test set (normalised with the model's mean and std); ``--quantize`` adds ONNX
Runtime's int8 dynamic quantisation and its accuracy change.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import timm

import npe_models
from npe_models.export_cli import add_model_arguments, load_model_from_args, pem_form
from npe_models.models.segmentation import list_segmentation_models
from npe_models.onnx import (
    PARITY_ATOL,
    check_parity,
    classification_accuracy,
    export_onnx,
    onnx_predictor,
    onnx_session,
    quantize_int8,
    random_model_for_parity,
    read_onnx_metadata,
    torch_predictor,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEP_MAX_SIZE = 128  # ImageNet models are checked at 128x128: small, yet enough for BatchNorm calibration
SEGMENTATION_SECOND_SIZE = (48, 80)  # segmentation is also checked at a second, non-square size (dynamic H, W)


def _default_data_dir() -> Path:
    return Path(os.environ.get("NPE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def _print_parity(result) -> None:
    for (batch, height, width), diff in result.max_abs_diff.items():
        print(f"  parity batch {batch} {height}x{width}: max abs diff {diff:.2e} "
              f"(outputs up to {result.max_abs_output[(batch, height, width)]:.2f})")
    print(f"  parity {'ok' if result.passed else 'FAILED'} (tolerance {result.atol:.0e})")


def _cifar10_test(data_dir: Path, limit: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    test = np.load(data_dir / "cifar10" / "test.npz")
    images, labels = test["x"], test["y"]
    if limit:
        step = max(1, len(images) // limit)  # the file is class-major: a stride keeps every class
        images, labels = images[::step][:limit], labels[::step][:limit]
    return images, labels


def _evaluate(model, path: Path, args: argparse.Namespace) -> bool:
    """CIFAR-10 accuracy with ONNX Runtime and PyTorch (and int8 with --quantize); True when they match."""
    metadata = read_onnx_metadata(path)
    data_dir = args.data_dir or _default_data_dir()
    if metadata.get("task") != "image-classification" or metadata.get("num_classes") != 10:
        print("  accuracy: skipped (CIFAR-10 evaluation needs a 10-class classifier)")
        return True
    if not (data_dir / "cifar10" / "test.npz").is_file():
        print(f"  accuracy: skipped (no {data_dir / 'cifar10' / 'test.npz'}; pass --data-dir or set NPE_DATA_DIR)")
        return True
    images, labels = _cifar10_test(data_dir, args.limit)
    mean, std = metadata["mean"], metadata["std"]
    onnx_acc, onnx_pred = classification_accuracy(onnx_predictor(onnx_session(path)), images, labels, mean, std)
    torch_acc, torch_pred = classification_accuracy(torch_predictor(model), images, labels, mean, std)
    agree = (onnx_pred == torch_pred).mean() * 100
    matches = abs(onnx_acc - torch_acc) <= 0.1
    print(f"  CIFAR-10 test accuracy on {len(labels)} images: ONNX Runtime {onnx_acc:.2f}%, PyTorch {torch_acc:.2f}% "
          f"({'matches' if matches else 'DIFFERS'}; predictions agree on {agree:.2f}%)")
    if args.quantize:
        quantized = quantize_int8(path, path.with_suffix(".int8.onnx"))
        int8_acc, int8_pred = classification_accuracy(onnx_predictor(onnx_session(quantized)), images, labels, mean, std)
        print(f"  int8 dynamic quantisation: {int8_acc:.2f}% ({int8_acc - onnx_acc:+.2f} points vs fp32 ONNX; "
              f"predictions agree on {(int8_pred == onnx_pred).mean() * 100:.2f}%), "
              f"{os.path.getsize(quantized) / 1e6:.2f} MB vs {os.path.getsize(path) / 1e6:.2f} MB -> {quantized}")
    return matches


def validate_one(args: argparse.Namespace) -> int:
    loaded = load_model_from_args(args)
    model = loaded.model
    with tempfile.TemporaryDirectory(prefix="npe-validate-") as tmp:
        path = Path(args.onnx) if args.onnx else Path(tmp) / "model.onnx"
        if not path.is_file():
            export_onnx(model, path, config=loaded.segmentation_config)
        metadata = read_onnx_metadata(path)
        print(f"{path}: {metadata.get('architecture')} ({pem_form(metadata)}), "
              f"input {metadata.get('input_size')}")
        result = check_parity(model, path)
        _print_parity(result)
        accurate = _evaluate(model, path, args)
    return 0 if result.passed and accurate else 1


def _sweep_model(name: str, pem_type: str):
    """A random model with realistic PEMs, and the image sizes to check it at (two for segmentation: dynamic H, W)."""
    if timm.is_model(name):
        large = timm.models.get_pretrained_cfg(name).input_size[1] > SWEEP_MAX_SIZE
        model, size = random_model_for_parity(name, image_size=SWEEP_MAX_SIZE if large else None)
        return model, size, [size[1:]]
    model, size = random_model_for_parity(name, pem_type=pem_type)
    return model, size, [size[1:], SEGMENTATION_SECOND_SIZE]


def sweep(names: Sequence[str], pem_type: str) -> int:
    """Parity of every named model at random weights with non-trivial PEMs; a table, exit 1 on any failure."""
    failures = 0
    print(f"{'model':36s} {'inputs':>14s} {'batch 1':>9s} {'batch 3':>9s} {'|out|':>7s} {'seconds':>8s}")
    for name in names:
        start = time.perf_counter()
        model, size, image_sizes = _sweep_model(name, pem_type)
        result = check_parity(model, batch_sizes=(1, 3), image_sizes=image_sizes, input_size=size)
        worst = [max(d for (b, _, _), d in result.max_abs_diff.items() if b == batch) for batch in (1, 3)]
        failures += not result.passed
        sizes = ",".join(f"{h}x{w}" for h, w in image_sizes)
        print(f"{name:36s} {sizes:>14s} {worst[0]:9.1e} {worst[1]:9.1e} {max(result.max_abs_output.values()):7.2f} "
              f"{time.perf_counter() - start:8.1f}{'' if result.passed else '  FAILED'}", flush=True)
    print(f"{len(names) - failures}/{len(names)} models within {PARITY_ATOL:.0e}")
    return 1 if failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, required=False)
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file to validate (exported there if missing)")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root holding cifar10/test.npz "
                        "(default: $NPE_DATA_DIR or ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on this many test images (every class kept)")
    parser.add_argument("--quantize", action="store_true", help="also evaluate an int8 dynamically quantised copy")
    parser.add_argument("--sweep", nargs="*", metavar="MODEL", default=None,
                        help="parity of these (default: every registered classifier and segmentation model) at random "
                        "weights with non-trivial PEMs (segmentation: of --pem-type); no accuracy")
    args = parser.parse_args(argv)
    if args.sweep is not None:
        return sweep(args.sweep or npe_models.list_classifiers() + list_segmentation_models(), args.pem_type)
    if args.model is None:
        parser.error("give a model (or --sweep)")
    try:
        return validate_one(args)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
