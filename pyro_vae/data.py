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

import gzip
import math
import os
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torchvision import datasets

from pyro_vae.errors import ConfigError, ConfigTypeError, DatasetUnavailableError
from pyro_vae.files import atomic_write

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
    binarized when ``binarize`` is set. Checked on creation: images are finite
    float tensors of shape ``(N, prod(image_shape))`` with one label each, and
    train/val are not empty; :class:`ConfigError` (or :class:`ConfigTypeError`)
    says what to fix.
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

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        width = math.prod(self.image_shape)
        for split in ("train", "val", "test"):
            images, labels = getattr(self, split), getattr(self, f"{split}_labels")
            for name, value in ((split, images), (f"{split}_labels", labels)):
                if not isinstance(value, torch.Tensor):
                    raise ConfigTypeError(
                        f"ImageData.{name} must be a torch.Tensor, got {type(value).__name__}"
                    )
            if not images.is_floating_point():
                raise ConfigTypeError(
                    f"{split} images are {images.dtype}; convert them to floats in [0, 1] "
                    "(e.g. images.float() / 255)"
                )
            if images.dim() != 2 or images.shape[1] != width:
                raise ConfigError(
                    f"{split} images have shape {tuple(images.shape)}, but image_shape "
                    f"{self.image_shape} needs (N, {width}): one flattened image per row "
                    "(use images.flatten(1), or fix image_shape)"
                )
            if labels.shape != images.shape[:1]:
                raise ConfigError(
                    f"{split} has {images.shape[0]} images but labels of shape "
                    f"{tuple(labels.shape)}; give one label per image"
                )
            bad = (~torch.isfinite(images)).sum().item()
            if bad:
                raise ConfigError(
                    f"{split} images contain {bad} NaN or infinite values; clean or impute them"
                )
        for split in ("train", "val"):
            if getattr(self, split).shape[0] == 0:
                raise ConfigError(f"{split} holds no images; training needs at least one")
        if self.binarize and not bool(((self.train >= 0) & (self.train <= 1)).all()):
            raise ConfigError(
                "binarize=True draws Bernoulli(pixel) training images, which needs grey levels in "
                f"[0, 1], but train ranges over [{self.train.min().item():g}, "
                f"{self.train.max().item():g}]; rescale the data or set binarize=False"
            )

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def training_images(self) -> torch.Tensor:
        """This epoch's training images: a fresh binarization, or the grey levels."""
        return torch.bernoulli(self.train) if self.binarize else self.train

    def to(self, device: torch.device | str) -> "ImageData":
        """A copy on ``device`` (of the same class, so subclasses survive)."""
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("train", "train_labels", "val", "val_labels", "test", "test_labels")
        }
        return replace(self, **tensors)


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
    """Copy (or un-gzip) the IDX files into torchvision's ``raw`` folder.

    Each file is written atomically, so an interrupted copy leaves no torn file
    that would later look like a complete dataset.
    """
    raw_folder.mkdir(parents=True, exist_ok=True)
    for name in _IDX_FILES:
        if (raw_folder / name).is_file():
            continue
        plain = (source / name).is_file()
        opener = open if plain else gzip.open
        with opener(source / (name if plain else f"{name}.gz"), "rb") as src:
            atomic_write(raw_folder / name, lambda dst, src=src: shutil.copyfileobj(src, dst))


def _check_data_root(root: Path) -> None:
    """A given data root may be missing (it is created for the download) but must be usable."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--data-root {root} is a file, not a directory; pass a directory")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(
            f"--data-root {root} is not readable (permission denied); "
            "fix its permissions or pass another directory"
        )


def load_torchvision(
    name: str, data_root: str | Path | None = None, download: bool = True
) -> tuple[datasets.MNIST, datasets.MNIST]:
    """The train and test torchvision datasets of ``name``, found or downloaded."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = Path(data_root) if data_root is not None else DEFAULT_DATA_ROOT
    _check_data_root(root)
    cls = spec.torchvision_class
    raw_folder = root / cls.__name__ / "raw"

    local = [d for d in (root, root / cls.__name__, *spec.system_dirs) if _find_raw_dir(d)]
    if local and not all((raw_folder / f).is_file() for f in _IDX_FILES):
        source = _find_raw_dir(local[0])
        try:
            _install_raw_files(source, raw_folder)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # a torn or foreign .gz
            raise DatasetUnavailableError(
                f"the {name} files in {source} are truncated or corrupted ({error}); "
                "replace them with intact copies"
            ) from error
        except OSError as error:
            raise DatasetUnavailableError(
                f"found {name} in {source} but could not copy it to {raw_folder}: {error}; "
                "pass a writable --data-root"
            ) from error

    if all((raw_folder / f).is_file() for f in _IDX_FILES):
        try:
            return cls(str(root), train=True), cls(str(root), train=False)
        except Exception as error:  # torchvision raises many types for a damaged IDX file
            raise DatasetUnavailableError(
                f"the {name} files in {raw_folder} are truncated or corrupted "
                f"({type(error).__name__}: {error}); delete {raw_folder} so that they are "
                "copied or downloaded again"
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
