r"""Likelihoods p(x|z), one module per kind of data: :mod:`.pixels`, :mod:`.real`,
:mod:`.counts` and :mod:`.tables`.

A likelihood maps the decoder's output to a Pyro distribution over a flattened
data vector (``event_shape == (data_dim,)``), declares the data it accepts and
rejects anything else with a message saying what to do.

Every likelihood is built the same way, by :func:`build_likelihood` from a
registry name: :meth:`Likelihood.build` receives ``data_dim`` and the options
the user gave, which must be among the class's :attr:`Likelihood.options`. To
add a likelihood, write the class and add one line to :data:`LIKELIHOODS`
(see ``docs/extending.md``).

Continuous densities (Gaussian, Laplace, Beta, continuous Bernoulli) and
probabilities of discrete values (Bernoulli on binary data, discretized
logistic) are different units: compare log-likelihoods only within one kind.
"""

import math
from typing import Any

import torch

from pyro_vae.components.likelihoods.base import Likelihood
from pyro_vae.components.likelihoods.counts import (
    CountLikelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    ZeroInflatedNegativeBinomialLikelihood,
)
from pyro_vae.components.likelihoods.pixels import (
    AutoregressiveBernoulli,
    AutoregressiveBernoulliLikelihood,
    BernoulliLikelihood,
    BetaLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    IndependentBernoulli,
    IndependentContinuousBernoulli,
)
from pyro_vae.components.likelihoods.real import (
    GaussianLikelihood,
    LaplaceLikelihood,
    LocationScaleLikelihood,
)
from pyro_vae.components.likelihoods.tables import MixedLikelihood, TableDistribution
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import check_option_names, lookup
from pyro_vae.data.tables import TableSchema

#: Registry of likelihoods by CLI name.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "continuous-bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "laplace": LaplaceLikelihood,
    "beta": BetaLikelihood,
    "discretized-logistic": DiscretizedLogisticLikelihood,
    "autoregressive-bernoulli": AutoregressiveBernoulliLikelihood,
    "poisson": PoissonLikelihood,
    "negative-binomial": NegativeBinomialLikelihood,
    "zinb": ZeroInflatedNegativeBinomialLikelihood,
    "mixed": MixedLikelihood,
}


def build_likelihood(
    likelihood: "Likelihood | str",
    *,
    data_dim: int,
    options: dict[str, Any] | None = None,
    table: TableSchema | None = None,
) -> Likelihood:
    """A :class:`Likelihood` from a registry name and options, or ``likelihood`` itself;
    ``table``: the schema of table data, which a likelihood of tables is built from."""
    if not isinstance(likelihood, str):
        if options:
            raise ConfigError(
                "likelihood options apply to a likelihood given by name, not to a Likelihood object"
            )
        return likelihood
    cls = lookup(LIKELIHOODS, "likelihood", likelihood)
    check_option_names(LIKELIHOODS, "likelihood", likelihood, options or {})
    if not cls.needs_table:
        return cls.build(data_dim=data_dim, **(options or {}))
    if table is None:
        raise ConfigError(
            f"the {likelihood!r} likelihood models the rows of a table; train on a table file "
            "(.csv, .parquet, .h5ad) or choose another likelihood"
        )
    return cls.build(data_dim=data_dim, table=table, **(options or {}))


def bits_per_dim(log_likelihood: torch.Tensor | float, data_dim: int) -> torch.Tensor | float:
    r"""Code length :math:`-\log p(x) / (D \ln 2)` of a log-likelihood in nats."""
    return -log_likelihood / (data_dim * math.log(2))


__all__ = [
    "LIKELIHOODS",
    "AutoregressiveBernoulli",
    "AutoregressiveBernoulliLikelihood",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "ContinuousBernoulliLikelihood",
    "CountLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "IndependentBernoulli",
    "IndependentContinuousBernoulli",
    "LaplaceLikelihood",
    "Likelihood",
    "LocationScaleLikelihood",
    "MixedLikelihood",
    "NegativeBinomialLikelihood",
    "PoissonLikelihood",
    "TableDistribution",
    "ZeroInflatedNegativeBinomialLikelihood",
    "bits_per_dim",
    "build_likelihood",
]
