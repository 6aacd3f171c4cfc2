"""Image grids of samples: what ``pyro-vae sample`` writes.

Each model class composes its own grid (:meth:`~pyro_vae.models.vae.VAE.sample_grid`):
prior samples for the VAE, samples of one class or of every class for the label
CVAE, completions of test images for the completion model. This module draws the
samples of a run directory and saves the grid with torchvision.
"""

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from pyro_vae.core.errors import ConfigError
from pyro_vae.core.files import atomic_write, check_writable, make_directory
from pyro_vae.core.seeding import seeded
from pyro_vae.data.images import ImageData
from pyro_vae.runs import Run


def image_format(path: str | Path) -> str:
    """The PIL format that ``path``'s extension names, else a :class:`ConfigError`."""
    path = Path(path)
    Image.init()
    kind = Image.registered_extensions().get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"cannot write images as {path.name!r}; use a .png or .jpg file name")
    return kind


def save_grid(
    images: torch.Tensor, image_shape: tuple[int, ...], path: str | Path, nrow: int
) -> Path:
    """Save flattened images in [0, 1], ``nrow`` per row, as one picture (format from the
    file extension), atomically; create the parent folder if needed."""
    path, kind = Path(path), image_format(path)
    make_directory(path.parent)
    grid = images.reshape(-1, *image_shape).cpu()
    atomic_write(
        path, lambda file: save_image(grid, file, nrow=nrow, padding=2, pad_value=1.0, format=kind)
    )
    return path


def sample_run(
    run_dir: str | Path,
    path: str | Path,
    *,
    num: int = 64,
    label: int | None = None,
    seed: int = 0,
    device: str = "auto",
    data: ImageData | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Draw the sample grid of a trained run (see the model's ``sample_grid``) and save it.

    :param num: number of samples (completion model: of completions, 8 per test image).
    :param label: class to draw (label CVAE; completion model: complete test images of
        this class); ``None``: every class, one row each.
    :param data: images to take class names and test images from instead of loading the
        run's dataset.
    :param checkpoint: which saved model, as in :func:`~pyro_vae.load_run`.
    """
    if num <= 0:
        raise ConfigError(f"`num` must be positive, got {num}")
    image_format(path)
    check_writable(Path(path).parent)  # before the model is loaded and sampled
    run = Run(run_dir, device, checkpoint)
    data = run.data if data is None else data.to(run.device)
    with seeded(seed, run.device):
        images, nrow = run.model.sample_grid(num, label, data)
    return save_grid(images, run.config.image_shape, path, nrow)
