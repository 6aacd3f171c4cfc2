r"""The posterior predictive mean of the data given what is observed of it, from Pyro traces.

For a model whose likelihood leaves missing values out of :math:`\log p(x|z)` (a table's,
:class:`~pyro_vae.components.likelihoods.MixedLikelihood`), self-normalized importance
sampling with the guide as proposal gives

.. math:: \mathbb E[x \mid x_{\text{obs}}] \approx \sum_k \bar w_k\, \mathbb E[x \mid z_k],
          \qquad \bar w_k = \frac{w_k}{\sum_j w_j}, \quad
          w_k = \frac{p(x_{\text{obs}}, z_k)}{q(z_k \mid x_{\text{obs}})}, \quad
          z_k \sim q(z \mid x_{\text{obs}}),

which converges to the exact posterior predictive mean as ``K`` grows (the guide alone,
:math:`\frac1K \sum_k \mathbb E[x|z_k]`, would keep the guide's error). For a categorical
column the mean is the vector of predictive probabilities of its categories.
"""

from collections.abc import Callable

import torch

from pyro_vae.core.errors import ConfigError
from pyro_vae.inference.estimators import log_prob_sum, sample_sites, vectorized_traces


@torch.no_grad()
def posterior_predictive_mean(
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    site: str = "x",
    num_particles: int = 1000,
    max_batch: int = 20_000,
    **kwargs,
) -> torch.Tensor:
    """:math:`\\mathbb E[x \\mid x_{\\text{obs}}]` of every example (see the module doc):
    the mean of the observed ``site``'s distribution, weighted by the normalized
    importance weights, in chunks of ``max_batch // num_particles`` examples.

    :param data: tensors whose first dimension indexes examples, passed to ``model`` and
        ``guide`` (e.g. ``x`` with NaN where missing).
    """
    if num_particles <= 0 or max_batch <= 0:
        raise ConfigError("`num_particles` and `max_batch` must be positive")
    size = max(1, max_batch // num_particles)
    means = []
    for start in range(0, data[0].shape[0], size):
        chunk = [tensor[start : start + size] for tensor in data]
        guide_trace, model_trace = vectorized_traces(
            model, guide, *chunk, num_particles=num_particles, **kwargs
        )
        log_weights = (
            log_prob_sum(sample_sites(model_trace))  # observed and latent: log p(x_obs, z)
            - log_prob_sum(sample_sites(guide_trace))
        )
        weights = torch.softmax(torch.as_tensor(log_weights), dim=0)
        mean = model_trace.nodes[site]["fn"].mean
        means.append((weights.unsqueeze(-1) * mean).sum(0))
    return torch.cat(means)


__all__ = ["posterior_predictive_mean"]
