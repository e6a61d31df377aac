"""ONNX export of NPE models and its check against ONNX Runtime.

``export_onnx`` exports in eval mode after folding the PEMs into the classifier where they
merge (dense ``fcn`` / ``replica`` PEMs do not, and export as the full NPE-LA graph), with
torch's dynamo exporter, into one self-contained file with a dynamic batch axis (and dynamic
height and width for segmentation), checked by ``onnx.checker`` and labelled with metadata
(architecture, classes, alpha, mean, std, input size and the multiple its height and width
must be, eval resize and crop, pretrained tag, model version).
``check_parity`` compares PyTorch's eval output with ONNX Runtime's. What a model is comes from
``npe_models.describe``; random-weight parity models, int8 quantisation and the validation
sweep are release tooling, in ``export/onnx_validate.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .describe import SEGMENTATION, ModelDescription, describe_model
from .outputs import check_output_file
from .segmentation.config import SegmentationModelConfig
from .segmentation.evaluation import input_multiple

__all__ = [
    "MIN_OPSET",
    "PARITY_ATOL",
    "ParityResult",
    "export_onnx",
    "check_parity",
    "read_onnx_metadata",
    "pem_form",
    "onnx_summary",
    "format_parity",
    "onnx_session",
]

MIN_OPSET = 18
PARITY_ATOL = 1e-4
_HALF_PRECISION_RTOL = 2e-3  # float16 models: PyTorch and ONNX Runtime round each op to 11-bit mantissas
INPUT_NAME = "input"
_EXAMPLE_BATCH = 2  # a batch of 1 would let torch.export specialise the batch axis


def _import_optional(name: str) -> Any:
    """Import an ONNX dependency, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{name} is needed for ONNX export and checks: pip install 'npe-models[onnx]'.") from error


def _check_opset(opset_version: int, onnx: Any) -> None:
    """Between the dynamo exporter's floor and the newest opset the installed ``onnx`` knows."""
    newest = onnx.defs.onnx_opset_version()
    if (
        isinstance(opset_version, bool)
        or not isinstance(opset_version, int)
        or not MIN_OPSET <= opset_version <= newest
    ):
        raise ValueError(
            f"opset_version (--opset) must be an integer from {MIN_OPSET} (the dynamo exporter's floor) to {newest} "
            f"(the newest this onnx {onnx.__version__} knows); got {opset_version!r}."
        )


def _check_exported_opset(program: Any, requested: int) -> None:
    """The exporter falls back to its own opset when it cannot convert: report that instead of a wrong file."""
    produced = {entry.domain: entry.version for entry in program.model_proto.opset_import}.get("", requested)
    if produced != requested:
        raise ValueError(
            f"the exporter could not produce opset {requested} (it produced {produced}); use --opset {produced}."
        )


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters: float16 models export with float16 inputs and outputs."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(
            f"a {dtype} model does not export to ONNX (ONNX convolutions have no {dtype} kernels); export "
            "model.float() or model.half()."
        )
    return dtype


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"input_size must be three positive integers (C, H, W), got {input_size!r}.")
    return size  # type: ignore[return-value]


def _writable_target(path: Path) -> Path:
    """Create the output folder if needed; fail before the (slow) export when the file cannot be written."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give the ONNX file name, e.g. {path / 'model.onnx'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise NotADirectoryError(f"cannot write {path}: a file is in the way of its folder {path.parent}.") from error
    except PermissionError as error:
        raise PermissionError(
            f"cannot create {path.parent} for {path}: permission denied; choose a writable location."
        ) from error
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {path.parent} is not writable; choose a writable location.")
    return path


def _deployment_copy(model: nn.Module, merge: bool) -> nn.Module:
    """An eval-mode copy of the model, with PEMs folded in where they merge; the caller's model is untouched."""
    from timm.utils import reparameterize_model

    deployed = reparameterize_model(model, inplace=False) if merge else copy.deepcopy(model)
    return deployed.eval()


_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")  # log every graph rewrite at INFO level


@contextlib.contextmanager
def _quiet_exporter_logs() -> Any:
    """Raise the ONNX exporter's loggers to WARNING for the export, so an INFO-level application log stays readable."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, Tensor):
        return ["logits"]
    if isinstance(outputs, Mapping):
        return list(outputs)
    raise TypeError(f"expected the model to return a Tensor or a dict of Tensors, got {type(outputs).__name__}.")


def _dynamic_shapes(dynamic_size: bool) -> tuple[dict[int, Any]]:
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        dims[2] = torch.export.Dim("height", min=8)
        dims[3] = torch.export.Dim("width", min=8)
    return (dims,)


def _metadata(description: ModelDescription, dynamic_size: bool, input_multiple: int) -> dict[str, str]:
    """ONNX ``metadata_props``: strings, lists as JSON.

    ``input_multiple`` is what the input's height and width must be a multiple of (an smp model's encoder output
    stride, else 1): inference pads an image to it, as it pads for the PyTorch model.

    ``pretrained_tag`` is the tag of the model's ``pretrained_cfg`` (``cifar10_lt_r100_hp2``; timm
    sets the default tag also on a model it built without loading weights). ``model_version`` is
    the npe-models version: shipped weights are bundled with the package, whose manifest pins
    their sha256, so ``architecture`` + ``pretrained_tag`` + ``model_version`` name the exact
    weights, and the same version produced the exported graph (merge, NPE-LA).
    """

    values: dict[str, Any] = {
        "architecture": description.architecture,
        "npe_architecture": description.npe_architecture or "",
        "task": description.task,
        "num_classes": description.num_classes,
        "class_names": list(description.label_names) if description.label_names else None,
        "num_pems": description.num_pems,
        "alpha": description.alpha,
        "t": description.t,
        "merged": description.merged,
        "mean": list(description.mean),
        "std": list(description.std),
        "input_size": list(description.input_size),
        "interpolation": description.interpolation,
        "crop_pct": description.crop_pct,
        "crop_mode": description.crop_mode,
        "dynamic_size": dynamic_size,
        "input_multiple": input_multiple,
        "target_prior": description.target_prior,
        "pretrained_tag": description.pretrained_tag,
        "model_version": __version__,
        "npe_models_version": __version__,
    }
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    input_size: Optional[Sequence[int]] = None,
    merge: bool = True,
    dynamic_size: Optional[bool] = None,
    opset_version: int = MIN_OPSET,
    label_names: Optional[Sequence[str]] = None,
    config: Optional[SegmentationModelConfig] = None,
    overwrite: bool = False,
    inputs: Sequence[Union[str, os.PathLike]] = (),
) -> Path:
    """Export ``model`` to a single ONNX file at ``path`` and return the path.

    ``input_size`` (C, H, W) defaults to the model's configured size; the batch axis is
    always dynamic, height and width when ``dynamic_size`` (default: for segmentation).
    ``merge`` folds mergeable PEMs first. ``config`` describes a segmentation model (see
    ``npe_models.describe.describe_model``). The file is checked with ``onnx.checker`` (full
    check) and written under a temporary name, then renamed into place. Its metadata
    (``read_onnx_metadata``) says what the model is, its pretrained tag and, as
    ``model_version``, the npe-models version that exported it and shipped its weights. An existing ``path`` is
    replaced only when it is an earlier export and ``overwrite`` is set, and never when it is one of ``inputs``.
    """
    onnx = _import_optional("onnx")
    _check_opset(opset_version, onnx)
    _input_dtype(model)
    check_output_file(path, "ONNX export", is_own=_is_npe_export, overwrite=overwrite, inputs=inputs)
    path = _writable_target(Path(path))
    source = describe_model(model, label_names, config)
    size = _check_input_size(input_size if input_size is not None else source.input_size)
    if dynamic_size is None:
        dynamic_size = source.task == SEGMENTATION
    deployed = _deployment_copy(model, merge)
    # the deployed graph names the architecture (the base one once merged); NPE-LA settings come from the source
    description = dataclasses.replace(
        describe_model(deployed, label_names, config), alpha=source.alpha, t=source.t, input_size=size
    )
    example = torch.zeros(_EXAMPLE_BATCH, *size, dtype=_input_dtype(deployed))
    with torch.no_grad():
        output_names = _output_names(deployed(example))
    with _quiet_exporter_logs():
        program = torch.onnx.export(
            deployed,
            (example,),
            dynamo=True,
            verbose=False,
            opset_version=opset_version,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=_dynamic_shapes(dynamic_size),
        )
    _check_exported_opset(program, opset_version)
    program.model.metadata_props.update(_metadata(description, dynamic_size, input_multiple(deployed)))
    program.model.doc_string = f"{description.npe_architecture or description.architecture} exported by npe-models"
    _save_checked(program, path, onnx)
    return path


def _save_checked(program: Any, path: Path, onnx: Any) -> None:
    """Save the exported program under a temporary name, run ``onnx.checker``'s full check on it, then rename it
    to ``path``: a failed export or check leaves no file behind."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        program.save(temporary, external_data=False)
        onnx.checker.check_model(temporary, full_check=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _is_npe_export(path: Path) -> bool:
    """Whether ``path`` is an ONNX file ``export_onnx`` wrote (its metadata names the npe-models version)."""
    try:
        return "npe_models_version" in read_onnx_metadata(path)
    except Exception:  # not ONNX at all (onnx raises DecodeError and others for arbitrary bytes)
        return False


def read_onnx_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The metadata ``export_onnx`` stored, decoded (lists and numbers from JSON)."""
    onnx = _import_optional("onnx")
    model = onnx.load(os.fspath(path), load_external_data=False)
    metadata: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            metadata[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            metadata[prop.key] = prop.value
    return metadata


def pem_form(metadata: Mapping[str, Any]) -> str:
    """How an export carries its PEMs, from its metadata: 'merged (16 PEMs)', 'unmerged (1 PEM)' or 'no PEMs'."""
    if not metadata.get("num_pems"):
        return "no PEMs"
    count = metadata["num_pems"]
    return f"{'merged' if metadata.get('merged') else 'unmerged'} ({count} PEM{'s' if count != 1 else ''})"


def onnx_summary(path: Union[str, os.PathLike]) -> str:
    """One line about an export: file and size, architecture, PEMs, input size and opset."""
    onnx = _import_optional("onnx")
    metadata = read_onnx_metadata(path)
    model = onnx.load(os.fspath(path), load_external_data=False)
    opset = max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    return (
        f"{path} ({os.path.getsize(path) / 1e6:.1f} MB): {metadata.get('architecture')}, {pem_form(metadata)}, "
        f"input {metadata.get('input_size')}, opset {opset}"
    )


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; default: runtime's choice)."""
    onnxruntime = _import_optional("onnxruntime")
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file {path} not found; export one with export_onnx.")
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """PyTorch eval output vs ONNX Runtime output, per input shape ``(batch, height, width)``."""

    atol: float
    max_abs_diff: dict[tuple[int, int, int], float]
    """Largest absolute difference over every output element, per input shape."""
    max_abs_output: dict[tuple[int, int, int], float]
    """Largest absolute PyTorch output value, per input shape: the scale the difference is judged against."""
    onnx_path: Optional[Path] = None

    @property
    def worst(self) -> float:
        """The largest difference over every input shape."""
        return max(self.max_abs_diff.values())

    @property
    def passed(self) -> bool:
        """Every difference within ``atol``."""
        return self.worst <= self.atol


def format_parity(result: ParityResult) -> str:
    """The comparison, one line per input shape, then the verdict against the tolerance."""
    lines = [
        f"parity batch {batch} {height}x{width}: max abs diff {diff:.2e} "
        f"(outputs up to {result.max_abs_output[(batch, height, width)]:.2f})"
        for (batch, height, width), diff in result.max_abs_diff.items()
    ]
    verdict = "parity ok" if result.passed else "parity FAILED"
    lines.append(f"{verdict}: {result.worst:.2e} {'<=' if result.passed else '>'} tolerance {result.atol:.0e}")
    return "\n".join(lines)


def _as_arrays(outputs: Any) -> list[np.ndarray]:
    values = [outputs] if isinstance(outputs, Tensor) else list(outputs.values())
    return [value.detach().cpu().numpy() for value in values]


def _compare(model: nn.Module, session: Any, x: Tensor) -> tuple[float, float]:
    """Largest |PyTorch - ONNX Runtime| over all outputs for input ``x``, and the largest |PyTorch| value."""
    with torch.no_grad():
        expected = _as_arrays(model(x))
    found = session.run(None, {INPUT_NAME: x.numpy()})
    if len(found) != len(expected):
        raise ValueError(f"the ONNX graph has {len(found)} outputs but the model returns {len(expected)}; wrong file?")
    diff = max(float(np.abs(e - f).max()) for e, f in zip(expected, found))
    return diff, max(float(np.abs(e).max()) for e in expected)


def _parity_input_sizes(
    session: Any, metadata: Mapping[str, Any], image_sizes: Optional[Sequence[tuple[int, int]]]
) -> tuple[int, list[tuple[int, int]]]:
    """Channel count and the (H, W) sizes to test: given ones, else the graph's static or recorded size."""
    _, channels, height, width = session.get_inputs()[0].shape
    if image_sizes:
        return channels, [tuple(size) for size in image_sizes]
    if not (isinstance(height, int) and isinstance(width, int)):
        if "input_size" not in metadata:
            raise ValueError("the ONNX input has a dynamic size and no recorded input_size; pass image_sizes=[(H, W)].")
        height, width = metadata["input_size"][1:]
    return channels, [(height, width)]


def check_parity(
    model: nn.Module,
    onnx_path: Optional[Union[str, os.PathLike]] = None,
    *,
    batch_sizes: Sequence[int] = (1, 3),
    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
    atol: float = PARITY_ATOL,
    seed: int = 0,
    **export_kwargs: Any,
) -> ParityResult:
    """Compare ``model``'s eval-mode output with ONNX Runtime's on seeded random inputs.

    Exports to a temporary file first unless ``onnx_path`` names an existing export
    (``export_kwargs`` go to ``export_onnx``). Inputs are every ``batch_sizes`` x
    ``image_sizes`` (default: the model's input size) combination.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}.")
    with tempfile.TemporaryDirectory(prefix="npe-onnx-") as tmp:
        if onnx_path is None:
            path = export_onnx(model, Path(tmp) / "model.onnx", **export_kwargs)
        else:
            path = Path(onnx_path)
        session = onnx_session(path)
        channels, sizes = _parity_input_sizes(session, read_onnx_metadata(path), image_sizes)
        generator = torch.Generator().manual_seed(seed)
        diffs: dict[tuple[int, int, int], float] = {}
        scales: dict[tuple[int, int, int], float] = {}
        was_training = model.training
        model.eval()
        try:
            for batch in batch_sizes:
                for h, w in sizes:
                    x = torch.randn(batch, channels, h, w, generator=generator).to(_input_dtype(model))
                    diffs[(batch, h, w)], scales[(batch, h, w)] = _compare(model, session, x)
        finally:
            model.train(was_training)
    if _input_dtype(model) == torch.float16:
        atol = max(atol, _HALF_PRECISION_RTOL * max(1.0, *scales.values()))
    return ParityResult(
        atol=atol, max_abs_diff=diffs, max_abs_output=scales, onnx_path=Path(onnx_path) if onnx_path else None
    )
