"""Settings of a segmentation run: which model to build, how to train it and on which data, JSON-serialisable.

:func:`resolve_segmentation_config` is what ``npe-models train`` calls for a segmentation model:
a fresh run's settings, or a resumed run's (from its ``config.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.models import Weights, WeightsEnum

from .._validation import check_number, check_numbers
from ..data import FOLDER_SEGMENTATION_LAYOUTS, SEGMENTATION_DATASETS, check_dataset, resolve_data_dir
from ..data.files import check_file_loading
from ..data.segfolder import segmentation_folder_classes
from ..models.segmentation import DEFAULT_SEGMENTATION_ALPHA, create_segmentation_model, parse_segmentation_model_name
from ..models.unet import UNet_FCN_Weights
from ..npe import DEFAULT_NPE_T, check_npe_alpha, check_npe_t
from ..runs import SerializableConfig, resumable_config
from .augment import AUGMENTATIONS, CropAugmentation

__all__ = [
    "SEGMENTATION_DATASETS",
    "SCHEDULES",
    "SegmentationModelConfig",
    "SegmentationTrainConfig",
    "SegmentationRunConfig",
    "dataset_classes",
    "is_folder_dataset",
    "segmentation_model_config",
    "resolve_segmentation_config",
    "SHIPPED_SEGMENTATION_WEIGHTS",
    "shipped_segmentation_names",
    "shipped_segmentation_weights",
    "pretrained_segmentation_config",
    "shipped_init",
]

SCHEDULES = ("multistep", "poly")


# Range of each numeric setting (see _validation.check_number), checked when a config is built.
_MODEL_NUMBER_RULES: dict[str, dict[str, Any]] = {
    "num_classes": dict(integer=True, minimum=1),
    "num_pems": dict(integer=True, minimum=0),
}
_TRAIN_NUMBER_RULES: dict[str, dict[str, Any]] = {
    "iterations": dict(integer=True, minimum=1),
    "batch_size": dict(integer=True, minimum=1),
    "lr": dict(above=0),
    "momentum": dict(minimum=0, below=1),
    "weight_decay": dict(minimum=0),
    "gamma": dict(above=0),
    "poly_power": dict(above=0),
    "aux_weight": dict(minimum=0),
    "seed": dict(integer=True, minimum=0, below=2**32),
    "checkpoint_every": dict(integer=True, minimum=1),
    "log_every": dict(integer=True, minimum=1),
    "cat_max_ratio": dict(above=0, maximum=1),
}
# The settings of MMSegmentation's pipeline (augment="mmseg"), refused when given with augment="crop".
MMSEG_AUGMENT_SETTINGS = ("scale", "ratio_range", "cat_max_ratio", "photometric")
# Training defaults of a data set, for a fresh run (given settings win): ADE20K trains as MMSegmentation's configs.
_DATASET_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {"ade20k": {"augment": "mmseg", "crop_size": (512, 512)}}


@dataclass
class SegmentationModelConfig(SerializableConfig):
    """What ``create_segmentation_model`` needs to rebuild a model, plus the input normalisation it expects."""

    legacy_names: ClassVar[dict[str, str]] = {"alpha": "npe_alpha", "t": "npe_t"}  # as older run folders hold them

    name: str = "unet_fcn"
    num_classes: int = 2
    num_pems: Optional[int] = None
    pem_type: str = "linear"
    npe_alpha: float = DEFAULT_SEGMENTATION_ALPHA
    npe_t: int = DEFAULT_NPE_T
    aux_loss: Optional[bool] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: Optional[list[str]] = None
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

    def __post_init__(self) -> None:
        check_numbers(self, _MODEL_NUMBER_RULES, optional=("num_pems",))
        check_npe_alpha(self.npe_alpha)  # the NPE head's own checks: the config refuses what the model refuses
        check_npe_t(self.npe_t)

    def build(self, weights: Any = None, weights_backbone: Any = None) -> nn.Module:
        """The model these settings describe (torchvision weights only when passed here)."""
        return create_segmentation_model(
            self.name,
            num_classes=self.num_classes,
            num_pems=self.num_pems,
            pem_type=self.pem_type,
            npe_alpha=self.npe_alpha,
            npe_t=self.npe_t,
            aux_loss=self.aux_loss,
            weights=weights,
            weights_backbone=weights_backbone,
            **self.model_kwargs,
        )


@dataclass
class SegmentationTrainConfig(SerializableConfig):
    """Iteration-based SGD on random crops. Defaults are the paper's PEM schedule on STARE.

    600 iterations, lr 1e-2 divided by 10 at 200 and 400, momentum 0.9, weight decay 5e-4
    (MMSegmentation's STARE recipe), 128x128 crops, frozen backbone. ``schedule="poly"`` decays
    as ``(1 - i / iterations) ** poly_power`` instead (MMSegmentation's baseline schedule).

    ``augment``: ``"crop"`` (default; a uniform crop and ``flip``) or ``"mmseg"``, MMSegmentation's ADE20K pipeline
    (:mod:`~npe_models.segmentation.augment`): rescale by ``scale`` (longer x shorter side bound, default 2048x512)
    times a ratio in ``ratio_range`` (0.5-2.0), crop with ``cat_max_ratio`` (0.75; 1 turns the check off), flip,
    ``photometric`` distortion (on), pad. A fresh ``ade20k`` run defaults to ``"mmseg"`` with 512x512 crops.
    ``workers``: DataLoader processes that decode and augment (default: the CPUs, at most 8, for file data sets; 0
    for STARE's arrays); the batches do not depend on it. ``amp``: the forward pass and loss in bfloat16 autocast
    (``--amp``; on CPU too); ``channels_last``: the model and its inputs in channels-last memory
    (``--channels-last``; off by default: it slows some models in fp32). Both are runtime settings like ``workers``,
    which a resumed run keeps unless given.
    """

    iterations: int = 600
    batch_size: int = 4
    crop_size: tuple[int, int] = (128, 128)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (200, 400)
    gamma: float = 0.1
    poly_power: float = 0.9
    aux_weight: float = 0.4
    freeze_backbone: bool = True
    freeze_decode_head: bool = False
    ignore_index: int = 255
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    augment: str = "crop"
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    workers: Optional[int] = None
    amp: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_numbers(self, _TRAIN_NUMBER_RULES)
        check_file_loading(workers=self.workers)
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        if len(self.scale) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.scale):
            raise ValueError(f"scale must be two positive sizes (longer x shorter side), got {self.scale}.")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {self.ratio_range}.")
        for milestone in self.milestones:
            check_number("milestones", milestone, integer=True, minimum=1)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) with positive sizes, got {self.crop_size}.")

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of ``lr`` during iteration ``iteration`` (0-based)."""
        if self.schedule == "poly":
            return (1 - iteration / self.iterations) ** self.poly_power
        return self.gamma ** sum(iteration >= m for m in self.milestones)

    def augmentation(self) -> CropAugmentation:
        """The per-sample augmentation these settings describe."""
        return CropAugmentation(
            tuple(self.crop_size),
            self.augment,
            self.flip,
            self.ignore_index,
            tuple(self.scale),
            tuple(self.ratio_range),
            self.cat_max_ratio,
            self.photometric,
        )


@dataclass
class SegmentationRunConfig(SerializableConfig):
    """A segmentation run's ``config.json``: the model, its training and the data (with the starting weights).

    ``data`` holds ``dataset``, ``annotation`` (STARE), ``data_dir`` and ``reduce_zero_label`` (the file data sets
    ``seg_folder`` and ``ade20k``), ``images`` (the training images' ids), ``class_pixels`` (labelled training pixels
    per class, which group the classes into Many / Medium / Few) and what the model started from: ``init`` (a
    trained run), ``weights`` / ``weights_backbone`` (torchvision's).
    """

    task: ClassVar[str] = "segmentation"
    may_change: ClassVar[tuple[str, ...]] = (
        "train.iterations",
        "train.checkpoint_every",
        "train.log_every",
        "train.workers",
        "train.amp",
        "train.channels_last",
        "data.data_dir",
        "data.class_pixels",
        "data.init",
        "data.weights",
        "data.weights_backbone",
    )

    model: SegmentationModelConfig = field(default_factory=SegmentationModelConfig)
    train: SegmentationTrainConfig = field(default_factory=SegmentationTrainConfig)
    data: dict[str, Any] = field(default_factory=dict)


def is_folder_dataset(dataset: str) -> bool:
    """Whether segmentation data set ``dataset`` is image and mask files (``seg_folder``, ``ade20k``)."""
    return dataset in FOLDER_SEGMENTATION_LAYOUTS


def dataset_classes(
    dataset: str,
    data_dir: Union[str, Path, None] = None,
    *,
    num_classes: Optional[int] = None,
    ignore_index: int = 255,
    reduce_zero_label: Optional[bool] = None,
) -> tuple[str, ...]:
    """The class names of segmentation data set ``dataset``; a clear error for other names. A ``seg_folder``'s come
    from ``data_dir`` (its class file, ``num_classes``, or its training masks)."""
    check_dataset(dataset, "segmentation")
    if dataset == "seg_folder":
        return tuple(
            segmentation_folder_classes(
                resolve_data_dir(data_dir),
                dataset,
                num_classes=num_classes,
                ignore_index=ignore_index,
                reduce_zero_label=reduce_zero_label,
            )
        )
    classes = SEGMENTATION_DATASETS[dataset]
    if num_classes is not None and num_classes != len(classes):
        raise ValueError(
            f"{dataset} has {len(classes)} classes, not --num-classes {num_classes}; leave --num-classes out, or lay "
            "out a data set with other classes as --dataset seg_folder (with a classes.txt)."
        )
    return classes


def segmentation_model_config(
    name: Optional[str],
    dataset: str = "stare",
    *,
    data_dir: Union[str, Path, None] = None,
    ignore_index: int = 255,
    reduce_zero_label: Optional[bool] = None,
    **settings: Any,
) -> SegmentationModelConfig:
    """The settings of segmentation model ``name`` trained on ``dataset``: its classes unless ``settings`` say
    otherwise (a ``seg_folder``'s classes are read from ``data_dir``).

    ``settings`` are :class:`SegmentationModelConfig` fields (``num_pems``, ``pem_type``, ``npe_alpha``, ``npe_t``,
    ``aux_loss``, ``model_kwargs``, ...).
    """
    if name is None:
        raise ValueError("pass the segmentation model to train (--model), e.g. unet_fcn or unet_fcn_npe1.")
    parse_segmentation_model_name(name)
    classes = dataset_classes(
        dataset,
        data_dir,
        num_classes=settings.get("num_classes"),
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
    )
    return SegmentationModelConfig.from_dict(
        {"num_classes": len(classes), "class_names": list(classes), **settings, "name": name}
    )


# The segmentation weights shipped with the package, by base architecture: loaded offline, sha256 checked.
SHIPPED_SEGMENTATION_WEIGHTS: dict[str, type[WeightsEnum]] = {"unet_fcn": UNet_FCN_Weights}


def shipped_segmentation_names() -> list[str]:
    """The names that load shipped segmentation weights with ``pretrained=True``: ``<name>.<ENTRY>`` for each entry,
    and each default form (``unet_fcn_npe1`` = ``unet_fcn_npe1.STARE_NPE1_FCN``, ``unet_fcn`` = its network)."""
    names = []
    for arch, enum in SHIPPED_SEGMENTATION_WEIGHTS.items():
        for weights in enum:
            trained = weights.meta.get("num_pems", 0)
            base = f"{arch}_npe{trained}" if trained else arch
            names.append(f"{base}.{weights.name}")
            if weights is enum.DEFAULT:
                names.append(base)
    return names


def shipped_segmentation_weights(name: str) -> tuple[str, Weights]:
    """``(model name, weights entry)`` for ``<model>`` (its DEFAULT entry) or ``<model>.<ENTRY>``; a clear error,
    listing what is shipped, for a model without shipped weights or an unknown entry."""
    base, _, entry = name.partition(".")
    arch, num_pems = parse_segmentation_model_name(base)
    enum = SHIPPED_SEGMENTATION_WEIGHTS.get(arch)
    shipped = f"shipped segmentation weights load as {shipped_segmentation_names()} (`npe-models list --pretrained`)"
    if enum is None:
        raise ValueError(
            f"{base} has no shipped weights; {shipped}. Load weights into {base} with weights=FILE (--weights)."
        )
    try:
        weights = enum.verify(entry or "DEFAULT")
    except (KeyError, TypeError):
        entries = [member.name for member in enum]
        raise ValueError(f"{base} has no weights entry {entry!r}; its entries are {entries}; {shipped}.") from None
    trained = weights.meta.get("num_pems", 0)
    if num_pems and trained and num_pems != trained:
        baselines = [f"{base}.{member.name}" for member in enum if not member.meta.get("num_pems", 0)]
        raise ValueError(
            f"{name} has no pretrained weights: {weights.name} holds {trained} trained PEM(s), not {num_pems}; "
            f"name {baselines[0]} for the network with {num_pems} fresh PEMs, or {shipped}."
        )
    return base, weights


def pretrained_segmentation_config(name: str) -> tuple[SegmentationModelConfig, Weights]:
    """The settings of the model ``name`` (``<model>`` or ``<model>.<ENTRY>``) loads with its shipped weights, from
    the weights' meta (classes, normalisation, builder arguments, PEM type), and the weights entry itself."""
    base, weights = shipped_segmentation_weights(name)
    meta = weights.meta
    kwargs = dict(meta["model_kwargs"])
    aux_loss = kwargs.pop("aux_loss", None)
    num_pems = parse_segmentation_model_name(base)[1]
    trained = num_pems and meta.get("num_pems", 0)
    config = SegmentationModelConfig(
        name=base,
        num_classes=len(meta["categories"]),
        num_pems=num_pems,
        pem_type=meta["pem_type"] if trained else "linear",
        aux_loss=aux_loss,
        model_kwargs=kwargs,
        class_names=list(meta["categories"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )
    return config, weights


def shipped_init(init: Optional[str]) -> Optional[tuple[SegmentationModelConfig, Weights]]:
    """The settings and weights entry of ``init`` (``--init``) when it names shipped weights (as ``npe-models list
    --pretrained`` lists them) and no file or folder of that name exists; else None (a run or weights file)."""
    if not init or Path(init).expanduser().exists() or init not in shipped_segmentation_names():
        return None
    return pretrained_segmentation_config(init)


def _shipped_model_settings(init: Optional[str]) -> dict[str, Any]:
    """A fresh run's model defaults from shipped ``init`` weights: the architecture, its builder arguments and input
    normalisation, and the PEM type of trained PEMs (the classes stay the data set's)."""
    shipped = shipped_init(init)
    if shipped is None:
        return {}
    config, weights = shipped
    settings = {key: getattr(config, key) for key in ("name", "model_kwargs", "aux_loss", "mean", "std")}
    if weights.meta.get("num_pems", 0):
        settings["pem_type"] = config.pem_type
    return {key: value for key, value in settings.items() if value is not None}


_DATA_SETTINGS = ("dataset", "annotation", "init", "weights", "weights_backbone", "data_dir", "reduce_zero_label")


def _sections(given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Given settings (``None``: not given) sorted into config.json's sections; ``model`` names the architecture."""
    given = {"name" if key == "model" else key: value for key, value in given.items() if value is not None}
    names = {
        "model": {f.name for f in dataclasses.fields(SegmentationModelConfig)},
        "train": {f.name for f in dataclasses.fields(SegmentationTrainConfig)},
        "data": set(_DATA_SETTINGS),
    }
    unknown = sorted(set(given) - set().union(*names.values()))
    if unknown:
        raise TypeError(f"unknown segmentation settings {unknown}; valid: {sorted(set().union(*names.values()))}.")
    return {section: {k: v for k, v in given.items() if k in keys} for section, keys in names.items()}


def _fresh_data_settings(given: dict[str, Any]) -> dict[str, Any]:
    """A fresh run's data section: STARE's (dataset, annotation, starting weights) as before, a file data set's with
    its folder (absolute) and ``reduce_zero_label`` (the data set's default: on for ADE20K) instead of annotation."""
    dataset = given.get("dataset", "stare")
    check_dataset(dataset, "segmentation")
    starts = {k: given.get(k) for k in ("init", "weights", "weights_backbone")}
    if shipped_init(starts["init"]) is not None and (starts["weights"] or starts["weights_backbone"]):
        raise ValueError(f"--init {starts['init']} loads shipped weights; drop --weights / --weights-backbone.")
    if not is_folder_dataset(dataset):
        if given.get("reduce_zero_label") is not None:
            raise ValueError(f"reduce_zero_label (--reduce-zero-label) applies to file data sets, not {dataset}.")
        return {"dataset": dataset, "annotation": given.get("annotation", "ah"), **starts}
    if given.get("annotation") is not None:
        raise ValueError(f"annotation (--annotation) names STARE's masks; {dataset} has one mask per image.")
    reduce = given.get("reduce_zero_label")
    return {
        "dataset": dataset,
        "data_dir": str(Path(resolve_data_dir(given.get("data_dir"))).expanduser().resolve()),
        "reduce_zero_label": FOLDER_SEGMENTATION_LAYOUTS[dataset][3] if reduce is None else bool(reduce),
        **starts,
    }


def resolve_segmentation_config(out_dir: Union[str, Path], resume: bool, **given: Any) -> SegmentationRunConfig:
    """The settings of the segmentation run in ``out_dir``: with ``resume`` its ``config.json`` updated with
    ``given``, else the defaults (data set stare, annotation ah) updated with them.

    ``given`` holds ``model`` (the architecture name), any :class:`SegmentationModelConfig` or
    :class:`SegmentationTrainConfig` field, and ``dataset``, ``annotation`` (STARE), ``data_dir`` and
    ``reduce_zero_label`` (file data sets), ``init``, ``weights``, ``weights_backbone``; ``None`` values count as
    not given. Changes a resumed run may not make
    are refused when it starts. A fresh ``ade20k`` run defaults to ``augment="mmseg"`` with 512x512 crops; an
    ``init`` naming shipped weights (:func:`shipped_init`) supplies the model's defaults (its architecture too).
    """
    sections = _sections(given)
    if resume:
        base = SegmentationRunConfig.from_dict(resumable_config(out_dir, SegmentationRunConfig.task)).to_dict()
    else:
        data = _fresh_data_settings(sections["data"])
        sections["train"] = {**_DATASET_TRAIN_DEFAULTS.get(data["dataset"], {}), **sections["train"]}
        sections["model"] = {**_shipped_model_settings(data["init"]), **sections["model"]}
        model = sections["model"].pop("name", None)
        model_config = segmentation_model_config(
            model,
            data["dataset"],
            data_dir=data.get("data_dir"),
            ignore_index=sections["train"].get("ignore_index", SegmentationTrainConfig.ignore_index),
            reduce_zero_label=data.get("reduce_zero_label"),
            **sections["model"],
        )
        base = {"model": model_config.to_dict(), "train": {}, "data": data}
    if is_folder_dataset(base["data"]["dataset"]) and sections["data"].get("data_dir"):
        sections["data"]["data_dir"] = str(Path(sections["data"]["data_dir"]).expanduser().resolve())
    else:
        sections["data"].pop("data_dir", None)
    config = SegmentationRunConfig.from_dict({key: {**base[key], **sections[key]} for key in base})
    mmseg_only = [key for key in MMSEG_AUGMENT_SETTINGS if key in sections["train"]]
    if mmseg_only and config.train.augment != "mmseg":
        flags = ", ".join("--" + key.replace("_", "-").replace("photometric", "no-photometric") for key in mmseg_only)
        raise ValueError(f"{flags} set MMSegmentation's pipeline; add --augment mmseg (this run uses crop).")
    return config
