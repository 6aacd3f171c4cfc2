r"""The semi-supervised VAE (M2 of Kingma, Rezende, Mohamed & Welling 2014): the label as a
latent variable, summed out exactly by Pyro's enumeration.

Model and guide,

.. math:: p(y)\, p(z)\, p_\theta(x \mid y, z), \qquad q_\phi(y \mid x)\, q_\phi(z \mid x, y),

with :math:`p(y)` uniform over the classes and :math:`q_\phi(y \mid x)` a classifier.
Where an image's label is known the guide puts all its mass on it; elsewhere ``y`` is a
discrete latent variable whose guide site is enumerated in parallel
(``infer={"enumerate": "parallel"}``), so that :class:`~pyro.infer.TraceEnum_ELBO`
computes Kingma et al.'s two bounds exactly in :math:`y`:

.. math:: \mathcal L(x, y) = \mathbb E_{q(z|x,y)}[\log p(x|y,z) + \log p(y) + \log p(z)
          - \log q(z|x,y)],
          \qquad
          \mathcal U(x) = \sum_y q(y|x)\,\mathcal L(x, y) + \mathcal H(q(y|x)),

plus, for each labelled image, the classification term :math:`\alpha \log q(y|x)` (an
auxiliary site: a training term outside the model's density). The labels are the
model's second argument, ``-1`` where unknown.

The importance-weighted estimator sums the enumerated site out from the traces
(:func:`~pyro_vae.inference.estimators.log_densities`), so ``evaluate`` estimates

.. math:: \log p(x) \approx \log \frac1K \sum_k \sum_y
          \frac{p(y)\, p(z_{ky})\, p(x \mid y, z_{ky})}{q(z_{ky} \mid x, y)},
          \qquad z_{ky} \sim q(z \mid x, y),

with every image unlabelled (:meth:`SemiSupervisedVAE.scoring_inputs`).
"""

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import pyro_method

from pyro_vae.components.distributions import diagonal_normal
from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.components.networks import MultiInputGaussian, MultiInputMLP, mlp
from pyro_vae.components.priors import Prior, build_prior
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.images import ImageData
from pyro_vae.data.tables import TableSchema
from pyro_vae.models.vae import VAE

#: The label of an image whose label is not known.
UNLABELLED = -1
#: Logit of the classes other than a known label in the guide: probability exp(-1e4) = 0
#: in floating point, a log-probability that stays finite (no 0 * inf in the ELBO).
_EXCLUDED = -1e4


class SemiSupervisedVAE(VAE):
    r"""M2 (see the module doc): :math:`p(y) p(z) p(x|y,z)`, :math:`q(y|x) q(z|x,y)`.

    :param data_dim: size of an image (or table row).
    :param num_classes: the number of labels.
    :param classifier_weight: :math:`\alpha`, the weight of :math:`\log q(y|x)` per
        labelled image.
    :param prior: p(z), an unconditional prior or its registry name.

    The other parameters are :class:`~pyro_vae.models.vae.VAE`'s; the networks are MLPs:
    the encoder over ``[x, y]``, the decoder over ``[z, y]`` (y one-hot) and the
    classifier over ``x``.
    """

    evaluates = "log p(x)"
    #: The objective must enumerate the label (:class:`~pyro.infer.TraceEnum_ELBO`).
    enumerates = True

    def __init__(
        self,
        data_dim: int = 784,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        *,
        classifier_weight: float = 1.0,
        prior: Prior | str = "normal",
        likelihood: Likelihood | str = "bernoulli",
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        table: TableSchema | None = None,
    ):
        if num_classes < 2:
            raise ConfigError(f"a semi-supervised model needs 2 classes or more, got {num_classes}")
        likelihood = build_likelihood(
            likelihood, data_dim=data_dim, options=likelihood_options, table=table
        )
        prior = build_prior(  # encoder=None: this encoder also takes y (no VampPrior)
            prior, latent_dim=latent_dim, data_dim=data_dim, encoder=None, options=prior_options
        )
        out_dim = data_dim * likelihood.params_per_dim
        super().__init__(
            data_dim,
            latent_dim,
            hidden_dims,
            encoder=MultiInputGaussian((data_dim, num_classes), hidden_dims, latent_dim),
            decoder=MultiInputMLP((latent_dim, num_classes), hidden_dims[::-1], out_dim),
            prior=prior,
            likelihood=likelihood,
        )
        self.classifier = mlp([data_dim, *hidden_dims, num_classes])
        self.num_classes, self.classifier_weight = num_classes, classifier_weight

    def batch_inputs(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the images and their labels, :data:`UNLABELLED` where unknown."""
        return images, labels

    def scoring_inputs(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` with every label unknown: bounds and estimates are of :math:`p(x)`."""
        return images, torch.full_like(labels, UNLABELLED)

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """The labels ``y`` one-hot, by comparison with the classes: unlike ``F.one_hot``, it
        reads no label on the host, so that the evaluation's passes can be recorded."""
        classes = torch.arange(self.num_classes, device=y.device)
        return (y.unsqueeze(-1) == classes).to(torch.get_default_dtype())

    def label_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of :math:`q(y|x)`."""
        return self.classifier(self.likelihood.network_input(x))

    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor, *, beta: float = 1.0) -> None:
        r""":math:`p(y) p(z) p(x|y,z)`, with :math:`\alpha \log q(y|x)` for known labels."""
        labelled = y != UNLABELLED
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
                label = pyro.sample(
                    "y",
                    dist.Categorical(logits=x.new_zeros(self.num_classes)),
                    infer={"enumerate": "parallel"},
                )
            params = self.decoder(z, self.one_hot(label))
            pyro.sample("x", self.likelihood(params), obs=x)
            with poutine.mask(mask=labelled), poutine.scale(scale=self.classifier_weight):
                pyro.sample(
                    "y_classified",
                    dist.Categorical(logits=self.label_logits(x)),
                    obs=y.clamp(min=0),
                    infer={"is_auxiliary": True},
                )

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor, *, beta: float = 1.0) -> None:
        r""":math:`q(y|x) q(z|x,y)`; a known label has all the mass of :math:`q(y|x)`."""
        labelled = y != UNLABELLED
        known = torch.where(self.one_hot(y.clamp(min=0)) > 0, 0.0, _EXCLUDED)
        logits = torch.where(labelled.unsqueeze(-1), known, self.label_logits(x))
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                label = pyro.sample(
                    "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
                seen = self.likelihood.network_input(x)
                pyro.sample("z", diagonal_normal(*self.encoder(seen, self.one_hot(label))))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label of each image under :math:`q(y|x)`."""
        return self.label_logits(x).argmax(-1)

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of :math:`q(z|x,y)`, at the given labels, or (None, or
        :data:`UNLABELLED`) at the classifier's."""
        guess = self.classify(x)
        y = guess if y is None else torch.where(y == UNLABELLED, guess, y)
        return self.encoder(self.likelihood.network_input(x), self.one_hot(y))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`\mathbb E[x|z,y]`; without labels :math:`\sum_y p(y)\,\mathbb E[x|z,y]`."""
        if y is not None:
            return self.likelihood.mean(self.decoder(z, self.one_hot(y)))
        classes = torch.arange(self.num_classes, device=z.device)
        means = self.likelihood.mean(self.decoder(z.unsqueeze(-2), self.one_hot(classes)))
        return means.mean(-2)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded at the posterior mean, under the given (or the classifier's) labels."""
        y = self.classify(x) if y is None else torch.where(y == UNLABELLED, self.classify(x), y)
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""Decoder means at :math:`z \sim p(z)`: under the labels 0, 1, ... in turn, shape
        ``(num_samples, data_dim)``; or under each of the labels ``y`` (N), shape
        ``(num_samples, N, data_dim)``."""
        if y is None:
            z = self.prior().sample((num_samples,))
            return self.decode(z, torch.arange(num_samples, device=z.device) % self.num_classes)
        y = y.clamp(min=0)
        return self.decode(self.prior().sample((num_samples, len(y))), y.expand(num_samples, -1))

    @torch.no_grad()
    def sample_grid(self, num: int, label: int | None, data: ImageData) -> tuple[torch.Tensor, int]:
        """Style held, class changed: each of ``ceil(num / classes)`` draws of z decoded under
        every label, a row per draw (``label``: that class alone)."""
        if label is not None and not 0 <= label < self.num_classes:
            raise ConfigError(f"`label` must be between 0 and {self.num_classes - 1}, got {label}")
        if label is not None:
            z = self.prior().sample((num,))
            return self.decode(z, torch.full((num,), label, device=z.device)), math.ceil(
                math.sqrt(num)
            )
        rows = max(1, math.ceil(num / self.num_classes))
        z = self.prior().sample((rows,))
        classes = torch.arange(self.num_classes, device=z.device)
        images = self.likelihood.mean(self.decoder(z.unsqueeze(1), self.one_hot(classes)))
        return images.flatten(0, 1), self.num_classes


def kingma_classifier_weight(num_train: int, num_labelled: int) -> float:
    r""":math:`\alpha` per labelled image for Kingma et al.'s :math:`\alpha = 0.1 N` on the
    objective summed over the data set, whose classification term averages over the
    labelled images: :math:`0.1\, N / N_l`."""
    return 0.1 * num_train / num_labelled


__all__ = ["UNLABELLED", "SemiSupervisedVAE", "kingma_classifier_weight"]
