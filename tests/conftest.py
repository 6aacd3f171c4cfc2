import gzip
import struct
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae.data.images import ImageData
from pyro_vae.data.tables import Column, TableSchema
from pyro_vae.inference.estimators import log_importance_weights
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.training import steps as steps_module

# The test models are tiny: more threads only add overhead (much of it when other
# processes share the cores) and make float results depend on the core count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


def prototype_images(num: int, side: int = 8, num_classes: int = 4, seed: int = 0):
    """Grey images made of a few fixed blocky prototypes plus noise: learnable in seconds."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(num_classes, side * side, generator=generator) > 0.5).float()
    labels = torch.randint(num_classes, (num,), generator=generator)
    noise = 0.1 * torch.rand(num, side * side, generator=generator)
    images = (prototypes[labels] * 0.8 + noise).clamp(0, 1)
    return images, labels


@pytest.fixture
def tiny_data() -> ImageData:
    """512/128/128 synthetic 8x8 images of 4 classes, dynamically binarized."""
    return make_tiny_data()


def make_tiny_data() -> ImageData:
    """What the ``tiny_data`` fixture gives, for module-scoped fixtures."""
    images, labels = prototype_images(768)
    generator = torch.Generator().manual_seed(1)
    val = torch.bernoulli(images[512:640], generator=generator)
    test = torch.bernoulli(images[640:], generator=generator)
    return ImageData(
        train=images[:512],
        train_labels=labels[:512],
        val=val,
        val_labels=labels[512:640],
        test=test,
        test_labels=labels[640:],
        image_shape=(1, 8, 8),
        class_names=("a", "b", "c", "d"),
        binarize=True,
    )


def write_tiny_image_file(path: Path) -> None:
    """640 training and 128 test images of ``prototype_images`` as an image file (.npz)."""
    images, labels = prototype_images(768)
    pixels = (images.reshape(-1, 8, 8) * 255).to(torch.uint8).numpy()
    np.savez(
        path,
        train=pixels[:640],
        test=pixels[640:],
        train_labels=labels[:640].numpy(),
        test_labels=labels[640:].numpy(),
    )


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor in the (gzipped) IDX format that MNIST-style datasets use."""
    header = struct.pack(">I", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.to(torch.uint8).numpy().tobytes())


def write_fake_fashion(folder: Path, learnable: bool = False) -> Path:
    """Fill ``folder`` like Debian's dataset-fashion-mnist, with 10_100 + 50 small images:
    uniform noise, or (``learnable``) 10 blocky prototypes plus noise (:func:`prototype_images`),
    which a model learns in a few steps."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for prefix, count in (("train", 10_100), ("t10k", 50)):
        if learnable:  # the same seed gives both splits the same prototypes
            grey, labels = prototype_images(count, side=28, num_classes=10)
            images = (255 * grey).round().reshape(count, 28, 28)
        else:
            images = torch.randint(0, 256, (count, 28, 28), generator=generator)
            labels = torch.arange(count) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def fake_fashion_dir(tmp_path: Path) -> Path:
    """A fresh fake Fashion-MNIST folder (100 training images once 10k are held out)."""
    return write_fake_fashion(tmp_path / "fashion-mnist")


@pytest.fixture(scope="session")
def shared_fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same fake data, made once per test run, for tests that only read it."""
    return write_fake_fashion(tmp_path_factory.mktemp("shared") / "fashion-mnist")


@pytest.fixture(scope="session")
def learnable_fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake Fashion-MNIST of learnable images (``write_fake_fashion(learnable=True)``)."""
    return write_fake_fashion(tmp_path_factory.mktemp("learnable") / "fashion-mnist", True)


def same_seed_log_weights(models, images: torch.Tensor, num_particles: int) -> list[torch.Tensor]:
    """Each model's log importance weights for ``images``, drawn under the same seed: equal
    for a model and its reloaded checkpoint."""
    log_w = []
    for model in models:
        torch.manual_seed(0)
        with torch.no_grad():
            log_w.append(
                log_importance_weights(
                    model.model, model.guide, images, num_particles=num_particles
                )
            )
    return log_w


class EagerForward:
    """In place of :class:`~pyro_vae.core.recording.RecordedForward`: the forward pass
    called on every step, with the same arguments, so that Python in it runs every time."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *inputs):
        return self.forward(*inputs)


@pytest.fixture
def faulty_objective(monkeypatch):
    """Wrap the ``elbo`` objective: ``faulty_objective(action)`` runs ``action(call, loss)``
    on every training step's call (1-based count), and uses what it returns as the loss when
    not None. (Calls without gradients, the check before training, are not counted.) The
    forward pass and the step run eagerly, as recorded ones would run the action only
    when recorded."""
    monkeypatch.setattr(steps_module, "RecordedForward", EagerForward)
    monkeypatch.setattr(steps_module, "records_steps", lambda *args: False)

    def install(action):
        make = OBJECTIVES["elbo"]
        calls = [0]

        def factory(particles):
            inner = make(particles)

            def loss_fn(*args, **kwargs):
                if not torch.is_grad_enabled():
                    return inner(*args, **kwargs)
                calls[0] += 1
                loss = inner(*args, **kwargs)
                replaced = action(calls[0], loss)
                return loss if replaced is None else replaced

            return loss_fn

        monkeypatch.setitem(OBJECTIVES, "elbo", factory)
        return calls

    return install


def tiny_schema(data_dim: int = 6) -> TableSchema:
    """A table schema of ``data_dim`` values (at least 6): a categorical column of 3
    categories, a binary and a count column, and continuous columns for the rest."""
    columns = (
        Column("colour", "categorical", ("blue", "green", "red")),
        Column("smoker", "binary", ("no", "yes")),
        Column("visits", "count", mean=3.0, std=2.0),
        *(Column(f"x{i}", "continuous", mean=1.0, std=2.0) for i in range(data_dim - 5)),
    )
    return TableSchema(columns)


def table_rows(
    schema: TableSchema, num: int, generator: torch.Generator, missing: float = 0.0
) -> torch.Tensor:
    """``num`` random rows coded by ``schema``, each cell missing (NaN) with probability
    ``missing``."""
    parts = []
    for column in schema.columns:
        if column.kind == "categorical":
            codes = torch.randint(column.width, (num,), generator=generator)
            cells = torch.nn.functional.one_hot(codes, column.width).float()
        elif column.kind == "binary":
            cells = torch.randint(2, (num, 1), generator=generator).float()
        elif column.kind == "count":
            cells = torch.randint(0, 12, (num, 1), generator=generator).float()
        else:
            cells = torch.randn(num, 1, generator=generator)
        hidden = torch.rand(num, generator=generator) < missing
        parts.append(cells.masked_fill(hidden[:, None], float("nan")))
    return torch.cat(parts, dim=1)
