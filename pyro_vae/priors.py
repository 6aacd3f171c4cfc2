r"""Priors p(z).

A prior is a :class:`~pyro.nn.PyroModule` whose ``forward()`` returns a Pyro
distribution with ``event_shape == (latent_dim,)`` and empty batch shape; the
model's data plate broadcasts it over the batch. Learned priors hold their
parameters as module parameters, so SVI and ``torch.optim`` both train them.

To add a prior, write the class and add one line to :data:`PRIORS`.
"""

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule


class Prior(PyroModule):
    """Base class: ``forward() -> Distribution`` over ``R^latent_dim``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError


class StandardNormal(Prior):
    r""":math:`p(z) = \mathcal N(0, I)`."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


#: Registry of priors by CLI name.
PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormal,
}
