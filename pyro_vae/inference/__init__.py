"""How a model is fit and scored, for any Pyro model/guide pair: the training objectives,
the importance-weighted estimators of log p(x), and learning-rate schedules."""

from pyro_vae.inference.estimators import bound_per_example, estimate_log_likelihood
from pyro_vae.inference.objectives import OBJECTIVES, ReparamTrace_ELBO
from pyro_vae.inference.schedules import LR_SCHEDULES

__all__ = [
    "LR_SCHEDULES",
    "OBJECTIVES",
    "ReparamTrace_ELBO",
    "bound_per_example",
    "estimate_log_likelihood",
]
