"""One writer per run directory.

A training or an evaluation holds an exclusive OS file lock (``flock``) on
``RUN/.lock`` for as long as it runs. The operating system releases it when the
process ends in any way, ``kill -9`` included, so there is never a stale lock to
remove. A second writer is refused with :class:`~pyro_vae.core.errors.RunInUseError`
naming the process that holds the lock; readers (plot, sample, encode, compare) take
no lock and work while a run trains.
"""

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyro_vae.core.errors import RunInUseError
from pyro_vae.core.files import make_directory, output_error

LOCK_FILE = ".lock"


@contextmanager
def locked_run(run_dir: str | Path, purpose: str, *, create: bool = False) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` while the ``with`` block runs.

    :param purpose: what the holder does ("training", "evaluation"), for the message that
        refuses a second writer.
    :param create: make ``run_dir`` if it does not exist; otherwise a missing directory
        is left to the caller to report (there is nothing to protect yet).
    :raises RunInUseError: another process holds the lock.
    """
    run_dir = Path(run_dir)
    if create:
        make_directory(run_dir)
    elif not run_dir.is_dir():
        yield run_dir
        return
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise output_error(path, error) from error
    try:
        _lock(fd, run_dir, purpose)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, run_dir: Path, purpose: str) -> None:
    """Take the lock on ``fd`` and write who holds it, or raise who does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        raise RunInUseError(
            f"{run_dir} is in use by {holder}; wait until it ends or stop it, "
            "or choose another run directory"
        ) from None
    except OSError as error:  # a file system without locks (ENOLCK)
        raise output_error(run_dir / LOCK_FILE, error) from error
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder(purpose).encode(), 0)
    except OSError as error:
        raise output_error(run_dir / LOCK_FILE, error) from error


def _holder(purpose: str) -> str:
    command = " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"process {os.getpid()} ({purpose}, `{command}`, since {started})"
