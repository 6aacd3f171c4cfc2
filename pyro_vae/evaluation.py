r"""Per-example ELBO and importance-weighted log-likelihood, from Pyro traces.

For any model/guide pair whose data plate is the rightmost batch dimension,

.. math:: \log w_k = \log p(x, z_k) - \log q(z_k \mid x), \qquad z_k \sim q(z \mid x),

computed for all ``K`` particles at once by running the guide inside an outer
``particles`` plate and replaying the model against it. Then

* ELBO estimate: :math:`\frac1K \sum_k \log w_k`;
* IW estimate: :math:`\log \frac1K \sum_k w_k` (Burda et al. 2016), a lower
  bound on :math:`\log p(x)` that tightens as ``K`` grows.
"""

from collections.abc import Callable

import pyro
import torch
from pyro import poutine


def _sum_log_probs(trace: poutine.Trace) -> torch.Tensor | float:
    """Sum of every sample site's (unscaled) log-density, per (particle, example)."""
    return sum(
        (
            site["fn"].log_prob(site["value"])
            for site in trace.nodes.values()
            if site["type"] == "sample"
        ),
        0.0,
    )


def log_importance_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1, **kwargs
) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` of shape ``(num_particles, batch)``.

    ``model`` and ``guide`` are called with ``*args, **kwargs``; their batch size
    is read from the first argument. Differentiable (the IWAE objective trains
    through it); wrap in ``torch.no_grad()`` to evaluate.
    """
    batch_size = args[0].shape[0]
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    log_weights = _sum_log_probs(model_trace) - _sum_log_probs(guide_trace)
    return log_weights.expand(num_particles, batch_size)


@torch.no_grad()
def elbo_per_example(
    model: Callable, guide: Callable, x: torch.Tensor, *args, batch_size: int = 1000, **kwargs
) -> torch.Tensor:
    """Single-sample ELBO of each row of ``x``, evaluated in batches of ``batch_size``."""
    return torch.cat(
        [
            log_importance_weights(model, guide, x[i : i + batch_size], *args, **kwargs)[0]
            for i in range(0, x.shape[0], batch_size)
        ]
    )
