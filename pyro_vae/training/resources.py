"""Memory a training run needs, checked before it is allocated.

An option large enough to exhaust memory (a latent size of a billion, a mixture of a
billion components) would otherwise die in the allocator with a traceback, or be killed
by the operating system. :func:`check_model_fits` builds the model on PyTorch's ``meta``
device (shapes without storage) and compares what its parameters, their gradients and
Adam's two moments need with the memory free on the device; :func:`out_of_memory`
turns an allocation that fails later (a batch of many particles) into a message.
"""

from pathlib import Path

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.core.errors import ConfigError

#: Copies of every parameter that training holds: the values, their gradients and
#: Adam's first and second moments.
COPIES_IN_TRAINING = 4


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: on a GPU, what CUDA reports; on a CPU, Linux's
    ``MemAvailable``; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if device.type != "cpu" or not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"


def check_model_fits(config: TrainConfig, device: torch.device) -> None:
    """Raise :class:`ConfigError` if training ``config``'s model cannot fit ``device``."""
    try:
        with torch.device("meta"):
            model = config.build_vae()
    except (RuntimeError, NotImplementedError):
        return  # a model that reads values while it is built is built for real
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    needed = COPIES_IN_TRAINING * parameters + buffers
    available = available_memory(device)
    if available is not None and needed > available:
        count = sum(p.numel() for p in model.parameters())
        raise ConfigError(
            f"the model has {count:,} parameters: training needs about {_gib(needed)} for "
            f"them, their gradients and Adam's two moments, but {device} has "
            f"{_gib(available)} free; lower `latent_dim`, `hidden_dims` or the prior's options"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (torch reports a CPU one as RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def out_of_memory(config: TrainConfig, device: torch.device, kept: str) -> ConfigError:
    """The error for an allocation that failed during training; ``kept`` says what is
    saved ("; the checkpoint after epoch 3 is kept"), if anything."""
    return ConfigError(
        f"{device} ran out of memory training with `batch_size` {config.batch_size} and "
        f"`particles` {config.particles}; lower them (or the model's size){kept}"
    )
