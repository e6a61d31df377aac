"""Segmentation data from image files: a ``seg_folder`` tree of images and class-index masks, and ADE20K.

``seg_folder``: ``ROOT/images/{train,val}/NAME.*`` with ``ROOT/masks/{train,val}/NAME.png`` (same relative path and
name, any image extension for the image, PNG for the mask). ADE20K: the ``ADEChallengeData2016`` layout,
``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``, its 150 classes, zero label
reduced. Images are gathered by :func:`collect_images` (hidden entries and other extensions skipped) and read to
8-bit RGB by :func:`read_image` (every PIL mode); masks are read as class indices: 8-bit grayscale (``L``), palette
(``P``, read as its indices, not its colours), 16-bit or 32-bit integer PNGs. An RGB colour mask is refused.

Labels: with ``reduce_zero_label`` (ADE20K's convention, as MMSegmentation does) label 0 becomes the ignore index
and every other label shifts down by one; the ignore index (default 255) stays ignored. Class names come from
``classes.txt`` (one per line) or ``classes.json`` (a JSON list) in the root, else ``class 0 .. class C-1`` with C
the given class count, or the training masks' largest label + 1.

Everything is checked when a split is opened, before any training: every image's header, every mask decoded
(its mode, its size against its image's, its values), an image without a mask or a mask without an image, an
empty split; each problem is a one-line error naming the file. The per-class pixel counts of the split
(:attr:`SegmentationFolder.class_pixels`) come from the same pass. Each mask's summary is kept for the process (keyed
by both files' size and modification time), so a command that opens a split twice (its classes, then its training)
decodes each mask once.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .images import check_image_files, read_image
from .scan import ImageList, collect_images, describe_skipped

__all__ = [
    "ADE20K_CLASSES",
    "FOLDER_SEGMENTATION_LAYOUTS",
    "MASK_MODES",
    "SegmentationFolder",
    "read_class_names",
    "read_mask",
    "segmentation_folder_classes",
]

PathLike = Union[str, Path]

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 classes of ADE20K's SceneParsing benchmark (ADEChallengeData2016), in label order 1..150 (0 is "other",
ignored), as MMSegmentation's ``ADE20KDataset`` names them."""

# Layout -> (images folder, masks folder, split -> folder name, reduce_zero_label by default).
FOLDER_SEGMENTATION_LAYOUTS: dict[str, tuple[str, str, dict[str, str], bool]] = {
    "seg_folder": ("images", "masks", {"train": "train", "val": "val"}, False),
    "ade20k": ("images", "annotations", {"train": "training", "val": "validation"}, True),
}
MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
"""The PIL modes read as class-index masks (a palette mask as its indices)."""
_CLASS_FILES = ("classes.txt", "classes.json")
_LARGEST_MASK_VALUE = 65535


def read_class_names(root: PathLike) -> Optional[list[str]]:
    """The class names in ``root/classes.txt`` (one per non-blank line) or ``root/classes.json`` (a JSON list of
    strings), or None when neither exists."""
    root = Path(root)
    text_file, json_file = (root / name for name in _CLASS_FILES)
    if text_file.is_file():
        names = [line.strip() for line in text_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    elif json_file.is_file():
        try:
            names = json.loads(json_file.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{json_file} is not valid JSON ({error}); write a JSON list of class names.") from None
        if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"{json_file} must hold a JSON list of non-empty class names (strings).")
    else:
        return None
    source = text_file if text_file.is_file() else json_file
    if not names:
        raise ValueError(f"{source} names no class; write one class name per line (or a JSON list).")
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"{source} names class {repeated!r} twice; each class once.")
    return names


def read_mask(path: PathLike) -> np.ndarray:
    """The class indices of the mask at ``path`` as an ``(H, W)`` int64 array, or a ValueError naming the file: a
    colour (RGB) mask, a mode without indices, or a file PIL cannot decode."""
    try:
        with Image.open(path) as mask:
            mode = mask.mode
            if mode not in MASK_MODES:
                kind = "an RGB colour mask" if mode.startswith("RGB") else f"a mask of PIL mode {mode!r}"
                raise ValueError(
                    f"{kind}, where class indices are expected: save it as an 8-bit grayscale (L) or palette (P) PNG "
                    "whose pixel values are the class indices"
                )
            values = np.asarray(mask, dtype=np.int64)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read mask {path} ({error}).") from None
    if values.size and (int(values.min()) < 0 or int(values.max()) > _LARGEST_MASK_VALUE):
        raise ValueError(f"mask {path} holds value {int(values.min())}..{int(values.max())}, outside 0..65535.")
    return values


def _label_map(reduce_zero_label: bool, ignore_index: int, largest: int) -> np.ndarray:
    """Raw mask value -> label, for values 0..largest: identity, or with ``reduce_zero_label`` 0 -> ignore and v ->
    v - 1 (the ignore index itself stays ignored)."""
    values = np.arange(largest + 1, dtype=np.int64)
    if not reduce_zero_label:
        return values
    labels = values - 1
    labels[0] = ignore_index
    if 0 <= ignore_index <= largest:
        labels[ignore_index] = ignore_index
    return labels


def _file_stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file, or (-1, -1) when it cannot be read (reported when decoded)."""
    try:
        status = os.stat(path)
    except OSError:
        return -1, -1
    return status.st_size, status.st_mtime_ns


def _mask_summary(pair: tuple[str, str]) -> tuple[Optional[str], Optional[np.ndarray]]:
    """(error, raw value histogram) of one (image, mask) pair; a pair whose files are unchanged since an earlier
    call in this process is not decoded again."""
    return _summary_of_files(*pair, _file_stamp(pair[0]), _file_stamp(pair[1]))


@functools.lru_cache(maxsize=1 << 17)
def _summary_of_files(
    image_path: str, mask_path: str, image_stamp: tuple[int, int], mask_stamp: tuple[int, int]
) -> tuple[Optional[str], Optional[np.ndarray]]:
    """(error, raw value histogram) of one (image, mask) pair: the mask read, its size against the image's; the
    stamps key the cache."""
    try:
        values = read_mask(mask_path)
    except ValueError as error:
        return str(error), None
    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"cannot read image {image_path} ({error}).", None
    if values.shape != (height, width):
        return (
            f"mask {mask_path} is {values.shape[1]}x{values.shape[0]} (width x height) but its image {image_path} is "
            f"{width}x{height}; a mask must have its image's size.",
            None,
        )
    return None, np.bincount(values.ravel(), minlength=1).astype(np.int32)  # int32: a smaller cache


def _threads() -> int:
    return min(16, 2 * (os.cpu_count() or 1))


class SegmentationFolder(Dataset):
    """One split of a folder segmentation data set: images ``(3, H, W)`` uint8 and masks ``(H, W)`` int64 labels.

    ``layout`` is ``"seg_folder"`` or ``"ade20k"`` (see the module's docstring); ``split`` ``"train"`` or ``"val"``.
    ``num_classes`` / ``class_names`` fix the classes (else the root's class file, else the masks' largest label
    + 1); ``reduce_zero_label`` defaults to the layout's (on for ADE20K). Opening a split checks every file (see the
    module's docstring). ``ids`` are the images' paths relative to the split folder without extension,
    ``class_pixels`` the labelled pixels of each class in the split, ``image_sizes`` each image's (height, width).
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        layout: str = "seg_folder",
        *,
        num_classes: Optional[int] = None,
        class_names: Optional[list[str]] = None,
        ignore_index: int = 255,
        reduce_zero_label: Optional[bool] = None,
    ) -> None:
        if layout not in FOLDER_SEGMENTATION_LAYOUTS:
            raise ValueError(f"layout must be one of {tuple(FOLDER_SEGMENTATION_LAYOUTS)}, got {layout!r}.")
        image_folder, mask_folder, splits, reduce_default = FOLDER_SEGMENTATION_LAYOUTS[layout]
        if split not in splits:
            raise ValueError(f"split must be one of {tuple(splits)}, got {split!r}.")
        self.root, self.split, self.layout = Path(root).expanduser(), split, layout
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = reduce_default if reduce_zero_label is None else bool(reduce_zero_label)
        self.classes = self._classes(num_classes, class_names)
        images_dir = self.root / image_folder / splits[split]
        masks_dir = self.root / mask_folder / splits[split]
        pairs = self._pairs(images_dir, masks_dir)
        self.ids = list(pairs)
        self.image_paths = [pairs[name][0] for name in self.ids]
        self.mask_paths = [pairs[name][1] for name in self.ids]
        check_image_files(ImageList(tuple(self.image_paths), np.zeros(len(self.ids), np.int64), str(images_dir)))
        self.class_pixels = self._scan_masks()

    def _classes(self, num_classes: Optional[int], class_names: Optional[list[str]]) -> Optional[list[str]]:
        if class_names is None and self.layout == "ade20k":
            class_names = list(ADE20K_CLASSES)
        if class_names is None:
            class_names = read_class_names(self.root)
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(
                f"{self.root} names {len(class_names)} classes but num_classes (--num-classes) is {num_classes}."
            )
        if class_names is None and num_classes is not None:
            class_names = [f"class {i}" for i in range(num_classes)]
        return None if class_names is None else list(class_names)  # None: from the masks, in _scan_masks

    def _pairs(self, images_dir: Path, masks_dir: Path) -> dict[str, tuple[str, str]]:
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"'{folder}' is missing: a {self.layout} data set has {self._layout_words()}.")
        images = collect_images([images_dir], allow_empty=True)
        masks = collect_images([masks_dir], allow_empty=True)
        if not images.paths:
            skipped = describe_skipped(images.skipped)
            why = f" ({skipped})" if skipped else ""
            raise ValueError(f"the {self.split} split is empty: no images in {images_dir}{why}.")
        found: dict[str, str] = {}
        for path in images.paths:
            name = path.relative_to(images_dir).with_suffix("").as_posix()
            if name in found:
                raise ValueError(f"images {found[name]} and {path} share the name {name!r}; keep one of them.")
            found[name] = str(path)
        mask_of: dict[str, str] = {}
        for path in masks.paths:
            name = path.relative_to(masks_dir).with_suffix("").as_posix()
            if path.suffix.lower() != ".png":
                raise ValueError(f"mask {path} is not a PNG; masks are lossless PNGs of class indices.")
            if name not in found:
                raise ValueError(f"mask {path} has no image (no {images_dir / name}.*); add the image or remove it.")
            mask_of[name] = str(path)
        for name, path in found.items():
            if name not in mask_of:
                raise ValueError(
                    f"image {path} has no mask (expected {masks_dir / name}.png); add it or remove the image."
                )
        return {name: (found[name], mask_of[name]) for name in sorted(found)}

    def _layout_words(self) -> str:
        image_folder, mask_folder, splits, _ = FOLDER_SEGMENTATION_LAYOUTS[self.layout]
        names = ",".join(splits.values())
        return f"{image_folder}/{{{names}}}/NAME.* with {mask_folder}/{{{names}}}/NAME.png"

    def _scan_masks(self) -> np.ndarray:
        """Decode every mask once: its mode and size, its values; the split's pixels per class."""
        pairs = list(zip(self.image_paths, self.mask_paths))
        with ThreadPoolExecutor(_threads()) as pool:
            summaries = list(pool.map(_mask_summary, pairs))
        histograms = []
        for error, histogram in summaries:
            if error:
                raise ValueError(error)
            histograms.append(histogram)
        largest = max(len(h) for h in histograms) - 1
        ignore_slot = self.ignore_index if 0 <= self.ignore_index <= _LARGEST_MASK_VALUE else 0
        self._labels = _label_map(self.reduce_zero_label, self.ignore_index, max(largest, ignore_slot))
        totals = np.zeros(len(self._labels), dtype=np.int64)
        for histogram in histograms:
            totals[: len(histogram)] += histogram
        labels = self._labels[: len(totals)]
        labelled = (labels != self.ignore_index) & (totals > 0)
        if self.classes is None:
            if not labelled.any():
                raise ValueError(
                    f"every mask of the {self.split} split is ignore_index {self.ignore_index}: no class to learn."
                )
            count = int(labels[labelled].max()) + 1
            self.classes = [f"class {i}" for i in range(count)]
        num_classes = len(self.classes)
        for histogram, mask_path in zip(histograms, self.mask_paths):
            present = np.flatnonzero(histogram)
            mapped = self._labels[present]
            bad = (mapped != self.ignore_index) & ((mapped < 0) | (mapped >= num_classes))
            if bad.any():
                value = int(present[bad][0])
                shift = " (after reduce_zero_label: 0 ignored, the rest down by one)" if self.reduce_zero_label else ""
                raise ValueError(
                    f"mask {mask_path} holds value {value}, which is neither one of the {num_classes} classes "
                    f"(0..{num_classes - 1}){shift} nor the ignore index {self.ignore_index}; fix the mask, the class "
                    "list or --num-classes / --ignore-index."
                )
        pixels = np.zeros(num_classes, dtype=np.int64)
        np.add.at(pixels, labels[labelled], totals[labelled])
        return pixels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(np.array(read_image(self.image_paths[index]), dtype=np.uint8)).permute(2, 0, 1)
        mask = read_mask(self.mask_paths[index])
        return image.contiguous(), torch.from_numpy(self._labels[mask])

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """Each image's (height, width), from its header."""
        sizes = []
        for path in self.image_paths:
            with Image.open(path) as image:
                sizes.append((image.size[1], image.size[0]))
        return sizes

    def __repr__(self) -> str:
        return (
            f"SegmentationFolder({str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, "
            f"images={len(self)}, classes={len(self.classes)})"
        )


def segmentation_folder_classes(
    root: PathLike,
    layout: str = "seg_folder",
    *,
    num_classes: Optional[int] = None,
    ignore_index: int = 255,
    reduce_zero_label: Optional[bool] = None,
) -> list[str]:
    """The class names of a folder segmentation data set: ADE20K's, the root's class file, ``class i`` for
    ``num_classes``, else from the training masks (which are then read and checked)."""
    if layout == "ade20k":
        if num_classes is not None and num_classes != len(ADE20K_CLASSES):
            raise ValueError(f"ADE20K has {len(ADE20K_CLASSES)} classes, not --num-classes {num_classes}.")
        return list(ADE20K_CLASSES)
    names = read_class_names(root)
    if names is not None:
        if num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{root} names {len(names)} classes but num_classes (--num-classes) is {num_classes}.")
        return names
    if num_classes is not None:
        return [f"class {i}" for i in range(num_classes)]
    train = SegmentationFolder(root, "train", layout, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label)
    return list(train.classes)
