"""The base class of every likelihood: what it builds from the decoder's output, the data
it accepts and the message for data it does not."""

from typing import Any

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Option


class Likelihood(PyroModule):
    """Base class.

    ``params_per_dim``: how many decoder outputs each data dimension needs
    (the decoder's output width is ``params_per_dim * data_dim``).
    ``help``: what the likelihood is for, in a line. ``options``: the keyword options a
    subclass accepts (:class:`~pyro_vae.core.registry.Option`; option ``scale`` is the
    flag ``--likelihood-scale``).
    ``is_discrete``: log p(x|z) is the log-probability of discrete values, so
    ``-log p(x) / (D ln 2)`` is a code length in bits per dimension.
    """

    params_per_dim: int = 1
    help: str = ""
    options: tuple[Option, ...] = ()
    is_discrete: bool = False
    #: Built from the schema of a table (``build(..., table=schema)``), for table data only.
    needs_table: bool = False
    #: Human-readable description of the accepted data, used in error messages.
    domain: str = "real numbers"
    #: What to do about data outside the domain, used in error messages.
    domain_fix: str = (
        "rescale the data (e.g. divide 8-bit pixels by 255) or choose another likelihood"
    )

    @classmethod
    def build(cls, *, data_dim: int, **options: Any) -> "Likelihood":
        """Construct from the data size; likelihoods with per-dimension parameters override it."""
        return cls(**options)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of data ``x``: ``x`` itself, unless the likelihood takes
        data the networks cannot (missing cells, for a table's)."""
        return x

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z]: what figures show instead of noisy draws."""
        return self(params).mean

    def in_domain(self, x: torch.Tensor) -> bool:
        return bool(torch.isfinite(x).all())

    def validate(self, x: torch.Tensor, what: str = "the data") -> None:
        """Raise :class:`ConfigError` if ``x`` (named ``what`` in the message) is out of domain."""
        if not torch.isfinite(x).all():
            raise ConfigError(f"{what} contain NaN or infinite values; clean or impute them first")
        if not self.in_domain(x):
            lo, hi = x.min().item(), x.max().item()
            raise ConfigError(
                f"{type(self).__name__} expects {self.domain}, but {what} range over "
                f"[{lo:g}, {hi:g}]; {self.domain_fix}"
            )


def in_unit_interval(x: torch.Tensor) -> bool:
    return bool(((x >= 0) & (x <= 1)).all())
