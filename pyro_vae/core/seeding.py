"""Reproducible randomness: seeds derived from what a piece of work is, and seeded blocks
that leave the caller's random state as it was."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def derived_seed(*keys: int) -> int:
    """A seed determined by ``keys`` alone (e.g. seed, step, rank), the same in every process.

    Seeding each piece of work by what it is, not by the order a process meets
    it, makes results independent of how the work is split over ranks. (The hash
    of a tuple of ints is not salted per process, unlike that of a string.)
    """
    return hash(keys) & (2**63 - 1)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draw from torch's global generators seeded with ``seed`` inside the block (those of
    the CPU and, for a CUDA ``device``, of that device); afterwards they are as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
