"""Collecting image files: the one rule for which files of a folder tree or a list of paths are images, used by
the folder data sets, ``predict`` and ``adapt``. Hidden entries, other extensions, folder links that loop and
files reached twice are skipped, and what was skipped is reported (:data:`SKIP_REASONS`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIP_REASONS",
    "ImageFiles",
    "ImageList",
    "collect_images",
    "describe_skipped",
    "is_image_file",
]

PathLike = Union[str, Path]


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


def merge_skipped(*skips: dict[str, tuple[Path, ...]]) -> dict[str, tuple[Path, ...]]:
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


def class_folders(folder: Path) -> tuple[list[str], dict[str, tuple[Path, ...]]]:
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
