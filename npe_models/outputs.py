"""Where a command may write: one rule for every output folder (a run, an evaluation, a Hub folder) and output
file (an ONNX export).

A command writes only into a folder that is new, empty (hidden entries aside) or recognisably its own kind
of output; replacing its own earlier output needs ``overwrite=True`` (``--overwrite``) and replaces only the
files the command writes, never anything else; an output that equals or contains one of the command's inputs
is refused. Each kind of output says how it recognises itself (``is_own``): a run by its ``config.json``, a
Hub folder by its config, an ONNX file by its metadata, an evaluation by the files it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

from .files import PathLike

__all__ = [
    "EVALUATION_FILES",
    "check_output_dir",
    "check_output_file",
    "is_evaluation_dir",
    "refuse_inputs_inside",
    "visible_entries",
]

EVALUATION_FILES = ("metrics.json",)
"""What marks an evaluation folder, beside the plots (``*.png``) and overlays (``overlays/``) it also writes."""

_OVERWRITE = "pass --overwrite (overwrite=True) to replace the files it wrote; nothing else in it is touched"


def visible_entries(directory: Path) -> list[Path]:
    """The entries of ``directory`` that are not hidden (``.name``: locks, temporary files, system files)."""
    return sorted(entry for entry in directory.iterdir() if not entry.name.startswith("."))


def is_evaluation_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an evaluation's output and nothing else: ``metrics.json``, plots, overlays."""
    entries = visible_entries(directory)
    own = all(e.name in EVALUATION_FILES or e.suffix == ".png" or e.name == "overlays" for e in entries)
    return own and (directory / EVALUATION_FILES[0]).is_file() and not (directory / "config.json").exists()


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def _named(path: PathLike, option: Optional[str], noun: str) -> str:
    """How a message names an output: by its command-line option when the caller has one."""
    return f"{option} {path}" if option else f"the output {noun} {path}"


def refuse_inputs_inside(output: PathLike, inputs: Iterable[Optional[PathLike]], option: Optional[str] = None) -> None:
    """A clear error when the output path equals one of the inputs or contains it (an input would be replaced).
    Inputs that are not paths on disk (a model name, ``hf-hub:ORG/NAME``, ``cifar10:test``) are skipped."""
    target = _resolved(output)
    for given in inputs:
        if given is None or not os.fspath(given) or not os.path.lexists(given):
            continue
        source = _resolved(given)
        if source == target or target in source.parents:
            raise ValueError(
                f"{_named(output, option, 'path')} {'is' if source == target else 'contains'} the input {given}; "
                "writing there could replace it. Choose an output outside the inputs."
            )


def check_output_dir(
    directory: PathLike,
    kind: str,
    *,
    is_own: Callable[[Path], bool],
    overwrite: bool = False,
    inputs: Iterable[Optional[PathLike]] = (),
    option: Optional[str] = None,
) -> Path:
    """Refuse a ``directory`` that ``kind`` output may not go into; returns it as a Path.

    Allowed: a new folder, an empty one (hidden entries aside), or one that ``is_own`` recognises as earlier
    ``kind`` output, the last only with ``overwrite``.
    """
    directory = Path(directory)
    refuse_inputs_inside(directory, inputs, option)
    named, another = _named(directory, option, "folder"), option or "folder"
    if not directory.exists():
        return directory
    if not directory.is_dir():
        raise FileExistsError(f"{named} is a file, not a folder; choose another {another}.")
    entries = visible_entries(directory)
    if not entries:
        return directory
    if is_own(directory):
        if not overwrite:
            raise FileExistsError(f"{named} holds an earlier {kind}; {_OVERWRITE}.")
        return directory
    listed = ", ".join(repr(e.name) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise FileExistsError(
        f"{named} is not empty ({len(entries)} entries: {listed}) and holds no {kind} of npe-models, "
        f"so nothing is written there; choose a new or empty {another}."
    )


def check_output_file(
    path: PathLike,
    kind: str,
    *,
    is_own: Callable[[Path], bool],
    overwrite: bool = False,
    inputs: Iterable[Optional[PathLike]] = (),
    option: Optional[str] = None,
) -> Path:
    """Refuse an output file ``path`` that exists and is not earlier ``kind`` output (or is, without
    ``overwrite``), or that is one of the inputs; returns it as a Path."""
    path = Path(path)
    refuse_inputs_inside(path, inputs, option)
    named, another = _named(path, option, "file"), option or "file"
    if not path.exists() and not path.is_symlink():
        return path
    if path.is_dir():
        raise IsADirectoryError(f"{named} is a folder; give the file to write.")
    if not is_own(path):
        raise FileExistsError(f"{named} exists and is no {kind} of npe-models; choose another {another}.")
    if not overwrite:
        raise FileExistsError(f"{named} is an earlier {kind}; pass --overwrite (overwrite=True) to replace it.")
    return path
