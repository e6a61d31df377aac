"""Top-k predictions for image files: ``load_image_classifier(source)`` then ``predict_images(classifier, paths)``;
class-index masks from segmentation models: ``predict_masks(source, paths, out_dir)``.

A source is anything :func:`npe_models.load_model` accepts (run directory, checkpoint or
weights file, pretrained name, Hub folder) or an ONNX file written by
:func:`npe_models.onnx.export_onnx`, run with ONNX Runtime. Images are read with PIL and
preprocessed with timm's eval transform for the model's pretrained cfg (for an ONNX file, the
same settings from its metadata), so a prediction here is what the model's evaluation sees.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image
from timm.data import create_transform
from torch import Tensor, nn

from .classification.train import ProgressFactory
from .data.files import image_transform
from .data.images import read_image
from .data.scan import ImageFiles, is_image_file
from .data.scan import collect_images as collect_image_files
from .describe import CLASSIFICATION as _ONNX_CLASSIFICATION
from .describe import SEGMENTATION as _ONNX_SEGMENTATION
from .distributed import resolve_device
from .hub.card import visible_text
from .loading import CLASSIFICATION, SEGMENTATION, LoadedModel, load_model, source_kind
from .models import is_segmentation_model
from .npe import has_pems, set_alpha
from .onnx import INPUT_NAME, onnx_session, read_onnx_metadata
from .segmentation import SegmentationModelConfig
from .segmentation import masks as _masks
from .segmentation.evaluation import dataset_inference
from .segmentation.masks import MaskPrediction

__all__ = [
    "PREDICTION_STYLES",
    "ImageClassifier",
    "ImagePrediction",
    "MaskPrediction",
    "collect_images",
    "load_image_classifier",
    "predict_images",
    "format_predictions",
    "format_masks",
    "predict_masks",
]

PathLike = Union[str, os.PathLike]
PREDICTION_STYLES = ("table", "json", "csv")
logger = logging.getLogger(__name__)
_ONNX_SUFFIX = ".onnx"
_ONNX_DEVICES = (None, "auto", "cpu")
# ONNX files exported before npe-models recorded the eval resize and crop: the whole image resized to the input size.
_ONNX_DEFAULT_PREPROCESSING = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


@dataclass(frozen=True)
class ImagePrediction:
    """The most probable classes of one image."""

    path: Path
    classes: list[tuple[int, str, float]]
    """``(class index, class name, probability)``, most probable first."""


@dataclass(frozen=True)
class ImageClassifier:
    """A classifier ready for image files: its logits function, its eval transform and its class names."""

    logits: Callable[[Tensor], Tensor]
    """Normalised images ``(B, 3, H, W)`` on the CPU -> logits ``(B, C)`` on the CPU."""
    transform: Callable[[Image.Image], Tensor]
    class_names: list[str]

    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax of the logits, in float32."""
        return torch.softmax(self.logits(images).float(), dim=1)


def _is_image_file(path: Path) -> bool:
    return is_image_file(path)


def collect_images(inputs: Iterable[PathLike]) -> ImageFiles:
    """The image files among ``inputs``: files as given, folders searched recursively, by the data sets' rules
    (:func:`npe_models.data.scan.collect_images`: hidden entries, other extensions, symlink loops and files
    reached twice skipped); what was skipped is logged as a warning and kept in the result's ``skipped``."""
    images = collect_image_files(inputs)
    if images.skipped:
        logger.warning("predict: %s", images.skipped_summary())
    return images


def _class_names(names: Optional[Sequence[str]], num_classes: int) -> list[str]:
    """The recorded class names when there is one per class, else the class indices as strings."""
    if names and len(names) == num_classes:
        return [str(name) for name in names]
    return [str(index) for index in range(num_classes)]


def _torch_logits(model: nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The model, moved to ``device``, as a CPU-in, CPU-out logits function without autograd."""
    model.to(device)

    def logits(images: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(images.to(device)).float().cpu()

    return logits


def _not_a_classifier(source: PathLike, task: str) -> ValueError:
    if task == SEGMENTATION:
        return ValueError(f"{source} is a segmentation model: give --out DIR (predict_masks) to write its masks.")
    return ValueError(f"{source} is a {task} model; predict gives the classes of whole images, with classifiers.")


def _check_model_source(source: str, pretrained: bool) -> None:
    """Clear errors for an image given as the model, and for a model name without weights or not a classifier."""
    if _is_image_file(Path(source)):
        raise ValueError(
            f"{source} is an image, not a model: name the model first (run directory, checkpoint, "
            "pretrained name, Hub folder or .onnx file), then the images."
        )
    if source_kind(source) != "registered":
        return
    if is_segmentation_model(source):
        raise _not_a_classifier(source, "segmentation")
    if not pretrained:
        raise ValueError(f"'{source}' is a model name: pass --pretrained (pretrained=True) to use its trained weights.")


def _torch_classifier(
    source: str, pretrained: bool, model_name: Optional[str], alpha: Optional[float], device: Optional[str]
) -> ImageClassifier:
    _check_model_source(source, pretrained)
    loaded = load_model(source, pretrained=pretrained, model_name=model_name)
    if loaded.task != CLASSIFICATION:
        raise _not_a_classifier(source, loaded.task)
    model = loaded.model
    if alpha is not None:
        if not has_pems(model):
            raise ValueError(
                f"{source} has no PEMs (a plain model, or an NPE model merged with its alpha folded "
                "into the classifier), so alpha does not apply; drop it or use an unmerged NPE model."
            )
        set_alpha(model, alpha)
    transform = image_transform(model, train=False)
    logits = _torch_logits(model, resolve_device(device or "auto"))
    return ImageClassifier(logits, transform, _class_names(loaded.class_names, model.num_classes))


def _onnx_alpha_error(path: Path, metadata: dict[str, Any]) -> ValueError:
    """Why an ONNX file's NPE-LA strength cannot be chosen: no PEMs, PEMs merged, or alpha fixed in the graph."""
    if not metadata.get("num_pems"):
        why = "it is a plain model without PEMs"
    elif metadata.get("merged"):
        why = "its PEMs were merged at export, folding alpha into the classifier"
    else:
        why = f"its graph computes NPE-LA at the exported alpha={metadata.get('alpha')}"
    return ValueError(
        f"alpha does not apply to {path}: {why}; export again with the alpha you want "
        "(npe-models export onnx MODEL --alpha A), or predict with the PyTorch model."
    )


def _onnx_data_config(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """timm's eval transform settings from the metadata; old exports lack the resize and crop, and get defaults."""
    missing = [key for key in ("input_size", "mean", "std") if key not in metadata]
    if missing:
        raise ValueError(f"{path} records no {', '.join(missing)} in its metadata; export it with npe-models.")
    recorded = {key: metadata.get(key) for key in _ONNX_DEFAULT_PREPROCESSING if metadata.get(key) is not None}
    return {
        **_ONNX_DEFAULT_PREPROCESSING,
        **recorded,
        "input_size": tuple(metadata["input_size"]),
        "mean": tuple(metadata["mean"]),
        "std": tuple(metadata["std"]),
    }


def _onnx_source_metadata(path: Path, device: Optional[str]) -> dict[str, Any]:
    """The metadata of an ONNX file to predict with; clear errors for a missing or unreadable file or a GPU device."""
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} not found; export one with `npe-models export onnx MODEL -o FILE`.")
    if device not in _ONNX_DEVICES:
        raise ValueError(f"ONNX files run on ONNX Runtime's CPU provider; drop device={device!r} for {path}.")
    try:
        return read_onnx_metadata(path)
    except ImportError:
        raise
    except Exception as error:  # protobuf's DecodeError, among others, for a file that is not ONNX
        raise ValueError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error}).") from error


def _onnx_classifier(path: Path, alpha: Optional[float], device: Optional[str]) -> ImageClassifier:
    metadata = _onnx_source_metadata(path, device)
    if metadata.get("task", _ONNX_CLASSIFICATION) != _ONNX_CLASSIFICATION:
        raise _not_a_classifier(path, metadata["task"])
    if alpha is not None:
        raise _onnx_alpha_error(path, metadata)
    session = onnx_session(path, threads=torch.get_num_threads())

    def logits(images: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])

    num_classes = metadata.get("num_classes") or session.get_outputs()[0].shape[-1]
    transform = create_transform(**_onnx_data_config(path, metadata))
    return ImageClassifier(logits, transform, _class_names(metadata.get("class_names"), num_classes))


def load_image_classifier(
    source: PathLike,
    *,
    pretrained: bool = False,
    model_name: Optional[str] = None,
    npe_alpha: Optional[float] = None,
    device: Optional[str] = None,
) -> ImageClassifier:
    """A classifier for image files from any model source, or an ONNX file (``.onnx``) run by ONNX Runtime.

    ``pretrained`` loads a registered name's pretrained weights (required for a name),
    ``model_name`` names the model of bare weights, ``npe_alpha`` sets the NPE-LA strength of a
    model with unmerged PEMs, ``device`` runs a PyTorch model there (default: auto).
    """
    text = os.fspath(source)
    if text.lower().endswith(_ONNX_SUFFIX):
        if pretrained or model_name is not None:
            raise ValueError(f"pretrained and model_name apply to PyTorch models, not to the ONNX file {text}.")
        return _onnx_classifier(Path(text), npe_alpha, device)
    return _torch_classifier(text, pretrained, model_name, npe_alpha, device)


def _top_classes(probabilities: Tensor, names: Sequence[str], k: int) -> list[list[tuple[int, str, float]]]:
    values, indices = probabilities.topk(k, dim=1)
    return [[(int(i), names[int(i)], float(p)) for p, i in zip(row_p, row_i)] for row_p, row_i in zip(values, indices)]


def predict_images(
    classifier: ImageClassifier,
    inputs: Sequence[PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    progress: Optional[ProgressFactory] = None,
) -> list[ImagePrediction]:
    """The ``top_k`` classes (at most the class count) of each image in ``inputs``: files and folders of images.

    ``progress`` (e.g. ``tqdm.tqdm``) wraps the batches when ``inputs`` include a folder.
    """
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be positive, got top_k={top_k}, batch_size={batch_size}.")
    paths = collect_images(inputs)
    k = min(top_k, len(classifier.class_names))
    batches: Iterable[list[Path]] = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    if progress is not None and any(Path(given).is_dir() for given in inputs):
        batches = progress(batches, total=len(batches), desc="predict", unit="batch", leave=False)
    predictions = []
    for batch in batches:
        images = torch.stack([classifier.transform(read_image(path)) for path in batch])
        top = _top_classes(classifier.probabilities(images), classifier.class_names, k)
        predictions += [ImagePrediction(path, classes) for path, classes in zip(batch, top)]
    return predictions


def _rows(predictions: Iterable[ImagePrediction]) -> list[tuple[str, int, int, str, float]]:
    """One ``(path, rank, index, name, probability)`` row per predicted class."""
    return [
        (str(p.path), rank, index, name, prob)
        for p in predictions
        for rank, (index, name, prob) in enumerate(p.classes, start=1)
    ]


def _table(predictions: Sequence[ImagePrediction]) -> str:
    """Aligned columns for a terminal: paths and class names with control characters as visible escapes."""
    header = ("image", "rank", "class", "probability")
    rows = [
        (visible_text(path), str(rank), visible_text(name), f"{prob:.4f}")
        for path, rank, _, name, prob in _rows(predictions)
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows])
    return "\n".join(lines)


def _csv_line(row: Sequence[Any]) -> str:
    """One CSV record; written with ``\\r\\n`` as the csv module's terminator, so a field holding either character
    is quoted (with ``\\n`` alone a lone ``\\r`` goes unquoted and breaks the reader), then joined with ``\\n``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(row)
    return buffer.getvalue()[: -len("\r\n")]


def _csv(predictions: Sequence[ImagePrediction]) -> str:
    """Exact values, read back by ``csv.reader``: fields with commas, quotes or line breaks are quoted."""
    header = ("path", "rank", "index", "class", "probability")
    return "\n".join(_csv_line(row) for row in [header, *_rows(predictions)])


def _json(predictions: Sequence[ImagePrediction]) -> str:
    records = [
        {
            "path": str(p.path),
            "classes": [{"index": index, "class": name, "probability": prob} for index, name, prob in p.classes],
        }
        for p in predictions
    ]
    return json.dumps(records, indent=2)


_FORMATTERS = {"table": _table, "json": _json, "csv": _csv}


def format_predictions(predictions: Sequence[ImagePrediction], style: str = "table") -> str:
    """Predictions as an aligned text table, a JSON list (one object per image) or CSV (one row per class).

    The table is for a terminal: control characters in paths and class names (from folder names) show as visible
    escapes (``\\n``, ``\\x1b``), one line per class. JSON and CSV keep every name exact."""
    if style not in _FORMATTERS:
        raise ValueError(f"style must be one of {', '.join(PREDICTION_STYLES)}, got {style!r}.")
    return _FORMATTERS[style](predictions)


class _OnnxSegmentation(nn.Module):
    """An exported segmentation graph run by ONNX Runtime, called as a segmentation model: ``{"out": logits}``.

    ``input_multiple`` (the export's metadata) is what its input's height and width must be a multiple of, so
    inference pads images as for the exported model.
    """

    def __init__(self, session: Any, input_multiple: int) -> None:
        super().__init__()
        self.session = session
        self.input_multiple = input_multiple

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"out": torch.from_numpy(self.session.run(None, {INPUT_NAME: images.numpy()})[0])}


def _onnx_segmentation(path: Path, alpha: Optional[float], device: Optional[str]) -> LoadedModel:
    """An ONNX export of a segmentation model, with the settings its metadata records (classes, normalisation)."""
    metadata = _onnx_source_metadata(path, device)
    if metadata.get("task") != _ONNX_SEGMENTATION:
        raise ValueError(f"{path} is a {metadata.get('task', 'classification')} model; drop --out for its classes.")
    if alpha is not None:
        raise _onnx_alpha_error(path, metadata)
    if not metadata.get("dynamic_size"):
        raise ValueError(
            f"{path} takes only {metadata.get('input_size')} inputs; masks of images of any size need an export "
            "with dynamic height and width (npe-models export onnx MODEL --dynamic-size)."
        )
    config = SegmentationModelConfig(
        name=metadata.get("npe_architecture") or metadata["architecture"],
        num_classes=metadata["num_classes"],
        class_names=metadata.get("class_names"),
        mean=tuple(metadata["mean"]),
        std=tuple(metadata["std"]),
    )
    session = onnx_session(path, threads=torch.get_num_threads())
    model = _OnnxSegmentation(session, metadata.get("input_multiple", 1))
    return LoadedModel(model, SEGMENTATION, str(path), segmentation_config=config)


def _segmentation_model(
    source: Union[PathLike, LoadedModel], pretrained: bool, alpha: Optional[float], device: Optional[str]
) -> LoadedModel:
    """The loaded segmentation model ``source`` names (or is), an ONNX file's too; a clear error for a classifier."""
    if isinstance(source, LoadedModel):
        loaded = source
    else:
        text = os.fspath(source)
        if text.lower().endswith(_ONNX_SUFFIX):
            if pretrained:
                raise ValueError(f"pretrained applies to PyTorch models, not to the ONNX file {text}.")
            return _onnx_segmentation(Path(text), alpha, device)
        if _is_image_file(Path(text)):
            raise ValueError(f"{text} is an image, not a model: name the segmentation model first, then the images.")
        if source_kind(text) == "registered" and not pretrained:
            raise ValueError(f"'{text}' is a model name: pass --pretrained (pretrained=True) for its trained weights.")
        loaded = load_model(text, pretrained=pretrained)
    if loaded.task != SEGMENTATION:
        raise ValueError(
            f"{loaded.source} is a {loaded.task} model; masks come from segmentation models "
            "(drop --out for its classes)."
        )
    if loaded.segmentation_config is None:
        raise ValueError(f"{loaded.source} does not record its segmentation settings (classes, normalisation).")
    return loaded


def predict_masks(
    source: Union[PathLike, LoadedModel],
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    pretrained: bool = False,
    npe_alpha: Optional[float] = None,
    mode: Optional[str] = None,
    crop_size: Optional[tuple[int, int]] = None,
    stride: Optional[tuple[int, int]] = None,
    overlays: bool = False,
    overwrite: bool = False,
    device: Optional[str] = None,
    progress: Optional[ProgressFactory] = None,
) -> list[MaskPrediction]:
    """Class-index mask PNGs (mode 'P', the evaluation overlays' palette) of the images in ``inputs`` (files and
    folders), written under ``out_dir`` with the inputs' names (``out_dir/<path below the folder>.png``).

    ``source`` is a segmentation model anything :func:`npe_models.load_model` loads (run directory, weights file,
    Hub folder, a registered name with ``pretrained``), a :class:`~npe_models.loading.LoadedModel`, or an ONNX
    export with dynamic height and width, run by ONNX Runtime at its exported NPE-LA strength.
    ``npe_alpha`` is the NPE-LA strength (default: the model's), ``mode`` / ``crop_size`` / ``stride`` evaluate's
    inference (default: the evaluation defaults of the data set the model was trained on, ADE20K's whole images
    resized to fit 2048x512, else sliding 128x128 windows every 85 pixels), ``overlays`` also writes
    ``out_dir/overlays/<name>.png``. ``out_dir`` follows :mod:`npe_models.outputs` (new, empty or an earlier mask
    prediction replaced with ``overwrite``). See :func:`npe_models.segmentation.masks.predict_masks`.
    """
    loaded = _segmentation_model(source, pretrained, npe_alpha, device)
    images = collect_images(inputs)
    names = _masks.mask_names(images, inputs)
    settings = dataset_inference(loaded.dataset, mode=mode)
    windows = {"crop_size": crop_size, "stride": stride}
    settings.update({key: value for key, value in windows.items() if value is not None})
    return _masks.predict_masks(
        loaded.model,
        loaded.segmentation_config,
        images,
        out_dir,
        names=names,
        npe_alpha=npe_alpha,
        overlays=overlays,
        overwrite=overwrite,
        inputs=[*inputs, loaded.source],
        device="cpu" if isinstance(loaded.model, _OnnxSegmentation) else device or "auto",
        progress=progress if any(Path(given).is_dir() for given in inputs) else None,
        **settings,
    )


def format_masks(predictions: Sequence[MaskPrediction], style: str = "table") -> str:
    """Mask predictions as a JSON list (one object per image: its mask, size and class pixel fractions with the
    class names) or a table (one line per image: the mask and its largest classes)."""
    if style == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2)
    if style != "table":
        raise ValueError(f"masks are listed as a table or JSON, got style {style!r}.")
    lines = []
    for p in predictions:
        top = sorted(p.fractions, key=lambda item: -item[2])[:3]
        shares = ", ".join(f"{visible_text(name)} {fraction:.1%}" for _, name, fraction in top if fraction > 0)
        lines.append(f"{visible_text(str(p.mask))}  {p.size[0]}x{p.size[1]}  {shares}")
    return "\n".join(lines)
