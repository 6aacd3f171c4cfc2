r"""Training objectives: callables ``(model, guide, *args, **kwargs) -> loss``.

Each returns a differentiable loss summed over the batch (so the loss per
example is ``loss / batch_size``):

* ``elbo``: :class:`~pyro.infer.Trace_ELBO`, the Monte Carlo ELBO;
* ``analytic-kl``: :class:`~pyro.infer.TraceMeanField_ELBO`, the KL term in
  closed form where the prior allows it (lower variance);
* ``iwae``: the importance-weighted bound of Burda et al. (2016),
  :math:`\sum_i \log \frac1K \sum_k w_{ik}`, per example. (Pyro's
  ``RenyiELBO(alpha=0)`` applies the log-mean-exp to the whole batch's summed
  weights instead, a much looser bound, so it is not used.) Auxiliary sites
  (training-only terms, see :mod:`pyro_vae.evaluation`) are added outside the
  log-mean-exp, as the ELBOs add them.
"""

import math
from collections.abc import Callable

import pyro.infer
import torch

from pyro_vae.evaluation import log_densities

Objective = Callable[..., torch.Tensor]


def iwae_objective(num_particles: int) -> Objective:
    r"""Negative IWAE bound :math:`-\sum_i (\operatorname{logsumexp}_k \log w_{ik} - \log K)`."""

    def loss(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        dens = log_densities(model, guide, *args, num_particles=num_particles, **kwargs)
        bound = torch.logsumexp(dens.log_weights, dim=0) - math.log(num_particles)
        return -(bound + dens.log_auxiliary.mean(dim=0)).sum()

    return loss


def _elbo(elbo_class: type[pyro.infer.ELBO]) -> Callable[[int], Objective]:
    def make(num_particles: int) -> Objective:
        vectorize = num_particles > 1
        return elbo_class(
            num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1
        ).differentiable_loss

    return make


#: Registry: name -> factory taking the number of particles.
OBJECTIVES: dict[str, Callable[[int], Objective]] = {
    "elbo": _elbo(pyro.infer.Trace_ELBO),
    "analytic-kl": _elbo(pyro.infer.TraceMeanField_ELBO),
    "iwae": iwae_objective,
}
