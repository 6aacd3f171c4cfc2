"""Datasets as device-resident tensors, with the 50k/10k/10k protocol.

Images are found, in order, in ``data_root`` (torchvision's layout or the raw
IDX files, gzipped or not), in a system copy (Debian's ``dataset-fashion-mnist``
installs ``/usr/share/datasets/fashion-mnist``), or downloaded by torchvision.
Parsing and downloading are torchvision's; this module only finds the files.

Your own images: ``name`` may instead be a ``.npz`` file (:func:`read_image_file`) with
arrays ``train`` and ``test`` of shape (N, H, W) or (N, C, H, W), uint8 grey levels 0-255
or floats, and optional ``train_labels``, ``test_labels`` and ``class_names``. The last
sixth of ``train`` (at most 10,000 images, as for the registered datasets) is held out
for validation.

Binarization: with ``binarize=True`` the training images stay grey levels and
:meth:`ImageData.training_batch` draws a fresh Bernoulli(pixel) sample of every
batch (dynamic binarization); validation and test images are binarized once
with a fixed seed, so every run is evaluated on the same binary images. Evaluated on
the training split (:meth:`ImageData.evaluation_images`), the training images are
binarized once too, with a seed of their own.
"""

import gzip
import math
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from pyro_vae.core.errors import ConfigError, ConfigTypeError, DatasetUnavailableError
from pyro_vae.core.files import atomic_write

#: Seed of the one-off binarization of validation and test images.
EVAL_BINARIZATION_SEED = 0
#: Seed of the one-off binarization of the training images for evaluation on them.
TRAIN_EVAL_BINARIZATION_SEED = 1
#: The splits of an :class:`ImageData`, in the order of the protocol.
SPLITS = ("train", "val", "test")
#: Training images held out, from the end, for validation: this many of a registered
#: dataset's (the protocol's 10k of 60k); of an image file's, a sixth, at most this many.
NUM_VALIDATION = 10_000
#: ``--dataset`` names an image file of the user's (:func:`read_image_file`) when it ends so.
IMAGE_FILE_SUFFIX = ".npz"
#: The arrays such a file may hold.
IMAGE_FILE_ARRAYS = ("train", "test", "train_labels", "test_labels", "class_names")

DEFAULT_DATA_ROOT = Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro-vae"))

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


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
            self.check_values(split, images)
        for split in ("train", "val"):
            if getattr(self, split).shape[0] == 0:
                raise ConfigError(f"{split} holds no images; training needs at least one")
        if self.binarize and not bool(((self.train >= 0) & (self.train <= 1)).all()):
            raise ConfigError(
                "binarize=True draws Bernoulli(pixel) training images, which needs grey levels in "
                f"[0, 1], but train ranges over [{self.train.min().item():g}, "
                f"{self.train.max().item():g}]; rescale the data or set binarize=False"
            )

    def check_values(self, split: str, images: torch.Tensor) -> None:
        """Raise :class:`ConfigError` for values the data may not hold: here, any NaN or
        infinite value."""
        bad = (~torch.isfinite(images)).sum().item()
        if bad:
            raise ConfigError(
                f"{split} images contain {bad} NaN or infinite values; clean or impute them"
            )

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def training_images(self) -> torch.Tensor:
        """All training images as an epoch sees them: a fresh binarization, or the grey levels."""
        return draw_binary(self.train) if self.binarize else self.train

    def training_batch(self, index: torch.Tensor) -> torch.Tensor:
        """The training images ``index`` as a step sees them: a fresh binarization
        (:func:`draw_binary`; drawn per batch, while the batch is in the cache), or the grey
        levels."""
        images = self.train[index]
        return draw_binary(images) if self.binarize else images

    def evaluation_images(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of ``split`` (one of :data:`SPLITS`) as evaluation scores
        them: validation and test as they are; the training images, when ``binarize``,
        binarized once with :data:`TRAIN_EVAL_BINARIZATION_SEED` (the same binary images
        at every call, on any device), so that their log-likelihood can be set against
        the test images' to measure overfitting."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        images, labels = getattr(self, split), getattr(self, f"{split}_labels")
        if split == "train" and self.binarize:
            generator = torch.Generator().manual_seed(TRAIN_EVAL_BINARIZATION_SEED)
            images = torch.bernoulli(images.cpu(), generator=generator).to(images.device)
        return images, labels

    def to(self, device: torch.device | str) -> "ImageData":
        """A copy on ``device`` (of the same class, so subclasses survive)."""
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("train", "train_labels", "val", "val_labels", "test", "test_labels")
        }
        return replace(self, **tensors)


def keep_labels(data: ImageData, num: int, seed: int) -> ImageData:
    """A copy of ``data`` whose training images keep their label for ``num`` of them, an
    equal number per class (the first ``num % classes`` classes one more), chosen with
    ``seed``; the others get the label -1 (unknown). :class:`ConfigError` if a class has
    too few images."""
    labels = data.train_labels.cpu()
    classes = len(data.class_names)
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label in range(classes):
        wanted = num // classes + (label < num % classes)
        members = torch.nonzero(labels == label).flatten()
        if len(members) < wanted:
            raise ConfigError(
                f"`labels={num}` keeps {wanted} labels of class {data.class_names[label]!r}, "
                f"which has {len(members)} training images; keep fewer labels"
            )
        kept.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    hidden = torch.full_like(labels, -1)
    index = torch.cat(kept)
    hidden[index] = labels[index]
    return replace(data, train_labels=hidden.to(data.train_labels.device))


def repeat_labelled(data: ImageData) -> ImageData:
    """A copy of ``data`` whose labelled training images (label 0 or more) are repeated
    until they are about as many as the unlabelled ones, so that every batch holds
    labelled images in the proportion of Kingma et al.'s (2014) training, which draws a
    labelled and an unlabelled batch at every step. Unchanged when the labelled images
    are not outnumbered."""
    known = data.train_labels >= 0
    labelled, unlabelled = int(known.sum()), int((~known).sum())
    extra = unlabelled // labelled - 1 if labelled else 0
    if extra < 1:
        return data
    images = torch.cat([data.train, data.train[known].repeat(extra, 1)])
    labels = torch.cat([data.train_labels, data.train_labels[known].repeat(extra)])
    return replace(data, train=images, train_labels=labels)


def draw_binary(probabilities: torch.Tensor) -> torch.Tensor:
    """A Bernoulli draw of every element, :math:`x_i = [u_i < p_i]`, as a tensor like
    ``probabilities``, determined by torch's global RNG state (which exact resume restores).

    On a GPU this is ``torch.bernoulli``. On a CPU torch draws with one Mersenne twister
    on one thread, ~13 ns per element, a fifth of a training epoch of 50k images; here
    torch's generator draws one seed and numpy's SFC64 generator the float32 uniforms
    :math:`u_i`, about 5x faster.
    """
    if probabilities.device.type != "cpu":
        return torch.bernoulli(probabilities)
    generator = np.random.Generator(np.random.SFC64(int(torch.randint(2**62, ()))))
    uniform = torch.from_numpy(generator.random(probabilities.shape, dtype=np.float32))
    return torch.lt(uniform, probabilities, out=torch.empty_like(probabilities))


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
        raise ConfigError(f"`data_root` {root} is a file, not a directory; pass a directory")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(
            f"`data_root` {root} is not readable (permission denied); "
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
                "pass a writable `data_root`"
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
            f"or put the IDX files in `data_root`, or run once with internet access so "
            "torchvision can download it"
        ) from error
    return train, test


def is_image_file(name: str) -> bool:
    """Whether a dataset name is a path to the user's own image file."""
    return name.endswith(IMAGE_FILE_SUFFIX)


@dataclass(frozen=True)
class StoredImages:
    """A dataset as stored: images of shape (N, C, H, W), uint8 (0-255) or floats, with
    integer labels."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]


def _file_error(path: Path, problem: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{path}: {problem}. An image file holds arrays train and test, (N, H, W) or "
        "(N, C, H, W), uint8 0-255 or floats (in [0, 1]; counts for the count likelihoods), "
        "and optionally train_labels, test_labels (N integers) and class_names; write it "
        "with numpy.savez"
    )


def _file_images(path: Path, arrays: dict[str, np.ndarray], split: str) -> torch.Tensor:
    images = arrays[split]
    if images.ndim not in (3, 4) or 0 in images.shape:
        raise _file_error(path, f"{split} has shape {images.shape}, not (N, H, W) or (N, C, H, W)")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise _file_error(path, f"{split} holds {images.dtype} values, not uint8 or floats")
    images = torch.from_numpy(images if images.dtype == np.uint8 else images.astype(np.float32))
    return images if images.dim() == 4 else images.unsqueeze(1)


def _file_labels(path: Path, arrays: dict[str, np.ndarray], split: str, count: int) -> torch.Tensor:
    labels = arrays.get(f"{split}_labels")
    if labels is None:
        return torch.zeros(count, dtype=torch.long)
    if labels.dtype.kind not in "iu" or labels.shape != (count,) or (labels < 0).any():
        problem = (
            f"{split}_labels must be {count} integers 0 or more, one per {split} image; "
            f"got {labels.dtype} of shape {labels.shape}"
        )
        raise _file_error(path, problem)
    return torch.from_numpy(labels.astype(np.int64))


def read_image_file(path: str | Path) -> StoredImages:
    """The images and labels of a ``.npz`` file (see the module doc), checked.

    Images without labels are all of class 0. Class names default to the label numbers.
    Loaded with ``allow_pickle=False``: a file can hold arrays, never code.
    """
    path = Path(path)
    if not path.is_file():
        raise _file_error(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _file_error(path, f"not a readable .npz file ({error})") from error
    unknown = sorted(set(arrays) - set(IMAGE_FILE_ARRAYS))
    missing = [name for name in ("train", "test") if name not in arrays]
    if unknown or missing:
        problems = (("missing", missing), ("unknown", unknown))
        raise _file_error(
            path, ", ".join(f"{kind} arrays {names}" for kind, names in problems if names)
        )
    train, test = _file_images(path, arrays, "train"), _file_images(path, arrays, "test")
    if train.shape[1:] != test.shape[1:] or train.dtype != test.dtype:
        raise _file_error(
            path,
            f"train images are {train.dtype} {tuple(train.shape[1:])} but "
            f"test images {test.dtype} {tuple(test.shape[1:])}",
        )
    train_labels = _file_labels(path, arrays, "train", train.shape[0])
    test_labels = _file_labels(path, arrays, "test", test.shape[0])
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    names = arrays.get("class_names", np.arange(num_classes).astype(str))
    if names.dtype.kind != "U" or names.shape != (names.size,) or names.size < num_classes:
        raise _file_error(
            path,
            f"class_names must be at least {num_classes} strings (one per "
            f"label), got {names.dtype} of shape {names.shape}",
        )
    return StoredImages(train, train_labels, test, test_labels, tuple(map(str, names)))


def _stored_images(name: str, data_root: str | Path | None, download: bool) -> StoredImages:
    if is_image_file(name):
        return read_image_file(name)
    train_set, test_set = load_torchvision(name, data_root, download)
    return StoredImages(
        train_set.data.unsqueeze(1),
        train_set.targets.long(),
        test_set.data.unsqueeze(1),
        test_set.targets.long(),
        DATASETS[name].class_names,
    )


def _unit_scale(images: torch.Tensor) -> torch.Tensor:
    """Flat float images: uint8 grey levels as k/255, floats as they are."""
    images = images.flatten(1)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def load_images(
    name: str = "fashion-mnist",
    data_root: str | Path | None = None,
    *,
    binarize: bool = True,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> ImageData:
    """Load ``name`` (a :data:`DATASETS` name, or a ``.npz`` file of the user's, see the
    module doc) as :class:`ImageData`: the last :data:`NUM_VALIDATION` training images
    held out for validation (of an image file's, the last sixth, at most that many).

    :param subset: keep only the first ``subset`` training images (quick runs).
    """
    if not isinstance(binarize, bool):
        raise ConfigTypeError(f"`binarize` must be True or False, got {binarize!r}")
    stored = _stored_images(name, data_root, download)
    images, test = _unit_scale(stored.train), _unit_scale(stored.test)
    held_out = min(NUM_VALIDATION, images.shape[0] // 6) if is_image_file(name) else NUM_VALIDATION
    num_train = images.shape[0] - held_out
    if num_train == images.shape[0]:
        raise ConfigError(
            f"{name} has {images.shape[0]} training images: too few to hold out a sixth for "
            "validation; give at least 6"
        )
    if subset is not None and not 0 < subset <= num_train:
        raise ConfigError(f"`subset` must be between 1 and {num_train}, got {subset}")
    train, val = images[: subset or num_train], images[num_train:]
    if binarize:
        for split, values in (("training", images), ("test", test)):
            if not bool(((values >= 0) & (values <= 1)).all()):
                raise ConfigError(
                    f"binarized training draws Bernoulli(pixel) images, which needs grey "
                    f"levels in [0, 1], but the {split} images of {name} range over "
                    f"[{values.min().item():g}, {values.max().item():g}]; rescale them or "
                    "keep grey levels (`binarize='none'`)"
                )
        generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        val = torch.bernoulli(val, generator=generator)
        test = torch.bernoulli(test, generator=generator)
    data = ImageData(
        train=train,
        train_labels=stored.train_labels[: subset or num_train],
        val=val,
        val_labels=stored.train_labels[num_train:],
        test=test,
        test_labels=stored.test_labels,
        image_shape=tuple(stored.train.shape[1:]),
        class_names=stored.class_names,
        binarize=binarize,
    )
    return data.to(device)
