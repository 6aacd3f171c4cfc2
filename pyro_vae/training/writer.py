"""The trainer's file writes on a background thread, so that training goes on meanwhile.

Writing a checkpoint (serializing, ``fsync``, renaming) takes tens of milliseconds; the
trainer hands a snapshot of the state to :class:`BackgroundWriter` and goes on with the
next step while one worker thread writes it. Every write is still atomic
(:func:`~pyro_vae.core.files.atomic_write`), so a SIGKILL during a background write
leaves the last complete checkpoint, as it does for a write in the foreground.

Writes happen one at a time, in the order they were submitted (``best.pt`` before the
checkpoint, the checkpoint before ``metrics.jsonl``), and once one fails the later ones
are skipped: the files on disk are then those of one moment of training. A failure is
raised in the training thread by the next :meth:`BackgroundWriter.submit` or
:meth:`BackgroundWriter.wait`; the trainer waits before anything reports what is on disk
(the end of training, an interrupt, a rollback).
"""

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

#: Writes submitted and not yet done, beyond which :meth:`BackgroundWriter.submit` waits:
#: bounds the memory held by snapshots waiting to be written.
MAX_PENDING = 4


class BackgroundWriter:
    """Runs write jobs one at a time, in order, on a worker thread.

    :param max_pending: submitted jobs not yet done beyond which ``submit`` waits.
    """

    def __init__(self, max_pending: int = MAX_PENDING):
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyro-vae-writer")
        self._pending: deque[Future] = deque()
        self._failed = False

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        """Run ``write(*args)`` after the jobs submitted before; raise the error of a job
        that failed since the last call."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.max_pending):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._run, write, args))

    def wait(self) -> None:
        """Wait until every submitted job is done; raise the first error among them."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """:meth:`wait`, then end the worker thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown()

    def _run(self, write: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._failed:  # a file after a failed one would describe another moment
            return
        try:
            write(*args)
        except BaseException:
            self._failed = True
            raise
