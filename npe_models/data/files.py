"""Long-tailed classification data from image files: ``ImageFolder``-style trees and the published split
lists of ImageNet-LT, Places-LT (Liu et al. 2019) and iNaturalist 2018.

Files are decoded by PIL in DataLoader workers and transformed by timm's train / eval transforms,
built from the model's pretrained cfg (``timm.data.resolve_data_config`` + ``create_transform``).
The epoch order comes from :mod:`npe_models.data.sampling`, as for the in-memory CIFAR source, so
runs resume to the same batches and ``torchrun`` processes split one shared order. Labels keep
the numbering of their list (or the sorted folder names); class counts, and with them the
Many / Medium / Few groups and the training prior, come from the training split.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .cifar import ClassCounts, long_tailed_indices
from .sampling import EpochSampler

__all__ = [
    "IMAGE_LISTS",
    "ImageList",
    "FileLT",
    "FileBatchStream",
    "read_image_list",
    "scan_image_folder",
    "load_image_folder",
    "load_image_lists",
    "image_transform",
    "read_image",
    "to_rgb",
    "READABLE_MODES",
]

PathLike = Union[str, Path]

# Data set -> (file name prefix of its split lists, its class count, its evaluation splits).
IMAGE_LISTS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "imagenet_lt": ("ImageNet_LT", 1000, ("val", "test")),
    "places_lt": ("Places_LT", 365, ("val", "test")),
    "inat2018": ("iNaturalist18", 8142, ("val",)),
}
FOLDER_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageList:
    """Image file paths and their labels; ``source`` is the list file or folder they were read from."""

    paths: tuple[str, ...]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> ImageList:
        return ImageList(tuple(self.paths[i] for i in index), self.labels[index], self.source)


def _parse_list_line(line: str, where: str) -> tuple[str, int]:
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        raise ValueError(f"{where}: expected 'relative/path label', got {line.strip()!r}.")
    return parts[0], int(parts[1])


def read_image_list(path: PathLike, root: PathLike) -> ImageList:
    """A split list (one ``relative/path label`` per line, blank lines skipped) over the images under ``root``."""
    path, root = Path(path), Path(root).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"split list '{path}' does not exist; point --split-dir at the folder holding it.")
    entries = [
        _parse_list_line(line, f"{path}:{number}")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip()
    ]
    if not entries:
        raise ValueError(f"split list '{path}' lists no images.")
    labels = np.array([label for _, label in entries], dtype=np.int64)
    if labels.min() < 0:
        line = int(np.argmax(labels < 0)) + 1
        raise ValueError(f"{path}: label {labels.min()} (entry {line}) is negative; labels are class indices 0..C-1.")
    first = root / entries[0][0]
    if not first.is_file():
        raise FileNotFoundError(
            f"'{first}' (the first image of {path}) does not exist: point --data-dir at the folder its paths are "
            "relative to."
        )
    return ImageList(tuple(str(root / relative) for relative, _ in entries), labels, str(path))


def scan_image_folder(folder: PathLike, classes: Optional[Sequence[str]] = None) -> tuple[ImageList, list[str]]:
    """The images of an ``ImageFolder``-style ``folder`` (``<class>/*``) and its sorted class names.

    With ``classes`` (the training split's), labels follow that list and an unknown class folder is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' is missing: a folder data set has train/<class>/* and val/<class>/*.")
    found, _ = find_classes(folder)
    unknown = sorted(set(found) - set(classes)) if classes is not None else []
    if unknown:
        raise ValueError(f"'{folder}' has class folders the training split lacks: {', '.join(unknown[:5])}.")
    names = list(classes) if classes is not None else found
    samples = make_dataset(
        str(folder),
        {name: i for i, name in enumerate(names) if name in found},
        extensions=IMG_EXTENSIONS,
        allow_empty=True,
    )
    labels = np.array([label for _, label in samples], dtype=np.int64)
    per_class = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in range(len(names)) if names[i] in found and per_class[i] == 0]
    if empty:
        raise ValueError(
            f"'{folder / empty[0]}' has no images ({', '.join(IMG_EXTENSIONS)}); add images or remove the folder."
        )
    return ImageList(tuple(path for path, _ in samples), labels, str(folder)), names


# How each PIL mode reads as 8-bit RGB. The one rule for transparency: alpha is dropped, the colour channels are
# kept as if opaque (what torchvision's and timm's loaders do, so a model sees the same pixels here as there);
# premultiplied modes (RGBa, La) are unpremultiplied first, palette images take their palette colours.
_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit and 32-bit samples, scaled by their range
_VIA_RGBA = ("P", "PA")  # palette images: through RGBA, so a palette with transparency converts without a warning
READABLE_MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "F",
    *_INTEGER_MODES,
)
"""The PIL modes :func:`read_image` reads; a file of another mode is refused with its name."""


def _integer_range(image: Image.Image) -> int:
    """The largest value a sample of an integer image can hold: 65535 for 16-bit modes and for files whose 16-bit
    samples PIL widens to 32-bit (PGM), else what a TIFF declares (bits per sample, signed or not)."""
    if image.mode != "I" or image.format != "TIFF":
        return 65535
    tags = getattr(image, "tag_v2", {})
    bits, sample_format = tags.get(258, 32), tags.get(339, 1)
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    signed = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2
    return 2 ** (bits - 1 if signed else bits) - 1


def _gray_rgb(brightness: np.ndarray) -> Image.Image:
    """Brightness in [0, 1] (clipped) as an 8-bit gray RGB image."""
    values = np.clip(np.rint(brightness * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(values).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its mode (see :data:`READABLE_MODES`).

    16-bit and 32-bit integer images are scaled by the range of their samples (65535 for 16-bit, the bits a TIFF
    declares for 32-bit; negative values read as 0), float images are brightness in [0, 1] (times 255; values
    outside [0, 1] or not finite are an error, as their scale is unknown). Transparency is dropped: RGBA, LA, PA
    and palette images with a transparent colour read as their colour channels (premultiplied RGBa and La are
    unpremultiplied first). Raises ``ValueError`` for another mode.
    """
    mode = image.mode
    if mode in _INTEGER_MODES:
        values = np.asarray(image if mode == "I" else image.convert("I"), dtype=np.float64)
        return _gray_rgb(values / _integer_range(image))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(
                f"a float image with values in [{low:g}, {high:g}], where float images hold brightness in [0, 1]: "
                "scale it to [0, 1] or save it as 8-bit"
            )
        return _gray_rgb(values)
    if mode not in READABLE_MODES:
        raise ValueError(f"PIL mode {mode!r} has no RGB reading here; save it as 8-bit RGB or grayscale")
    if mode == "La":
        image = image.convert("LA")
    elif mode in _VIA_RGBA:
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(path: PathLike) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (every mode read as :func:`to_rgb` says), or a ValueError naming the file
    when PIL cannot decode it or its mode has no RGB reading."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path} ({error}); replace the file or leave it out.") from error


def image_transform(model: nn.Module, train: bool, image_size: Optional[int] = None) -> Any:
    """timm's train or eval transform for ``model``'s pretrained cfg, at ``image_size`` when given."""
    overrides = {"input_size": (3, image_size, image_size)} if image_size else {}
    return create_transform(**resolve_data_config(overrides, model=model), is_training=train)


@contextlib.contextmanager
def _sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Python's and torch's RNG seeded from (seed, epoch, image) inside, restored after: an image's augmentation
    is the same whichever process or worker draws it, so resumed and ``torchrun`` runs see the same images."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        mixed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint32)[0])
        torch.manual_seed(mixed)
        random.seed(mixed)
        try:
            yield
        finally:
            random.setstate(state)


class _ImageFiles(Dataset):
    """Decoded, transformed images; an unreadable file yields its error message instead of raising in a worker.

    Keys are image indices, or ``(index, epoch)`` pairs for augmentations seeded by :func:`_sample_rng`.
    """

    def __init__(self, images: ImageList, transform: Any, seed: int = 0) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[Optional[Tensor], int, str]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        path = self.images.paths[index]
        try:
            rgb = read_image(path)
        except ValueError as error:  # reported by the training process, which names the list or folder
            return None, -1, f"{error} It is part of {self.images.source}."
        if epoch is None:
            return self.transform(rgb), int(self.images.labels[index]), ""
        with _sample_rng(self.seed, epoch, index):
            return self.transform(rgb), int(self.images.labels[index]), ""


class _EpochKeys(EpochSampler):
    """:class:`EpochSampler`'s indices paired with the epoch, the keys of seeded augmentation."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((index, self.epoch) for index in super().__iter__())


def _collate(samples: list[tuple[Optional[Tensor], int, str]]) -> tuple[Optional[Tensor], Tensor, list[str]]:
    errors = [error for _, _, error in samples if error]
    if errors:
        return None, torch.empty(0, dtype=torch.long), errors
    images, labels, _ = zip(*samples)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), []


def default_workers(world_size: int = 1) -> int:
    """DataLoader workers per process: the CPUs this process may use, shared by the processes, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, world_size)))


class FileBatchStream:
    """Batches ``(images, labels)`` on ``device`` from image files, with the interface of ``BatchStream``.

    Training streams draw their epoch from :class:`EpochSampler` (this rank's share of one shared
    order) and seed each image's augmentation from (seed, epoch, image). Evaluation streams keep the list order.
    """

    def __init__(
        self,
        images: ImageList,
        transform: Any,
        batch_size: int,
        *,
        train: bool,
        device: Union[str, torch.device],
        sampling: str = "uniform",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        workers: Optional[int] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.dataset = _ImageFiles(images, transform, seed)
        self.sampler = _EpochKeys(torch.from_numpy(images.labels), sampling, seed, rank, world_size) if train else None
        self.batch_size, self.device, self.channels_last = batch_size, torch.device(device), channels_last
        self.workers = default_workers(world_size) if workers is None else workers

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler if self.sampler is not None else self.dataset) / self.batch_size)

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            self.batch_size,
            sampler=self.sampler,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels, errors in self._loader():
            if errors:
                raise ValueError(errors[0])
            yield (
                images.to(self.device, non_blocking=True, memory_format=memory_format),
                labels.to(self.device, non_blocking=True),
            )


@dataclass(frozen=True)
class FileLT(ClassCounts):
    """A long-tailed training split of image files, its evaluation splits and the per-class training counts."""

    dataset: str
    train: ImageList
    eval_sets: dict[str, ImageList]
    counts: np.ndarray
    class_names: Optional[list[str]] = None
    rho: Optional[float] = None
    image_size: Optional[int] = None
    workers: Optional[int] = None
    derived_sets: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.dataset}" + (f" (long-tailed subset, rho={self.rho:g})" if self.rho else "")

    def training_batches(self, model: nn.Module, batch_size: int, **options: Any) -> FileBatchStream:
        """The training stream for ``model`` (options as :class:`FileBatchStream`'s)."""
        transform = image_transform(model, True, self.image_size)
        return FileBatchStream(self.train, transform, batch_size, train=True, workers=self.workers, **options)

    def evaluation_batches(self, name: str, model: nn.Module, batch_size: int, **options: Any) -> Iterable:
        """The evaluation stream of split ``name`` for ``model``."""
        transform = image_transform(model, False, self.image_size)
        return FileBatchStream(
            self.eval_sets[name], transform, batch_size, train=False, workers=self.workers, **options
        )


def _training_counts(train: ImageList, num_classes: int, names: Optional[Sequence[str]] = None) -> np.ndarray:
    counts = np.bincount(train.labels, minlength=num_classes)
    if (counts == 0).any():
        missing = int(np.argmax(counts == 0))
        label = f"class {missing}" + (f" ({names[missing]})" if names else "")
        raise ValueError(f"{label} has no image in {train.source}; every class needs training images.")
    return counts


def load_image_folder(
    root: PathLike,
    rho: Optional[float] = None,
    max_per_class: Optional[int] = None,
    *,
    image_size: Optional[int] = None,
    workers: Optional[int] = None,
) -> FileLT:
    """An ``ImageFolder``-style tree: ``root/train/<class>/*`` and ``root/val/<class>/*`` (and ``test/`` if present).

    With ``rho``, training takes the long-tailed subset of a balanced ``train/`` as for CIFAR-LT
    (class order = sorted folder names, the first largest); without it, ``train/`` as it is.
    """
    root = Path(root).expanduser()
    train, names = scan_image_folder(root / "train")
    if rho is not None or max_per_class is not None:
        train = train.subset(long_tailed_indices(train.labels, rho or 1.0, len(names), max_per_class))
    splits = [s for s in FOLDER_SPLITS[1:] if (root / s).is_dir()] or ["val"]
    eval_sets = {split: scan_image_folder(root / split, names)[0] for split in splits}
    counts = _training_counts(train, len(names), names)
    return FileLT("folder", train, eval_sets, counts, names, rho, image_size, workers)


def _check_labels(images: ImageList, num_classes: int) -> None:
    if images.labels.max() >= num_classes:
        entry = int(np.argmax(images.labels >= num_classes)) + 1
        raise ValueError(
            f"{images.source}: label {images.labels.max()} (entry {entry}) is outside 0..{num_classes - 1}, the "
            "classes of the training list."
        )


def load_image_lists(
    dataset: str,
    root: PathLike,
    split_dir: Optional[PathLike] = None,
    *,
    image_size: Optional[int] = None,
    workers: Optional[int] = None,
) -> FileLT:
    """ImageNet-LT, Places-LT or iNaturalist 2018 from their split lists (``ImageNet_LT_train.txt``, ...).

    The lists live in ``split_dir`` (default ``root``), their paths relative to ``root``. The class
    count is the training list's (its largest label + 1), so lists over a subset of the classes work;
    an evaluation split whose list is absent is skipped, the training list is required.
    """
    if dataset not in IMAGE_LISTS:
        raise ValueError(f"dataset must be one of {sorted(IMAGE_LISTS)}, got {dataset!r}.")
    prefix, known_classes, eval_splits = IMAGE_LISTS[dataset]
    lists = Path(split_dir or root).expanduser()
    train = read_image_list(lists / f"{prefix}_train.txt", root)
    num_classes = int(train.labels.max()) + 1
    if num_classes > known_classes:
        _check_labels(train, known_classes)
    eval_sets = {
        split: read_image_list(lists / f"{prefix}_{split}.txt", root)
        for split in eval_splits
        if (lists / f"{prefix}_{split}.txt").is_file()
    }
    if not eval_sets:
        names = " or ".join(f"{prefix}_{split}.txt" for split in eval_splits)
        raise FileNotFoundError(f"no evaluation list in '{lists}': expected {names}.")
    for images in eval_sets.values():
        _check_labels(images, num_classes)
    return FileLT(dataset, train, eval_sets, _training_counts(train, num_classes), None, None, image_size, workers)
