"""``npe-models adapt``: a model source and image data in, an adapted model out: read the unlabeled and
calibration images (arrays, CIFAR splits or image folders), estimate the class mix, fold it in, save a Hub
folder and ``prior.json``."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from timm.data import resolve_data_config
from torch import Tensor, nn

from ..classification.evaluate import predict
from ..data import (
    CIFAR_NUM_CLASSES,
    BatchStream,
    ImageArrays,
    load_cifar,
    load_image_npz,
    load_long_tailed,
    long_tailed_indices,
)
from ..data.files import FileBatchStream, image_transform, scan_image_folder
from ..data.scan import ImageList, collect_images
from ..describe import TARGET_PRIOR_KEY, describe_model
from ..distributed import resolve_device
from ..hub import is_hub_folder, save_for_hub
from ..hub.card import markdown_text, visible_text
from ..loading import CLASSIFICATION, LoadedModel, load_model, source_kind
from ..models import is_segmentation_model
from ..outputs import check_output_dir
from ..priors import PriorRecord
from .prior import PRIOR_FLOOR, Calibration, adapt_prior, bbse_prior, check_logits, em_prior, fit_bcts

__all__ = [
    "predict_logits",
    "MIN_UNLABELED_PER_CLASS",
    "MAX_PRIOR_STD",
    "prior_spread",
    "cifar_calibration_set",
    "read_images",
    "read_class_folders",
    "PriorAdaptation",
    "adapt_source",
    "format_adaptation",
]

Images = Union[ImageArrays, ImageList]
logger = logging.getLogger(__name__)
MIN_UNLABELED_PER_CLASS = 10
"""adapt_source refuses fewer unlabeled images than this many per class (on average: 100 for 10 classes); EM on a
handful of images converges to a near one-hot prior, and a bootstrap over so few cannot measure how unstable it is."""
MAX_PRIOR_STD = 0.05
"""adapt_source warns when a bootstrap over the unlabeled images (:func:`prior_spread`) moves some class's estimated
prior by more than this standard deviation: the estimate is too unstable to trust; give more unlabeled images."""
BOOTSTRAP_SAMPLES = 30


def predict_logits(
    model: nn.Module, images: ImageArrays, batch_size: int = 500, device: Union[str, torch.device] = "cpu"
) -> tuple[Tensor, Tensor]:
    """A classifier's deployed logits on in-memory images, and their labels: NPE-LA for NPE models, else plain.

    Normalises with the model's pretrained mean and std and runs
    :func:`npe_models.classification.evaluate.predict`.
    """
    cfg = model.pretrained_cfg
    batches = BatchStream(images, batch_size, cfg["mean"], cfg["std"], train=False, device=device)
    model.to(device)
    predictions = predict(model, batches)
    return predictions.logits.get("npe_la", predictions.logits["plain"]), predictions.labels


def cifar_calibration_set(
    root: Union[str, Path], dataset: str = "cifar10", rho: float = 100.0, per_class: int = 500, seed: int = 0
) -> ImageArrays:
    """Up to ``per_class`` images per class from the CIFAR training images that CIFAR-LT (``rho``) leaves out.

    They come from the training distribution but were never trained on, and the test set stays
    untouched. A class the long-tailed subset uses entirely (class 0, the largest, at
    every rho: all its images are kept) has no such image, so its calibration images are
    training images the model has seen, with a warning: its calibration is optimistic.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    train = load_cifar(root, dataset, train=True)
    used = np.zeros(len(train), bool)
    used[long_tailed_indices(train.labels, rho, CIFAR_NUM_CLASSES[dataset])] = True
    rng = np.random.default_rng(seed)
    chosen, seen = [], []
    for cls in range(CIFAR_NUM_CLASSES[dataset]):
        index = np.flatnonzero((train.labels == cls) & ~used)
        if len(index) == 0:
            index = np.flatnonzero(train.labels == cls)
            seen.append(cls)
        chosen.append(rng.permutation(index)[:per_class])
    if seen:
        warnings.warn(
            f"{dataset}-LT rho={rho:g} keeps every training image of classes {seen}; "
            "their calibration images are training images.",
            stacklevel=2,
        )
    return train.subset(np.concatenate(chosen))


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_class_folders(folder: Union[str, Path], class_names: Optional[Sequence[str]] = None) -> ImageList:
    """Labeled images from a folder of class folders (``folder/<class>/...``), read by the folder data sets' rules
    (:func:`npe_models.data.files.scan_image_folder`), labeled by their index in ``class_names`` (the model's).

    Every class folder must name one of ``class_names`` and every class must have a folder: otherwise a one-line
    error names the unknown or missing classes. Without ``class_names`` the sorted folder names are the classes.
    """
    images, found = scan_image_folder(folder)
    if class_names is None:
        return images
    index = {name: label for label, name in enumerate(class_names)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise ValueError(
            f"calibration folder {folder} has class folders the model does not know: {_names(unknown)}; the model's "
            f"classes are {_names(list(class_names), 10)}: rename those folders to the model's class names or remove "
            "them."
        )
    missing = [name for name in class_names if name not in found]
    if missing:
        raise ValueError(
            f"calibration folder {folder} has no class folder for {_names(missing)}: calibration needs labeled "
            "images of every class the model knows, one folder per class, named as the model's classes."
        )
    labels = np.array([index[found[label]] for label in images.labels], dtype=np.int64)
    return dataclasses.replace(images, labels=labels)


def read_images(
    spec: str,
    data_dir: Union[str, Path],
    *,
    labeled: bool,
    rho: float = 100.0,
    class_names: Optional[Sequence[str]] = None,
) -> Images:
    """The images a DATA spec names: ``cifar10:test`` / ``cifar100:test`` (the test set), ``cifar10:heldout``
    (:func:`cifar_calibration_set` at ``rho``), both from ``data_dir``; an ``.npz`` file with ``x`` (N, H, W, 3)
    uint8 images and ``y`` labels (needed when ``labeled``); or a folder of image files: when ``labeled``, a folder
    of class folders named as ``class_names`` (:func:`read_class_folders`), else any tree of images
    (:func:`npe_models.data.scan.collect_images`: hidden entries and other extensions skipped). Arrays are
    :class:`ImageArrays`, folders an :class:`ImageList` of files, decoded later with the model's eval transform."""
    dataset, _, split = spec.partition(":")
    if dataset in CIFAR_NUM_CLASSES and split == "test":
        return load_cifar(data_dir, dataset, train=False)
    if dataset in CIFAR_NUM_CLASSES and split == "heldout":
        return cifar_calibration_set(data_dir, dataset, rho)
    if Path(spec).expanduser().is_dir():
        if labeled:
            return read_class_folders(Path(spec).expanduser(), class_names)
        files = collect_images([spec])
        if files.skipped:
            logger.warning("unlabeled images %s: %s", spec, files.skipped_summary())
        return ImageList(tuple(map(str, files)), np.zeros(len(files), np.int64), spec)
    if spec.endswith(".npz"):
        return load_image_npz(spec, labeled=labeled)
    what = "a folder of class folders" if labeled else "a folder of images"
    raise ValueError(
        f"data must be cifar10:test, cifar10:heldout (or cifar100:...), an .npz file or {what}, got {spec!r}."
    )


@dataclass(frozen=True)
class PriorAdaptation:
    """What :func:`adapt_source` estimated and wrote: the adapted model, the prior, how and from what."""

    model: nn.Module
    prior: Tensor
    method: str
    calibration: Calibration
    data: str
    out: Path
    class_names: Optional[list[str]] = None
    prior_std: Optional[Tensor] = None
    """Per-class standard deviation of the estimate over a bootstrap of the unlabeled images (:func:`prior_spread`)."""
    warning: Optional[str] = None
    """Why the estimate should not be trusted (its bootstrap spread is above MAX_PRIOR_STD), or None."""


def prior_spread(
    logits: Tensor, estimate: Callable[[Tensor], Tensor], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> Tensor:
    """Per-class standard deviation of ``estimate(logits)`` over ``samples`` bootstrap resamples of the images.

    Each resample draws ``len(logits)`` rows with replacement (seeded by ``seed``); the spread says how much the
    estimated class mix depends on which unlabeled images happened to be drawn.
    """
    logits = check_logits(logits, "logits")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to measure a spread, got {samples}.")
    generator = torch.Generator().manual_seed(seed)
    draws = [estimate(logits[torch.randint(len(logits), (len(logits),), generator=generator)]) for _ in range(samples)]
    return torch.stack(draws).std(0)


def _estimate(
    logits: Tensor,
    cal_logits: Tensor,
    cal_labels: Tensor,
    calibration: Calibration,
    method: str,
    init: Optional[Tensor] = None,
    tol: float = 1e-6,
) -> Tensor:
    """The prior ``method`` estimates; ``init`` and ``tol`` (EM only): start from an earlier estimate (floored), stop
    when no class moves by more than ``tol``."""
    if method == "em":
        return em_prior(calibration(logits), init=None if init is None else init.clamp_min(PRIOR_FLOOR), tol=tol)
    if method == "bbse":
        return bbse_prior(logits, cal_logits, cal_labels)
    raise ValueError(f"method must be 'em' (EM with BCTS) or 'bbse', got {method!r}.")


def _input_size(loaded: LoadedModel) -> tuple[int, int]:
    """The (height, width) the model takes: its run's --image-size, else its pretrained cfg's input size."""
    image_size = loaded.data_settings().get("image_size")
    if image_size:
        return image_size, image_size
    height, width = resolve_data_config({}, model=loaded.model)["input_size"][1:]
    return int(height), int(width)


def _check_image_size(images: Images, size: tuple[int, int], source: str, role: str, spec: str) -> Images:
    """In-memory images go to the model as they are: refuse another size than the model's input (no silent resize).
    Image files pass: the model's eval transform resizes them."""
    found = tuple(images.images.shape[1:3]) if isinstance(images, ImageArrays) else size
    if found != size:
        raise ValueError(
            f"the {role} images of {spec} are {found[0]}x{found[1]}, but {source} takes {size[0]}x{size[1]} images; "
            f"resize them to {size[0]}x{size[1]} first, or give a folder of the image files, which adapt resizes "
            "with the model's eval transform."
        )
    return images


def _model_logits(loaded: LoadedModel, images: Images, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The deployed logits of arrays (as they are) or of image files (read by ``read_image`` and the model's eval
    transform, at its run's --image-size if any, as ``predict`` and evaluation read them), and their labels."""
    if isinstance(images, ImageArrays):
        return predict_logits(loaded.model, images, batch_size, device)
    transform = image_transform(loaded.model, False, loaded.data_settings().get("image_size"))
    loaded.model.to(device)
    predictions = predict(loaded.model, FileBatchStream(images, transform, batch_size, train=False, device=device))
    return predictions.logits.get("npe_la", predictions.logits["plain"]), predictions.labels


def _read_note(images: Images, size: tuple[int, int]) -> str:
    """How the images reached the model, for the record: as they are, or resized by its eval transform."""
    if isinstance(images, ImageArrays):
        return ""
    return f" (image files, resized to {size[0]}x{size[1]} by the model's eval transform)"


def _check_unlabeled_count(count: int, num_classes: int, spec: str) -> None:
    """The minimum-count rule: at least MIN_UNLABELED_PER_CLASS unlabeled images per class, on average."""
    needed = MIN_UNLABELED_PER_CLASS * num_classes
    if count < needed:
        raise ValueError(
            f"{count} unlabeled image{'s' if count != 1 else ''} ({spec}) are too few to estimate the mix of "
            f"{num_classes} classes: adapt needs at least {needed} ({MIN_UNLABELED_PER_CLASS} per class on average), "
            "or the estimate is close to one-hot; give more images from the deployment."
        )


def _instability(spread: Tensor, names: Sequence[str], count: int, spec: str) -> Optional[str]:
    """The warning for a bootstrap spread above MAX_PRIOR_STD, naming the least stable class; None when stable."""
    worst = int(spread.argmax())
    if float(spread[worst]) <= MAX_PRIOR_STD:
        return None
    return (
        f"the estimated class mix is unstable: over {BOOTSTRAP_SAMPLES} bootstrap resamples of the {count} unlabeled "
        f"images of {spec}, the prior of class {visible_text(names[worst])} varies with standard deviation "
        f"{float(spread[worst]):.3f} (adapt warns above {MAX_PRIOR_STD}); give more unlabeled images to trust it."
    )


def _not_a_classifier(source: str, task: str) -> ValueError:
    return ValueError(
        f"{source} is a {task} model; adapt estimates the class mix of whole images and folds it into a classifier's "
        "bias: give a classifier (run directory, checkpoint, pretrained name or Hub folder)."
    )


def _training_prior(loaded: LoadedModel, data_dir: Union[str, Path]) -> Tensor:
    """The training counts of a loaded model, from its run config or pretrained tag, for plain cross-entropy."""
    if loaded.dataset is None:
        raise ValueError(f"{loaded.source} does not record its training data; its training prior is unknown.")
    settings = {"data_dir": data_dir, **loaded.data_settings()}
    data = load_long_tailed(settings.pop("dataset"), settings.pop("data_dir"), **settings)
    return torch.as_tensor(data.counts, dtype=torch.float64)


def _check_request(source: str, source_prior: str, pretrained: bool) -> None:
    """What adapt_source refuses before loading anything: an unknown source prior, a segmentation name, a
    registered name without ``pretrained``."""
    if source_prior not in ("uniform", "train"):
        raise ValueError(
            f"source_prior must be 'uniform' (balanced logits) or 'train' (plain CE), got {source_prior!r}."
        )
    if source_kind(source) == "registered" and is_segmentation_model(source):
        raise _not_a_classifier(source, "segmentation")
    if source_kind(source) == "registered" and not pretrained:
        raise ValueError(f"'{source}' is a model name: pass pretrained=True (--pretrained) to adapt its weights.")


def _save_adapted(
    adapted: nn.Module,
    out: Union[str, Path],
    loaded: LoadedModel,
    source: str,
    method: str,
    data: str,
    *,
    overwrite: bool,
    inputs: Sequence[str],
) -> Path:
    """The adapted model's Hub folder, and beside it ``prior.json``: the prior record with where it came from."""
    folder = save_for_hub(
        adapted,
        out,
        label_names=loaded.class_names,
        overwrite=overwrite,
        inputs=inputs,
        notes=f"Deployment prior folded into the classifier bias: {markdown_text(data)}.",
    )
    recorded = PriorRecord.from_dict(adapted.pretrained_cfg[TARGET_PRIOR_KEY])
    class_names = tuple(loaded.class_names) if loaded.class_names else None
    dataclasses.replace(recorded, method=method, source=str(source), class_names=class_names).write(folder)
    return folder


def _class_names(loaded: LoadedModel) -> list[str]:
    """The model's recorded class names when there is one per class, else the class indices."""
    num_classes = loaded.model.num_classes
    recorded = loaded.class_names if loaded.class_names and len(loaded.class_names) == num_classes else None
    return recorded or [f"{c}" for c in range(num_classes)]


def _read_inputs(
    source: str,
    unlabeled: str,
    calibration: str,
    data_dir: Union[str, Path],
    rho: float,
    size: tuple[int, int],
    names: list[str],
) -> tuple[Images, Images]:
    """The unlabeled and the calibration images, refused unless they have the model's input ``size`` and the
    unlabeled ones are enough for its classes (``names``, one per class)."""
    images = read_images(unlabeled, data_dir, labeled=False, rho=rho)
    _check_image_size(images, size, source, "unlabeled", unlabeled)
    _check_unlabeled_count(len(images), len(names), unlabeled)
    cal_images = read_images(calibration, data_dir, labeled=True, rho=rho, class_names=names)
    _check_image_size(cal_images, size, source, "calibration", calibration)
    return images, cal_images


def adapt_source(
    source: str,
    unlabeled: str,
    calibration: str,
    out: Union[str, Path],
    *,
    pretrained: bool = False,
    method: str = "em",
    source_prior: str = "uniform",
    data_dir: Union[str, Path] = "data",
    rho: float = 100.0,
    batch_size: int = 500,
    device: Union[str, torch.device] = "cpu",
    overwrite: bool = False,
) -> PriorAdaptation:
    """Estimate the class mix of ``unlabeled`` images for a model, fold it in and save a Hub folder plus ``prior.json``.

    ``source`` is anything :func:`npe_models.loading.load_model` loads; ``unlabeled`` and
    ``calibration`` are DATA specs (:func:`read_images`): CIFAR splits, ``.npz`` arrays, or folders of image
    files (any tree for ``unlabeled``; for ``calibration`` one folder per class, named as the model's classes),
    read as ``predict`` and training read them and resized by the model's eval transform. BCTS is fitted on the
    calibration set; ``method`` is ``em`` (EM on the calibrated logits) or ``bbse``. ``source_prior`` says what the
    model's logits are: ``uniform`` (balanced: NPE-LA, LA, post-hoc LA) or ``train`` (plain
    cross-entropy: its training counts, read from its run or pretrained tag).

    The images must have the model's input size (a 64x64 or 4x4 array fed to a 32x32 model gives a meaningless
    prior) and there must be at least ``MIN_UNLABELED_PER_CLASS`` (10) unlabeled images per class on average, or the
    call is refused. A bootstrap over the unlabeled images (:func:`prior_spread`, 30 resamples) measures how stable
    the estimate is: its per-class standard deviation is returned (``prior_std``) and recorded in the notes, and a
    spread above ``MAX_PRIOR_STD`` (0.05) is warned about (``UserWarning`` and ``warning`` in the result).
    """
    _check_request(source, source_prior, pretrained)
    inputs = [source, unlabeled, calibration]  # before any work: --out must not hold them, nor be someone's folder
    check_output_dir(
        out, "Hugging Face Hub folder", is_own=is_hub_folder, overwrite=overwrite, inputs=inputs, option="--out"
    )
    loaded, device = load_model(source, pretrained=pretrained), resolve_device(str(device))
    if loaded.task != CLASSIFICATION:
        raise _not_a_classifier(source, loaded.task)
    train_prior = _training_prior(loaded, data_dir) if source_prior == "train" else None
    size, names = _input_size(loaded), _class_names(loaded)
    images, cal_images = _read_inputs(source, unlabeled, calibration, data_dir, rho, size, names)
    logits, _ = _model_logits(loaded, images, batch_size, device)
    cal_logits, cal_labels = _model_logits(loaded, cal_images, batch_size, device)
    fitted = fit_bcts(cal_logits, cal_labels, source_prior=train_prior)
    prior = _estimate(logits, cal_logits, cal_labels, fitted, method)
    spread = prior_spread(logits, lambda x: _estimate(x, cal_logits, cal_labels, fitted, method, prior, tol=1e-4))
    unstable = _instability(spread, names, len(logits), unlabeled)
    if unstable:
        warnings.warn(unstable, stacklevel=2)
    data = (
        f"{method} on {len(logits)} unlabeled images of {unlabeled}{_read_note(images, size)}, BCTS on "
        f"{len(cal_labels)} of {calibration}{_read_note(cal_images, size)}; bootstrap standard deviation of the prior "
        f"up to {float(spread.max()):.3f}"
    )
    adapted = adapt_prior(loaded.model.cpu(), prior.clamp_min(PRIOR_FLOOR).log(), calibration=fitted, data=data)
    folder = _save_adapted(adapted, out, loaded, source, method, data, overwrite=overwrite, inputs=inputs)
    return PriorAdaptation(adapted, prior, method, fitted, data, folder, loaded.class_names, spread, unstable)


def format_adaptation(result: PriorAdaptation) -> str:
    """The estimated prior per class, the calibration and the files written, for the command line (class names with
    control characters as visible escapes)."""
    names = [visible_text(name) for name in result.class_names] if result.class_names else None
    names = names or [f"class {c}" for c in range(len(result.prior))]
    lines = [f"estimated prior ({result.data}):"]
    spread = [None] * len(names) if result.prior_std is None else result.prior_std.tolist()
    lines += [
        f"  {name:<20} {float(p):.4f}" + ("" if std is None else f" +- {std:.4f}")
        for name, p, std in zip(names, result.prior, spread)
    ]
    if result.warning:
        lines.append(f"warning: {result.warning}")
    lines.append(f"BCTS temperature {result.calibration.temperature:.3f}")
    lines.append(
        f"adapted model (a plain {describe_model(result.model).architecture}, the prior in its bias): "
        f"{result.out} ({', '.join(sorted(p.name for p in result.out.iterdir()))})"
    )
    return "\n".join(lines)
