"""Crash-safe file writes.

:func:`atomic_write` writes a temporary file beside the target, flushes and
fsyncs it, renames it over the target and fsyncs the directory, so a crash or
SIGKILL at any moment leaves either the old file or the new one, never a torn
one. A killed writer can leave its temporary file behind;
:func:`remove_stale_temporaries` clears those.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Run ``write(file)`` on a temporary file beside ``path``, fsync, rename over ``path``."""
    tmp = _temporary(path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers (not this process's); list them."""
    mine = _temporary(path, os.getpid())
    stale = [tmp for tmp in path.parent.glob(f".{path.name}.*.tmp") if tmp != mine]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
