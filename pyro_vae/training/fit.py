"""``train``: from a configuration to a trained model in a run directory.

It prepares what the loop (:class:`~pyro_vae.training.loop.Trainer`) needs: the run
directory (new, or checked against its checkpoint for resuming), the data on the
device, the model (fresh or initialized from another run), the optimizer and the
callbacks, then runs the loop.
"""

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import pyro
import torch

from pyro_vae import runs
from pyro_vae.config import DATA_FIELDS, TrainConfig, resolve_device
from pyro_vae.core import distributed
from pyro_vae.core.errors import CheckpointError, ConfigError, ConfigTypeError
from pyro_vae.core.files import make_directory, remove_stale_temporaries
from pyro_vae.data.images import ImageData, keep_labels, repeat_labelled
from pyro_vae.data.tables import TableData
from pyro_vae.inference.schedules import LR_SCHEDULES
from pyro_vae.models.semisupervised import kingma_classifier_weight
from pyro_vae.models.vae import VAE
from pyro_vae.training.callbacks import Callback, ordered_callbacks
from pyro_vae.training.guards import check_model_and_guide
from pyro_vae.training.loop import Trainer
from pyro_vae.training.resources import check_model_fits, is_out_of_memory, out_of_memory

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
    "record_forward",
)


def _checked_arguments(config: TrainConfig, out: str | Path) -> Path:
    """``out`` as a path, once ``config`` and ``out`` are of the kinds :func:`train` takes."""
    if not isinstance(config, TrainConfig):
        raise ConfigTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not str(out).strip():
        raise ConfigError("`out` is empty; name the run directory to write")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`out` {out} is a file, not a directory; choose another `out`")
    return out


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
) -> VAE:
    """Train a VAE as ``config`` says, writing the run to ``out``; return the model.

    :param resume: continue the run in ``out`` from its last checkpoint, also one
        taken mid-epoch (with RNG state restored, so the result is identical to an
        uninterrupted run on CPU). A missing, damaged or mismatched checkpoint is
        a :class:`~pyro_vae.core.errors.CheckpointError`, never a silent fresh start.
    :param data: images to use instead of loading ``config.dataset``.
    :param progress: show a progress bar per epoch.
    :param log: receives the one-line summary of each epoch, and of each rollback.
    :param callbacks: :class:`~pyro_vae.training.callbacks.Callback` objects, run with the
        built-in ones (:func:`~pyro_vae.training.callbacks.ordered_callbacks` says in which
        order), e.g. :class:`~pyro_vae.training.loggers.TensorBoardLogger`.
    :raises NumericalError: on a non-finite loss or gradient (the checkpoint on disk
        is the last good one).
    :raises TrainingInterrupted: on SIGINT/SIGTERM, after saving a checkpoint.

    ``config`` is not changed: the run's configuration is a copy that also records the
    data's image shape and number of classes. Under ``torchrun`` this trains one model
    data-parallel (:mod:`pyro_vae.core.distributed`); every rank gets the model.
    """
    out = _checked_arguments(config, out)
    world, device = distributed.init(resolve_device(config.device))
    # one writer per run directory; the other ranks of a torchrun job write nothing
    lock = runs.locked_run(out, "training", create=not resume) if world.is_main else nullcontext()
    with lock:
        checkpoint = prepare_run_dir(out, config, resume)
        world.barrier()  # every rank has checked ``out`` before rank 0 writes to it
        if world.is_main:  # left by a process killed while writing
            remove_stale_temporaries(out / runs.CHECKPOINT_FILE)
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        data = training_data(config, data, device)
        if config.labels is not None:
            data = keep_labels(data, config.labels, config.seed)
        config = with_data_facts(config, data, checkpoint, out)
        if config.labels is not None:
            data = repeat_labelled(data)
        vae = _model(config, data, device)
        log = world.main_only(log)
        if checkpoint is None and config.init_from is not None:
            log(f"initialized from {runs.initialize_from(vae, config)}")
        trainer = _trainer(
            config, out, vae, data, progress and world.is_main, log, world, callbacks
        )
        _run(trainer, checkpoint)
    return vae.eval()


def _run(trainer: Trainer, checkpoint: dict | None) -> None:
    """Check the model, restore the checkpoint if resuming, and run the loop; a failed
    allocation (a batch of too many particles) becomes a message."""
    try:
        check_model_and_guide(trainer.vae, trainer.loss_fn, trainer.data)
        # A checkpoint is checked through before anything in the run directory is written.
        start = trainer.restore(checkpoint) if checkpoint is not None else None
        if trainer.world.is_main:
            runs.save_config(trainer.out, trainer.config)
        if start is None:
            start = trainer.start()
        else:
            trainer.log(f"resuming {trainer.out} {trainer.saved_at}")
        trainer.log(summary(trainer.config, trainer.vae, trainer.data, trainer.device))
        trainer.run(start)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        kept = f"; the checkpoint {trainer.saved_at} is kept" if trainer.saved_at else ""
        raise out_of_memory(trainer.config, trainer.device, kept) from None
    finally:  # a write that failed is raised here, in place of what said it was saved
        trainer.writes.close()


def with_data_facts(
    config: TrainConfig, data: ImageData, checkpoint: dict | None, out: Path
) -> TrainConfig:
    """A copy of ``config`` with the facts of ``data`` (image shape, number of classes, a
    table's schema; the semi-supervised model's default classifier weight), checked
    against the run being resumed."""
    if checkpoint is not None and tuple(checkpoint["config"]["image_shape"]) != data.image_shape:
        raise CheckpointError(
            f"cannot resume {out}: it was trained on images of shape "
            f"{tuple(checkpoint['config']['image_shape'])}, the data has {data.image_shape}"
        )
    table = data.schema.to_dict() if isinstance(data, TableData) else None
    if checkpoint is not None and checkpoint["config"].get("table") != table:
        raise CheckpointError(
            f"cannot resume {out}: the table's columns, their kinds or statistics differ from "
            "those it was trained on; resume with the same table file and `columns`"
        )
    if data.train.shape[0] < config.batch_size:
        raise ConfigError(
            f"`batch_size` {config.batch_size} is larger than the {data.train.shape[0]} training "
            "images; lower `batch_size`"
        )
    facts = {"image_shape": data.image_shape, "num_classes": len(data.class_names)}
    if config.model == "semi-supervised" and config.classifier_weight is None:
        labelled = int((data.train_labels >= 0).sum())
        facts["classifier_weight"] = kingma_classifier_weight(data.train.shape[0], labelled)
    return dataclasses.replace(config, table=table, **facts)


def _model(config: TrainConfig, data: ImageData, device: torch.device) -> VAE:
    """A new model of ``config`` on ``device``, its likelihood checked against the data."""
    check_model_fits(config, device)
    vae = config.build_vae().to(device)
    for name, images in (("training", data.train), ("validation", data.val)):
        vae.likelihood.validate(images, f"the {name} images")
    return vae


def _trainer(
    config: TrainConfig,
    out: Path,
    vae: VAE,
    data: ImageData,
    progress: bool,
    log: Callable[[str], None],
    world: distributed.World,
    callbacks: Sequence[Callback],
) -> Trainer:
    """The loop with its optimizer and callbacks: the built-in ones and ``callbacks``."""
    # fused: one kernel for all parameters instead of ~5 per parameter, most of the
    # difference to a hand-written PyTorch loop on a small CPU
    optimizer = torch.optim.Adam(
        vae.parameters(),
        lr=config.lr,
        fused=True,
        weight_decay=config.weight_decay,
        decoupled_weight_decay=True,  # AdamW's decay
    )
    scheduler = LR_SCHEDULES[config.lr_schedule](optimizer, config.lr_decay, config.lr_patience)
    ordered = ordered_callbacks(
        scheduler, config.checkpoint_every, config.patience, config.on_nan, callbacks
    )
    return Trainer(config, out, vae, optimizer, data, progress, log, world, ordered)


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> dict | None:
    """Create ``out`` or check it for resuming; return the checkpoint to resume from."""
    has_checkpoint = (out / runs.CHECKPOINT_FILE).exists()
    if not resume:
        if has_checkpoint:
            raise ConfigError(
                f"{out} already holds a trained run; pass `resume=True` to continue it, "
                "or choose another `out`"
            )
        make_directory(out)
        return None
    if not has_checkpoint:
        raise CheckpointError(
            f"`resume=True` was given but {out} holds no checkpoint; drop `resume` to start"
        )
    checkpoint = runs.load_checkpoint(out, keys=runs.CHECKPOINT_KEYS)
    saved = runs.checkpoint_config(checkpoint, out)
    # a weight left to its default is set from the data again, as it was
    from_data = ("classifier_weight",) if config.classifier_weight is None else ()
    changed = saved.differences(config, ignore=(*RESUMABLE_CHANGES, *DATA_FIELDS, *from_data))
    if changed:
        listed = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot resume {out}: its configuration differs ({listed}); "
            "keep the saved values (on the command line, leave those options out) or choose "
            "another `out`"
        )
    done, step = checkpoint["epoch"], checkpoint["step"]
    if done > config.epochs or (done == config.epochs and step):
        raise ConfigError(
            f"{out} has already trained {done} epochs{f' and {step} steps' if step else ''}; "
            f"pass `epochs={done + 1}` or more to continue it"
        )
    return checkpoint


def training_data(config: TrainConfig, data: ImageData | None, device: torch.device) -> ImageData:
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


def summary(config: TrainConfig, vae: VAE, data: ImageData, device: torch.device) -> str:
    """What is trained on what, in one line for the start of a run."""
    shape = "x".join(map(str, data.image_shape))
    examples = "rows" if isinstance(data, TableData) else "images"
    shape = f"{len(data.schema.columns)} columns" if isinstance(data, TableData) else shape
    parameters = sum(p.numel() for p in vae.parameters())
    prior = "learned conditional prior" if config.learns_prior else f"{config.prior} prior"
    return (
        f"{config.model} ({config.arch} networks, {prior}, {config.likelihood} likelihood): "
        f"{parameters:,} parameters; {data.train.shape[0]:,} training and "
        f"{data.val.shape[0]:,} validation {examples} ({shape}) on {device}"
    )
