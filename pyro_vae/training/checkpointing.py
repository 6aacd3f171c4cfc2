"""The checkpoint of a training run: what it holds and how it is put back.

A checkpoint holds the model, the optimizer, every stateful callback's state (under its
``state_key``), the position (epochs done, steps into the next), the RNG state, the
configuration, the metrics rows and, within an epoch, what resuming it needs (see
:class:`~pyro_vae.training.loop.EpochProgress`). The file format and its checks are in
:mod:`pyro_vae.runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pyro_vae import runs
from pyro_vae.core import distributed
from pyro_vae.core.errors import CheckpointError

if TYPE_CHECKING:
    from pyro_vae.training.loop import Trainer


def checkpoint_state(
    trainer: Trainer, done: int, step: int, in_progress: dict[str, Any]
) -> dict[str, Any]:
    """What the checkpoint of ``trainer`` after ``done`` epochs and ``step`` steps holds."""
    return {
        "format": runs.CHECKPOINT_FORMAT,
        "model": trainer.vae.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        **trainer.callbacks.states(),
        "epoch": done,
        "step": step,
        "rng": runs.rng_state(),
        "config": trainer.config.to_dict(),
        "metrics": trainer.metrics,
        "num_train": trainer.num_train,
        **in_progress,
    }


def restore_state(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Check ``checkpoint`` and put its model, optimizer, callback states and RNG state
    back into ``trainer``'s; a learning rate given anew replaces the saved one."""
    path, step = trainer.checkpoint_path, checkpoint["step"]
    if checkpoint["num_train"] != trainer.num_train:
        raise CheckpointError(
            f"cannot resume {trainer.out}: it was trained on {checkpoint['num_train']} images "
            f"per epoch, the data has {trainer.num_train}; use the same data"
        )
    check_position(checkpoint, path, trainer.steps_per_epoch)
    if step:  # checked here, used by the epoch: fail before anything is written
        set_rng(trainer.world, trainer.device, checkpoint["epoch_rng"])
    runs.restore(trainer.vae, checkpoint["model"], path)
    runs.restore(trainer.optimizer, checkpoint["optimizer"], path)
    trainer.steps.reset()  # the optimizer's state tensors are new, perhaps on another device
    trainer.callbacks.load_states(checkpoint)
    if trainer.config.lr != checkpoint["config"]["lr"]:  # --lr on resume replaces the saved
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.config.lr
    set_rng(trainer.world, trainer.device, checkpoint["rng"])


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


def position(done: int, step: int, steps_per_epoch: int) -> str:
    """Where a checkpoint stands, for messages."""
    if step:
        return f"at epoch {done + 1}, step {step} of {steps_per_epoch}"
    return f"after epoch {done}" if done else "at the start of training"


def set_rng(world: distributed.World, device: torch.device, state: dict[str, Any]) -> None:
    """Restore an RNG state from a checkpoint (rank 0's).

    Under ``torchrun`` on GPUs, rank 0 drew from ``cuda:0`` and this rank draws
    from its own GPU: rank 0's CUDA state goes to this rank's device, so all
    ranks draw the same epoch images and order again.
    """
    runs.set_rng_state(state)
    if world.size > 1 and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"][0], device)
