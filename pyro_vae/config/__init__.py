"""Configuration: :class:`ModelConfig` (what model), :class:`DataConfig` (on what data) and
:class:`TrainConfig` (what model, on what data, trained how), each option declared once on
its field (:mod:`.fields`)."""

from pyro_vae.config.data import BINARIZE_CHOICES, DataConfig
from pyro_vae.config.model import ARCH_MODELS, MODELS, ModelConfig
from pyro_vae.config.train import (
    DATA_FIELDS,
    DEVICE_CHOICES,
    MODEL_FIELDS,
    ON_NAN_CHOICES,
    TrainConfig,
    resolve_device,
)

__all__ = [
    "ARCH_MODELS",
    "BINARIZE_CHOICES",
    "DATA_FIELDS",
    "DataConfig",
    "DEVICE_CHOICES",
    "MODELS",
    "MODEL_FIELDS",
    "ModelConfig",
    "ON_NAN_CHOICES",
    "TrainConfig",
    "resolve_device",
]
