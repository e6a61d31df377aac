"""Validate ONNX exports with ONNX Runtime: parity with PyTorch, CIFAR-10 accuracy, int8 quantisation.

    python export/onnx_validate.py resnet32_npe16 --weights model.safetensors --quantize
    python export/onnx_validate.py local-dir:hub/resnet32_npe16 --onnx resnet32_npe16.onnx
    python export/onnx_validate.py --sweep            # every registered model, random weights, non-trivial PEMs
    python export/onnx_validate.py --sweep unet_fcn_npe16 --pem-type replica

For one model: export it (or take the existing ``--onnx`` file), compare PyTorch's eval
output with ONNX Runtime's at batch 1 and 3, and for a 10-class classifier evaluate both on
the CIFAR-10 test set (normalised with the model's mean and std); ``--quantize`` adds ONNX
Runtime's int8 dynamic quantisation and its accuracy change.

Also the release checks' library, imported by the tests and ``benchmarks/bench_onnx.py``:
``random_model_for_parity`` (a registered model at random weights with realistic PEMs and
calibrated BatchNorm, so a numeric comparison means something), ``quantize_int8`` and
``classification_accuracy`` with its ONNX Runtime / PyTorch predictors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import timm
import torch
from torch import Tensor, nn

import npe_models
from npe_models.loading import load_model
from npe_models.models.segmentation import (
    PEM_TYPES,
    create_segmentation_model,
    list_segmentation_models,
    parse_segmentation_model_name,
)
from npe_models.npe import NPEHead, PEMNetworks, has_pems
from npe_models.onnx import (
    INPUT_NAME,
    PARITY_ATOL,
    check_parity,
    export_onnx,
    format_parity,
    onnx_session,
    pem_form,
    read_onnx_metadata,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEP_MAX_SIZE = 128  # ImageNet models are checked at 128x128: small, yet enough for BatchNorm calibration
SEGMENTATION_SECOND_SIZE = (48, 80)  # segmentation is also checked at a second, non-square size (dynamic H, W)
SEGMENTATION_CHECK_SIZE = 64  # random segmentation models are checked at 64x64 by default


@torch.no_grad()
def randomize_pems(model: nn.Module, std: float = 0.5, *, seed: int = 0) -> nn.Module:
    """Give the PEMs realistic, seeded random weights so that NPE-LA visibly changes the output.

    Linear PEMs (``NPEHead``) get weights and biases from N(0, ``std``); the convs of PEM
    networks (``fcn`` / ``replica``) get He-scaled weights N(0, ``std``^2 * 2 / fan_in) and
    N(0, ``std``) biases, so activations keep their scale through the layers. Fresh PEMs start
    at N(0, 0.001), which would let a wrong PEM path pass any numeric check. In place.
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(tensor: Tensor, scale: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)

    found = False
    for module in model.modules():
        if isinstance(module, NPEHead):
            draw(module.pem_weight, std)
            draw(module.pem_bias, std)
        elif isinstance(module, PEMNetworks):
            for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
                draw(conv.weight, std * (2.0 / conv.weight[0].numel()) ** 0.5)
                if conv.bias is not None:
                    draw(conv.bias, std)
        else:
            continue
        found = True
    if not found:
        raise ValueError(f"{type(model).__name__} has no PEMs to randomise (is it merged or a plain model?).")
    return model


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batches: int = 2,
    batch_size: int = 4,
    seed: int = 0,
) -> nn.Module:
    """Set BatchNorm running statistics from a few seeded random train-mode batches.

    At random weights, default running statistics (mean 0, variance 1) let eval-mode
    activations grow with depth; calibrated ones keep them at their train-mode scale, so
    numeric checks see realistic magnitudes. Returns the model, in its original mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(batches):
            model(torch.randn(batch_size, *input_size, generator=generator))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return model


def _build_random(
    name: str, num_classes: int, image_size: Optional[int], model_kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A registered classifier or segmentation model at its initial weights, and the input size to check it at."""
    if timm.is_model(name):
        cfg = timm.models.get_pretrained_cfg(name)
        channels, height, width = cfg.input_size
        kwargs: dict[str, Any] = {"num_classes": num_classes, **model_kwargs}
        if image_size is not None:
            height = width = image_size
            if cfg.fixed_input_size:
                kwargs["img_size"] = image_size
        return timm.create_model(name, **kwargs), (channels, height, width)
    try:
        parse_segmentation_model_name(name)
    except ValueError as error:
        raise ValueError(
            f"unknown model {name!r}: neither a timm classifier nor a segmentation model ({error})"
        ) from error
    size = image_size or SEGMENTATION_CHECK_SIZE
    return create_segmentation_model(name, num_classes=num_classes, **model_kwargs), (3, size, size)


@torch.no_grad()
def _damp_residual_branches(model: nn.Module, scale: float = 0.5) -> None:
    """Scale the last BatchNorm of every torchvision ResNet block by ``scale``.

    With unit-gain residual branches a random 16-block ResNet-50 amplifies rounding about
    100-fold (its fp32 and fp64 logits differ by 2e-4), so no fp32 runtime could match it to
    1e-4; trained networks, and timm's ``zero_init_last``, keep the branches small.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for block in model.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
            last.weight.mul_(scale)


def random_model_for_parity(
    name: str,
    *,
    num_classes: int = 10,
    image_size: Optional[int] = None,
    pem_std: float = 0.5,
    seed: int = 0,
    **model_kwargs: Any,
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A registered model at random weights, fit for numeric checks, and the input size to check it at.

    PEMs are drawn at ``pem_std`` (``randomize_pems``), BatchNorm statistics calibrated
    (``calibrate_batchnorm``) and torchvision ResNet blocks damped (``_damp_residual_branches``),
    so outputs are O(1-10), well conditioned, and NPE-LA visibly changes them.
    ``image_size`` overrides the configured size (fixed-size models such as ViT are built for
    it; segmentation models default to 64x64); ``model_kwargs`` go to the builder.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, size = _build_random(name, num_classes, image_size, model_kwargs)
    if has_pems(model):
        randomize_pems(model, pem_std, seed=seed + 1)
    calibrate_batchnorm(model, size, seed=seed + 2)
    _damp_residual_branches(model)
    return model.eval(), size


def quantize_int8(source: Union[str, os.PathLike], destination: Union[str, os.PathLike]) -> Path:
    """ONNX Runtime int8 dynamic quantisation of ``source`` (weights int8, activations quantised at run time).

    Runs ONNX Runtime's pre-processing (shape inference, graph optimisation) first, keeps
    the metadata, and writes ``destination`` atomically.
    """
    import onnx
    from onnxruntime import quantization

    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise FileNotFoundError(f"ONNX file {source} not found; export one with export_onnx.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npe-quant-", dir=destination.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        quantization.quant_pre_process(str(source), str(prepared))
        quantization.quantize_dynamic(str(prepared), str(quantized), weight_type=quantization.QuantType.QInt8)
        model = onnx.load(str(quantized))
        metadata = {prop.key: prop.value for prop in onnx.load(str(source), load_external_data=False).metadata_props}
        onnx.helper.set_model_props(model, {**metadata, "quantization": "int8-dynamic"})
        onnx.save_model(model, str(quantized))
        os.replace(quantized, destination)
    return destination


def normalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC images to float32 NCHW scaled to [0, 1] and normalised with ``mean`` / ``std``."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} with shape {images.shape}.")
    scaled = images.astype(np.float32) / 255.0
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))


def classification_accuracy(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 250,
) -> tuple[float, np.ndarray]:
    """Top-1 accuracy (%) and the predicted classes of ``predict`` (normalised NCHW batch -> logits)."""
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length.")
    predictions = np.concatenate(
        [
            predict(normalize_images(images[i : i + batch_size], mean, std)).argmax(1)
            for i in range(0, len(images), batch_size)
        ]
    )
    return float((predictions == labels).mean() * 100.0), predictions


def onnx_predictor(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` for ``classification_accuracy`` from an ONNX Runtime session (first output)."""
    return lambda batch: session.run(None, {INPUT_NAME: batch})[0]


def torch_predictor(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` for ``classification_accuracy`` from a PyTorch model, run in eval mode without gradients."""
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    return predict


def _default_data_dir() -> Path:
    return Path(os.environ.get("NPE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


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
    print(
        f"  CIFAR-10 test accuracy on {len(labels)} images: ONNX Runtime {onnx_acc:.2f}%, PyTorch {torch_acc:.2f}% "
        f"({'matches' if matches else 'DIFFERS'}; predictions agree on {agree:.2f}%)"
    )
    if args.quantize:
        quantized = quantize_int8(path, path.with_suffix(".int8.onnx"))
        int8_acc, int8_pred = classification_accuracy(
            onnx_predictor(onnx_session(quantized)), images, labels, mean, std
        )
        print(
            f"  int8 dynamic quantisation: {int8_acc:.2f}% ({int8_acc - onnx_acc:+.2f} points vs fp32 ONNX; "
            f"predictions agree on {(int8_pred == onnx_pred).mean() * 100:.2f}%), "
            f"{os.path.getsize(quantized) / 1e6:.2f} MB vs {os.path.getsize(path) / 1e6:.2f} MB -> {quantized}"
        )
    return matches


def validate_one(args: argparse.Namespace) -> int:
    """Export (or take ``--onnx``), check parity and, for a CIFAR-10 classifier, accuracy; the exit status."""
    loaded = load_model(
        args.model,
        pretrained=args.pretrained,
        num_classes=args.num_classes,
        weights=args.weights,
        pem_type=args.pem_type,
        npe_alpha=args.npe_alpha,
    )
    model = loaded.model
    with tempfile.TemporaryDirectory(prefix="npe-validate-") as tmp:
        path = Path(args.onnx) if args.onnx else Path(tmp) / "model.onnx"
        if not path.is_file():
            export_onnx(model, path, config=loaded.segmentation_config)
        metadata = read_onnx_metadata(path)
        print(f"{path}: {metadata.get('architecture')} ({pem_form(metadata)}), input {metadata.get('input_size')}")
        result = check_parity(model, path)
        print("  " + format_parity(result).replace("\n", "\n  "))
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
        print(
            f"{name:36s} {sizes:>14s} {worst[0]:9.1e} {worst[1]:9.1e} {max(result.max_abs_output.values()):7.2f} "
            f"{time.perf_counter() - start:8.1f}{'' if result.passed else '  FAILED'}",
            flush=True,
        )
    print(f"{len(names) - failures}/{len(names)} models within {PARITY_ATOL:.0e}")
    return 1 if failures else 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model to validate, as ``npe_models.loading.load_model`` takes it."""
    parser.add_argument(
        "model",
        nargs="?",
        help="registered name[.tag], run directory, weights file, Hub folder, local-dir:DIR or hf-hub:ORG/NAME",
    )
    parser.add_argument("--pretrained", action="store_true", help="load the registered name's pretrained weights")
    parser.add_argument("--weights", type=Path, help="weights for a registered name (.safetensors or state dict)")
    parser.add_argument("--num-classes", type=int, help="class count for a registered name")
    parser.add_argument("--pem-type", choices=PEM_TYPES, help="PEMs of a segmentation name (default: linear)")
    parser.add_argument(
        "--npe-alpha", "--alpha", dest="npe_alpha", type=float, help="NPE-LA strength (default: the model's)"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_arguments(parser)
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file to validate (exported there if missing)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data root holding cifar10/test.npz (default: $NPE_DATA_DIR or ../shared/data)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate on this many test images (every class kept)")
    parser.add_argument("--quantize", action="store_true", help="also evaluate an int8 dynamically quantised copy")
    parser.add_argument(
        "--sweep",
        nargs="*",
        metavar="MODEL",
        default=None,
        help="parity of these (default: every registered classifier and segmentation model) at random "
        "weights with non-trivial PEMs (segmentation: of --pem-type); no accuracy",
    )
    args = parser.parse_args(argv)
    if args.sweep is not None:
        return sweep(
            args.sweep or npe_models.list_classifiers() + list_segmentation_models(), args.pem_type or "linear"
        )
    if args.model is None:
        parser.error("give a model (or --sweep)")
    try:
        return validate_one(args)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
