r"""Conditional VAEs: label-conditioned generation and structured-output completion.

Both are :class:`~pyro_vae.models.vae.VAE` subclasses, so they share its model and guide,

.. math:: z \mid c \sim p(z \mid c), \quad x \mid z, c \sim p_\theta(x \mid z, c), \qquad
          q_\phi(z \mid x, c),

and differ in what the modelled data ``x`` and the condition ``c`` are, which
:meth:`batch_inputs` says for a batch of images, and in their networks. The
training loop, the objectives and the importance-weighted estimator see only
``model(x, *c)`` / ``guide(x, *c)``, so the IW estimate of a conditional model is
:math:`\log p(x \mid c) \approx \log \frac1K \sum_k p(x, z_k|c) / q(z_k|x, c)`.

* :class:`LabelCVAE`: ``x`` the image, ``c`` its one-hot class label.
* :class:`CompletionCVAE` (Sohn, Lee & Yan 2015, the completion task of Pyro's
  CVAE tutorial): ``x`` the missing quadrants of an image, ``c`` the observed ones.

A conditional prior :math:`p(z \mid c)` is a :class:`ConditionalPrior`: a module
whose ``forward(*conditions)`` returns a distribution over ``z`` with one batch
entry per example.
"""

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from pyro_vae.components.distributions import diagonal_normal
from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.components.networks import MultiInputGaussian, MultiInputMLP, mlp
from pyro_vae.components.priors import Prior, build_prior
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.images import ImageData
from pyro_vae.data.tables import TableSchema
from pyro_vae.models.vae import VAE

#: Observed quadrants, as (row half, column half), in the order of Pyro's CVAE
#: tutorial: 1 = bottom-left, 2 = + top-left, 3 = + top-right. Bottom-right is never observed.
QUADRANT_ORDER = ((1, 0), (0, 0), (0, 1))
OBSERVED_QUADRANT_CHOICES = (1, 2, 3)
#: Sampled completions per test image in :meth:`CompletionCVAE.sample_grid`.
COMPLETIONS_PER_ROW = 8
#: Grey level that marks missing pixels in figures.
MISSING_GREY = 0.5


class ConditionalPrior(PyroModule):
    """Base class: ``forward(*conditions) -> Distribution`` over ``R^latent_dim``.

    The distribution's batch shape is the conditions' batch shape (one entry per example).
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, *conditions: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError


class LabelIndependentPrior(ConditionalPrior):
    r""":math:`p(z \mid y) = p(z)`: any unconditional :class:`~pyro_vae.components.priors.Prior`."""

    def __init__(self, prior: Prior):
        super().__init__(prior.latent_dim)
        self.prior = prior

    def forward(self, y: torch.Tensor) -> dist.TorchDistribution:
        return self.prior().expand(y.shape[:-1])


class ClassConditionalNormal(ConditionalPrior):
    r"""Learned :math:`p(z|y) = \mathcal N(\mu_y, \operatorname{diag}\sigma_y^2)`, one per class.

    :math:`\mu_y = y^\top M`, :math:`\sigma_y = \mathrm{softplus}(y^\top S)` for one-hot ``y``;
    initialized at N(0, I) for every class.
    """

    def __init__(self, num_classes: int, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(num_classes, latent_dim))
        # softplus(log(e - 1)) = 1: start from the standard normal.
        self.raw_scale = nn.Parameter(torch.full((num_classes, latent_dim), math.log(math.e - 1)))

    def forward(self, y: torch.Tensor) -> dist.TorchDistribution:
        return diagonal_normal(y @ self.loc, F.softplus(y @ self.raw_scale))


class LabelCVAE(VAE):
    r"""Label-conditional VAE: :math:`p(z|y)\,p_\theta(x|z, y)` and :math:`q_\phi(z|x, y)`.

    ``y`` is the one-hot class label. The ELBO bounds, and the IW estimator
    estimates, the conditional log-likelihood :math:`\log p(x \mid y)`. Sampling
    with a chosen ``y`` draws images of that class.

    :param prior: an unconditional :class:`~pyro_vae.components.priors.Prior` or its registry
        name (used as :math:`p(z|y) = p(z)`; options in ``prior_options``), or a
        :class:`ConditionalPrior` such as :class:`ClassConditionalNormal`; default N(0, I).
        A prior built on an encoder of x alone (the VampPrior) does not apply.
    :param likelihood: a :class:`~pyro_vae.components.likelihoods.Likelihood` or its registry
        name (options in ``likelihood_options``); default Bernoulli.
    :param table: the schema of table data (see :class:`~pyro_vae.models.vae.VAE`).
    :param encoder: ``(x, y) -> (loc, scale)``; default MLP over ``[x, y]``.
    :param decoder: ``(z, y) -> likelihood params``; default MLP over ``[z, y]``.
    """

    evaluates = "log p(x|y)"
    conditions_on_labels = True

    def __init__(
        self,
        data_dim: int = 784,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: Prior | ConditionalPrior | str = "normal",
        likelihood: Likelihood | str = "bernoulli",
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        table: TableSchema | None = None,
    ):
        likelihood = build_likelihood(
            likelihood, data_dim=data_dim, options=likelihood_options, table=table
        )
        if not isinstance(prior, ConditionalPrior):
            # encoder=None: this model's encoder also takes y, so a prior built on it cannot be
            prior = LabelIndependentPrior(
                build_prior(
                    prior,
                    latent_dim=latent_dim,
                    data_dim=data_dim,
                    encoder=None,
                    options=prior_options,
                )
            )
        if encoder is None:
            encoder = MultiInputGaussian((data_dim, num_classes), hidden_dims, latent_dim)
        if decoder is None:
            out_dim = data_dim * likelihood.params_per_dim
            decoder = MultiInputMLP((latent_dim, num_classes), hidden_dims[::-1], out_dim)
        super().__init__(
            data_dim,
            latent_dim,
            hidden_dims,
            encoder=encoder,
            decoder=decoder,
            prior=prior,
            likelihood=likelihood,
        )
        self.num_classes = num_classes

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices as one-hot float rows."""
        return F.one_hot(labels, self.num_classes).float()

    def batch_inputs(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the images and their one-hot labels."""
        return images, self.one_hot(labels).to(images.dtype)

    @torch.no_grad()
    def sample_grid(self, num: int, label: int | None, data: ImageData) -> tuple[torch.Tensor, int]:
        """``num`` samples of class ``label``; without a label, one row per class of
        ``num // num_classes`` samples each (at least one)."""
        device = next(self.parameters()).device
        if label is None:
            per_class = max(1, num // self.num_classes)
            y = self.one_hot(torch.arange(self.num_classes, device=device))
            # (per_class, classes, D) -> one row per class
            return self.sample(per_class, y).transpose(0, 1).flatten(0, 1), per_class
        if not 0 <= label < self.num_classes:
            names = ", ".join(f"{i} {name}" for i, name in enumerate(data.class_names))
            raise ConfigError(f"`label` {label} is not a class of this run; choose one of: {names}")
        y = self.one_hot(torch.tensor([label], device=device))
        return self.sample(num, y).squeeze(1), math.ceil(math.sqrt(num))


def check_observed_quadrants(observed_quadrants: int) -> None:
    """Raise :class:`ConfigError` unless 1, 2 or 3 quadrants are observed."""
    if observed_quadrants not in OBSERVED_QUADRANT_CHOICES:
        raise ConfigError(
            "`observed_quadrants` must be one of "
            f"{', '.join(map(str, OBSERVED_QUADRANT_CHOICES))}, "
            f"got {observed_quadrants}"
        )


def quadrant_mask(image_shape: Sequence[int], observed_quadrants: int) -> torch.Tensor:
    """Boolean mask over the flattened image: True on the ``observed_quadrants`` observed
    quadrants (see :data:`QUADRANT_ORDER`). Odd sides split as ``h // 2``."""
    check_observed_quadrants(observed_quadrants)
    channels, height, width = image_shape
    rows = (slice(0, height // 2), slice(height // 2, height))
    cols = (slice(0, width // 2), slice(width // 2, width))
    mask = torch.zeros(channels, height, width, dtype=torch.bool)
    for row, col in QUADRANT_ORDER[:observed_quadrants]:
        mask[:, rows[row], cols[col]] = True
    return mask.flatten()


class PriorNetwork(ConditionalPrior):
    r"""The prior network :math:`p_\psi(z|x_o) = \mathcal N(\mu_\psi, \operatorname{diag}
    \sigma_\psi^2)`, a function of the inputs :math:`x_o` and of the baseline's guess
    :math:`\hat y(x_o)` of the missing part.

    The guess is an input only: it is detached, so the baseline is trained by its own
    likelihood term alone (Pyro's tutorial trains it first and freezes it).
    """

    def __init__(
        self, baseline: nn.Module, likelihood: Likelihood, net: MultiInputGaussian, latent_dim: int
    ):
        super().__init__(latent_dim)
        self.baseline = baseline
        self.likelihood = likelihood
        self.net = net

    def guess(self, x_observed: torch.Tensor) -> torch.Tensor:
        """The baseline's deterministic prediction E[x_missing | x_observed]."""
        return self.likelihood.mean(self.baseline(x_observed))

    def forward(self, x_observed: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.net(x_observed, self.guess(x_observed).detach())
        return diagonal_normal(loc, scale)


class CompletionCVAE(VAE):
    r"""Structured-output CVAE for image completion (Sohn, Lee & Yan 2015).

    Given the observed quadrants :math:`x_o` of an image, generate the missing ones
    :math:`x_m`. Four networks:

    * baseline :math:`\hat y(x_o)`, a deterministic MLP with likelihood
      :math:`p_{\text{base}}(x_m|x_o) = p(x_m; \hat y(x_o))`, whose log-likelihood is exact;
    * prior network :math:`p_\psi(z|x_o)` (:class:`PriorNetwork`, fed the baseline's guess);
    * recognition network :math:`q_\phi(z|x_m, x_o)` (the guide's encoder);
    * generation network :math:`p_\theta(x_m|z, x_o)` (the decoder).

    The model is the VAE's with ``x = x_m`` and condition ``x_o``, plus the
    baseline's log-likelihood as an *auxiliary* observed site
    (``infer={"is_auxiliary": True}``): the training objectives add it, so the
    baseline trains jointly, while the estimators of
    :mod:`pyro_vae.inference.estimators` leave it out, so the IW estimate with the
    recognition network as proposal is that of the CVAE alone,

    .. math:: \log p(x_m \mid x_o) = \log \mathbb E_{p_\psi(z|x_o)} p_\theta(x_m \mid z, x_o)
              \approx \log \frac1K \sum_k \frac{p_\theta(x_m|z_k, x_o)\,p_\psi(z_k|x_o)}
              {q_\phi(z_k|x_m, x_o)}.

    :meth:`prior_guide` gives the same estimate with the prior network as proposal.
    """

    evaluates = "log p(x_missing|x_observed)"
    draws_whole_images = False

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        observed_quadrants: int = 1,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        *,
        likelihood: Likelihood | str = "bernoulli",
        likelihood_options: dict[str, Any] | None = None,
    ):
        mask = quadrant_mask(image_shape, observed_quadrants)
        observed_dim, missing_dim = int(mask.sum()), int((~mask).sum())
        likelihood = build_likelihood(likelihood, data_dim=missing_dim, options=likelihood_options)
        out_dim = missing_dim * likelihood.params_per_dim
        baseline = mlp([observed_dim, *hidden_dims, out_dim])
        prior = PriorNetwork(
            baseline,
            likelihood,
            MultiInputGaussian((observed_dim, missing_dim), hidden_dims, latent_dim),
            latent_dim,
        )
        super().__init__(
            missing_dim,
            latent_dim,
            hidden_dims,
            encoder=MultiInputGaussian((missing_dim, observed_dim), hidden_dims, latent_dim),
            decoder=MultiInputMLP((latent_dim, observed_dim), hidden_dims[::-1], out_dim),
            prior=prior,
            likelihood=likelihood,
        )
        self.image_shape = tuple(image_shape)
        self.observed_quadrants = observed_quadrants
        self.register_buffer("observed_index", mask.nonzero().squeeze(1), persistent=False)
        self.register_buffer("missing_index", (~mask).nonzero().squeeze(1), persistent=False)

    @property
    def baseline(self) -> nn.Module:
        """The baseline network ``x_observed -> likelihood params of x_missing``."""
        return self.prior.baseline

    def batch_inputs(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_missing, x_observed)``: the pixels to generate and the ones given."""
        return images[:, self.missing_index], images[:, self.observed_index]

    def assemble(self, x_missing: torch.Tensor, x_observed: torch.Tensor) -> torch.Tensor:
        """Whole flattened images from their parts (leading dimensions broadcast)."""
        batch = torch.broadcast_shapes(x_missing.shape[:-1], x_observed.shape[:-1])
        images = x_observed.new_empty(*batch, x_missing.shape[-1] + x_observed.shape[-1])
        images[..., self.missing_index] = x_missing.expand(*batch, -1)
        images[..., self.observed_index] = x_observed.expand(*batch, -1)
        return images

    @pyro_method
    def model(
        self, x_missing: torch.Tensor, x_observed: torch.Tensor, *, beta: float = 1.0
    ) -> None:
        r"""The CVAE :math:`p_\psi(z|x_o)\,p_\theta(x_m|z, x_o)`, plus the baseline's
        auxiliary term :math:`\log p_{\text{base}}(x_m|x_o)` for training."""
        # its own plate: a trace holds one site per name, and the VAE's model opens "data"
        with pyro.plate("baseline_data", x_observed.shape[0]):
            pyro.sample(
                "baseline",
                self.likelihood(self.baseline(x_observed)),
                obs=x_missing,
                infer={"is_auxiliary": True},
            )
        super().model(x_missing, x_observed, beta=beta)

    @pyro_method
    def prior_guide(
        self, x_missing: torch.Tensor, x_observed: torch.Tensor, *, beta: float = 1.0
    ) -> None:
        r"""The prior network as proposal: :math:`z \sim p_\psi(z \mid x_o)`.

        With it the importance weights are :math:`p_\theta(x_m|z_k, x_o)` and the IW
        estimate is the plain Monte Carlo estimate of
        :math:`\mathbb E_{p_\psi(z|x_o)} p_\theta(x_m|z, x_o)` (no ``x_m`` used to propose).
        """
        with pyro.plate("data", x_observed.shape[0]), poutine.scale(scale=beta):
            pyro.sample("z", self.prior(x_observed))

    @torch.no_grad()
    def baseline_log_likelihood(
        self, x_missing: torch.Tensor, x_observed: torch.Tensor
    ) -> torch.Tensor:
        r"""Exact :math:`\log p_{\text{base}}(x_m \mid x_o)` per example (no sampling)."""
        return self.likelihood(self.baseline(x_observed)).log_prob(x_missing)

    @torch.no_grad()
    def sample_grid(self, num: int, label: int | None, data: ImageData) -> tuple[torch.Tensor, int]:
        """Completions of the first test images (of class ``label``, if given), one image
        per row: observed part (missing in grey), the baseline's guess,
        :data:`COMPLETIONS_PER_ROW` completions from ``z ~ p(z|x_o)``, the truth.
        ``num`` completions in all (rounded up to whole rows)."""
        chosen = slice(None) if label is None else data.test_labels == label
        rows = max(1, math.ceil(num / COMPLETIONS_PER_ROW))
        truth, labels = data.test[chosen][:rows], data.test_labels[chosen][:rows]
        if truth.shape[0] == 0:
            raise ConfigError(f"no test image has label {label}; choose another `label`")
        x_missing, x_observed = self.batch_inputs(truth, labels)
        columns = [
            self.assemble(torch.full_like(x_missing, MISSING_GREY), x_observed)[None],
            self.assemble(self.prior.guess(x_observed), x_observed)[None],
            self.assemble(self.sample(COMPLETIONS_PER_ROW, x_observed), x_observed),
            truth[None],
        ]
        grid = torch.cat(columns).transpose(0, 1)  # (rows, columns, D)
        return grid.flatten(0, 1), grid.shape[1]
