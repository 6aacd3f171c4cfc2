"""The training loop behind :func:`~pyro_vae.train` and ``pyro-vae train``.

One step is the differentiable ELBO of the model/guide pair (by default
:class:`~pyro_vae.inference.objectives.ReparamTrace_ELBO`: Trace_ELBO's value and gradient
without its host reads) followed by a plain, fused ``torch.optim.Adam`` step over the
VAE's parameters: the same objective as ``SVI(model, guide, pyro.optim.Adam,
Trace_ELBO())`` without SVI's per-parameter optimizers. Data stays on the device as
one tensor; batches are index slices of a fresh permutation each epoch. The loss is
read on the host once per step, for the running loss and the finiteness check. On
one GPU each full-batch step (objective, backward, clipping, update) is recorded
once as a CUDA graph and replayed (:mod:`pyro_vae.training.graphs`): Pyro's Python then
runs at capture only, and the step costs about what a hand-written one does.

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
  :class:`~pyro_vae.core.errors.TrainingInterrupted`;
* a non-finite loss or gradient is caught and named with its step (see
  :func:`~pyro_vae.training.guards.nonfinite_update`); training stops with
  :class:`~pyro_vae.core.errors.NumericalError` or, with ``on_nan="rollback"``,
  restores the last checkpoint and halves the learning rate;
* resuming is exact, also from the middle of an epoch: a mid-epoch checkpoint
  holds the RNG state of the epoch's start, so the epoch's binarized images and
  permutation are drawn again identically, then the RNG state after the last
  step is restored. On CPU a resumed run ends with the same parameters and
  metrics as an uninterrupted one.

Under ``torchrun`` (:mod:`pyro_vae.core.distributed`) every rank draws the same
epoch images and permutation from the global RNG, takes rows ``rank::world_size``
of each global batch, and sums its gradients with the other ranks' before the
non-finite check; its latent noise comes from a per-(step, rank) seed inside
``fork_rng``, so the global RNG, and with it rank 0's checkpoint, is the same on
every rank. Only rank 0 writes files, logs and shows progress.
"""

import math
import signal
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
from pyro_vae.core.errors import CheckpointError, ConfigError, NumericalError, TrainingInterrupted
from pyro_vae.core.seeding import seeded
from pyro_vae.data.images import ImageData
from pyro_vae.inference.estimators import bound_per_example
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.models.vae import VAE
from pyro_vae.training.callbacks import Callback, CallbackList
from pyro_vae.training.guards import (
    StopSignals,
    nonfinite_update,
    numerical_fault,
    training_steps,
)
from pyro_vae.training.steps import StepRunner

#: Seed of the validation ELBO's latent samples, so epochs and runs compare fairly.
EVAL_SEED = 12345
#: Progress-bar refresh interval in steps (each refresh reads the loss from the device).
PROGRESS_EVERY = 20
#: With ``on_nan="rollback"``, give up after this many rollbacks in one call (lr / 2**10).
MAX_ROLLBACKS = 10


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

    :param inputs: the model's arguments for the validation set, ``vae.batch_inputs(...)``.
    """
    was_training = vae.training
    vae.eval()
    with seeded(EVAL_SEED, inputs[0].device):
        bound = bound_per_example(vae.model, vae.guide, *inputs, num_particles=num_particles)
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


def check_position(checkpoint: dict[str, Any], path: Path, steps_per_epoch: int) -> None:
    """Raise :class:`CheckpointError` if ``checkpoint``'s position cannot be resumed."""
    done, step = checkpoint["epoch"], checkpoint["step"]
    if not (
        isinstance(done, int)
        and isinstance(step, int)
        and done >= 0
        and 0 <= step <= steps_per_epoch
    ):
        raise CheckpointError(f"{path} holds an impossible position: epoch {done}, step {step}")
    if step and not isinstance(checkpoint["loss_sum"], torch.Tensor):
        raise CheckpointError(f"{path} holds no running loss for its epoch in progress")
    bad = runs.nonfinite_entries({"model": checkpoint["model"]})
    if bad:
        raise CheckpointError(f"{path} holds non-finite parameters ({', '.join(bad[:3])})")


class Trainer:
    """The loop over epochs and steps, and the checkpoints that let it stop and resume.

    Everything around the loop is a :class:`~pyro_vae.training.callbacks.Callback`;
    the trainer calls them and holds what they read: ``config``, ``out``, ``vae``,
    ``optimizer``, ``data``, ``metrics``, ``world``, ``log`` and ``progress`` (the epoch
    in progress, an :class:`EpochProgress`).
    """

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
        self.loss_fn = OBJECTIVES[config.objective](config.particles)
        self.steps = StepRunner(config, vae, optimizer, self.loss_fn, world, self.device, log)
        self.num_train = data.train.shape[0]
        self.steps_per_epoch = math.ceil(self.num_train / config.batch_size)
        self.metrics: list[dict[str, Any]] = []
        self.progress: EpochProgress | None = None
        self.should_stop = False
        self.saved_at = ""  # where the checkpoint on disk stands, for messages
        self.callbacks = CallbackList(callbacks)
        taken = set(self.callbacks.keys()) & {*runs.CHECKPOINT_KEYS, *runs.MID_EPOCH_KEYS}
        if taken:
            raise ConfigError(f"callback state_key {sorted(taken)} is a checkpoint entry")

    @property
    def checkpoint_path(self) -> Path:
        return self.out / runs.CHECKPOINT_FILE

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run(self, start: dict[str, Any]) -> None:
        """Train from ``start`` (see :meth:`start`, :meth:`restore`) to ``config.epochs``;
        with ``on_nan="rollback"``, a numerical fault restarts from the last checkpoint."""
        rollbacks = 0
        while True:
            try:
                with StopSignals(synced=self.world.size > 1) as stop, training_steps(self.vae):
                    self._epochs(start, stop)
                self.callbacks.call("on_train_end", self)
                return
            except NumericalError as fault:
                if self.config.on_nan != "rollback" or not fault.recoverable:
                    raise
                if rollbacks == MAX_ROLLBACKS:
                    raise NumericalError(
                        f"{fault} (gave up after {MAX_ROLLBACKS} rollbacks, each halving the "
                        "learning rate; check the data and the model)",
                        recoverable=False,
                    ) from fault
                rollbacks += 1
                start = self._roll_back(fault)

    def _roll_back(self, fault: NumericalError) -> dict[str, Any]:
        """Restore the last checkpoint with half its learning rate; return it as the start."""
        self.world.barrier()  # rank 0 has finished writing the checkpoint
        checkpoint = runs.load_checkpoint(self.out, keys=runs.CHECKPOINT_KEYS)
        for group in checkpoint["optimizer"]["param_groups"]:
            group["lr"] /= 2
        start = self.restore(checkpoint)
        self.log(
            f"{str(fault).partition(';')[0]}: rolled back to the checkpoint "
            f"{self.saved_at} and halved the learning rate to {self.lr:.3g}"
        )
        return start

    def start(self) -> dict[str, Any]:
        """Save the untrained state, so that there is a checkpoint from the very first step."""
        self.metrics, self.progress = [], None
        self._save(0, 0)
        return {"epoch": 0, "step": 0}

    def restore(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint's model, optimizer, RNG, metrics and callback states; return it
        as the start."""
        path, done, step = self.checkpoint_path, checkpoint["epoch"], checkpoint["step"]
        if checkpoint["num_train"] != self.num_train:
            raise CheckpointError(
                f"cannot resume {self.out}: it was trained on {checkpoint['num_train']} images "
                f"per epoch, the data has {self.num_train}; use the same data"
            )
        check_position(checkpoint, path, self.steps_per_epoch)
        if step:  # checked here, used by _epoch: fail before anything is written
            self._set_rng(checkpoint["epoch_rng"])
        runs.restore(self.vae, checkpoint["model"], path)
        runs.restore(self.optimizer, checkpoint["optimizer"], path)
        self.steps.reset()  # the optimizer's state tensors are new, perhaps on another device
        self.callbacks.load_states(checkpoint)
        if self.config.lr != checkpoint["config"]["lr"]:  # --lr on resume replaces the saved
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr
        self._set_rng(checkpoint["rng"])
        self.metrics, self.progress = list(checkpoint["metrics"]), None
        self.saved_at = self._position(done, step)
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

    def _save(self, done: int, step: int, **epoch_in_progress: Any) -> None:
        if not self.world.is_main:  # the other ranks' state is the same
            self.saved_at = self._position(done, step)
            return
        state = {
            "format": runs.CHECKPOINT_FORMAT,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.callbacks.states(),
            "epoch": done,
            "step": step,
            "rng": runs.rng_state(),
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "num_train": self.num_train,
            **epoch_in_progress,
        }
        runs.save_checkpoint(self.out, state)
        self.saved_at = self._position(done, step)

    def _position(self, done: int, step: int) -> str:
        if step:
            return f"at epoch {done + 1}, step {step} of {self.steps_per_epoch}"
        return f"after epoch {done}" if done else "at the start of training"

    def _set_rng(self, state: dict[str, Any]) -> None:
        """Restore an RNG state from a checkpoint (rank 0's).

        Under ``torchrun`` on GPUs, rank 0 drew from ``cuda:0`` and this rank draws
        from its own GPU: rank 0's CUDA state goes to this rank's device, so all
        ranks draw the same epoch images and order again.
        """
        runs.set_rng_state(state)
        if self.world.size > 1 and self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"][0], self.device)

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
        # The epoch's images and order come from the RNG state at its start, so that a
        # mid-epoch resume draws them again identically instead of storing them.
        p = EpochProgress(epoch, self.steps_per_epoch, runs.rng_state())
        if partial:
            p.epoch_rng, p.step, p.seconds = (
                partial["epoch_rng"],
                partial["step"],
                partial["seconds"],
            )
            p.train_seconds = partial.get("train_seconds", 0.0)
            p.loss_sum, p.clipped = float(partial["loss_sum"]), partial.get("clipped_steps", 0)
            self._set_rng(p.epoch_rng)
        self.progress = p
        images = self.data.training_images()
        order = torch.randperm(self.num_train, device=self.device)
        if partial:
            self._set_rng(partial["rng"])
        p.clipped = torch.as_tensor(p.clipped, dtype=torch.int64, device=self.device).clone()
        self._steps(images, order, stop)
        row = self._metrics_row()
        self.callbacks.call("on_epoch_end", self, row)
        if stop.signum:
            raise self._interrupted(stop.signum)

    def _steps(self, images: torch.Tensor, order: torch.Tensor, stop: StopSignals) -> None:
        """The epoch's remaining optimizer steps."""
        p, config = self.progress, self.config
        bar = tqdm(
            total=p.steps,
            initial=p.step,
            desc=f"epoch {p.epoch}/{config.epochs}",
            leave=False,
            disable=not self.show_progress,
            unit="step",
        )
        p.steps_started = time.perf_counter()
        first = p.step
        with bar:
            for i in range(first, p.steps):
                global_step = (p.epoch - 1) * p.steps + i
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                batch_size = index.shape[0]  # the global batch's
                index = index[self.world.rank :: self.world.size]  # this rank's share
                batch = images[index]
                inputs = self.vae.batch_inputs(batch, self.data.train_labels[index])
                beta = kl_weight(config, global_step, p.steps)
                loss, clipped, pending = self.steps.begin(
                    inputs, beta, batch_size, global_step, stop
                )
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
                if self.show_progress and p.step % PROGRESS_EVERY == 0:
                    seen = min(self.num_train, p.step * config.batch_size)
                    bar.set_postfix(loss=f"{p.loss_sum / seen:.2f}")
                bar.update()
                if stop.signum:
                    self.save_checkpoint()
                    raise self._interrupted(stop.signum)
                self.callbacks.on_step_end(self, global_step + 1)
        p.train_seconds += time.perf_counter() - p.steps_started

    def _metrics_row(self) -> dict[str, Any]:
        """The ended epoch's metrics row, appended to ``metrics``."""
        p, config, spe = self.progress, self.config, self.steps_per_epoch
        self._check_update(p.epoch, spe, p.last_loss)
        val_inputs = self.vae.batch_inputs(self.data.val, self.data.val_labels)
        row = {
            "epoch": p.epoch,
            "train_loss": p.loss_sum / self.num_train,
            "val_elbo": validation_bound(self.vae, *val_inputs),
            "beta": kl_weight(config, p.epoch * spe - 1, spe),
            "lr": self.lr,
            "seconds": p.seconds + time.perf_counter() - p.started,
            # the training steps alone (no validation, no checkpoint): throughput
            "train_seconds": p.train_seconds,
        }
        if config.objective == "iwae":  # select models by the bound they are trained on
            row["val_iwae"] = validation_bound(
                self.vae, *val_inputs, num_particles=config.particles
            )
        if config.clip_grad_norm is not None:
            row["clipped_steps"] = int(p.clipped)
        self.metrics.append(row)
        p.ended = True
        return row

    def _check_update(self, epoch: int, step: int, loss: float) -> None:
        """Raise the fault of ``step`` (whose loss was ``loss``) when its update left
        non-finite parameters (:func:`~pyro_vae.training.guards.nonfinite_update`)."""
        if nonfinite_update(self.steps.parameters):
            raise self._fault("gradient", epoch, step, loss)

    def _fault(
        self, what: str, epoch: int, step: int, loss: float, batch: torch.Tensor | None = None
    ) -> NumericalError:
        advice = (
            f". Continue with --resume and a lower --lr (now {self.lr:g}), or with "
            "--on-nan rollback to halve it automatically"
            if self.config.on_nan == "stop"
            else ""
        )
        return numerical_fault(
            what,
            f"epoch {epoch}, step {step} of {self.steps_per_epoch}",
            loss,
            f"the last good checkpoint ({self.saved_at}) is unchanged in {self.checkpoint_path}",
            advice,
            batch,
            self.world,
        )

    def _interrupted(self, signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} {self.saved_at}; the checkpoint is saved "
            f"in {self.checkpoint_path}; continue with the same command plus --resume",
            signum,
        )
