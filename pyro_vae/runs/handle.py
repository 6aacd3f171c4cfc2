"""The :class:`Run` handle: a run directory read once."""

from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from pyro_vae.config import resolve_device
from pyro_vae.data.images import ImageData
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoints import load_checkpoint, resolve_checkpoint, restore
from pyro_vae.runs.files import CHECKPOINTS, read_config, read_evaluation, read_metrics


class Run:
    """A run directory, read once: its configuration, its model, its data, its metrics and
    its evaluations. The model and the data are loaded when first asked for.

    :param run_dir: the directory ``pyro-vae train`` wrote.
    :param device: where the model and the data go (``"auto"``: CUDA when available).
    :param checkpoint: ``"last"`` (the end of training), ``"best"`` (the epoch with the
        best validation ELBO, ``best.pt``), or None: ``best`` when the run was trained
        with early stopping (``patience``), else ``last``.
    """

    def __init__(
        self, run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None
    ):
        self.dir = Path(run_dir)
        self.config = read_config(self.dir)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.checkpoint = resolve_checkpoint(self.config, checkpoint)

    @cached_property
    def state(self) -> dict[str, Any]:
        """The checkpoint the model comes from (``model``, ``epoch``, ``config``, ...)."""
        return load_checkpoint(
            self.dir, map_location=self.device, file=CHECKPOINTS[self.checkpoint]
        )

    @cached_property
    def model(self) -> VAE:
        """The trained model (its ``config.model`` class), in eval mode."""
        vae = self.config.build_vae()
        restore(vae, self.state["model"], self.dir / CHECKPOINTS[self.checkpoint])
        return vae.to(self.device).eval()

    @cached_property
    def data(self) -> ImageData:
        """The dataset the run was trained on, on the run's device."""
        return self.config.load_data(self.device)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """One row per trained epoch (``metrics.jsonl``)."""
        return read_metrics(self.dir)

    def evaluation(self, split: str = "test", dataset: str | None = None) -> dict[str, Any] | None:
        """What ``pyro-vae evaluate`` wrote for those images; None if they were not evaluated."""
        return read_evaluation(self.dir, split, dataset)


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None
) -> VAE:
    """The trained model of a run directory (:attr:`Run.model`); the arguments are
    :class:`Run`'s."""
    return Run(run_dir, device, checkpoint).model
