"""Likelihoods of counts: Poisson, negative binomial and its zero-inflated form."""

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.components.distributions import independent
from pyro_vae.components.likelihoods.base import Likelihood


def _are_counts(x: torch.Tensor) -> bool:
    return bool(((x >= 0) & (x == x.round())).all())


class CountLikelihood(Likelihood):
    r"""Base of the likelihoods of counts :math:`x_d \in \{0, 1, 2, \dots\}` (reads,
    events, grey levels as integers): the mean of each count is
    :math:`\mu_d = \mathrm{softplus}(\ell_d(z)) + \mu_{\min}` from the decoder's first
    output per dimension."""

    is_discrete = True
    domain = "non-negative integer counts"
    domain_fix = (
        "give the raw counts (0, 1, 2, ...), not normalized or log-transformed values, and "
        "load images of counts with `binarize='none'`"
    )
    #: :math:`\mu_{\min}`: keeps the rate of a count that is always 0 finite in log space.
    min_mean = 1e-4

    def count_mean(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw) + self.min_mean

    def in_domain(self, x: torch.Tensor) -> bool:
        return _are_counts(x)


class PoissonLikelihood(CountLikelihood):
    r""":math:`p(x|z) = \prod_d \mathrm{Poisson}(x_d; \mu_d)
    = \prod_d \mu_d^{x_d} e^{-\mu_d} / x_d!`: counts whose variance is their mean."""

    help = "counts (variance = mean)"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return independent(dist.Poisson(self.count_mean(params), validate_args=False))


class NegativeBinomialLikelihood(CountLikelihood):
    r"""Over-dispersed counts: negative binomial with mean :math:`\mu_d(z)` and a learned
    inverse dispersion :math:`\theta_d` per dimension (as scVI models gene expression),

    .. math:: p(x_d|z) = \frac{\Gamma(x_d + \theta_d)}{x_d!\,\Gamma(\theta_d)}
              \Big(\frac{\theta_d}{\theta_d + \mu_d}\Big)^{\theta_d}
              \Big(\frac{\mu_d}{\theta_d + \mu_d}\Big)^{x_d},
              \qquad \operatorname{Var} x_d = \mu_d + \mu_d^2 / \theta_d,

    :math:`\theta = \mathrm{softplus}(\rho) + \theta_{\min}`, starting at 1; the
    Poisson is the limit :math:`\theta \to \infty`.

    :param data_dim: D, the number of dispersions.
    """

    help = "over-dispersed counts, a learned dispersion per dimension"
    min_dispersion = 1e-3

    def __init__(self, data_dim: int):
        super().__init__()
        self.raw_dispersion = nn.Parameter(torch.full((data_dim,), math.log(math.expm1(1.0))))

    @classmethod
    def build(cls, *, data_dim: int, **options: Any) -> Likelihood:
        return cls(data_dim, **options)

    def dispersion(self) -> torch.Tensor:
        r""":math:`\theta`, of shape ``(D,)``."""
        return F.softplus(self.raw_dispersion) + self.min_dispersion

    def negative_binomial(self, raw_mean: torch.Tensor) -> dist.NegativeBinomial:
        r"""torch's parameters: ``total_count`` :math:`\theta`, ``logits``
        :math:`\log \mu - \log \theta`."""
        theta = self.dispersion().expand(raw_mean.shape)
        logits = self.count_mean(raw_mean).log() - theta.log()
        return dist.NegativeBinomial(theta, logits=logits, validate_args=False)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return independent(self.negative_binomial(params))


class ZeroInflatedNegativeBinomialLikelihood(NegativeBinomialLikelihood):
    r"""Counts with extra zeros (dropouts in single-cell data): with probability
    :math:`\pi_d(z) = \sigma(g_d(z))`, from the decoder's second output per dimension, a
    count is 0; otherwise it is :class:`NegativeBinomialLikelihood`'s,

    .. math:: p(x_d|z) = \pi_d [x_d = 0] + (1 - \pi_d)\,\mathrm{NB}(x_d; \mu_d, \theta_d).
    """

    help = "over-dispersed counts with extra zeros"
    params_per_dim = 2

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raw_mean, gate_logits = params.chunk(2, dim=-1)
        nb = self.negative_binomial(raw_mean)
        zinb = dist.ZeroInflatedNegativeBinomial(
            nb.total_count, logits=nb.logits, gate_logits=gate_logits, validate_args=False
        )
        return independent(zinb)
