r"""Per-example distributions of the sample sites, without a needless copy per step.

Inside ``pyro.plate``, Pyro's broadcasting (``BroadcastMessenger``) calls
``fn.expand(plate_batch_shape)`` on the distribution of every sample site, also
when the distribution already has that batch shape, as the guide's
:math:`q(z|x)` and the likelihood :math:`p(x|z)` always do. torch's ``expand``
then builds a new distribution over expanded views of every parameter, which
also adds those views to the autograd graph: 1-2.5% of a training step on a
2-core CPU, a fixed cost per step (docs/results/index.md). :class:`Independent`
answers that case with itself, the same distribution (distributions are never
modified after construction); any real expansion, such as a prior of batch
shape ``()`` to the batch, or ``(B,)`` to ``(K, B)`` particles, is torch's.
"""

import pyro.distributions as dist
import torch


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


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    r""":math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)` over the last dimension:
    ``Normal(loc, scale).to_event(1)``, as an :class:`Independent`."""
    return Independent(dist.Normal(loc, scale), 1)
