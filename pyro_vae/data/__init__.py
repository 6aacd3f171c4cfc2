"""Datasets as device tensors: the registered image datasets and users' own ``.npz`` files,
their splits and binarization."""

from pyro_vae.data.images import DATASETS, ImageData, load_images

__all__ = ["DATASETS", "ImageData", "load_images"]
