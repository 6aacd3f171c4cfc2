"""The swappable parts of a model, each kind with its registry: priors p(z), likelihoods
p(x|z), encoder/decoder architectures, and the distributions their sites use."""

from pyro_vae.components.likelihoods import LIKELIHOODS, Likelihood
from pyro_vae.components.networks import ARCHITECTURES, Architecture
from pyro_vae.components.priors import PRIORS, Prior

__all__ = ["ARCHITECTURES", "LIKELIHOODS", "PRIORS", "Architecture", "Likelihood", "Prior"]
