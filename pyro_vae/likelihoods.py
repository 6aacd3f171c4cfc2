r"""Likelihoods p(x|z).

A likelihood maps the decoder's output to a Pyro distribution over a flattened
data vector (``event_shape == (data_dim,)``), declares the data it accepts and
rejects anything else with a message saying what to do.

To add a likelihood, write the class and add one line to :data:`LIKELIHOODS`.
"""

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule

from pyro_vae.errors import ConfigError


class Likelihood(PyroModule):
    """Base class.

    ``params_per_dim``: how many decoder outputs each data dimension needs
    (the decoder's output width is ``params_per_dim * data_dim``).
    """

    params_per_dim: int = 1
    #: Human-readable description of the accepted data, used in error messages.
    domain: str = "real numbers"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

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
                f"[{lo:g}, {hi:g}]; rescale the data (e.g. divide 8-bit pixels by 255) "
                "or choose another likelihood"
            )


class IndependentBernoulli(dist.Independent):
    r"""Independent Bernoulli pixels from logits, with the fastest log-density per case

    .. math:: \log p(x) = \sum_d x_d \ell_d - \operatorname{softplus}(\ell_d).

    When ``x`` is shared by many particles (importance sampling: logits
    ``(K, B, D)``, data ``(B, D)``) the dot product is one batched matrix product,
    about twice as fast as broadcasting ``binary_cross_entropy_with_logits``; in
    training (one sample per example) torch's fused BCE kernel is the faster one.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.base_dist.logits
        if logits.dim() > value.dim() == 2 and logits.shape[-2:] == value.shape:
            dot = torch.einsum("...bd,bd->...b", logits, value)
            return dot - F.softplus(logits).sum(-1)
        logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class BernoulliLikelihood(Likelihood):
    r""":math:`p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(\ell_i(z)))`, from logits.

    Accepts values in [0, 1]: binary data gives a normalized likelihood; grey
    levels give the usual cross-entropy, which is not a normalized density (use
    the continuous Bernoulli for that).
    """

    domain = "values in [0, 1]"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False: grey-level targets are allowed (see class docstring).
        return IndependentBernoulli(dist.Bernoulli(logits=params, validate_args=False), 1)

    def in_domain(self, x: torch.Tensor) -> bool:
        return bool(((x >= 0) & (x <= 1)).all())


#: Registry of likelihoods by CLI name.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
}
