r"""Per-example distributions of the sample sites, without a needless copy per step.

Inside ``pyro.plate``, Pyro's broadcasting (``BroadcastMessenger``) calls
``fn.expand(plate_batch_shape)`` on the distribution of every sample site, also
when the distribution already has that batch shape, as the guide's
:math:`q(z|x)` and the likelihood :math:`p(x|z)` always do. torch's ``expand``
then builds a new distribution over expanded views of every parameter, which
also adds those views to the autograd graph: 1-2.5% of a training step on a
2-core CPU, a fixed cost per step (docs/results/index.md). :class:`Independent`
answers that case with itself, the same distribution (their parameters are never
modified after construction); any real expansion, such as a prior of batch
shape ``()`` to the batch, or ``(B,)`` to ``(K, B)`` particles, is torch's.
"""

import math

import pyro.distributions as dist
import torch
from torch.distributions.utils import _standard_normal


class Independent(dist.Independent):
    r""":class:`pyro.distributions.Independent` whose ``expand`` to its own batch shape is free.

    :math:`p(x) = \prod_d p_\text{base}(x_d)`, the product over the base's rightmost
    ``reinterpreted_batch_ndims`` batch dimensions.
    """

    def expand(
        self, batch_shape: torch.Size, _instance: dist.Independent | None = None
    ) -> dist.Independent:
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)


def independent(base: dist.TorchDistribution, event_dims: int = 1) -> Independent:
    """``base.to_event(event_dims)``, as an :class:`Independent`."""
    return Independent(base, event_dims)


#: :math:`\log \sqrt{2\pi}`, the constant of a Gaussian log-density (as torch writes it)
HALF_LOG_TWO_PI = math.log(math.sqrt(2 * math.pi))


class BroadcastNormal(dist.Normal):
    r""":class:`pyro.distributions.Normal` whose log-density, once expanded, broadcasts the
    parameters as they were before the expansion, and takes its own draws' noise.

    torch's ``log_prob`` of an expanded Normal computes :math:`\sigma^2` and
    :math:`\log \sigma` on the expanded views: ``K`` times per example for ``K``
    particles, once per example for a prior. From the parameters before the expansion the
    values are the same, bit for bit, for a fraction of the work (a few per cent of an
    importance-weighted evaluation's pass).

    The density of a value this distribution drew with :meth:`rsample`,
    :math:`z = \mu + \sigma\epsilon`, is taken from its noise,
    :math:`-\tfrac12\epsilon^2 - \log\sigma - \log\sqrt{2\pi}`: the same function of
    the parameters (so the same reparameterized gradient), in three operations instead of
    six, without the rounding of :math:`(z - \mu)/\sigma`. Everything else (draws, means,
    KL divergences) is torch's, on the expanded views.
    """

    #: ``(loc, scale)`` before the first expansion; None for a distribution never expanded
    unexpanded: tuple[torch.Tensor, torch.Tensor] | None = None
    #: ``(value, its version, noise)`` of the last :meth:`rsample`: ``value = loc + noise * scale``
    last_draw: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def expand(self, batch_shape: torch.Size, _instance: dist.Normal | None = None) -> dist.Normal:
        new = super().expand(batch_shape, _instance)
        new.unexpanded = self.unexpanded or (self.loc, self.scale)
        return new

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        noise = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = self.loc + noise * self.scale  # torch's draw
        if not value.is_inference():  # inference tensors have no version to check
            self.last_draw = (value, value._version, noise)
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self.unexpanded or (self.loc, self.scale)
        if self._drew(value):
            noise = self.last_draw[2]
            log_p = noise.square().mul_(-0.5).sub_(scale.log() + HALF_LOG_TWO_PI)
        else:  # torch's formula, operation for operation
            var = scale**2
            log_p = -((value - loc) ** 2) / (2 * var) - scale.log() - HALF_LOG_TWO_PI
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    def _drew(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is this distribution's last draw, unchanged since."""
        draw = self.last_draw
        return draw is not None and value is draw[0] and value._version == draw[1]


class UnitNormal(BroadcastNormal):
    r"""Coordinates :math:`\mathcal N(0, 1)`: ``loc`` zeros and ``scale`` ones, whose
    log-density :math:`-\tfrac12 v^2 - \log\sqrt{2\pi}` is torch's at these parameters, bit
    for bit, in three operations instead of six."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # -((v - 0) ** 2) / (2 * 1) - log 1 - c, without the operations that change nothing
        log_p = value.square().mul_(-0.5).sub_(HALF_LOG_TWO_PI)
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    r""":math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)` over the last dimension:
    ``Normal(loc, scale).to_event(1)``, as an :class:`Independent` of a
    :class:`BroadcastNormal`."""
    return Independent(BroadcastNormal(loc, scale), 1)


def unit_normal(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    r""":math:`\mathcal N(0, I)` over the last dimension, as :func:`diagonal_normal` of
    ``loc`` zeros and ``scale`` ones, with :class:`UnitNormal`'s cheaper log-density."""
    return Independent(UnitNormal(loc, scale), 1)
