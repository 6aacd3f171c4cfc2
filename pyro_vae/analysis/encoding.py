r"""Latent codes of a run's images: what ``pyro-vae encode`` writes.

For every image :math:`x` of a split, the amortized posterior
:math:`q(z|x, c) = \mathcal N(\mu(x, c), \operatorname{diag}\sigma(x, c)^2)` of the
model's encoder (the top layer :math:`z_2` for ``hvae``; the condition :math:`c` is the
label for ``cvae`` and the observed quadrants for ``completion``), saved as a NumPy
archive: ``loc`` (:math:`\mu`, the usual representation for downstream tasks),
``scale`` (:math:`\sigma`), ``labels`` and ``class_names`` (of a table's rows, also
``rows``: their numbers in the file). Training images are encoded
as their grey levels, the mean of their binarizations; validation and test images as
the binary images the run is evaluated on.
"""

from pathlib import Path

import numpy as np
import torch

from pyro_vae.core.errors import ConfigError
from pyro_vae.core.files import atomic_write, check_writable, make_directory
from pyro_vae.data.images import SPLITS, ImageData
from pyro_vae.data.tables import TableData
from pyro_vae.runs import Run


def encode_run(
    run_dir: str | Path,
    path: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 1000,
    data: ImageData | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Write the posterior parameters of every image of ``split`` to ``path`` (``.npz``,
    written atomically); return the path.

    :param data: images to encode instead of the run's dataset.
    :param checkpoint: which saved model, as in :func:`~pyro_vae.load_run`.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if batch_size <= 0:
        raise ConfigError(f"`batch_size` must be positive, got {batch_size}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"cannot write latent codes as {path.name!r}; use a .npz file name")
    check_writable(path.parent)  # before the images are encoded
    run = Run(run_dir, device, checkpoint)
    vae = run.model
    data = run.data if data is None else data.to(run.device)
    images, labels = getattr(data, split), getattr(data, f"{split}_labels")
    batches = zip(images.split(batch_size), labels.split(batch_size), strict=True)
    locs, scales = zip(*(vae.encode(*vae.batch_inputs(x, y)) for x, y in batches), strict=True)
    arrays = {
        "loc": torch.cat(locs).cpu().numpy(),
        "scale": torch.cat(scales).cpu().numpy(),
        "labels": labels.cpu().numpy(),
        "class_names": np.array(data.class_names),
    }
    if isinstance(data, TableData):  # which rows of the file these are
        arrays["rows"] = data.rows[split]
    make_directory(path.parent)
    atomic_write(path, lambda file: np.savez(file, **arrays))
    return path
