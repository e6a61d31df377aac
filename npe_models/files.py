"""File primitives every layer writes and reads with: atomic writes, JSON and JSON lines, sha256 of a file.

Files that matter are written to a temporary name beside their place and renamed into it, so an
interruption never leaves a truncated file behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

__all__ = [
    "WEIGHTS_FILE",
    "PathLike",
    "atomic_write",
    "remove_temporaries",
    "write_json",
    "read_json",
    "read_jsonl",
    "write_jsonl",
    "append_jsonl",
    "file_sha256",
]

WEIGHTS_FILE = "model.safetensors"
"""The weights file of every folder this package writes: a run directory, a Hub folder."""

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


def _temporary_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, with the mode new files get (0666 less the umask)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temporary_beside(path)
    mode = temp.stat().st_mode & 0o777  # kept for writers that replace the file (safetensors writes one of 0600)
    try:
        write(temp)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_temporaries(directory: Path) -> None:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``directory`` (holding its lock):
    its own ``.<name>.<random>.tmp`` and the ``.tmpXXXXXX`` safetensors writes inside them."""
    for leftover in [*directory.glob(".*.*.tmp"), *directory.glob(".tmp??????")]:
        leftover.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", leftover)


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: PathLike) -> Any:
    """The JSON data in ``path``; a missing or invalid file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not valid JSON ({error}); restore it or start a new run.") from error


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (an empty list when it does not exist).

    A last line that is not valid JSON (torn by an interruption while it was written) is dropped
    with a warning; an invalid line before it is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position + 1 < len(lines):
                raise ValueError(f"'{path}' line {number} is not valid JSON ({error}).") from error
            warnings.warn(f"'{path}': dropped its last line, torn by an interruption: {line[:80]!r}", stacklevel=2)
    return records


def write_jsonl(path: PathLike, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as a JSON-lines file, atomically (replacing what was there)."""
    atomic_write(path, lambda temp: temp.write_text("".join(json.dumps(r) + "\n" for r in records)))


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
