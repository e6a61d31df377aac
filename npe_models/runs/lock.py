"""The lock of a run directory: one process writes it at a time, and a refused one is told who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..files import PathLike

__all__ = ["LOCK_FILE", "RunDirLockedError", "locked_dir"]

LOCK_FILE = ".lock"  # held (flock) by the one process writing the directory


class RunDirLockedError(OSError):
    """Another process holds the directory's lock: it is training (or evaluating) into the same folder."""


HOLDER_RECORD_WAIT_S = 2.0  # how long a refused process waits for the lock's holder to record itself


def _live_holder(lock: Path) -> Optional[str]:
    """The holder recorded in ``lock``, or None while the record is missing, half-written or left by a dead process
    on this host."""
    try:
        holder = json.loads(lock.read_text())
        pid, host, started = int(holder["pid"]), holder["host"], holder["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # the record of a killed run, not yet overwritten by the new holder
        except PermissionError:
            pass  # alive, owned by another user
    return f"pid {pid} on {host} since {started}"


def _lock_holder(lock: Path) -> str:
    """Who holds a lock, as its holder recorded it: ``pid 123 on host since 2026-01-01T12:00:00+00:00``.

    The holder writes its record just after taking the lock, so a process refused in between waits
    up to :data:`HOLDER_RECORD_WAIT_S` for it rather than naming nobody (or a dead run).
    """
    deadline = time.monotonic() + HOLDER_RECORD_WAIT_S
    while (holder := _live_holder(lock)) is None:
        if time.monotonic() >= deadline:
            return "a process that has not recorded itself yet"
        time.sleep(0.02)
    return holder


@contextlib.contextmanager
def locked_dir(directory: PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if needed), so only one process writes it at a time.

    The lock (``flock`` on :data:`LOCK_FILE`, which records its holder) dies with its process, so
    the lock file a killed run leaves behind never blocks the next one. Raises
    :class:`RunDirLockedError` naming the holder when another process has it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise RunDirLockedError(
            f"{directory} is in use by another npe-models process ({_lock_holder(lock)}); wait for it to finish "
            "or stop it, or choose another --out."
        ) from None
    try:
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
        yield directory
    finally:
        os.close(handle)  # which releases the lock
