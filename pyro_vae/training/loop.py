"""The training loop behind ``pyro-vae train``.

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

After every epoch the validation ELBO (single sample, fixed seed) steps the
learning-rate schedule (:mod:`pyro_vae.inference.schedules`), and the model of the best
epoch so far is written to ``best.pt``; with ``patience`` training stops once
the validation ELBO has not improved for that many epochs (early stopping), and
``load_run``/``evaluate`` then use ``best.pt``. A run trained on the IWAE bound
is judged by its validation IWAE bound instead (:func:`~pyro_vae.runs.validation_score`).
A run may start from another run's model (``init_from``: fine-tuning).

Nothing trained is lost:

* a checkpoint is written atomically before the first step, at the end of every
  epoch and every ``checkpoint_every`` steps, so SIGKILL at any moment leaves
  one to resume from;
* SIGINT/SIGTERM stop after the current step, save, and raise
  :class:`~pyro_vae.core.errors.TrainingInterrupted`;
* a non-finite loss or gradient is caught and named with its step (see
  :func:`nonfinite_update`); training stops with :class:`~pyro_vae.core.errors.NumericalError`
  or, with ``on_nan="rollback"``, restores the last checkpoint and halves the
  learning rate;
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
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import runs
from pyro_vae.config import DATA_FIELDS, TrainConfig, resolve_device
from pyro_vae.core import distributed
from pyro_vae.core.errors import (
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    NumericalError,
    TrainingInterrupted,
)
from pyro_vae.core.files import remove_stale_temporaries
from pyro_vae.core.seeding import derived_seed, seeded
from pyro_vae.data.images import ImageData
from pyro_vae.inference.estimators import bound_per_example
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.inference.schedules import LR_SCHEDULES
from pyro_vae.models.vae import VAE, without_param_statements
from pyro_vae.training.graphs import CapturedStep, GraphCaptureError, skip_update_unless_finite

#: Seed of the validation ELBO's latent samples, so epochs and runs compare fairly.
EVAL_SEED = 12345
#: Options that may change when a run is resumed.
RESUMABLE_CHANGES = (
    "epochs",
    "device",
    "data_root",
    "lr",
    "checkpoint_every",
    "on_nan",
    "patience",
    "clip_grad_norm",
    "cuda_graph",
)
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


def nonfinite_update(parameters: Sequence[torch.Tensor]) -> bool:
    """Whether an Adam step left NaN/infinite parameters: its gradient was not finite.

    The per-step check reads only the loss, which the running loss needs anyway;
    scanning every gradient before each step cost 0.1-0.5 ms a step (issue 7). A
    non-finite gradient with a finite loss is still caught, one step later, and named
    with its own step: Adam turns an infinite or NaN gradient into NaN parameters,
    NaN propagates through every network here (``0 * nan`` is NaN), so the next loss is
    NaN, and this test on the parameters then tells a bad update from a bad loss. It
    also runs before every checkpoint, so a bad last step is never saved.
    """
    return bool(runs.nonfinite_entries(list(parameters)))


def uses_cuda_graphs(config: TrainConfig, device: torch.device, world: distributed.World) -> bool:
    """Whether the training steps are replayed from a CUDA graph (:mod:`pyro_vae.training.graphs`):
    on one GPU, unless ``config.cuda_graph`` is off."""
    return config.cuda_graph and device.type == "cuda" and world.size == 1


@contextmanager
def training_steps(vae: VAE) -> Iterator[None]:
    """How the steps run: without Pyro's validation and without ``pyro.param`` statements.

    Validation is off so that a NaN reaches the loss, where the training loop
    reports it with its step (Pyro's distribution validation would raise a bare
    ``ValueError`` deep in the forward pass, and ``warn_if_nan`` print a warning),
    and because its per-step checks (argument and support checks, model/guide
    site matching, NaN scans) cost time on every step; :func:`check_model_and_guide`
    runs them once before training instead. The parameters are optimized by a
    torch optimizer, so Pyro's param statements are skipped too
    (:func:`~pyro_vae.models.vae.without_param_statements`).
    """
    with pyro.validation_enabled(False), without_param_statements(vae), warnings.catch_warnings():
        # Pyro's ELBOs (analytic-kl's TraceMeanField_ELBO) check the loss for NaN even
        # without validation
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        yield


def check_model_and_guide(vae: VAE, loss_fn: Callable[..., torch.Tensor], data: ImageData) -> None:
    """One objective evaluation with all of Pyro's validation on, on two validation examples
    (prepared like training batches), before training starts: a bad distribution argument
    fails with Pyro's message, and a model/guide site mismatch (which Pyro only warns about,
    and which would train the wrong objective) is a :class:`ConfigError`. The global RNG is
    left as it was (resuming stays exact)."""
    with (
        pyro.validation_enabled(True),
        seeded(0, data.val.device),
        torch.no_grad(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        loss_fn(vae.model, vae.guide, *vae.batch_inputs(data.val[:2], data.val_labels[:2]))
    messages = [str(warning.message).replace("\n", " ") for warning in caught]
    mismatches = [text for text in messages if "but not guide" in text or "but not model" in text]
    if mismatches:
        raise ConfigError(
            f"the model and guide of {type(vae).__name__} do not match ({'; '.join(mismatches)}); "
            "every latent sample site of the model needs a guide site of the same name"
        )
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


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


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> dict | None:
    """Create ``out`` or check it for resuming; return the checkpoint to resume from."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    has_checkpoint = (out / runs.CHECKPOINT_FILE).exists()
    if not resume:
        if has_checkpoint:
            raise ConfigError(
                f"{out} already holds a trained run; pass --resume to continue it, "
                "or choose another --out"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the run directory {out} ({error}); choose another --out"
            ) from error
        return None
    if not has_checkpoint:
        raise CheckpointError(
            f"--resume was given but {out} holds no checkpoint; drop --resume to start"
        )
    checkpoint = runs.load_checkpoint(out, keys=runs.CHECKPOINT_KEYS)
    saved = runs.checkpoint_config(checkpoint, out)
    changed = saved.differences(config, ignore=(*RESUMABLE_CHANGES, *DATA_FIELDS))
    if changed:
        listed = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot resume {out}: its configuration differs ({listed}); "
            "keep the saved values (on the command line, leave those options out) or choose "
            "another --out"
        )
    done, step = checkpoint["epoch"], checkpoint["step"]
    if done > config.epochs or (done == config.epochs and step):
        raise ConfigError(
            f"{out} has already trained {done} epochs{f' and {step} steps' if step else ''}; "
            f"pass --epochs {done + 1} or more to continue it"
        )
    return checkpoint


def _training_data(config: TrainConfig, data: ImageData | None, device: torch.device) -> ImageData:
    """``data`` on ``device``, or the configured dataset loaded there."""
    if data is None:
        return config.load_data(device)
    if not isinstance(data, ImageData):
        raise ConfigTypeError(
            f"data must be an ImageData (see pyro_vae.load_images), got {type(data).__name__}"
        )
    if config.subset is not None:
        raise ConfigError(
            "subset selects from a loaded dataset and cannot apply to data passed in; "
            "slice the ImageData yourself or leave subset=None"
        )
    return data.to(device)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> VAE:
    """Train a VAE as ``config`` says, writing the run to ``out``; return the model.

    :param resume: continue the run in ``out`` from its last checkpoint, also one
        taken mid-epoch (with RNG state restored, so the result is identical to an
        uninterrupted run on CPU). A missing, damaged or mismatched checkpoint is
        a :class:`~pyro_vae.core.errors.CheckpointError`, never a silent fresh start.
    :param data: images to use instead of loading ``config.dataset``.
    :param progress: show a progress bar per epoch.
    :param log: receives the one-line summary of each epoch, and of each rollback.
    :raises NumericalError: on a non-finite loss or gradient (the checkpoint on disk
        is the last good one).
    :raises TrainingInterrupted: on SIGINT/SIGTERM, after saving a checkpoint.

    Launched by ``torchrun`` with several processes, this trains one model
    data-parallel (see :mod:`pyro_vae.core.distributed`); every rank gets the model.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    out = Path(out)
    world, device = distributed.init(resolve_device(config.device))
    checkpoint = _prepare_run_dir(out, config, resume)
    world.barrier()  # every rank has checked ``out`` before rank 0 writes to it
    if world.is_main:
        remove_stale_temporaries(out / runs.CHECKPOINT_FILE)
    progress, rank_log = progress and world.is_main, world.main_only(log)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)

    data = _training_data(config, data, device)
    config.image_shape = data.image_shape
    config.num_classes = len(data.class_names)
    if checkpoint is not None and tuple(checkpoint["config"]["image_shape"]) != data.image_shape:
        raise CheckpointError(
            f"cannot resume {out}: it was trained on images of shape "
            f"{tuple(checkpoint['config']['image_shape'])}, the data has {data.image_shape}"
        )
    if data.train.shape[0] < config.batch_size:
        raise ConfigError(
            f"batch-size {config.batch_size} is larger than the {data.train.shape[0]} training "
            "images; lower --batch-size"
        )

    vae = config.build_vae().to(device)
    for name, images in (("training", data.train), ("validation", data.val)):
        vae.likelihood.validate(images, f"the {name} images")
    if checkpoint is None and config.init_from is not None:
        rank_log(f"initialized from {runs.initialize_from(vae, config)}")
    # fused: one kernel for all parameters instead of ~5 per parameter; on a 2-core CPU
    # this is most of the gap to a hand-written PyTorch loop (docs/benchmarks.md).
    optimizer = torch.optim.Adam(
        vae.parameters(),
        lr=config.lr,
        fused=True,
        weight_decay=config.weight_decay,
        decoupled_weight_decay=True,  # AdamW's decay
    )
    trainer = _Trainer(config, out, vae, optimizer, data, progress, rank_log, world)
    check_model_and_guide(vae, trainer.loss_fn, data)
    # A checkpoint is checked through before anything in ``out`` is written.
    start = trainer.restore(checkpoint) if checkpoint is not None else None
    if world.is_main:
        runs.save_config(out, config)
    if start is None:
        start = trainer.start()
    else:
        rank_log(f"resuming {out} {trainer.saved_at}")
    rank_log(_summary(config, vae, data, device))
    trainer.run(start)
    return vae.eval()


def _summary(config: TrainConfig, vae: VAE, data: ImageData, device: torch.device) -> str:
    """What is trained on what, in one line for the start of a run."""
    shape = "x".join(map(str, data.image_shape))
    parameters = sum(p.numel() for p in vae.parameters())
    prior = "learned conditional prior" if config.learns_prior else f"{config.prior} prior"
    return (
        f"{config.model} ({config.arch} networks, {prior}, {config.likelihood} likelihood): "
        f"{parameters:,} parameters; {data.train.shape[0]:,} training and "
        f"{data.val.shape[0]:,} validation images ({shape}) on {device}"
    )


class _StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step.

    A second signal aborts at once with :class:`KeyboardInterrupt` (the
    checkpoint on disk, written atomically, stays intact). Outside the main
    thread signals cannot be caught and are left alone. With ``synced`` (several
    ranks) a signal is only ``received``; the training step shares it with the
    other ranks and sets ``signum`` on all of them at the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, synced: bool = False):
        self.synced = synced

    def __enter__(self) -> "_StopSignals":
        self.signum: int | None = None
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if not self.synced:
            self.signum = signum

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _Trainer:
    """The loop over epochs and steps, and the checkpoints that let it stop and resume."""

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        vae: VAE,
        optimizer: torch.optim.Optimizer,
        data: ImageData,
        progress: bool,
        log: Callable[[str], None],
        world: distributed.World = distributed.SINGLE,
    ):
        self.config, self.out, self.vae, self.optimizer = config, out, vae, optimizer
        self.data, self.progress, self.log, self.world = data, progress, log, world
        self.device = data.train.device
        self.parameters = [p for p in vae.parameters() if p.requires_grad]
        self.loss_fn = OBJECTIVES[config.objective](config.particles)
        self.scheduler = LR_SCHEDULES[config.lr_schedule](
            optimizer, config.lr_decay, config.lr_patience
        )
        self.num_train = data.train.shape[0]
        self.steps_per_epoch = math.ceil(self.num_train / config.batch_size)
        self.metrics: list[dict[str, Any]] = []
        self.saved_at = ""  # where the checkpoint on disk stands, for messages
        self.captures = uses_cuda_graphs(config, self.device, world)
        self.captured: CapturedStep | None = None
        self.captured_lr = math.nan
        self._set_capturable()

    @property
    def checkpoint_path(self) -> Path:
        return self.out / runs.CHECKPOINT_FILE

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _position(self, done: int, step: int) -> str:
        if step:
            return f"at epoch {done + 1}, step {step} of {self.steps_per_epoch}"
        return f"after epoch {done}" if done else "at the start of training"

    def run(self, start: dict[str, Any]) -> None:
        """Train from ``start`` (see :meth:`start`, :meth:`restore`) to ``config.epochs``."""
        rollbacks = 0
        while True:
            try:
                with _StopSignals(synced=self.world.size > 1) as stop, training_steps(self.vae):
                    self._epochs(start, stop)
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
                self.world.barrier()  # rank 0 has finished writing the checkpoint
                checkpoint = runs.load_checkpoint(self.out, keys=runs.CHECKPOINT_KEYS)
                for group in checkpoint["optimizer"]["param_groups"]:
                    group["lr"] /= 2
                start = self.restore(checkpoint)
                self.log(
                    f"{str(fault).partition(';')[0]}: rolled back to the checkpoint "
                    f"{self.saved_at} and halved the learning rate to {self.lr:.3g}"
                )

    def start(self) -> dict[str, Any]:
        """Save the untrained state, so that there is a checkpoint from the very first step."""
        self.metrics = []
        if self.world.is_main:
            runs.write_metrics(self.out, [])
        self._save(0, 0)
        return {"epoch": 0, "step": 0}

    def restore(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint's model, optimizer, RNG and metrics; return it as the start."""
        path = self.checkpoint_path
        done, step = checkpoint["epoch"], checkpoint["step"]
        if checkpoint["num_train"] != self.num_train:
            raise CheckpointError(
                f"cannot resume {self.out}: it was trained on {checkpoint['num_train']} images "
                f"per epoch, the data has {self.num_train}; use the same data"
            )
        if not (
            isinstance(done, int)
            and isinstance(step, int)
            and done >= 0
            and 0 <= step <= self.steps_per_epoch
        ):
            raise CheckpointError(f"{path} holds an impossible position: epoch {done}, step {step}")
        if step and not isinstance(checkpoint["loss_sum"], torch.Tensor):
            raise CheckpointError(f"{path} holds no running loss for its epoch in progress")
        if step:  # checked here, used by _epoch: fail before anything is written
            self._set_rng(checkpoint["epoch_rng"])
        saved_lr = checkpoint["config"]["lr"]
        runs.restore(self.vae, checkpoint["model"], path)
        runs.restore(self.optimizer, checkpoint["optimizer"], path)
        self._set_capturable()  # as saved, perhaps by this run on another device
        self.captured = None  # it holds the replaced optimizer state tensors
        if checkpoint.get("scheduler"):  # absent from checkpoints of older pyro-vae versions
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.config.lr != saved_lr:  # --lr changed on resume: it replaces the saved one
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr
        bad = runs.nonfinite_entries({"model": checkpoint["model"]})
        if bad:
            raise CheckpointError(f"{path} holds non-finite parameters ({', '.join(bad[:3])})")
        self._set_rng(checkpoint["rng"])
        self.metrics = list(checkpoint["metrics"])
        if self.world.is_main:
            runs.write_metrics(self.out, self.metrics)
        self.saved_at = self._position(done, step)
        return checkpoint

    def _set_rng(self, state: dict[str, Any]) -> None:
        """Restore an RNG state from a checkpoint (rank 0's).

        Under ``torchrun`` on GPUs, rank 0 drew from ``cuda:0`` and this rank draws
        from its own GPU: rank 0's CUDA state goes to this rank's device, so all
        ranks draw the same epoch images and order again.
        """
        runs.set_rng_state(state)
        if self.world.size > 1 and self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"][0], self.device)

    def _save(self, done: int, step: int, **epoch_in_progress: Any) -> None:
        if not self.world.is_main:  # the other ranks' state is the same
            self.saved_at = self._position(done, step)
            return
        runs.save_checkpoint(
            self.out,
            {
                "format": runs.CHECKPOINT_FORMAT,
                "model": self.vae.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": done,
                "step": step,
                "rng": runs.rng_state(),
                "config": self.config.to_dict(),
                "metrics": self.metrics,
                "num_train": self.num_train,
                **epoch_in_progress,
            },
        )
        self.saved_at = self._position(done, step)

    def _epochs(self, start: dict[str, Any], stop: _StopSignals) -> None:
        if start["epoch"] == self.config.epochs:
            self.log(f"{self.out} has already trained all {self.config.epochs} epochs")
        for epoch in range(start["epoch"] + 1, self.config.epochs + 1):
            if self._stopped_early():
                return
            self._epoch(epoch, stop, start if start["step"] else None)
            start = {"epoch": epoch, "step": 0}

    def _stopped_early(self) -> bool:
        """Early stopping: the validation score has not improved for ``patience`` epochs."""
        if not runs.stopped_early(self.metrics, self.config.patience):
            return False
        best = runs.best_epoch(self.metrics)
        self.log(
            f"early stopping after epoch {self.metrics[-1]['epoch']}: no better validation "
            f"{runs.validation_name(best)} for {runs.epochs_without_improvement(self.metrics)} "
            f"epochs; best {runs.validation_score(best):.2f} at epoch {best['epoch']} "
            f"(in {self.out / runs.BEST_FILE})"
        )
        return True

    def _epoch(self, epoch: int, stop: _StopSignals, partial: dict[str, Any] | None) -> None:
        """Train one epoch, or its rest when ``partial`` is a mid-epoch checkpoint of it."""
        config, spe = self.config, self.steps_per_epoch
        started = time.perf_counter()
        self.vae.train()
        # The epoch's images and order come from the RNG state at its start, so that a
        # mid-epoch resume draws them again identically instead of storing them.
        epoch_rng = partial["epoch_rng"] if partial else runs.rng_state()
        if partial:
            self._set_rng(epoch_rng)
        images = self.data.training_images()
        order = torch.randperm(self.num_train, device=self.device)
        first, loss_sum, seconds, train_seconds = 0, 0.0, 0.0, 0.0
        last_loss = math.nan  # the previous step's loss
        # steps whose gradient was clipped, counted on the device (no host read per step)
        clipped = torch.zeros((), dtype=torch.int64, device=self.device)
        if partial:
            self._set_rng(partial["rng"])
            first, seconds = partial["step"], partial["seconds"]
            train_seconds = partial.get("train_seconds", 0.0)
            loss_sum = float(partial["loss_sum"])
            clipped += partial.get("clipped_steps", 0)

        bar = tqdm(
            total=spe,
            initial=first,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not self.progress,
            unit="step",
        )
        steps_started = time.perf_counter()
        with bar:
            for i in range(first, spe):
                global_step = (epoch - 1) * spe + i
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                batch_size = index.shape[0]  # the global batch's
                index = index[self.world.rank :: self.world.size]  # this rank's share
                batch = images[index]
                inputs = self.vae.batch_inputs(batch, self.data.train_labels[index])
                beta = kl_weight(config, global_step, spe)
                replayed = self._replayed_step(inputs, beta, batch_size)
                if replayed is None:  # an eager step: the update follows the check below
                    loss, was_clipped = self._gradient(inputs, beta, global_step, stop), None
                else:  # a graph's: the update is done, or skipped if the loss is not finite
                    loss, was_clipped = replayed
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    if i > first:  # was it the previous step's update?
                        self._check_update(epoch, i, last_loss)
                    raise self._fault("loss", epoch, i + 1, loss_value, batch)
                if replayed is None:
                    was_clipped = self._apply_update(batch_size)
                if was_clipped is not None:
                    clipped += was_clipped
                loss_sum, last_loss = loss_sum + loss_value, loss_value
                if self.progress and (i + 1) % PROGRESS_EVERY == 0:
                    seen = min(self.num_train, (i + 1) * config.batch_size)
                    bar.set_postfix(loss=f"{loss_sum / seen:.2f}")
                bar.update()
                every = config.checkpoint_every
                if stop.signum or (every and (global_step + 1) % every == 0 and i + 1 < spe):
                    self._check_update(epoch, i + 1, loss_value)
                    now = time.perf_counter()
                    loss_sum_tensor = torch.tensor(loss_sum, dtype=torch.float64)
                    self._save(
                        epoch - 1,
                        i + 1,
                        epoch_rng=epoch_rng,
                        loss_sum=loss_sum_tensor,
                        seconds=seconds + now - started,
                        train_seconds=train_seconds + now - steps_started,
                        clipped_steps=int(clipped),
                    )
                    if stop.signum:
                        raise self._interrupted(stop.signum)

        train_seconds += time.perf_counter() - steps_started
        self._check_update(epoch, spe, last_loss)
        val_inputs = self.vae.batch_inputs(self.data.val, self.data.val_labels)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / self.num_train,
            "val_elbo": validation_bound(self.vae, *val_inputs),
            "beta": kl_weight(config, epoch * spe - 1, spe),
            "lr": self.lr,
            "seconds": seconds + time.perf_counter() - started,
            # the training steps alone (no validation, no checkpoint): throughput
            "train_seconds": train_seconds,
        }
        if config.objective == "iwae":  # select models by the bound they are trained on
            row["val_iwae"] = validation_bound(
                self.vae, *val_inputs, num_particles=config.particles
            )
        if config.clip_grad_norm is not None:
            row["clipped_steps"] = int(clipped)
        best = runs.best_epoch(self.metrics)
        self.metrics.append(row)
        score = runs.validation_score(row)
        self.scheduler.step(score)
        if self.world.is_main and (best is None or score > runs.validation_score(best)):
            # before the checkpoint: a crash in between retrains this epoch, identically
            runs.save_checkpoint(
                self.out,
                {
                    "model": self.vae.state_dict(),
                    "epoch": epoch,
                    "val_elbo": row["val_elbo"],
                    "config": self.config.to_dict(),
                },
                file=runs.BEST_FILE,
            )
        self._save(epoch, 0)
        if self.world.is_main:
            runs.append_metrics(self.out, row)
        self.log(
            f"epoch {epoch}/{config.epochs}  train_loss {row['train_loss']:.2f}  "
            f"val_elbo {row['val_elbo']:.2f}"
            + (f"  val_iwae {row['val_iwae']:.2f}" if "val_iwae" in row else "")
            + f"  beta {row['beta']:.3g}  {row['seconds']:.1f}s"
            + (f"  clipped {row['clipped_steps']}/{spe}" if "clipped_steps" in row else "")
        )
        if stop.signum:
            raise self._interrupted(stop.signum)

    def _set_capturable(self) -> None:
        """Adam's steps may be captured in a graph exactly when this trainer uses graphs."""
        for group in self.optimizer.param_groups:
            group["capturable"] = self.captures

    def _replayed_step(
        self, inputs: tuple[torch.Tensor, ...], beta: float, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The step replayed from a CUDA graph: its loss and whether it was clipped (device
        tensors); None where the step runs eagerly instead.

        Graphs are used on a single GPU (``config.cuda_graph``) for full batches; a short
        last batch runs eagerly, as does everything once a step cannot be captured (an
        objective that reads values on the host, such as ``analytic-kl``'s NaN warning):
        that is logged, and training goes on without graphs.
        """
        if not (self.captures and batch_size == self.config.batch_size):
            return None
        try:
            return self._captured_step()(*inputs, torch.full((), beta, device=self.device))
        except GraphCaptureError as error:
            self.captures = False
            self.log(f"training without CUDA graphs: the step could not be captured ({error})")
            return None

    def _captured_step(self) -> CapturedStep:
        """The graph of a full-batch step at the current learning rate, which the fused Adam
        update holds as a constant: a new one after the schedule changes it or a restore
        replaces the optimizer's state tensors (:meth:`restore` drops the old one).

        The graph updates the parameters before the host sees the loss, so a non-finite
        loss skips the update on the device
        (:func:`~pyro_vae.training.graphs.skip_update_unless_finite`): the parameters stay those of
        the last good step, as when an eager step stops before its update.
        """
        if self.captured is None or self.captured_lr != self.lr:
            batch_size = self.config.batch_size

            def step(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
                loss = self._gradient(tensors[:-1], tensors[-1], 0, None)
                with skip_update_unless_finite(self.optimizer, loss):
                    return loss, self._apply_update(batch_size)

            self.captured, self.captured_lr = CapturedStep(step), self.lr
        return self.captured

    def _gradient(
        self,
        inputs: tuple[torch.Tensor, ...],
        beta: float | torch.Tensor,
        global_step: int,
        stop: _StopSignals | None,
    ) -> torch.Tensor:
        """The loss of the global batch (detached), its gradient in the parameters (summed
        over ranks)."""
        loss = self._loss(inputs, beta, global_step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self._sum_over_ranks(loss.detach(), stop)

    def _apply_update(self, batch_size: int) -> torch.Tensor | None:
        """Clip the gradient (if configured) and take the optimizer step; return whether it
        was clipped, as a device tensor (None without clipping)."""
        clipped = (
            self._clip_gradients(batch_size) if self.config.clip_grad_norm is not None else None
        )
        self.optimizer.step()
        return clipped

    def _loss(
        self, inputs: tuple[torch.Tensor, ...], beta: float | torch.Tensor, global_step: int
    ) -> torch.Tensor:
        """The objective summed over a batch (``inputs``: this rank's share of the global batch).

        With several ranks the latent noise comes from a forked RNG seeded by (seed,
        step, rank): the ranks draw different noise but consume the global RNG (the
        epoch's images and order) identically. A rank whose share of a last, short
        batch is empty contributes zero.
        """
        if self.world.size == 1:
            return self.loss_fn(self.vae.model, self.vae.guide, *inputs, beta=beta)
        if inputs[0].shape[0] == 0:
            return torch.zeros((), device=self.device, requires_grad=True)
        seed = derived_seed(self.config.seed, global_step, self.world.rank)
        with seeded(seed, self.device):
            return self.loss_fn(self.vae.model, self.vae.guide, *inputs, beta=beta)

    def _clip_gradients(self, batch_size: int) -> torch.Tensor:
        """Scale the gradient down to norm ``clip_grad_norm * batch_size`` when it is
        larger: the loss is summed over the batch, so this bounds the gradient of the
        per-example loss. Returns whether it was clipped, as a device tensor."""
        limit = self.config.clip_grad_norm * batch_size
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, limit)
        return norm > limit

    def _sum_over_ranks(self, loss: torch.Tensor, stop: _StopSignals | None) -> torch.Tensor:
        """With several ranks: sum the loss, the gradients and the stop requests over ranks
        (one all-reduce), so every rank takes the same step, sees the same non-finite check
        and stops at the same step; return the global batch's loss."""
        if self.world.size == 1:
            return loss
        for p in self.parameters:  # an empty last shard leaves gradients unset
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flags = torch.tensor([float(stop.received is not None)], device=loss.device)
        total = loss.detach().reshape(1)
        self.world.sum_([total, flags, *(p.grad for p in self.parameters)])
        if flags.item() and stop.signum is None:
            stop.signum = stop.received or signal.SIGTERM
        return total[0]

    def _check_update(self, epoch: int, step: int, loss: float) -> None:
        """Raise the fault of ``step`` (whose loss was ``loss``) when its update left
        non-finite parameters (:func:`nonfinite_update`)."""
        if nonfinite_update(self.parameters):
            raise self._fault("gradient", epoch, step, loss)

    def _fault(
        self, what: str, epoch: int, step: int, loss: float, batch: torch.Tensor | None = None
    ) -> NumericalError:
        """The error for a non-finite ``what`` ("loss" or "gradient") at ``step``, diagnosed
        (this path is rare, so checks are cheap): a non-finite loss whose ``batch`` holds
        NaN is the data's fault, and no rollback can fix it."""
        where = f"epoch {epoch}, step {step} of {self.steps_per_epoch}"
        kept = f"the last good checkpoint ({self.saved_at}) is unchanged in {self.checkpoint_path}"
        bad_data = torch.zeros(1, device=self.device)
        if batch is not None:  # did any rank's share of the batch hold NaN? (every rank is here)
            bad_data[0] = float(not bool(torch.isfinite(batch).all()))
            self.world.sum_([bad_data])
        if bad_data.item():
            return NumericalError(
                f"non-finite {what} at {where}: the training batch holds NaN or infinite "
                f"values; {kept}. Fix the data, then continue with --resume",
                recoverable=False,
            )
        advice = (
            f". Continue with --resume and a lower --lr (now {self.lr:g}), or with "
            "--on-nan rollback to halve it automatically"
            if self.config.on_nan == "stop"
            else ""
        )
        return NumericalError(
            f"non-finite {what} (loss {loss:g}) at {where}; training stopped and {kept}{advice}"
        )

    def _interrupted(self, signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} {self.saved_at}; the checkpoint is saved "
            f"in {self.checkpoint_path}; continue with the same command plus --resume",
            signum,
        )
