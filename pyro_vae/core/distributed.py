r"""Data-parallel training and evaluation on :mod:`torch.distributed`, launched by ``torchrun``.

``torchrun --nproc-per-node N -m pyro_vae train ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their
environment; :func:`init` reads them and joins the process group, with the
``nccl`` backend on GPUs (one per process, by local rank) and ``gloo`` on CPU.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op and
:data:`SINGLE` is the world.

Why summing gradients is exact: the training loss is summed over the batch,
:math:`L(B) = \sum_{x \in B} \ell(x)`, so for a global batch split into
disjoint shards :math:`B = \cup_r B_r`, :math:`\nabla L(B) = \sum_r \nabla L(B_r)`:
an all-reduce *sum* of the ranks' gradients is the single-process gradient of
the global batch (up to float summation order and the ranks' own latent noise).
Every rank then applies the same Adam step to the same parameters, so the
parameters stay identical without broadcasting them.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pyro_vae.core.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a data-parallel run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    def main_only(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` on rank 0; on the other ranks a log that drops its lines."""
        return log if self.is_main else _dropped

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op in a single process)."""
        if self.size > 1:
            dist.barrier()

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its sum over ranks, in place, with one all-reduce.

        The tensors are packed into one flat buffer: one collective per step
        instead of one per parameter.
        """
        if self.size == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            tensor.copy_(part.view_as(tensor))

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values


def _dropped(line: str) -> None:
    """Where the log lines of ranks other than 0 go."""


#: The world of a process not launched by ``torchrun``.
SINGLE = World()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"the environment variable {name}={value!r} is not an integer; launch with torchrun"
        ) from None


def is_main_process() -> bool:
    """Whether this process is rank 0 of its launch (or was not launched by ``torchrun``)."""
    return _env_int("RANK", 0) == 0


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group that ``torchrun`` set up; return the world and this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK`` and the backend is ``nccl``;
    on CPU the backend is ``gloo``. Calling it again (training, then evaluation
    in one process) reuses the group.
    """
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return SINGLE, device
    world = World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0))
    backend = "gloo"
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {world.local_rank} but this node has {torch.cuda.device_count()} "
                "GPUs; start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    elif dist.get_backend() != backend:
        raise ConfigError(
            f"the process group uses {dist.get_backend()}, but {device} needs {backend}; "
            "use the same `device` in every command of one launch"
        )
    return world, device


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
