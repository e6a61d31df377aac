"""Long-tailed classification data from image files: ``ImageFolder``-style trees and the published split
lists of ImageNet-LT, Places-LT (Liu et al. 2019) and iNaturalist 2018.

A folder's image files are gathered by :func:`collect_images`, the one collection of image files (also
``predict``'s): hidden entries, other extensions, symlink loops and files reached twice are skipped, and what was
skipped is reported. Split lists are UTF-8, one line per image. Every file's header is checked before training
(:func:`check_image_files`). Files are decoded by PIL in DataLoader workers, read to 8-bit RGB whatever their mode
(:func:`to_rgb`), and transformed by timm's train / eval transforms, built from the model's pretrained cfg
(``timm.data.resolve_data_config`` + ``create_transform``).
The epoch order comes from :mod:`npe_models.data.sampling`, as for the in-memory CIFAR source, so
runs resume to the same batches and ``torchrun`` processes split one shared order. Labels keep
the numbering of their list (or the sorted folder names); class counts, and with them the
Many / Medium / Few groups and the training prior, come from the training split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from .cifar import ClassCounts, long_tailed_indices
from .sampling import EpochSampler

__all__ = [
    "IMAGE_LISTS",
    "IMAGE_EXTENSIONS",
    "SKIP_REASONS",
    "ImageFiles",
    "collect_images",
    "is_image_file",
    "ImageList",
    "FileLT",
    "FileBatchStream",
    "read_image_list",
    "scan_image_folder",
    "describe_skipped",
    "load_image_folder",
    "load_image_lists",
    "image_transform",
    "read_image",
    "image_file_problem",
    "check_image_files",
    "to_rgb",
    "READABLE_MODES",
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


IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)
"""The file name endings taken as images (any case): torchvision's, so a folder gives the images torchvision's
``ImageFolder`` would. GIF is not among them (an animation is not one image): ``.gif`` files are skipped and
counted as an unsupported extension."""

SKIP_REASONS: dict[str, str] = {
    "hidden": "hidden (name starts with '.')",
    "unsupported extension": "with an unsupported extension",
    "symlink loop": "symlink loop (a link to a folder that holds it)",
    "reached twice": "reached twice (a link to a file or folder already taken)",
    "outside class folders": "outside the class folders",
}
"""Why :func:`collect_images` (and a folder data set's scan) leaves an entry out, with the words of its summary."""


def is_image_file(path: PathLike) -> bool:
    """Whether ``path``'s name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _skip_counts(skipped: dict[str, tuple[Path, ...]]) -> dict[str, int]:
    return {reason: len(paths) for reason, paths in skipped.items() if paths}


def describe_skipped(skipped: dict[str, tuple[Path, ...]]) -> str:
    """One line on what was skipped and why, e.g. "skipped 3 entries: 1 hidden (name starts with '.'):
    .ipynb_checkpoints; 2 with an unsupported extension: .gif 2"; empty when nothing was."""
    parts = []
    for reason, paths in skipped.items():
        if not paths:
            continue
        if reason == "unsupported extension":
            endings = Counter(Path(path).suffix.lower() or "(no extension)" for path in paths)
            examples = ", ".join(f"{ending} {count}" for ending, count in endings.most_common())
        else:
            examples = ", ".join(str(path) for path in paths[:3]) + (", ..." if len(paths) > 3 else "")
        parts.append(f"{len(paths)} {SKIP_REASONS.get(reason, reason)}: {examples}")
    total = sum(len(paths) for paths in skipped.values())
    return f"skipped {total} {'entry' if total == 1 else 'entries'}: " + "; ".join(parts) if parts else ""


def _merge_skipped(*skips: dict[str, tuple[Path, ...]]) -> dict[str, tuple[Path, ...]]:
    merged: dict[str, tuple[Path, ...]] = {}
    for skipped in skips:
        for reason, paths in skipped.items():
            merged[reason] = merged.get(reason, ()) + tuple(paths)
    return {reason: paths for reason, paths in merged.items() if paths}


@dataclass(frozen=True)
class ImageFiles(Sequence[Path]):
    """The image files :func:`collect_images` found, in order, and what it skipped; a sequence of the paths."""

    paths: tuple[Path, ...]
    origins: tuple[int, ...]
    """For each path, the index of the input (file or folder) it was found in."""
    skipped: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    """Reason (a :data:`SKIP_REASONS` key) -> the entries skipped for it (a skipped folder counts once)."""

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        return list(self.paths[index]) if isinstance(index, slice) else self.paths[index]

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    @property
    def skipped_counts(self) -> dict[str, int]:
        """Reason -> how many entries were skipped for it."""
        return _skip_counts(self.skipped)

    def skipped_summary(self) -> str:
        """One line on what was skipped and why (see :func:`describe_skipped`); empty when nothing was."""
        return describe_skipped(self.skipped)


def _is_within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _list_folder(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        raise ValueError(
            f"cannot list folder {path} ({error.strerror or error}); fix its permissions or move it out."
        ) from None


class _Collector:
    """The walk behind :func:`collect_images`: directory links followed unless they loop (a link to a folder on the
    way down, or to one that holds it) or lead to a folder already walked, each real file taken once."""

    def __init__(self, reserved: set[str]) -> None:
        self.reserved = reserved  # the real paths of the given folders: each is walked as its own input
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.skipped: list[tuple[str, Path, int]] = []  # (reason, entry, origin)

    def skip(self, reason: str, path: PathLike, origin: int) -> None:
        self.skipped.append((reason, Path(path), origin))

    def take_file(self, path: str, real: str, origin: int) -> bool:
        if real in self.files:
            self.skip("reached twice", path, origin)
            return False
        self.files.add(real)
        return True

    def folder(self, folder: Path, origin: int) -> list[Path]:
        """The image files under ``folder``, sorted as torchvision's ``make_dataset`` sorts them (by folder, then
        name)."""
        root_real = os.path.realpath(folder)
        if root_real in self.dirs:
            self.skip("reached twice", folder, origin)
            return []
        self.dirs.add(root_real)
        found: list[tuple[str, str]] = []
        stack = [(os.fspath(folder), root_real, (root_real,))]
        while stack:
            path, real, route = stack.pop()
            below = []
            for entry in _list_folder(path):
                if entry.name.startswith("."):
                    self.skip("hidden", entry.path, origin)
                elif entry.is_dir():
                    symlink = entry.is_symlink()
                    target = os.path.realpath(entry.path) if symlink else os.path.join(real, entry.name)
                    if symlink and any(_is_within(on_route, target) for on_route in route):
                        self.skip("symlink loop", entry.path, origin)
                    elif target in self.dirs or (target in self.reserved and target != root_real):
                        self.skip("reached twice", entry.path, origin)
                    else:
                        self.dirs.add(target)
                        below.append((entry.path, target, (*route, target)))
                elif not is_image_file(entry.name):
                    self.skip("unsupported extension", entry.path, origin)
                else:
                    target = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                    if self.take_file(entry.path, target, origin):
                        found.append((path, entry.name))
            stack.extend(reversed(below))  # depth first, in name order
        return [Path(directory, name) for directory, name in sorted(found)]

    def skipped_by_reason(self, origin: Optional[int] = None) -> dict[str, tuple[Path, ...]]:
        """Reason -> skipped entries, of input ``origin`` or of all."""
        by_reason: dict[str, list[Path]] = {}
        for reason, path, at in self.skipped:
            if origin is None or at == origin:
                by_reason.setdefault(reason, []).append(path)
        return {reason: tuple(paths) for reason, paths in by_reason.items()}


def collect_images(inputs: Iterable[PathLike], *, allow_empty: bool = False) -> ImageFiles:
    """The image files among ``inputs`` (files and folders), the one collection of image files for the folder data
    sets and for ``predict``.

    A file is taken as given (an error when it is missing or its name does not end in :data:`IMAGE_EXTENSIONS`).
    A folder is searched recursively: hidden entries (names starting with '.', such as ``.ipynb_checkpoints/`` or
    macOS's ``._*`` files) and files with other extensions are skipped; directory links are followed, except a
    link back to a folder on the way down or one that holds it (a symlink loop) and a link to a folder already
    walked; a file reached twice (through links) is taken once. What was skipped, and why, is in the result's
    ``skipped`` (see :meth:`ImageFiles.skipped_summary`). A folder without images, or no image at all, is an
    error unless ``allow_empty``.
    """
    given = [Path(os.fspath(path)).expanduser() for path in inputs]
    collector = _Collector({os.path.realpath(path) for path in given if path.is_dir()})
    paths: list[Path] = []
    origins: list[int] = []
    for origin, path in enumerate(given):
        if path.is_dir():
            found = collector.folder(path, origin)
            if not found and not allow_empty:
                skipped = describe_skipped(collector.skipped_by_reason(origin))
                raise ValueError(
                    f"no images in folder {path} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}"
                    + (f"; {skipped}" if skipped else "")
                    + ")."
                )
        elif not path.exists():
            raise FileNotFoundError(f"image {path} not found; give image files or folders of images.")
        elif not is_image_file(path):
            raise ValueError(f"{path} is not an image file; image files end in {', '.join(IMAGE_EXTENSIONS)}.")
        else:
            found = [path] if collector.take_file(os.fspath(path), os.path.realpath(path), origin) else []
        paths += found
        origins += [origin] * len(found)
    if not paths and not allow_empty:
        raise ValueError("no images given; name image files or folders of images.")
    return ImageFiles(tuple(paths), tuple(origins), collector.skipped_by_reason())


@dataclass(frozen=True)
class ImageList:
    """Image file paths and their labels; ``source`` is the list file or folder they were read from, ``skipped``
    what a folder's scan left out (reason -> entries, see :data:`SKIP_REASONS`)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    source: str
    skipped: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> ImageList:
        return ImageList(tuple(self.paths[i] for i in index), self.labels[index], self.source, self.skipped)


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


def _class_folders(folder: Path) -> tuple[list[str], dict[str, tuple[Path, ...]]]:
    """The class folders of a split folder (sorted), and what else is there: hidden entries, links to the folder
    itself or one that holds it, files outside the class folders."""
    real = os.path.realpath(folder)
    names, skipped = [], {reason: [] for reason in SKIP_REASONS}
    for entry in _list_folder(os.fspath(folder)):
        if entry.name.startswith("."):
            skipped["hidden"].append(Path(entry.path))
        elif not entry.is_dir():
            skipped["outside class folders"].append(Path(entry.path))
        elif entry.is_symlink() and _is_within(real, os.path.realpath(entry.path)):
            skipped["symlink loop"].append(Path(entry.path))
        else:
            names.append(entry.name)
    return names, {reason: tuple(paths) for reason, paths in skipped.items() if paths}


def scan_image_folder(folder: PathLike, classes: Optional[Sequence[str]] = None) -> tuple[ImageList, list[str]]:
    """The images of an ``ImageFolder``-style ``folder`` (``<class>/*``, see :func:`collect_images` for what is
    skipped; hidden folders are no class) and its sorted class names; the list's ``skipped`` says what was left out.

    With ``classes`` (the training split's), labels follow that list and an unknown class folder is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' is missing: a folder data set has train/<class>/* and val/<class>/*.")
    found, outside = _class_folders(folder)
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
    skipped = _merge_skipped(outside, images.skipped)
    return ImageList(tuple(map(str, images.paths)), labels, str(folder), skipped), names


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


_SHOWN_FILES = 10  # the unreadable files an error names before "... and N more"


def image_file_problem(path: PathLike) -> Optional[str]:
    """Why the file at ``path`` cannot be an image here, from its header only (nothing decoded), or None: missing,
    empty, not an image PIL opens, or of a mode :func:`to_rgb` does not read."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            mode = image.mode
    except FileNotFoundError:
        return "no such file"
    except UnidentifiedImageError:
        return "not an image PIL can open, or its header is damaged"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None if mode in READABLE_MODES else f"PIL mode {mode!r}, which has no RGB reading here"


_CHUNK = 256  # files per thread task: one task per file costs as much as the check of a cached header


def _chunk_problems(paths: list[str]) -> list[Optional[str]]:
    return [image_file_problem(path) for path in paths]


def _checking_threads() -> int:
    # Opening headers waits on the disk more than on the CPU: a few threads per core hide its latency.
    return min(32, 4 * (os.cpu_count() or 1))


def check_image_files(*image_lists: ImageList) -> None:
    """Open the header of every file of ``image_lists`` (see :func:`image_file_problem`) before any training, and
    raise one ValueError naming how many cannot be read and the first of them; a missing, empty or foreign file
    is found here, not when a batch draws it hours into a run."""
    first_source: dict[str, str] = {}
    for images in image_lists:
        for path in images.paths:
            first_source.setdefault(path, images.source)
    paths = list(first_source.items())  # each file once, with the first list or folder that has it
    chunks = [[path for path, _ in paths[start : start + _CHUNK]] for start in range(0, len(paths), _CHUNK)]
    with ThreadPoolExecutor(_checking_threads()) as pool:
        found = [why for whys in pool.map(_chunk_problems, chunks) for why in whys]
    problems = [(path, source, why) for (path, source), why in zip(paths, found) if why]
    if not problems:
        return
    if len(problems) == 1:
        path, source, why = problems[0]
        raise ValueError(f"cannot read image {path} ({why}); replace the file or leave it out. It is part of {source}.")
    sources = ", ".join(dict.fromkeys(source for _, source, _ in problems))
    shown = ", ".join(f"{path} ({why})" for path, _, why in problems[:_SHOWN_FILES])
    more = f" and {len(problems) - _SHOWN_FILES} more" if len(problems) > _SHOWN_FILES else ""
    raise ValueError(
        f"cannot read {len(problems)} of the {len(paths)} image files of {sources}: {shown}{more}; replace these "
        "files or leave them out."
    )


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
        return _merge_skipped(self.train.skipped, *(images.skipped for images in self.eval_sets.values()))

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
