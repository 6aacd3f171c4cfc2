"""The training loop behind :func:`~pyro_vae.train` and ``pyro-vae train``.

One step is the differentiable ELBO of the model/guide pair (by default
:class:`~pyro_vae.inference.objectives.ReparamTrace_ELBO`: Trace_ELBO's value and gradient
without its host reads) followed by a plain, fused ``torch.optim.Adam`` step over the
VAE's parameters: the same objective as ``SVI(model, guide, pyro.optim.Adam,
Trace_ELBO())`` without SVI's per-parameter optimizers. Data stays on the device as
one tensor; batches are index slices of a fresh permutation each epoch. The loss is
read on the host once per step, for the running loss and the finiteness check. Each
full-batch step (objective, backward, clipping, update) is recorded once and replayed
(:mod:`pyro_vae.training.graphs`), as a CUDA graph on one GPU and as an FX graph on a
CPU in one process: Pyro's Python then runs at recording only, and the step costs less
than a hand-written one.

After every epoch the validation ELBO (single sample, fixed seed) goes into the
epoch's metrics row, and the callbacks (:mod:`pyro_vae.training.callbacks`) act on
it: the learning-rate schedule steps (:mod:`pyro_vae.inference.schedules`), the
model of the best epoch so far is written to ``best.pt``, the checkpoint and
``metrics.jsonl`` are written, and with ``patience`` training stops once the
validation ELBO has not improved for that many epochs (early stopping);
``load_run``/``evaluate`` then use ``best.pt``. A run trained on the IWAE bound is
judged by its validation IWAE bound instead (:func:`~pyro_vae.runs.validation_score`).
A run may start from another run's model (``init_from``: fine-tuning).

Nothing trained is lost:

* a checkpoint is written atomically before the first step, at the end of every
  epoch and every ``checkpoint_every`` steps, so SIGKILL at any moment leaves
  one to resume from;
* SIGINT/SIGTERM stop after the current step, save, and raise
  :class:`~pyro_vae.core.errors.TrainingInterrupted`. Signals are the one guard that
  stays in the loop rather than in a callback: under ``torchrun`` the stop flag travels
  in the step's all-reduce, so that every rank stops after the same step, and only the
  loop owns that collective;
* a non-finite loss or gradient is caught and named with its step (see
  :func:`~pyro_vae.training.guards.nonfinite_update`); training stops with
  :class:`~pyro_vae.core.errors.NumericalError` or, with ``on_nan="rollback"``,
  restores the last checkpoint and halves the learning rate;
* checkpoints are written by a background thread from a snapshot of the state
  (:mod:`pyro_vae.training.writer`), so that the next steps run meanwhile;
* resuming is exact, also from the middle of an epoch: a mid-epoch checkpoint
  holds the RNG state of the epoch's start, so the epoch's permutation is drawn
  again identically, then the RNG state after the last step is restored, from
  which the next batch's binary images are drawn. On CPU a resumed run ends with
  the same parameters and metrics as an uninterrupted one.

Under ``torchrun`` (:mod:`pyro_vae.core.distributed`) every rank draws the same
permutation and batch images from the global RNG, takes rows ``rank::world_size``
of each global batch, and sums its gradients with the other ranks' before the
non-finite check; its latent noise comes from a per-(step, rank) seed inside
``fork_rng``, so the global RNG, and with it rank 0's checkpoint, is the same on
every rank. Only rank 0 writes files, logs and shows progress.
"""

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pyro_vae import runs
from pyro_vae.config import TrainConfig
from pyro_vae.core import distributed
from pyro_vae.core.errors import NumericalError
from pyro_vae.core.seeding import seeded
from pyro_vae.data.images import ImageData
from pyro_vae.inference.estimators import bound_per_example
from pyro_vae.inference.objectives import objective
from pyro_vae.models.vae import VAE
from pyro_vae.training.callbacks import Callback, CallbackList
from pyro_vae.training.checkpointing import checkpoint_state, position, restore_state, set_rng
from pyro_vae.training.guards import (
    StopSignals,
    interrupted,
    nonfinite_update,
    numerical_fault,
    training_steps,
)
from pyro_vae.training.steps import StepRunner
from pyro_vae.training.writer import BackgroundWriter

#: Seed of the validation ELBO's latent samples, so epochs and runs compare fairly.
EVAL_SEED = 12345
#: (Particle, example) pairs of one pass of the validation bound: on a 2-core CPU passes
#: of 5,000 images are ~20% faster than of 1,000, and a GPU wants them large.
VALIDATION_BATCH = 5_000
#: Progress-bar refresh interval in steps (each refresh reads the loss from the device).
PROGRESS_EVERY = 20


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Beta at a (0-based) global step: linear warm-up from ``beta/warmup_steps`` to ``beta``."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps == 0:
        return config.beta
    return config.beta * min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def validation_bound(vae: VAE, *inputs: torch.Tensor, num_particles: int = 1) -> float:
    """Mean over examples of the ``num_particles``-sample importance-weighted bound (one:
    the single-sample ELBO), in nats, with a fixed seed.

    :param inputs: the model's arguments for the validation set, ``vae.scoring_inputs(...)``.
    """
    was_training = vae.training
    vae.eval()
    with seeded(EVAL_SEED, inputs[0].device):
        bound = bound_per_example(
            vae.model, vae.guide, *inputs, num_particles=num_particles, max_batch=VALIDATION_BATCH
        )
    vae.train(was_training)
    return bound.mean().item()


@dataclass
class EpochProgress:
    """Where the epoch in progress stands: what a mid-epoch checkpoint holds besides the
    model, so that a resumed epoch goes on exactly where it stopped."""

    epoch: int  # counted from 1
    steps: int  # per epoch
    epoch_rng: dict[str, Any]  # the RNG state at the epoch's start
    step: int = 0  # steps done
    loss_sum: float = 0.0
    last_loss: float = math.nan
    seconds: float = 0.0  # spent on this epoch by earlier processes
    train_seconds: float = 0.0
    clipped: int | torch.Tensor = 0  # counted on the device: no host read per step
    started: float = field(default_factory=time.perf_counter)
    steps_started: float = math.nan
    ended: bool = False  # its metrics row is computed

    @classmethod
    def resumed(cls, checkpoint: dict[str, Any], steps: int) -> "EpochProgress":
        """The epoch in progress of a mid-epoch ``checkpoint``."""
        return cls(
            epoch=checkpoint["epoch"] + 1,
            steps=steps,
            epoch_rng=checkpoint["epoch_rng"],
            step=checkpoint["step"],
            loss_sum=float(checkpoint["loss_sum"]),
            seconds=checkpoint["seconds"],
            train_seconds=checkpoint.get("train_seconds", 0.0),
            clipped=checkpoint.get("clipped_steps", 0),
        )

    @property
    def finished(self) -> bool:
        """Whether all of the epoch's steps are done."""
        return self.step == self.steps

    def in_progress(self) -> dict[str, Any]:
        """The checkpoint entries of an epoch in progress."""
        now = time.perf_counter()
        return {
            "epoch_rng": self.epoch_rng,
            "loss_sum": torch.tensor(self.loss_sum, dtype=torch.float64),
            "seconds": self.seconds + now - self.started,
            "train_seconds": self.train_seconds + now - self.steps_started,
            "clipped_steps": int(self.clipped),
        }


def metrics_row(trainer: "Trainer") -> dict[str, Any]:
    """The metrics row of the trainer's epoch, whose steps are done: the training loss,
    the validation bounds (with the IWAE bound that selects models trained on it), beta,
    the learning rate and the time."""
    p, config, spe = trainer.progress, trainer.config, trainer.steps_per_epoch
    vae, data = trainer.vae, trainer.data
    val_inputs = vae.scoring_inputs(data.val, data.val_labels)
    row = {
        "epoch": p.epoch,
        "train_loss": p.loss_sum / trainer.num_train,
        "val_elbo": validation_bound(vae, *val_inputs),
        "beta": kl_weight(config, p.epoch * spe - 1, spe),
        "lr": trainer.lr,
        "seconds": p.seconds + time.perf_counter() - p.started,
        # the training steps alone (no validation, no checkpoint): throughput
        "train_seconds": p.train_seconds,
    }
    if config.objective == "iwae":
        row["val_iwae"] = validation_bound(vae, *val_inputs, num_particles=config.particles)
    if config.clip_grad_norm is not None:
        row["clipped_steps"] = int(p.clipped)
    return row


def progress_bar(progress: EpochProgress, epochs: int, show: bool) -> tqdm:
    """The progress bar of an epoch's steps (silent unless ``show``)."""
    return tqdm(
        total=progress.steps,
        initial=progress.step,
        desc=f"epoch {progress.epoch}/{epochs}",
        leave=False,
        disable=not show,
        unit="step",
    )


class Trainer:
    """The loop over epochs and steps, and the checkpoints that let it stop and resume.
    Everything around the loop is a :class:`~pyro_vae.training.callbacks.Callback`, which
    reads the trainer's attributes (``progress``: the :class:`EpochProgress`)."""

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        vae: VAE,
        optimizer: torch.optim.Optimizer,
        data: ImageData,
        progress: bool,
        log: Callable[[str], None],
        world: distributed.World,
        callbacks: Sequence[Callback],
    ):
        self.config, self.out, self.vae, self.optimizer = config, out, vae, optimizer
        self.data, self.show_progress, self.log, self.world = data, progress, log, world
        self.device = data.train.device
        self.loss_fn = objective(config.objective, config.particles, vae.enumerates)
        self.steps = StepRunner(config, vae, optimizer, self.loss_fn, world, self.device, log)
        self.num_train = data.train.shape[0]
        self.steps_per_epoch = math.ceil(self.num_train / config.batch_size)
        self.metrics: list[dict[str, Any]] = []
        self.progress: EpochProgress | None = None
        self.should_stop = False
        self.saved_at = ""  # where the checkpoint on disk stands, for messages
        self.callbacks = CallbackList(callbacks)
        self.writes = BackgroundWriter()

    @property
    def checkpoint_path(self) -> Path:
        return self.out / runs.CHECKPOINT_FILE

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run(self, start: dict[str, Any]) -> None:
        """Train from ``start`` (see :meth:`start`, :meth:`restore`) to ``config.epochs``.
        A numerical fault goes to the callbacks' ``on_fault``; one of them may restore a
        checkpoint to go on from (:class:`~pyro_vae.training.callbacks.Rollback`)."""
        while True:
            try:
                with StopSignals(synced=self.world.size > 1) as stop, training_steps(self.vae):
                    self._epochs(start, stop)
                self.writes.wait()
                self.callbacks.call("on_train_end", self)
                return
            except NumericalError as fault:
                self.writes.wait()  # the checkpoint to roll back to is on disk
                start = self.callbacks.recover(self, fault)

    def start(self) -> dict[str, Any]:
        """Save the untrained state, so that there is a checkpoint from the very first step."""
        self.metrics, self.progress = [], None
        self._save(0, 0)
        return {"epoch": 0, "step": 0}

    def restore(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint's model, optimizer, RNG, metrics and callback states; return it
        as the start."""
        restore_state(self, checkpoint)
        self.metrics, self.progress = list(checkpoint["metrics"]), None
        self.saved_at = position(checkpoint["epoch"], checkpoint["step"], self.steps_per_epoch)
        return checkpoint

    def save_checkpoint(self) -> None:
        """Write the checkpoint of where training stands: at an epoch's end, or within an
        epoch with what resuming it needs (:class:`EpochProgress`)."""
        p = self.progress
        if p is None or p.ended:
            self._save(p.epoch if p else 0, 0)
        else:
            self._check_update(p.epoch, p.step, p.last_loss)
            self._save(p.epoch - 1, p.step, **p.in_progress())

    def write_checkpoint(self, state: dict[str, Any], file: str = runs.CHECKPOINT_FILE) -> None:
        """Check ``state`` (:func:`~pyro_vae.runs.check_finite`) and write a copy of it to
        ``file`` in the run directory in the background, while training goes on
        (:mod:`pyro_vae.training.writer`)."""
        path = self.out / file
        runs.check_finite(state, path)
        self.writes.submit(runs.write_checkpoint, path, copy.deepcopy(state))

    def _save(self, done: int, step: int, **in_progress: Any) -> None:
        if self.world.is_main:  # the other ranks' state is the same
            self.write_checkpoint(checkpoint_state(self, done, step, in_progress))
        self.saved_at = position(done, step, self.steps_per_epoch)

    def _epochs(self, start: dict[str, Any], stop: StopSignals) -> None:
        self.should_stop = False
        self.callbacks.call("on_train_start", self)
        if start["epoch"] == self.config.epochs:
            self.log(f"{self.out} has already trained all {self.config.epochs} epochs")
        for epoch in range(start["epoch"] + 1, self.config.epochs + 1):
            if self.should_stop:
                return
            self._epoch(epoch, stop, start if start["step"] else None)
            start = {"epoch": epoch, "step": 0}

    def _epoch(self, epoch: int, stop: StopSignals, partial: dict[str, Any] | None) -> None:
        """Train one epoch, or its rest when ``partial`` is a mid-epoch checkpoint of it."""
        self.vae.train()
        # The epoch's order comes from the RNG state at its start, so that a mid-epoch
        # resume draws it again identically instead of storing it.
        p = (
            EpochProgress.resumed(partial, self.steps_per_epoch)
            if partial
            else EpochProgress(epoch, self.steps_per_epoch, runs.rng_state())
        )
        if partial:
            set_rng(self.world, self.device, p.epoch_rng)
        self.progress = p
        order = torch.randperm(self.num_train, device=self.device)
        if partial:
            set_rng(self.world, self.device, partial["rng"])
        p.clipped = torch.as_tensor(p.clipped, dtype=torch.int64, device=self.device).clone()
        self._steps(order, stop)
        self._check_update(p.epoch, p.steps, p.last_loss)
        row = metrics_row(self)
        self.metrics.append(row)
        p.ended = True
        self.callbacks.call("on_epoch_end", self, row)
        if stop.signum:
            raise interrupted(stop.signum, self.saved_at, self.checkpoint_path)

    def _steps(self, order: torch.Tensor, stop: StopSignals) -> None:
        """The epoch's remaining optimizer steps."""
        p, first = self.progress, self.progress.step
        p.steps_started = time.perf_counter()
        size = self.config.batch_size
        with progress_bar(p, self.config.epochs, self.show_progress) as bar:
            for i in range(first, p.steps):
                self._step(order[i * size :][:size], stop, first)
                if self.show_progress and p.step % PROGRESS_EVERY == 0:
                    seen = min(self.num_train, p.step * self.config.batch_size)
                    bar.set_postfix(loss=f"{p.loss_sum / seen:.2f}")
                bar.update()
                if stop.signum:
                    self.save_checkpoint()
                    raise interrupted(stop.signum, self.saved_at, self.checkpoint_path)
                self.callbacks.on_step_end(self, (p.epoch - 1) * p.steps + p.step)
        p.train_seconds += time.perf_counter() - p.steps_started

    def _step(self, index: torch.Tensor, stop: StopSignals, first: int) -> None:
        """One optimizer step on the global batch of training images ``index``."""
        p, i = self.progress, self.progress.step
        global_step = (p.epoch - 1) * p.steps + i
        batch_size = index.shape[0]  # the global batch's
        # every rank draws the whole global batch's images, keeping the global RNG in step
        share = slice(self.world.rank, None, self.world.size)  # this rank's rows
        batch = self.data.training_batch(index)[share]
        inputs = self.vae.batch_inputs(batch, self.data.train_labels[index][share])
        beta = kl_weight(self.config, global_step, p.steps)
        loss, clipped, pending = self.steps.begin(inputs, beta, batch_size, global_step, stop)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            if i > first:  # was it the previous step's update?
                self._check_update(p.epoch, i, p.last_loss)
            raise self._fault("loss", p.epoch, i + 1, loss_value, batch)
        if pending:
            clipped = self.steps.finish(batch_size)
        if clipped is not None:
            p.clipped += clipped
        p.step, p.loss_sum, p.last_loss = i + 1, p.loss_sum + loss_value, loss_value

    def _check_update(self, epoch: int, step: int, loss: float) -> None:
        """Raise the fault of ``step`` (loss ``loss``) if its update left non-finite
        parameters, or non-finite optimizer state (Adam's second moment overflows for a
        gradient above ~1e19 while the parameters stay finite), before it is saved."""
        if nonfinite_update(self.steps.parameters):
            raise self._fault("gradient", epoch, step, loss)
        state = runs.nonfinite_entries(self.optimizer.state_dict()["state"])
        if state:  # "3.exp_avg_sq": the optimizer numbers the parameters in model order
            index, _, moment = state[0].partition(".")
            name = [name for name, _ in self.vae.named_parameters()][int(index)]
            what = f"optimizer state ({moment} of {name}, from a step since the last checkpoint)"
            raise self._fault(what, epoch, step, loss)

    def _fault(
        self, what: str, epoch: int, step: int, loss: float, batch: torch.Tensor | None = None
    ) -> NumericalError:
        return numerical_fault(
            what,
            f"epoch {epoch}, step {step} of {self.steps_per_epoch}",
            loss,
            f"the last good checkpoint ({self.saved_at}) is unchanged in {self.checkpoint_path}",
            self.lr if self.config.on_nan == "stop" else None,
            batch,
            self.world,
        )
