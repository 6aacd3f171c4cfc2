"""Datasets as device tensors: the registered image datasets, users' own image files and
tables, their splits, binarization and coding."""

from pyro_vae.data.images import DATASETS, ImageData, load_images
from pyro_vae.data.tables import TableData, TableSchema, load_table

__all__ = ["DATASETS", "ImageData", "TableData", "TableSchema", "load_images", "load_table"]
