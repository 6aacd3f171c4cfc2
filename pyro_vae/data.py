"""Datasets as device-resident tensors, with the 50k/10k/10k protocol.

Images are found, in order, in ``data_root`` (torchvision's layout or the raw
IDX files, gzipped or not), in a system copy (Debian's ``dataset-fashion-mnist``
installs ``/usr/share/datasets/fashion-mnist``), or downloaded by torchvision.
Parsing and downloading are torchvision's; this module only finds the files.

Binarization: with ``binarize=True`` the training images stay grey levels and
:meth:`ImageData.training_images` draws a fresh Bernoulli(pixel) sample every
epoch (dynamic binarization); validation and test images are binarized once
with a fixed seed, so every run is evaluated on the same binary images.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from pyro_vae.errors import ConfigError, DatasetUnavailableError

#: Seed of the one-off binarization of validation and test images.
EVAL_BINARIZATION_SEED = 0
#: Number of training images held out, from the end, for validation.
NUM_VALIDATION = 10_000

DEFAULT_DATA_ROOT = Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro-vae"))

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset may be found and how to describe it."""

    torchvision_class: type[datasets.MNIST]
    system_dirs: tuple[Path, ...]
    class_names: tuple[str, ...]
    install_hint: str


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        datasets.FashionMNIST,
        (Path("/usr/share/datasets/fashion-mnist"),),
        FASHION_MNIST_CLASSES,
        "on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`",
    ),
    "mnist": DatasetSpec(
        datasets.MNIST,
        (),
        tuple(str(i) for i in range(10)),
        "download the four MNIST IDX files (train/t10k images/labels)",
    ),
}

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class ImageData:
    """Train/validation/test images as flat float tensors on one device.

    ``train`` holds grey levels in [0, 1]; ``val`` and ``test`` are already
    binarized when ``binarize`` is set.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    binarize: bool

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def training_images(self) -> torch.Tensor:
        """This epoch's training images: a fresh binarization, or the grey levels."""
        return torch.bernoulli(self.train) if self.binarize else self.train

    def to(self, device: torch.device | str) -> "ImageData":
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("train", "train_labels", "val", "val_labels", "test", "test_labels")
        }
        return ImageData(**tensors, image_shape=self.image_shape,
                         class_names=self.class_names, binarize=self.binarize)  # fmt: skip


def _find_raw_dir(directory: Path) -> Path | None:
    """A folder holding the four IDX files (optionally .gz), at or just below ``directory``."""
    for candidate in (directory, directory / "raw"):
        if all(
            (candidate / name).is_file() or (candidate / f"{name}.gz").is_file()
            for name in _IDX_FILES
        ):
            return candidate
    return None


def _install_raw_files(source: Path, raw_folder: Path) -> None:
    """Copy (or un-gzip) the IDX files into torchvision's ``raw`` folder."""
    raw_folder.mkdir(parents=True, exist_ok=True)
    for name in _IDX_FILES:
        if (raw_folder / name).is_file():
            continue
        if (source / name).is_file():
            shutil.copyfile(source / name, raw_folder / name)
        else:
            extract_archive(str(source / f"{name}.gz"), str(raw_folder))


def load_torchvision(
    name: str, data_root: str | Path | None = None, download: bool = True
) -> tuple[datasets.MNIST, datasets.MNIST]:
    """The train and test torchvision datasets of ``name``, found or downloaded."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = Path(data_root) if data_root is not None else DEFAULT_DATA_ROOT
    cls = spec.torchvision_class
    raw_folder = root / cls.__name__ / "raw"

    local = [d for d in (root, root / cls.__name__, *spec.system_dirs) if _find_raw_dir(d)]
    if local and not all((raw_folder / f).is_file() for f in _IDX_FILES):
        try:
            _install_raw_files(_find_raw_dir(local[0]), raw_folder)
        except OSError as error:
            raise DatasetUnavailableError(
                f"found {name} in {local[0]} but could not copy it to {raw_folder}: {error}; "
                "pass a writable --data-root"
            ) from error

    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as error:  # torchvision: not found, or download failed
        searched = ", ".join(str(d) for d in (root, *spec.system_dirs))
        how = "download is disabled" if not download else f"the download failed ({error})"
        raise DatasetUnavailableError(
            f"{name} was not found (looked in {searched}) and {how}. To fix: {spec.install_hint}, "
            f"or put the IDX files in --data-root, or run once with internet access so "
            "torchvision can download it"
        ) from error
    return train, test


def load_images(
    name: str = "fashion-mnist",
    data_root: str | Path | None = None,
    *,
    binarize: bool = True,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> ImageData:
    """Load ``name`` as :class:`ImageData`: last 10k training images held out for validation.

    :param subset: keep only the first ``subset`` training images (quick runs).
    """
    train_set, test_set = load_torchvision(name, data_root, download)
    images = train_set.data.flatten(1).float().div_(255)
    labels = train_set.targets.long()
    num_train = images.shape[0] - NUM_VALIDATION
    if subset is not None and not 0 < subset <= num_train:
        raise ConfigError(f"--subset must be between 1 and {num_train}, got {subset}")
    train, val = images[: subset or num_train], images[num_train:]
    test = test_set.data.flatten(1).float().div_(255)
    if binarize:
        generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        val = torch.bernoulli(val, generator=generator)
        test = torch.bernoulli(test, generator=generator)
    data = ImageData(
        train=train,
        train_labels=labels[: subset or num_train],
        val=val,
        val_labels=labels[num_train:],
        test=test,
        test_labels=test_set.targets.long(),
        image_shape=(1, *train_set.data.shape[1:]),
        class_names=DATASETS[name].class_names,
        binarize=binarize,
    )
    return data.to(device)
