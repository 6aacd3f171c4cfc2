r"""Training objectives: callables ``(model, guide, *args, **kwargs) -> loss``.

Each returns a differentiable loss summed over the batch (so the loss per
example is ``loss / batch_size``):

* ``elbo``: :class:`ReparamTrace_ELBO`, the Monte Carlo ELBO (Pyro's
  :class:`~pyro.infer.Trace_ELBO` without its host reads, for reparameterized guides);
* ``analytic-kl``: :class:`~pyro.infer.TraceMeanField_ELBO`, the KL term in
  closed form where the prior allows it (lower variance);
* ``iwae``: the importance-weighted bound of Burda et al. (2016),
  :math:`\sum_i \log \frac1K \sum_k w_{ik}`, per example. (Pyro's
  ``RenyiELBO(alpha=0)`` applies the log-mean-exp to the whole batch's summed
  weights instead, a much looser bound, so it is not used.) Auxiliary sites
  (training-only terms, see :mod:`pyro_vae.inference.estimators`) are added outside the
  log-mean-exp, as the ELBOs add them.
"""

import math
from collections.abc import Callable

import pyro.infer
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from pyro_vae.core.registry import Factory
from pyro_vae.inference.estimators import log_densities

Objective = Callable[..., torch.Tensor]


def iwae_objective(num_particles: int) -> Objective:
    r"""Negative IWAE bound :math:`-\sum_i (\operatorname{logsumexp}_k \log w_{ik} - \log K)`."""

    def loss(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        dens = log_densities(model, guide, *args, num_particles=num_particles, **kwargs)
        bound = torch.logsumexp(dens.log_weights, dim=0) - math.log(num_particles)
        return -(bound + dens.log_auxiliary.mean(dim=0)).sum()

    return loss


def _not_subsample(name: str, site: dict) -> bool:
    return not site_is_subsample(site)


class ReparamTrace_ELBO(pyro.infer.Trace_ELBO):
    r"""The Monte Carlo ELBO of :class:`~pyro.infer.Trace_ELBO`, computed without host reads.

    For each particle, with :math:`z \sim q(z|x)` drawn by reparameterization,

    .. math:: -\mathcal L = \sum_{s \in \text{guide}} \log q(z_s)
              - \sum_{s \in \text{model}} \log p(\,\cdot_s \mid \ldots),

    each term scaled (``poutine.scale``, e.g. the KL weight) and masked as its site
    says; the result is averaged over particles. Its gradient is the pathwise
    gradient, which is what Trace_ELBO's surrogate loss gives when every guide site
    has ``rsample``: the same value and gradient for the same draws.

    What it leaves out, per step: Trace_ELBO reads every site's ``log_prob_sum`` and
    its surrogate loss on the host (``torch_item``; a device synchronization on a
    GPU), scans the loss for NaN, and copies both traces to drop the plates'
    subsample sites. Here subsample sites are skipped instead. With Pyro's
    validation enabled, the traces come from Trace_ELBO with all its checks. A guide
    site without ``rsample`` (a discrete latent) needs score-function terms: that
    particle's gradient is Trace_ELBO's (with its host reads).
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled():  # Trace_ELBO's model/guide checks
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        return poutine.trace(replayed).get_trace(*args, **kwargs), guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._particle_loss(model_trace, guide_trace)
        return loss / self.num_particles

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """For :class:`~pyro.infer.SVI`: the loss, its gradient accumulated into the parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()

    def _particle_loss(
        self, model_trace: poutine.Trace, guide_trace: poutine.Trace
    ) -> torch.Tensor:
        loss = guide_trace.log_prob_sum(_not_subsample) - model_trace.log_prob_sum(_not_subsample)
        latent = (site for _, site in guide_trace.iter_stochastic_nodes())
        if all(site["fn"].has_rsample or site_is_subsample(site) for site in latent):
            return loss
        # score-function terms: the gradient of Trace_ELBO's surrogate, the ELBO's value
        model_trace = prune_subsample_sites(model_trace)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        surrogate = self._differentiable_loss_particle(model_trace, guide_trace)[1]
        return loss.detach() + (surrogate - surrogate.detach())


def _elbo(elbo_class: type[pyro.infer.ELBO]) -> Callable[[int], Objective]:
    def make(num_particles: int) -> Objective:
        vectorize = num_particles > 1
        return elbo_class(
            num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1
        ).differentiable_loss

    return make


def enumerated_elbo(num_particles: int) -> Objective:
    """The ELBO with the guide's enumerated discrete sites summed out exactly
    (:class:`~pyro.infer.TraceEnum_ELBO`), for models whose ``enumerates`` is true; also
    without gradients (``differentiable_loss`` refuses to run then)."""
    elbo = pyro.infer.TraceEnum_ELBO(
        num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1
    )

    def loss(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        if torch.is_grad_enabled():
            return elbo.differentiable_loss(model, guide, *args, **kwargs)
        return torch.tensor(elbo.loss(model, guide, *args, **kwargs))

    return loss


def objective(name: str, num_particles: int, enumerates: bool = False) -> Objective:
    """The objective registered as ``name``, or, for a model that enumerates a discrete
    site, :func:`enumerated_elbo` (the only one such a model trains on)."""
    return enumerated_elbo(num_particles) if enumerates else OBJECTIVES[name](num_particles)


#: Registry: name -> factory taking the number of particles.
OBJECTIVES: dict[str, Factory[Objective]] = {
    "elbo": Factory(_elbo(ReparamTrace_ELBO), "Trace_ELBO (without its host reads)"),
    "analytic-kl": Factory(
        _elbo(pyro.infer.TraceMeanField_ELBO), "TraceMeanField_ELBO, the KL term in closed form"
    ),
    "iwae": Factory(
        iwae_objective,
        "importance-weighted bound with `particles` samples; the best epoch, early stopping "
        "and the lr schedule then follow the validation IWAE bound",
    ),
}
