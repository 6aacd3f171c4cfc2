"""Which data to train on: the data options of ``pyro-vae train`` and how they load it."""

from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.config.fields import DATA, option
from pyro_vae.core.checks import positive
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.images import (
    DATASETS,
    DEFAULT_DATA_ROOT,
    IMAGE_FILE_SUFFIX,
    ImageData,
    is_image_file,
    load_images,
)
from pyro_vae.data.tables import TABLE_FILE_SUFFIXES, is_table_file, load_table

BINARIZE_CHOICES = ("dynamic", "none")


@dataclass
class DataConfig:
    """The data options: a registered image dataset, or a file of images or of a table,
    with how to read it. :meth:`check_data` checks them; :meth:`load_data` loads the data,
    a table with the schema of the configuration's ``table``
    (:attr:`~pyro_vae.config.ModelConfig.table`, where a run has one). Part of
    :class:`~pyro_vae.config.TrainConfig`."""

    dataset: str = option(
        "fashion-mnist",
        f"image dataset: {', '.join(DATASETS)} (50k train / last 10k of train as validation / "
        "10k test), or a .npz file of your images: arrays train and test, (N, H, W) or "
        "(N, C, H, W), uint8 or floats (in [0, 1]; counts for the count likelihoods), optional "
        "train_labels, test_labels, class_names (the last sixth of train is the validation set); "
        "or a table: .csv, .parquet, .h5ad, or .npz of 2-D arrays train and test (rows split "
        "with a fixed seed: a fifth test, a sixth of the rest validation)",
        group=DATA,
        metavar="NAME|FILE",
    )
    columns: str | None = option(
        None,
        "tables: a JSON file giving column kinds where the inferred ones are wrong, e.g. "
        '{"age": "continuous", "id": "ignore"} (kinds: continuous, binary, categorical, count, '
        "ignore)",
        group=DATA,
        metavar="FILE.json",
    )
    label_column: str | None = option(
        None,
        "tables: the column of the rows' labels (not modelled; colours figures, conditions "
        "`model='cvae'`)",
        group=DATA,
        metavar="NAME",
    )
    labels: int | None = option(
        None,
        "semi-supervised: keep the labels of N training images, balanced over the classes "
        "and chosen with `seed`; the others are unlabelled (default: all are labelled)",
        group=DATA,
        check=positive,
        metavar="N",
    )
    data_root: str | None = option(
        None,
        f"where to look for (and download) the data; default {DEFAULT_DATA_ROOT} "
        "(or $PYRO_VAE_DATA), then the system copy",
        group=DATA,
    )
    binarize: str = option(
        "dynamic",
        "dynamic: resample binary training images every epoch, binarize val/test once with "
        "a fixed seed; none: keep grey levels in [0, 1]",
        group=DATA,
        choices=BINARIZE_CHOICES,
    )
    subset: int | None = option(
        None,
        "train on the first N training images only (quick runs)",
        group=DATA,
        check=positive,
        metavar="N",
    )

    def check_data(self) -> None:
        """Resolve file names (``evaluate`` and ``plot`` find them from anywhere) and check
        that the options describe the data."""
        if self.is_table or is_image_file(self.dataset):  # kept as an absolute path,
            self.dataset = str(Path(self.dataset).expanduser().resolve())  # for evaluate/plot
        elif self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown `dataset` {self.dataset!r}; choose one of: {', '.join(DATASETS)}, "
                f"or name a {IMAGE_FILE_SUFFIX} file of your images or a table file "
                f"({', '.join(TABLE_FILE_SUFFIXES)})"
            )
        if self.columns is not None:
            self.columns = str(Path(self.columns).expanduser().resolve())
        if not self.is_table and (self.columns or self.label_column):
            raise ConfigError(
                "`columns` and `label_column` describe a table; drop them or train on a table file"
            )

    @property
    def is_table(self) -> bool:
        """Whether :attr:`dataset` is a table file (:func:`~pyro_vae.data.tables.is_table_file`)."""
        return is_table_file(self.dataset)

    def load_data(
        self, device: torch.device | str = "cpu", dataset: str | None = None
    ) -> ImageData:
        """The dataset this configuration trains on (``subset`` trims the training split
        only), or ``dataset`` loaded the same way (a table coded with this run's schema)."""
        if dataset is not None:
            if is_table_file(dataset) != self.is_table:
                raise ConfigError(
                    f"{dataset} and the run's dataset are not both tables or both images; "
                    "score data of the kind the run was trained on"
                )
            if self.is_table:
                return load_table(dataset, schema=self.table, device=device)
            return load_images(
                dataset, self.data_root, binarize=self.binarize == "dynamic", device=device
            )
        if self.is_table:
            return load_table(
                self.dataset,
                schema=self.table,
                columns=self.columns,
                label_column=self.label_column,
                subset=self.subset,
                device=device,
            )
        return load_images(
            self.dataset,
            self.data_root,
            binarize=self.binarize == "dynamic",
            subset=self.subset,
            device=device,
        )
