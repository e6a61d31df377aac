"""Long-tailed CIFAR-10/100 (CIFAR-LT) and a fast whole-batch augmentation pipeline.

The long-tailed subsets are built exactly as LDAM-DRW and the NPE reference code build them,
from either torchvision's downloader or the ``train.npz`` / ``test.npz`` array format. Images
stay in memory as uint8 (on the GPU when training there); random crop, flip and
normalisation run on whole batches as tensor operations.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .sampling import check_sampling, epoch_generator, epoch_order, samples_per_rank

__all__ = [
    "CIFAR_NUM_CLASSES",
    "GROUP_NAMES",
    "EXACT_TEST_SUBSET_SIZE",
    "ImageArrays",
    "CifarLT",
    "long_tailed_counts",
    "long_tailed_indices",
    "class_groups",
    "load_cifar",
    "load_cifar_class_names",
    "load_cifar_lt",
    "load_image_npz",
    "BatchStream",
]

CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
GROUP_NAMES = ("many", "medium", "few")
EXACT_TEST_SUBSET_SIZE = 1000
_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ImageArrays:
    """Images ``(N, H, W, 3)`` uint8 and labels ``(N,)`` int64, plus which images are bit-exact (lossless)."""

    images: np.ndarray
    labels: np.ndarray
    exact: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask_or_index: np.ndarray) -> ImageArrays:
        """The images selected by a boolean mask or an index array, in that order."""
        return ImageArrays(self.images[mask_or_index], self.labels[mask_or_index], self.exact[mask_or_index])


class ClassCounts:
    """What every long-tailed data set derives from its per-class training ``counts`` array."""

    counts: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def groups(self) -> np.ndarray:
        """Many / Medium / Few group of each class (0, 1, 2), from the training counts."""
        return class_groups(self.counts)


@dataclass(frozen=True)
class CifarLT(ClassCounts):
    """A long-tailed CIFAR training set, the balanced test set and the per-class training counts."""

    dataset: str
    rho: float
    train: ImageArrays
    test: ImageArrays
    counts: np.ndarray
    jpeg_twins: Optional[ImageArrays] = None
    class_names: Optional[tuple[str, ...]] = None

    @property
    def title(self) -> str:
        return f"{self.dataset}-LT rho={self.rho:g}"

    @property
    def eval_sets(self) -> dict[str, ImageArrays]:
        """The image sets to score: the full test set, its exact (lossless) images, and their JPEG twins if present."""
        sets = {"full": self.test, "exact": self.test.subset(self.test.exact)}
        if self.jpeg_twins is not None:
            sets["jpeg_twins"] = self.jpeg_twins
        return sets

    @property
    def derived_sets(self) -> dict[str, tuple[str, np.ndarray]]:
        """Sets scored as a subset of another set's predictions: the exact images are a mask of the full set."""
        return {"exact": ("full", self.test.exact)}

    def training_batches(self, model: nn.Module, batch_size: int, **options: Any) -> BatchStream:
        """The augmented training stream, normalised with ``model``'s pretrained mean and std."""
        cfg = model.pretrained_cfg
        return BatchStream(self.train, batch_size, cfg["mean"], cfg["std"], train=True, **options)

    def evaluation_batches(self, name: str, model: nn.Module, batch_size: int, **options: Any) -> BatchStream:
        """The batches of evaluation set ``name`` for ``model``."""
        cfg = model.pretrained_cfg
        return BatchStream(self.eval_sets[name], batch_size, cfg["mean"], cfg["std"], train=False, **options)


def _check_rho(rho: float) -> None:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 1:
        raise ValueError(f"rho (the imbalance ratio, largest / smallest class) must be a number >= 1, got {rho!r}.")


def long_tailed_counts(num_classes: int, n_max: int, rho: float) -> list[int]:
    """Images per class of a long-tailed subset: ``int(n_max * (1 / rho) ** (c / (C - 1)))``, class 0 largest."""
    _check_rho(rho)
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"num_classes and n_max must be >= 1, got {num_classes} and {n_max}.")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / rho) ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def long_tailed_indices(
    labels: np.ndarray, rho: float, num_classes: Optional[int] = None, n_max: Optional[int] = None, seed: int = 0
) -> np.ndarray:
    """Indices of the long-tailed subset of a balanced training set, as the reference code selects them.

    A ``RandomState(seed)`` shuffles each class's index list in class order and keeps the first
    ``n_c``; the result is class-major. ``n_max`` defaults to the size of the largest class
    (5,000 for CIFAR-10); a smaller value gives a nested, smaller subset with the same shape.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {labels.shape}.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    per_class = np.bincount(labels, minlength=num_classes)
    n_max = int(per_class.max()) if n_max is None else n_max
    counts = long_tailed_counts(num_classes, n_max, rho)
    rng = np.random.RandomState(seed)
    selected = []
    for cls, count in enumerate(counts):
        if count > per_class[cls]:
            raise ValueError(
                f"class {cls} has {per_class[cls]} training images but the long-tailed subset needs {count}; "
                f"lower n_max (max_per_class) to at most {per_class[cls]}."
            )
        index = np.flatnonzero(labels == cls)
        rng.shuffle(index)
        selected.append(index[:count])
    return np.concatenate(selected)


def class_groups(counts: Sequence[int], many_above: int = 100, few_below: int = 20) -> np.ndarray:
    """Group of each class from its training count: 0 Many (> 100), 1 Medium (20-100), 2 Few (< 20)."""
    counts = np.asarray(counts)
    return np.where(counts > many_above, 0, np.where(counts < few_below, 2, 1))


def _missing_data_message(root: Path, dataset: str) -> str:
    return (
        f"no {dataset} data found in '{root}'. Either pass --download (Python: download=True) to fetch it with "
        f"torchvision into that directory, or point --data-dir (Python: root) at a folder holding train.npz and "
        f"test.npz (arrays x uint8 NHWC and y), or at its parent with a '{dataset}/' subfolder."
    )


def _npz_folder(root: Path, dataset: str) -> Optional[Path]:
    for folder in (root, root / dataset):
        if (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
            return folder
    return None


def _read_npz(path: Path, exact_key: Optional[str], labeled: bool) -> dict[str, np.ndarray]:
    """The arrays of an npz file; a damaged file (truncated, not an npz, arrays missing) is a clear error."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {key: arrays[key] for key in ("x", "y", exact_key) if key and key in arrays.files}
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable npz file ({type(error).__name__}); re-create or re-copy it."
        ) from None
    missing = [key for key in ("x", "y") if key not in found and (key == "x" or labeled)]
    if missing:
        raise ValueError(f"{path} has no array {' or '.join(missing)}; expected x (images) and y (labels).")
    return found


def load_image_npz(path: PathLike, exact_key: Optional[str] = None, labeled: bool = True) -> ImageArrays:
    """Images ``x`` (N, H, W, 3) uint8 and labels ``y`` from an npz file (``y`` optional unless ``labeled``:
    missing labels read as 0), every image marked exact unless ``exact_key`` names a boolean array."""
    path = Path(path)
    found = _read_npz(path, exact_key, labeled)
    images = found["x"]
    labels = found.get("y", np.zeros(len(images), np.int64))
    exact = found.get(exact_key) if exact_key else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"{path}: 'x' must be uint8 images (N, H, W, 3), N >= 1; got {images.dtype} {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images) or (exact is not None and len(exact) != len(images)):
        raise ValueError(
            f"{path}: 'y' must hold one label per image: {len(images)} images but labels of shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'y' must be integer class indices, got {labels.dtype}.")
    exact = np.ones(len(labels), bool) if exact is None else exact.astype(bool)
    return ImageArrays(images, labels.astype(np.int64), exact)


def _load_torchvision(root: Path, dataset: str, train: bool, download: bool) -> ImageArrays:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    try:
        data = cls(str(root), train=train, download=download)
    except (OSError, RuntimeError) as error:  # no network, or incomplete / corrupted files
        raise FileNotFoundError(f"{error}. {_missing_data_message(root, dataset)}") from error
    labels = np.asarray(data.targets, dtype=np.int64)
    # torchvision's files are lossless; the "exact" subset is the official test set's first 1,000
    # images, the same images the npz format marks as lossless, so numbers compare across sources.
    exact = np.ones(len(labels), bool) if train else np.arange(len(labels)) < EXACT_TEST_SUBSET_SIZE
    return ImageArrays(np.ascontiguousarray(data.data), labels, exact)


def _check_dataset(dataset: str) -> None:
    if dataset not in CIFAR_NUM_CLASSES:
        raise ValueError(f"dataset must be one of {sorted(CIFAR_NUM_CLASSES)}, got {dataset!r}.")


def load_cifar(root: PathLike, dataset: str = "cifar10", train: bool = True, download: bool = False) -> ImageArrays:
    """The full CIFAR training or test split from ``root``.

    ``root`` may hold ``train.npz``/``test.npz`` (or a ``<dataset>/`` folder with them), or
    torchvision's extracted files; ``download=True`` fetches the latter when missing. The npz
    test file's ``lossless`` array marks its exact images.
    """
    _check_dataset(dataset)
    root = Path(root).expanduser()
    folder = _npz_folder(root, dataset)
    if folder is not None:
        return load_image_npz(folder / ("train.npz" if train else "test.npz"), None if train else "lossless")
    if download or (root / _TORCHVISION_FOLDERS[dataset]).is_dir():
        return _load_torchvision(root, dataset, train, download)
    raise FileNotFoundError(_missing_data_message(root, dataset))


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler of plain data only: dicts, lists, tuples, strings, bytes and numbers. It resolves no global
    (``find_class`` refuses every name, builtins included), so a pickle cannot call anything while it loads."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and a CIFAR meta file holds only plain data")


def _torchvision_class_names(root: Path, dataset: str) -> Optional[list[str]]:
    """The class names in torchvision's extracted meta file (where torchvision's own ``classes`` come from), read
    without running code: the file comes from the user's folder, so it is unpickled as plain data only."""
    from torchvision.datasets import CIFAR10, CIFAR100

    meta = (CIFAR10 if dataset == "cifar10" else CIFAR100).meta
    path = root / _TORCHVISION_FOLDERS[dataset] / meta["filename"]
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            content = _PlainDataUnpickler(file, encoding="latin1").load()
        return content[meta["key"]]
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(
            f"{path} is not {dataset}'s meta file ({error}); it was not loaded: remove it, or download {dataset} "
            "again with --download."
        ) from None


def _read_classes_json(path: Path) -> list[str]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["classes"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a JSON object with a 'classes' list of names; fix or remove it.") from None


def load_cifar_class_names(root: PathLike, dataset: str = "cifar10") -> Optional[tuple[str, ...]]:
    """The class names, from ``classes.json`` (``{"classes": [...]}``) beside the npz files or torchvision's meta file.

    None when neither is there; a list of the wrong length is a clear error.
    """
    _check_dataset(dataset)
    root = Path(root).expanduser()
    folder = _npz_folder(root, dataset)
    if folder is not None:
        path = folder / "classes.json"
        names = _read_classes_json(path) if path.is_file() else None
    else:
        path = root / _TORCHVISION_FOLDERS[dataset]
        names = _torchvision_class_names(root, dataset)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{path}: expected a list of {dataset}'s class names, got {type(names).__name__}.")
    if len(names) != CIFAR_NUM_CLASSES[dataset] or not all(isinstance(name, str) for name in names):
        raise ValueError(
            f"{path}: expected {CIFAR_NUM_CLASSES[dataset]} class names for {dataset}, got {len(names)}; "
            "fix or remove the file."
        )
    return tuple(names)


def _load_jpeg_twins(root: Path, dataset: str) -> Optional[ImageArrays]:
    """The JPEG copies of the exact test images, when the npz folder provides them."""
    folder = _npz_folder(root, dataset)
    path = folder / "test_jpeg_twins.npz" if folder is not None else None
    if path is None or not path.is_file():
        return None
    twins = load_image_npz(path)
    return ImageArrays(twins.images, twins.labels, np.zeros(len(twins), bool))


def load_cifar_lt(
    root: PathLike,
    dataset: str = "cifar10",
    rho: float = 100.0,
    download: bool = False,
    max_per_class: Optional[int] = None,
) -> CifarLT:
    """CIFAR-10-LT / CIFAR-100-LT with imbalance ratio ``rho`` and the full balanced test set.

    ``max_per_class`` caps the largest class (default: all its images, 5,000 / 500), for quick runs.
    """
    _check_dataset(dataset)
    _check_rho(rho)
    num_classes = CIFAR_NUM_CLASSES[dataset]
    train = load_cifar(root, dataset, train=True, download=download)
    test = load_cifar(root, dataset, train=False, download=download)
    for name, split in (("training", train), ("test", test)):
        if len(split) == 0 or split.labels.min() < 0 or split.labels.max() >= num_classes:
            raise ValueError(f"{dataset} {name} labels must be in 0..{num_classes - 1}; check --data-dir / --dataset.")
    per_class = np.bincount(train.labels, minlength=num_classes)
    if (per_class == 0).any():
        raise ValueError(
            f"the training data in '{root}' has images of only {int((per_class > 0).sum())} of {dataset}'s "
            f"{num_classes} classes; point --data-dir at {dataset} data."
        )
    largest = int(per_class.max())
    n_max = largest if max_per_class is None else max_per_class
    if not 1 <= n_max <= largest:
        raise ValueError(
            f"max_per_class must be in 1..{largest} (the largest class of {dataset}), got {max_per_class}."
        )
    if min(long_tailed_counts(num_classes, n_max, rho)) < 1:
        raise ValueError(
            f"with max_per_class={n_max} and rho={rho:g} the rarest classes get no training image; "
            f"use max_per_class >= {math.ceil(rho)} or a smaller rho."
        )
    subset = train.subset(long_tailed_indices(train.labels, rho, num_classes, n_max))
    counts = np.bincount(subset.labels, minlength=num_classes)
    root = Path(root).expanduser()
    return CifarLT(
        dataset,
        float(rho),
        subset,
        test,
        counts,
        _load_jpeg_twins(root, dataset),
        load_cifar_class_names(root, dataset),
    )


class BatchStream:
    """Batches of normalised float images and labels from an in-memory uint8 image set.

    Training streams shuffle (or sample class-balanced), then apply random crop with zero
    padding and horizontal flip to the whole batch at once by gathering pixels; evaluation
    streams keep the order. Under data parallelism each rank takes its share of one shared
    permutation, so ``batch_size`` is per process.
    """

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        device: Union[str, torch.device] = "cpu",
        sampling: str = "uniform",
        padding: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        check_sampling(sampling)
        if len(data) == 0:
            raise ValueError("the image set is empty.")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.sampling = sampling
        self.padding = padding if train else 0
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.epoch = 0
        images = torch.from_numpy(np.ascontiguousarray(data.images))
        if self.padding:
            images = torch.nn.functional.pad(images, (0, 0, self.padding, self.padding, self.padding, self.padding))
        self.images = images.to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device)
        self.height, self.width = data.images.shape[1:3]
        self._scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, 3, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation the next iteration draws."""
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        if not self.train:
            return len(self.labels)
        return samples_per_rank(len(self.labels), self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _normalise(self, batch: Tensor) -> Tensor:
        """uint8 NHWC -> normalised float NCHW (channels-last memory when requested)."""
        x = batch.permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)
        return x if self.channels_last else x.contiguous()

    def _crop_and_flip(self, index: Tensor, generator: torch.Generator) -> Tensor:
        """Random ``H x W`` crops of the padded images with random horizontal flips, gathered in one indexing op."""
        count = len(index)
        top = torch.randint(2 * self.padding + 1, (count, 1), generator=generator)
        left = torch.randint(2 * self.padding + 1, (count, 1), generator=generator)
        flip = torch.rand(count, 1, generator=generator) < 0.5
        rows = top + torch.arange(self.height)
        columns = torch.arange(self.width)
        columns = left + torch.where(flip, columns.flip(0), columns)
        index, rows, columns = (t.to(self.device, non_blocking=True) for t in (index, rows, columns))
        return self.images[index.view(-1, 1, 1), rows.unsqueeze(2), columns.unsqueeze(1)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:
            for start in range(0, len(self.labels), self.batch_size):
                stop = start + self.batch_size
                yield self._normalise(self.images[start:stop]), self.labels[start:stop]
            return
        order = epoch_order(self.labels.cpu(), self.sampling, self.seed, self.epoch, self.rank, self.world_size)
        augment = epoch_generator(self.seed, self.epoch, 1 + self.rank)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            images = self._crop_and_flip(index, augment)
            yield self._normalise(images), self.labels[index.to(self.device, non_blocking=True)]
