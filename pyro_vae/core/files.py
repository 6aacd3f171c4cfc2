"""Crash-safe, guarded file writes: every file pyro-vae writes goes through here.

:func:`atomic_write` writes a temporary file beside the target, flushes and
fsyncs it, renames it over the target and fsyncs the directory, so a crash or
SIGKILL at any moment leaves either the old file or the new one, never a torn
one. A killed writer can leave its temporary file behind;
:func:`remove_stale_temporaries` clears those.

A write that the file system refuses (no space, read-only, no permission, a file or
folder in the way) raises :class:`~pyro_vae.core.errors.OutputError` with one line
saying what and how to fix it; :func:`check_writable` finds that out before long work.
"""

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pyro_vae.core.errors import OutputError

#: What each refusal of the file system means for the user, and what to do.
_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; fix the permissions or write elsewhere",
    errno.EPERM: "permission denied; fix the permissions or write elsewhere",
    errno.EISDIR: "a folder is in the way; remove it or choose another name",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "part of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def output_error(path: Path, error: OSError) -> OutputError:
    """``error`` from writing ``path`` as an :class:`OutputError` the user can act on."""
    advice = _ADVICE.get(error.errno, error.strerror or str(error))
    return OutputError(f"cannot write {path}: {advice}")


class _WatchedFile:
    """A file whose write errors are remembered: torch reports a failed write of
    ``torch.save`` as a RuntimeError, hiding the OSError (ENOSPC) behind it."""

    def __init__(self, file: BinaryIO):
        self._file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Run ``write(file)`` on a temporary file beside ``path``, fsync, rename over ``path``.

    :raises OutputError: the file system refused; ``path`` is unchanged.
    """
    path = Path(path)
    tmp = _temporary(path, os.getpid())
    watched = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as file:
            watched = _WatchedFile(file)
            write(watched)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):  # on a read-only file system even this fails
            tmp.unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else watched and watched.error
        if cause:
            raise output_error(path, cause) from error
        raise


def make_directory(path: Path) -> Path:
    """``mkdir -p path``, or an :class:`OutputError` saying why it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path, error) from error
    return path


def check_writable(directory: Path) -> Path:
    """Make ``directory`` if needed and check that a file can be written in it, so a
    command fails before its work rather than after; :class:`OutputError` if not."""
    directory = make_directory(directory)
    atomic_write(directory / ".pyro-vae-write-check", lambda file: file.write(b"ok"))
    (directory / ".pyro-vae-write-check").unlink()
    return directory


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
