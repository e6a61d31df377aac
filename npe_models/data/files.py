"""Long-tailed classification data from image files: ``ImageFolder``-style trees and the published split
lists of ImageNet-LT, Places-LT (Liu et al. 2019) and iNaturalist 2018.

A folder's image files are gathered by :func:`npe_models.data.scan.collect_images` (the one collection of
image files), read by :func:`npe_models.data.images.read_image` in DataLoader workers, every file's header
checked before training (:func:`npe_models.data.images.check_image_files`), and transformed by timm's train /
eval transforms, built from the model's pretrained cfg (``timm.data.resolve_data_config`` + ``create_transform``).
Split lists are UTF-8, one line per image, each image once. The epoch order comes from
:mod:`npe_models.data.sampling`, as for the in-memory CIFAR source, so runs resume to the same batches and
``torchrun`` processes split one shared order. Labels keep the numbering of their list (or the sorted folder
names); class counts, and with them the Many / Medium / Few groups and the training prior, come from the
training split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._validation import check_number
from .cifar import ClassCounts, long_tailed_indices
from .images import check_image_files, read_image
from .sampling import EpochSampler
from .scan import IMAGE_EXTENSIONS, ImageList, class_folders, collect_images, describe_skipped, merge_skipped

__all__ = [
    "IMAGE_LISTS",
    "FileLT",
    "FileBatchStream",
    "read_image_list",
    "scan_image_folder",
    "load_image_folder",
    "load_image_lists",
    "image_transform",
    "check_file_loading",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Data set -> (file name prefix of its split lists, its class count, its evaluation splits).
IMAGE_LISTS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "imagenet_lt": ("ImageNet_LT", 1000, ("val", "test")),
    "places_lt": ("Places_LT", 365, ("val", "test")),
    "inat2018": ("iNaturalist18", 8142, ("val",)),
}
FOLDER_SPLITS = ("train", "val", "test")


_LABEL = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit() takes '²', which int() refuses
_LARGEST_LABEL = 2**31 - 1  # far above any class count (iNaturalist 2018 has 8,142), inside int64
_SHOWN_LINES = 5  # the repeated or conflicting lines an error names before "..."


def _list_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a split list with their numbers: UTF-8, a byte order mark dropped."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the list as UTF-8."
        ) from None
    lines = (line.rstrip("\r").lstrip("\ufeff") for line in text.split("\n"))  # a BOM inside concatenated lists
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _parse_list_line(line: str, where: str) -> tuple[str, int]:
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
        raise ValueError(
            f"{where}: expected 'relative/path label' (a whole number 0..C-1 as label), got {line.strip()!r}."
        )
    label = int(parts[1])
    if label < 0:
        raise ValueError(f"{where}: label {label} is negative; labels are class indices 0..C-1.")
    if label > _LARGEST_LABEL:
        raise ValueError(f"{where}: label {parts[1]} is too large; labels are class indices 0..C-1.")
    return parts[0], label


def _check_listed_once(path: Path, numbers: list[int], entries: list[tuple[str, int]]) -> None:
    """Each image listed once: a repeated line would count its image twice, one image under two labels is
    ambiguous. The error names the first lines and how many there are."""
    first: dict[str, int] = {}
    repeats, conflicts = [], []
    for at, (relative, label) in enumerate(entries):
        key = os.path.normpath(relative)
        earlier = first.setdefault(key, at)
        if earlier != at:
            (repeats if entries[earlier][1] == label else conflicts).append((earlier, at))
    if conflicts:
        shown = "; ".join(
            f"{entries[b][0]}: line {numbers[a]} says {entries[a][1]}, line {numbers[b]} says {entries[b][1]}"
            for a, b in conflicts[:_SHOWN_LINES]
        )
        more = "; ..." if len(conflicts) > _SHOWN_LINES else ""
        raise ValueError(
            f"{path}: {len(conflicts)} line(s) list an image already listed under another label ({shown}{more}); "
            "an image has one class: remove the wrong lines."
        )
    if repeats:
        shown = ", ".join(f"line {numbers[b]} repeats line {numbers[a]}" for a, b in repeats[:_SHOWN_LINES])
        more = ", ..." if len(repeats) > _SHOWN_LINES else ""
        raise ValueError(
            f"{path}: {len(repeats)} line(s) list an image a second time ({shown}{more}), which would count it "
            "twice: remove the repeated lines."
        )


def read_image_list(path: PathLike, root: PathLike, num_classes: Optional[int] = None) -> ImageList:
    """A split list (one ``relative/path label`` per line, UTF-8, blank lines skipped) over the images under
    ``root``. A malformed line or label, a label from ``num_classes`` on (when given), a repeated image and an
    image under two labels are errors naming the list and its lines."""
    path, root = Path(path), Path(root).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"split list '{path}' does not exist; point --split-dir at the folder holding it.")
    lines = _list_lines(path)
    entries = [_parse_list_line(line, f"{path}:{number}") for number, line in lines]
    if not entries:
        raise ValueError(f"split list '{path}' lists no images.")
    labels = np.array([label for _, label in entries], dtype=np.int64)
    if num_classes is not None:
        _check_labels(ImageList((), labels, str(path)), num_classes)
    _check_listed_once(path, [number for number, _ in lines], entries)
    first = root / entries[0][0]
    if not first.is_file():
        raise FileNotFoundError(
            f"'{first}' (the first image of {path}, line {lines[0][0]}) does not exist: point --data-dir at the folder "
            "its paths are relative to."
        )
    return ImageList(tuple(str(root / relative) for relative, _ in entries), labels, str(path))


def scan_image_folder(folder: PathLike, classes: Optional[Sequence[str]] = None) -> tuple[ImageList, list[str]]:
    """The images of an ``ImageFolder``-style ``folder`` (``<class>/*``, see :func:`collect_images` for what is
    skipped; hidden folders are no class) and its sorted class names; the list's ``skipped`` says what was left out.

    With ``classes`` (the training split's), labels follow that list and an unknown class folder is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' is missing: a folder data set has train/<class>/* and val/<class>/*.")
    found, outside = class_folders(folder)
    unknown = sorted(set(found) - set(classes)) if classes is not None else []
    if unknown:
        raise ValueError(f"'{folder}' has class folders the training split lacks: {', '.join(unknown[:5])}.")
    names = list(classes) if classes is not None else found
    if not found:
        raise ValueError(f"'{folder}' has no class folders ({describe_skipped(outside) or 'it is empty'}).")
    images = collect_images([folder / name for name in found], allow_empty=True)
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[found[origin]] for origin in images.origins], dtype=np.int64)
    per_folder = np.bincount(np.asarray(images.origins, dtype=np.int64), minlength=len(found))
    if (per_folder == 0).any():
        empty = folder / found[int(np.argmax(per_folder == 0))]
        skipped = describe_skipped(
            {reason: tuple(p for p in paths if p.is_relative_to(empty)) for reason, paths in images.skipped.items()}
        )
        raise ValueError(
            f"'{empty}' has no images ({', '.join(IMAGE_EXTENSIONS)}){f'; {skipped}' if skipped else ''}; add "
            "images or remove the folder."
        )
    skipped = merge_skipped(outside, images.skipped)
    return ImageList(tuple(map(str, images.paths)), labels, str(folder), skipped), names


# Upper bounds that no real run reaches, so a typo fails at once and not as a MemoryError or "can't start new
# thread" later: 4096 px is 4x timm's largest pretrained input (1024) and one 4096^2 RGB image is 200 MB as float32
# before any activation; 256 DataLoader worker processes per process outnumber the cores of the largest machines
# (default_workers takes at most 8), and each holds its own copy of the file list.
_LOADING_RULES = {
    "image_size": dict(integer=True, minimum=8, maximum=4096),
    "workers": dict(integer=True, minimum=0, maximum=256),
}


def check_file_loading(image_size: Optional[int] = None, workers: Optional[int] = None) -> None:
    """The one range check of the file data sets' ``image_size`` (``--image-size``) and ``workers`` (``--workers``),
    for training and evaluation alike; ``None`` means the default."""
    for name, value in (("image_size", image_size), ("workers", workers)):
        if value is not None:
            check_number(name, value, **_LOADING_RULES[name])


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

    @property
    def skipped(self) -> dict[str, tuple[Path, ...]]:
        """What the folder scans left out, over all splits: reason (see :data:`SKIP_REASONS`) -> entries."""
        return merge_skipped(self.train.skipped, *(images.skipped for images in self.eval_sets.values()))

    def skipped_summary(self) -> str:
        """One line on what the folder scans left out and why; empty when nothing was (and for split lists)."""
        return describe_skipped(self.skipped)

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
    data = FileLT("folder", train, eval_sets, counts, names, rho, image_size, workers)
    if data.skipped:
        logger.warning("folder data set %s: %s", root, data.skipped_summary())
    check_image_files(train, *eval_sets.values())
    return data


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
    train = read_image_list(lists / f"{prefix}_train.txt", root, known_classes)
    num_classes = int(train.labels.max()) + 1
    eval_sets = {
        split: read_image_list(lists / f"{prefix}_{split}.txt", root, num_classes)
        for split in eval_splits
        if (lists / f"{prefix}_{split}.txt").is_file()
    }
    if not eval_sets:
        names = " or ".join(f"{prefix}_{split}.txt" for split in eval_splits)
        raise FileNotFoundError(f"no evaluation list in '{lists}': expected {names}.")
    check_image_files(train, *eval_sets.values())
    return FileLT(dataset, train, eval_sets, _training_counts(train, num_classes), None, None, image_size, workers)
