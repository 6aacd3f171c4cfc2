"""Callbacks: what happens around the training loop, attached to it through four hooks.

The loop (:class:`~pyro_vae.training.loop.Trainer`) only runs steps and computes each
epoch's metrics row; checkpoints, the best model, early stopping, the learning-rate
schedule, the metrics file, the log line and the rollback after a numerical fault are
callbacks, and so is anything a user adds through ``train(..., callbacks=[...])``.
Callbacks run in the order of :func:`ordered_callbacks`: a user's run after the
schedule has stepped and ``best.pt`` is written, and before the epoch's checkpoint,
which so holds their state after the epoch.

A callback that keeps state across a resume names it with ``state_key``: its
:meth:`Callback.state_dict` is saved in every checkpoint under that key and handed back
to :meth:`Callback.load_state_dict` when the run resumes or rolls back.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyro_vae import runs
from pyro_vae.core.errors import ConfigError, NumericalError
from pyro_vae.inference.schedules import EpochScheduler

if TYPE_CHECKING:
    from pyro_vae.training.loop import Trainer

#: With ``on_nan="rollback"``, give up after this many rollbacks in one call (lr / 2**20).
MAX_ROLLBACKS = 20


class Callback:
    """Base class of training callbacks; override the hooks you need.

    Every hook receives the :class:`~pyro_vae.training.loop.Trainer`, whose attributes
    ``config``, ``out`` (the run directory), ``vae``, ``optimizer``, ``data``,
    ``metrics`` (the rows so far), ``world`` (``world.is_main`` on the rank that writes
    files) and ``log`` are there to read; setting ``trainer.should_stop = True`` ends
    training after the current epoch.
    """

    #: Key of this callback's state in checkpoints; None: it keeps no state.
    state_key: str | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Training starts, or starts again from a checkpoint (resume, rollback); the
        trainer's ``metrics`` are those of the epochs already done."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Optimizer step ``step`` (counted from 1 over the whole run) is done. Runs on
        every step: keep it cheap, and read nothing from the device. A step replayed from
        an FX graph (a CPU, ``record_forward``) leaves the parameters' ``.grad`` at None."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """An epoch ended; ``row`` is its metrics row, already in ``trainer.metrics``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Training ended normally (all epochs, or stopped early)."""

    def on_fault(self, trainer: Trainer, fault: NumericalError) -> dict[str, Any] | None:
        """A step was not finite and training stopped; return a checkpoint that the
        callback restored (``trainer.restore``) to go on from, or None to let it end."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint (see ``state_key``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved."""


class LRSchedule(Callback):
    """Steps a learning-rate schedule (:mod:`pyro_vae.inference.schedules`) with each
    epoch's validation score (:func:`~pyro_vae.runs.validation_score`)."""

    state_key = "scheduler"

    def __init__(self, scheduler: EpochScheduler):
        self.scheduler = scheduler

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.scheduler.step(runs.validation_score(row))

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class BestModel(Callback):
    """Writes the model of the best epoch so far to ``best.pt``: the one ``load_run`` and
    ``evaluate`` use for a run with early stopping. It is written before the epoch's
    checkpoint, so a crash in between retrains that epoch, identically."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        best = runs.best_epoch(trainer.metrics[:-1])
        score = runs.validation_score(row)
        if trainer.world.is_main and (best is None or score > runs.validation_score(best)):
            state = {
                "model": trainer.vae.state_dict(),
                "epoch": row["epoch"],
                "val_elbo": row["val_elbo"],
                "config": trainer.config.to_dict(),
            }
            trainer.write_checkpoint(state, runs.BEST_FILE)


class Checkpointing(Callback):
    """Writes the checkpoint at the end of every epoch and, with ``every``, every that
    many optimizer steps within an epoch."""

    def __init__(self, every: int = 0):
        self.every = every

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.every and step % self.every == 0 and not trainer.progress.finished:
            trainer.save_checkpoint()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        trainer.save_checkpoint()


class MetricsFile(Callback):
    """Keeps ``metrics.jsonl`` in the run directory: one line per epoch, rewritten from
    the checkpoint's rows when training starts again from one."""

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.world.is_main:  # queued with the checkpoints, like every file of the run
            trainer.writes.submit(runs.write_metrics, trainer.out, copy.deepcopy(trainer.metrics))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.world.is_main:  # after the epoch's checkpoint, never ahead of it
            trainer.writes.submit(runs.append_metrics, trainer.out, dict(row))


class EpochLog(Callback):
    """Logs one line per epoch: losses, beta and time."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        spe = trainer.steps_per_epoch
        trainer.log(
            f"epoch {row['epoch']}/{trainer.config.epochs}  train_loss {row['train_loss']:.2f}  "
            f"val_elbo {row['val_elbo']:.2f}"
            + (f"  val_iwae {row['val_iwae']:.2f}" if "val_iwae" in row else "")
            + f"  beta {row['beta']:.3g}  {row['seconds']:.1f}s"
            + (f"  clipped {row['clipped_steps']}/{spe}" if "clipped_steps" in row else "")
        )


class EarlyStopping(Callback):
    """Stops training once the validation score has not improved for ``patience`` epochs
    (0: never). The best epoch's model is in ``best.pt`` (:class:`BestModel`)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_train_start(self, trainer: Trainer) -> None:
        self._check(trainer)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        metrics = trainer.metrics
        if not metrics or metrics[-1]["epoch"] >= trainer.config.epochs:
            return  # nothing left to stop
        if runs.stopped_early(metrics, self.patience):
            best = runs.best_epoch(metrics)
            trainer.log(
                f"early stopping after epoch {metrics[-1]['epoch']}: no better validation "
                f"{runs.validation_name(best)} for {runs.epochs_without_improvement(metrics)} "
                f"epochs; best {runs.validation_score(best):.2f} at epoch {best['epoch']} "
                f"(in {trainer.out / runs.BEST_FILE})"
            )
            trainer.should_stop = True


class Rollback(Callback):
    """On a numerical fault that a smaller step may avoid, restores the last checkpoint and
    goes on with half the learning rate the fault happened at, so that rollbacks compound
    (1e5, 5e4, 2.5e4, ...); gives up after ``MAX_ROLLBACKS``."""

    def __init__(self):
        self.rollbacks, self.limit = 0, MAX_ROLLBACKS
        self.first_lr: float | None = None

    def on_fault(self, trainer: Trainer, fault: NumericalError) -> dict[str, Any] | None:
        if not fault.recoverable:
            return None
        if self.first_lr is None:
            self.first_lr = trainer.lr
        if self.rollbacks == self.limit:
            raise NumericalError(
                f"{str(fault).partition(';')[0]}; gave up after {self.limit} rollbacks that "
                f"halved the learning rate from {self.first_lr:.3g} to {trainer.lr:.3g}. "
                "Check the data, then try a much smaller `lr`, `clip_grad_norm` or a smaller "
                f"model; the checkpoint {trainer.saved_at} is kept in {trainer.checkpoint_path}",
                recoverable=False,
            ) from fault
        self.rollbacks += 1
        rate = trainer.lr / 2
        trainer.world.barrier()  # rank 0 has finished writing the checkpoint
        checkpoint = runs.load_checkpoint(trainer.out, keys=runs.CHECKPOINT_KEYS)
        for group in checkpoint["optimizer"]["param_groups"]:
            group["lr"] = rate
        start = trainer.restore(checkpoint)
        trainer.log(
            f"{str(fault).partition(';')[0]}: rolled back to the checkpoint "
            f"{trainer.saved_at} and halved the learning rate to {trainer.lr:.3g}"
        )
        return start


def ordered_callbacks(
    scheduler: EpochScheduler,
    checkpoint_every: int,
    patience: int,
    on_nan: str,
    user: Sequence[Callback] = (),
) -> list[Callback]:
    """Every callback of a training run, in the order they run: the learning-rate
    schedule and the best model, then the ``user``'s, then the checkpoint (which saves
    every callback's state after its epoch), the metrics file, the log line, early
    stopping and, with ``on_nan="rollback"``, the rollback."""
    return [
        LRSchedule(scheduler),
        BestModel(),
        *user,
        Checkpointing(checkpoint_every),
        MetricsFile(),
        EpochLog(),
        EarlyStopping(patience),
        *([Rollback()] if on_nan == "rollback" else []),
    ]


class CallbackList:
    """Calls a hook on every callback in order; ``on_step_end`` only on those that
    define it, since it runs on every step."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)
        taken = set(self.keys()) & {*runs.CHECKPOINT_KEYS, *runs.MID_EPOCH_KEYS}
        if taken:
            raise ConfigError(f"callback state_key {sorted(taken)} is a checkpoint entry")
        self.stepping = [
            c for c in self.callbacks if type(c).on_step_end is not Callback.on_step_end
        ]

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        for callback in self.stepping:
            callback.on_step_end(trainer, step)

    def recover(self, trainer: Trainer, fault: NumericalError) -> dict[str, Any]:
        """The checkpoint the first callback that handles ``fault`` restored; ``fault``
        itself when none does."""
        for callback in self.callbacks:
            start = callback.on_fault(trainer, fault)
            if start is not None:
                return start
        raise fault

    def states(self) -> dict[str, Any]:
        """Every stateful callback's state, by its ``state_key``."""
        return {c.state_key: c.state_dict() for c in self.callbacks if c.state_key}

    def load_states(self, checkpoint: dict[str, Any]) -> None:
        for callback in self.callbacks:
            if callback.state_key and checkpoint.get(callback.state_key):
                callback.load_state_dict(checkpoint[callback.state_key])

    def keys(self) -> list[str]:
        return [c.state_key for c in self.callbacks if c.state_key]
