r"""A two-level hierarchical VAE (Tomczak & Welling 2018, "VAE with a VampPrior", sec. 2.3).

Generative model, top-down:

.. math:: z_2 \sim p(z_2), \qquad z_1 \mid z_2 \sim \mathcal N(\mu_\theta(z_2),
          \operatorname{diag}\sigma_\theta(z_2)^2), \qquad x \mid z_1, z_2 \sim
          p_\theta(x \mid z_1, z_2).

Guide, bottom-up:

.. math:: q_\phi(z_1, z_2 \mid x) = q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2),

both diagonal Gaussians. :math:`p(z_2)` is any prior of the registry, built on
the encoder of the top layer :math:`q_\phi(z_2|x)`, so ``prior="vamp"`` gives the
paper's :math:`p(z_2) = \frac1K \sum_k q_\phi(z_2 \mid u_k)`. The ELBO is

.. math:: \mathbb E_q[\log p(x|z_1, z_2)] - \beta\,\mathbb E_q\Big[\log
          \frac{q(z_2|x)\,q(z_1|x, z_2)}{p(z_2)\,p(z_1|z_2)}\Big],

with ``beta`` applied, as in :class:`~pyro_vae.models.vae.VAE`, by ``poutine.scale`` on
both latent sites in the model and the guide. The Pyro sites are ``z2``, ``z1``
and ``x``; the objectives and the importance-weighted estimator of
:mod:`pyro_vae.inference.estimators` sum over all latent sites, so they need nothing
specific to this model (the IW estimate is :math:`\log p(x)` with the whole
guide as proposal).
"""

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import pyro_method
from torch import nn

from pyro_vae.components.distributions import diagonal_normal
from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.components.networks import Architecture, MultiInputGaussian
from pyro_vae.components.priors import Prior
from pyro_vae.data.tables import TableSchema
from pyro_vae.models.vae import VAE, image_shape_and_arch


class HierarchicalVAE(VAE):
    r"""Two-level VAE :math:`p(z_2)\,p(z_1|z_2)\,p(x|z_1, z_2)`, guide
    :math:`q(z_2|x)\,q(z_1|x, z_2)`; see the module doc.

    Networks (``arch`` builds those that read or write images):

    * ``encoder``: :math:`q(z_2|x)`, ``x -> (loc, scale)``, the VAE's encoder (and
      the VampPrior's);
    * ``encoder_z1``: :math:`q(z_1|x, z_2)`, ``(x, z2) -> (loc, scale)``;
    * ``prior_z1``: :math:`p(z_1|z_2)`, ``z2 -> (loc, scale)``, an MLP with hidden
      layers of the kind ``arch.layer`` (gated for ``arch="gated"``, else ReLU);
    * ``decoder``: :math:`p(x|z_1, z_2)`, ``(z1, z2) -> likelihood params``.

    ``latent_dim`` is the size of :math:`z_2` and of :math:`z_1`. The top layer
    :math:`z_2` is what :meth:`encode` describes (the mean and scale of
    :math:`q(z_2|x)`, the inherited method) and what :meth:`decode` and the
    figures take. Every network
    broadcasts over leading dimensions, so the guide runs inside a particles plate
    (latents of shape ``(K, N, latent_dim)``) with image features computed once
    per image.

    Parameters as in :class:`~pyro_vae.models.vae.VAE`.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        *,
        image_shape: Sequence[int] | None = None,
        arch: Architecture | str = "mlp",
        prior: Prior | nn.Module | str = "normal",
        likelihood: Likelihood | str = "bernoulli",
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        table: TableSchema | None = None,
    ):
        likelihood = build_likelihood(
            likelihood, data_dim=data_dim, options=likelihood_options, table=table
        )
        shape, arch = image_shape_and_arch(data_dim, image_shape, arch)
        top = (latent_dim,)  # z2's size, an extra input of the networks of z1 and x
        super().__init__(
            data_dim,
            latent_dim,
            hidden_dims,
            image_shape=shape,
            arch=arch,  # builds q(z2|x), on which p(z2) may be built
            decoder=arch.decoder(shape, hidden_dims, latent_dim, likelihood.params_per_dim, top),
            prior=prior,
            likelihood=likelihood,
            prior_options=prior_options,
        )
        self.encoder_z1 = arch.encoder(shape, hidden_dims, latent_dim, top)
        self.prior_z1 = MultiInputGaussian(top, hidden_dims[::-1], latent_dim, layer=arch.layer)

    @pyro_method
    def model(self, x: torch.Tensor, *, beta: float = 1.0) -> None:
        r""":math:`p(z_2)\,p(z_1|z_2)\,p(x|z_1, z_2)`, latent log-densities scaled by ``beta``."""
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z2 = pyro.sample("z2", self.prior())
                z1 = pyro.sample("z1", diagonal_normal(*self.prior_z1(z2)))
            pyro.sample("x", self.likelihood(self.decoder(z1, z2)), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, *, beta: float = 1.0) -> None:
        r""":math:`q(z_2|x)\,q(z_1|x, z_2)`, the log-densities scaled by ``beta``."""
        seen = self.likelihood.network_input(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z2 = pyro.sample("z2", diagonal_normal(*self.encoder(seen)))
                pyro.sample("z1", diagonal_normal(*self.encoder_z1(seen, z2)))

    @torch.no_grad()
    def decode(self, z2: torch.Tensor) -> torch.Tensor:
        r"""Likelihood mean :math:`\mathbb E[x|z_1, z_2]` at the mean :math:`z_1` of
        :math:`p(z_1|z_2)`: an image for each top-layer latent, as the figures need."""
        return self.likelihood.mean(self.decoder(self.prior_z1(z2)[0], z2))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""Likelihood mean at the posterior means: :math:`z_2` of :math:`q(z_2|x)`, then
        :math:`z_1` of :math:`q(z_1|x, z_2)`."""
        seen = self.likelihood.network_input(x)
        z2 = self.encoder(seen)[0]
        return self.likelihood.mean(self.decoder(self.encoder_z1(seen, z2)[0], z2))

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        r"""Likelihood means at ancestral draws :math:`z_2 \sim p(z_2)`,
        :math:`z_1 \sim p(z_1|z_2)`; shape ``(num_samples, data_dim)``."""
        z2 = self.prior().sample((num_samples,))
        z1 = dist.Normal(*self.prior_z1(z2)).sample()
        return self.likelihood.mean(self.decoder(z1, z2))
