"""Likelihoods of real numbers: Gaussian and Laplace, with fixed or learned scales."""

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.components.distributions import independent
from pyro_vae.components.likelihoods.base import Likelihood
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Option

#: Learned scales of location-scale likelihoods: the two modes, besides a fixed number.
SCALE_MODES = ("per-pixel", "global")


def parse_scale(value: str | float) -> str | float:
    """``per-pixel``, ``global`` or a positive number (a fixed scale), else :class:`ConfigError`."""
    if value in SCALE_MODES:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(
            f"likelihood-scale must be {' or '.join(SCALE_MODES)} (learned) or a positive "
            f"number (fixed), got {value!r}"
        )
    return number


class LocationScaleLikelihood(Likelihood):
    r"""Gaussian and Laplace base: location from the decoder, scale fixed or learned.

    ``scale`` is ``"per-pixel"`` (a learned :math:`\sigma_i` per data dimension,
    shared by all z), ``"global"`` (one learned :math:`\sigma`) or a positive
    number (fixed). Learned scales are :math:`\mathrm{softplus}(\rho) + \sigma_{\min}`,
    starting at 0.1. The floor matters on images: pixels that are always 0 (the
    borders of Fashion-MNIST) would otherwise drive their scale, and the density,
    to infinity; with it each such pixel adds at most
    :math:`-\log\sigma_{\min} - \frac12\log 2\pi` nats (Gaussian).

    :param data_dim: D, needed for per-pixel scales.
    :param min_scale: :math:`\sigma_{\min}`.
    """

    options = (
        Option(
            "scale",
            parse_scale,
            "per-pixel (learned, one per pixel; the default), global (one learned scale) or "
            "a positive number (fixed)",
            "S",
        ),
    )
    domain = "finite real numbers"
    init_scale = 0.1
    #: The location-scale family, called as ``family(loc, scale)``.
    family: type[dist.TorchDistribution]

    def __init__(self, data_dim: int, scale: str | float = "per-pixel", min_scale: float = 1e-3):
        super().__init__()
        self.scale_mode = parse_scale(scale)
        if not 0 <= min_scale < self.init_scale:
            raise ConfigError(f"min_scale must be in [0, {self.init_scale}), got {min_scale}")
        self.min_scale = min_scale
        if isinstance(self.scale_mode, float):
            self.register_buffer("fixed_scale", torch.tensor(self.scale_mode))
        else:
            size = data_dim if self.scale_mode == "per-pixel" else 1
            initial = math.log(math.expm1(self.init_scale - min_scale))  # softplus^-1
            self.raw_scale = nn.Parameter(torch.full((size,), initial))

    @classmethod
    def build(cls, *, data_dim: int, **options: Any) -> Likelihood:
        return cls(data_dim, **options)

    def scale(self) -> torch.Tensor:
        """The current scale, of shape ``(D,)``, ``(1,)`` or ``()``."""
        if isinstance(self.scale_mode, float):
            return self.fixed_scale
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return independent(self.family(params, self.scale().expand(params.shape)))


class GaussianLikelihood(LocationScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathcal N(x_i; \mu_i(z), \sigma_i^2)`.

    See :class:`LocationScaleLikelihood` for the scale.
    """

    help = "real data"

    family = dist.Normal


class LaplaceLikelihood(LocationScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \frac{1}{2b_i} e^{-|x_i - \mu_i(z)|/b_i}`.

    See :class:`LocationScaleLikelihood` for the scale :math:`b`.
    """

    help = "real data, heavier tails"

    family = dist.Laplace
