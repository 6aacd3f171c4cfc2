"""Experiment loggers: callbacks that send each epoch to a tracking tool.

``pyro-vae train --logger NAME`` adds ``LOGGERS[NAME]()`` to the run's callbacks; from
Python, pass the logger in ``train(..., callbacks=[...])``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torchvision.utils import make_grid

from pyro_vae.core.errors import ConfigError
from pyro_vae.core.seeding import seeded
from pyro_vae.inference.estimators import log_densities
from pyro_vae.training.callbacks import Callback

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from pyro_vae.training.loop import Trainer

#: Metrics-row entries and their TensorBoard tags.
SCALARS = {
    "train_loss": "loss/train",
    "val_elbo": "elbo/validation",
    "val_iwae": "iwae/validation",
    "beta": "beta",
    "lr": "lr",
    "clipped_steps": "clipped_steps",
}
#: Seed of the latent draws behind the logged KL and samples: epochs compare fairly.
LOGGER_SEED = 0


class TensorBoardLogger(Callback):
    """Writes each epoch to TensorBoard event files (``tensorboard --logdir RUN``).

    Scalars: the metrics row (training loss, validation ELBO, beta, learning rate, and the
    IWAE bound and clipped steps where the run has them) and the validation KL,

    .. math:: \\mathrm{KL} = \\frac1N \\sum_n \\log q(z_n|x_n) - \\log p(z_n),
        \\quad z_n \\sim q(z|x_n),

    a single-sample estimate over the first ``kl_examples`` validation images. Images:
    the first ``num_images`` validation images above their reconstructions, and decoder
    means of as many prior samples (for models whose reconstructions are whole images).
    A resumed or rolled-back run drops the events after its checkpoint.

    :param log_dir: where to write; default ``RUN/tensorboard``.
    :param num_images: images per grid.
    :param kl_examples: validation images in the KL estimate.
    """

    def __init__(
        self, log_dir: str | Path | None = None, num_images: int = 8, kl_examples: int = 1000
    ):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is an optional dependency
            raise ConfigError(
                "the tensorboard logger needs the tensorboard package: "
                "pip install 'pyro-vae[tensorboard]'"
            ) from error
        self.writer_class = SummaryWriter
        self.log_dir, self.num_images, self.kl_examples = log_dir, num_images, kl_examples
        self.writer: SummaryWriter | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        self.on_train_end(trainer)
        done = trainer.metrics[-1]["epoch"] if trainer.metrics else 0
        self.writer = self.writer_class(
            str(self.log_dir or trainer.out / "tensorboard"), purge_step=done + 1
        )

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        epoch = row["epoch"]
        for key, tag in SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], epoch)
        vae, data = trainer.vae, trainer.data
        was_training = vae.training
        vae.eval()
        with torch.no_grad(), seeded(LOGGER_SEED, data.val.device):
            self.writer.add_scalar("kl/validation", self._kl(trainer), epoch)
            for tag, grid in self._grids(trainer).items():
                self.writer.add_image(tag, grid, epoch)
        vae.train(was_training)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _kl(self, trainer: Trainer) -> float:
        data, vae = trainer.data, trainer.vae
        inputs = vae.scoring_inputs(
            data.val[: self.kl_examples], data.val_labels[: self.kl_examples]
        )
        densities = log_densities(vae.model, vae.guide, *inputs)
        return (densities.log_guide - densities.log_prior).mean().item()

    def _grids(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        """Image grids of reconstructions and prior samples, where the model's outputs
        are whole images."""
        data, vae, n = trainer.data, trainer.vae, self.num_images
        x, *conditions = vae.batch_inputs(data.val[:n], data.val_labels[:n])
        reconstructions = vae.reconstruct(x, *conditions)
        if reconstructions.shape[-1] != math.prod(data.image_shape):
            return {}
        samples = vae.sample(1, *conditions)[0] if conditions else vae.sample(x.shape[0])
        shape = (-1, *data.image_shape)
        return {
            "reconstructions": _grid(torch.cat([x, reconstructions]).reshape(shape), x.shape[0]),
            "samples": _grid(samples.reshape(shape), x.shape[0]),
        }


def _grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=columns, pad_value=1.0)


#: Registry of ``--logger`` names.
LOGGERS: dict[str, type[Callback]] = {"tensorboard": TensorBoardLogger}
