"""The checkpoint format: what a checkpoint holds, how it is written, read and checked.

A checkpoint is a dict with the keys of :data:`CHECKPOINT_KEYS`: the model's and
optimizer's state, the position (``epoch`` epochs done and ``step`` steps into
the next), the RNG state, the config, the metrics rows so far and the number of
training images. Mid-epoch checkpoints (``step > 0``) also hold ``epoch_rng``,
``loss_sum`` and ``seconds`` of the epoch in progress (see :mod:`pyro_vae.training.loop`).

A checkpoint with a non-finite value is refused rather than written over a good one,
and a checkpoint that is truncated, corrupted, incomplete or does not fit the model
raises :class:`CheckpointError` with what to do.
"""

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.config import MODEL_FIELDS, TrainConfig
from pyro_vae.core.errors import CheckpointError, ConfigError, NumericalError, OutputError, brief
from pyro_vae.core.files import atomic_write
from pyro_vae.models.vae import VAE
from pyro_vae.runs.files import BEST_FILE, CHECKPOINT_FILE, CHECKPOINTS

#: Version of the checkpoint layout; bumped when keys change meaning.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = (
    "format",
    "model",
    "optimizer",
    "epoch",
    "step",
    "rng",
    "config",
    "metrics",
    "num_train",
)
#: Extra keys of a checkpoint taken in the middle of an epoch.
MID_EPOCH_KEYS = ("epoch_rng", "loss_sum", "seconds")


def rng_state() -> dict[str, Any]:
    """Every random number generator training draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned; a damaged state raises :class:`CheckpointError`."""
    try:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"the checkpoint's random number generator state is damaged ({brief(error)}); "
            "restore the checkpoint from a backup"
        ) from error


def _float_tensors(value: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating-point tensor inside nested dicts/lists/tuples, with its path."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _float_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _float_tensors(item, f"{name}[{i}]")


def nonfinite_entries(state: Any) -> list[str]:
    """Paths of the floating-point tensors in ``state`` that hold NaN or infinity."""
    return [name for name, tensor in _float_tensors(state) if not torch.isfinite(tensor).all()]


def save_checkpoint(run_dir: Path, state: dict[str, Any], file: str = CHECKPOINT_FILE) -> None:
    """Write ``state`` atomically; refuse non-finite values so a good checkpoint is never lost."""
    check_finite(state, run_dir / file)
    write_checkpoint(run_dir / file, state)


def check_finite(state: dict[str, Any], path: Path) -> None:
    """Raise :class:`NumericalError` if ``state``, to be written to ``path``, holds NaN or
    infinity: written, it would replace a good checkpoint with one that cannot resume."""
    bad = nonfinite_entries(state)
    if bad:
        raise NumericalError(
            f"refusing to write a checkpoint with non-finite values in {', '.join(bad[:3])}"
            f"{' and more' if len(bad) > 3 else ''}; the previous checkpoint in {path} is unchanged"
        )


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, unchecked (see :func:`save_checkpoint`)."""
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OutputError as error:
        raise OutputError(
            f"{error}; the previous checkpoint is unchanged: continue from it with "
            "`resume=True` once it can be written"
        ) from error


def load_checkpoint(
    run_dir: str | Path,
    map_location: str | torch.device = "cpu",
    keys: Sequence[str] = ("model",),
    file: str = CHECKPOINT_FILE,
) -> dict[str, Any]:
    """The checkpoint ``file`` of ``run_dir``, checked to hold ``keys`` (but not yet to fit
    a model).

    Resuming needs :data:`CHECKPOINT_KEYS` (and :data:`MID_EPOCH_KEYS` mid-epoch);
    loading a trained model needs only ``model``.
    """
    path = Path(run_dir) / file
    if not path.is_file():
        if file == BEST_FILE and (Path(run_dir) / CHECKPOINT_FILE).is_file():
            raise CheckpointError(
                f"no {BEST_FILE} in {run_dir}: no epoch has finished yet, or an older pyro-vae "
                "trained it; use the last checkpoint (`checkpoint='last'`)"
            )
        raise CheckpointError(f"no checkpoint at {path}; train a run in {run_dir} first")
    try:
        # weights_only=False: the checkpoint holds Python RNG state tuples; it is our own file.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"{path} is corrupted or not a pyro-vae checkpoint ({brief(error)}); "
            "restore it from a backup, or delete the run directory to start over"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a pyro-vae checkpoint; "
            "restore it from a backup, or delete the run directory to start over"
        )
    missing = [key for key in keys if key not in state]
    if not missing and state.get("step"):
        missing = [key for key in MID_EPOCH_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is incomplete (missing {', '.join(missing)}): it is damaged or was not "
            "written by this version of pyro-vae; restore it from a backup, or delete the run "
            "directory to start over"
        )
    if "format" in keys and state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}, this pyro-vae reads format "
            f"{CHECKPOINT_FORMAT}; use the pyro-vae version that wrote it"
        )
    return state


def checkpoint_config(state: dict[str, Any], run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint."""
    try:
        return TrainConfig.from_dict(state["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(
            f"{Path(run_dir) / CHECKPOINT_FILE} holds an invalid configuration ({error}); "
            "restore it from a backup"
        ) from error


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``Optimizer.load_state_dict`` accepts moments of the wrong shape; fail here instead."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state.get("state", {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise ValueError(f"state for unknown parameter {index!r}")
        shape = params[index].shape
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != shape:
                raise ValueError(
                    f"{key} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(shape)}"
                )


def restore(target: torch.nn.Module | torch.optim.Optimizer, state: Any, path: str | Path) -> None:
    """``target.load_state_dict(state)``, any mismatch raised as :class:`CheckpointError`."""
    what = "optimizer" if isinstance(target, torch.optim.Optimizer) else "model"
    try:
        if not isinstance(state, dict):
            raise TypeError(f"expected a state dict, got {type(state).__name__}")
        if isinstance(target, torch.optim.Optimizer):
            _check_optimizer_shapes(target, state)
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"the {what} state in {path} does not fit the configured "
            f"model ({brief(error)}); it is damaged or belongs to another run"
        ) from error


def resolve_checkpoint(config: TrainConfig, checkpoint: str | None) -> str:
    """``checkpoint`` checked to be a :data:`CHECKPOINTS` name; None: ``best`` for a run
    trained with early stopping (``config.patience``), else ``last``."""
    if checkpoint is None:
        return "best" if config.patience else "last"
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(
            f"unknown checkpoint {checkpoint!r}; choose one of: {', '.join(CHECKPOINTS)}"
        )
    return checkpoint


def fine_tuning_source(init_from: str | Path) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The model ``init_from`` names: its checkpoint file, the checkpoint (model and
    configuration) and the :class:`TrainConfig` it was trained with.

    ``init_from`` is a run directory (its ``best.pt``: the model early stopping keeps) or
    a checkpoint file (``best.pt`` or ``checkpoint.pt`` of a run).
    """
    source = Path(init_from)
    if not source.exists():
        raise CheckpointError(
            f"`init_from` {source} does not exist; pass a run directory or its "
            f"{BEST_FILE} or {CHECKPOINT_FILE}"
        )
    run_dir, file = (source, BEST_FILE) if source.is_dir() else (source.parent, source.name)
    if source.is_dir() and not (source / BEST_FILE).is_file():
        raise CheckpointError(
            f"`init_from` {source}: the directory holds no {BEST_FILE} (no epoch of that run "
            f"has finished); pass a checkpoint file instead, such as {source / CHECKPOINT_FILE}"
        )
    state = load_checkpoint(run_dir, keys=("model", "config"), file=file)
    return run_dir / file, state, checkpoint_config(state, run_dir)


def initialize_from(vae: VAE, config: TrainConfig) -> str:
    """Load the model ``config.init_from`` names (:func:`fine_tuning_source`) into ``vae``
    (fine-tuning); return the file and epoch.

    Its configuration must agree with ``config`` on :data:`~pyro_vae.config.MODEL_FIELDS`,
    so a differently shaped or differently meant model is a :class:`CheckpointError`
    naming the fields, not a silent partial load.
    """
    path, state, saved = fine_tuning_source(config.init_from)
    changed = {k: v for k, v in saved.differences(config).items() if k in MODEL_FIELDS}
    if changed:
        listed = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot initialize from {path}: its model differs ({listed}); "
            "use the same model options as that run (on the command line, leave them out)"
        )
    restore(vae, state["model"], path)
    return f"{path} (epoch {state.get('epoch', '?')})"
