r"""The VAE as a Pyro generative model and amortized guide.

Model:  :math:`z \sim p(z)`, :math:`x \mid z \sim p_\theta(x \mid z)` (decoder + likelihood).
Guide:  :math:`z \mid x \sim \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2)`.

Both take ``beta``: the latent site ``z`` is wrapped in ``poutine.scale(beta)`` in
the model *and* the guide, so that under :class:`~pyro.infer.Trace_ELBO`

.. math:: \mathcal L_\beta = \mathbb E_q[\log p(x|z)] - \beta\,\mathrm{KL}(q(z|x)\,\|\,p(z)).

(Scaling only the guide would leave :math:`\log p(z)` unscaled, which is a
different objective.)

Conditioning: ``model(x, *conditions)`` and ``guide(x, *conditions)`` pass extra
tensors ``c`` (first dimension indexing examples, like ``x``) to the prior, the
decoder and the encoder, which makes the same pair a conditional VAE
:math:`p(z|c)\,p(x|z,c)`, :math:`q(z|x,c)`; the plain VAE has no conditions.
The conditional models of :mod:`pyro_vae.models.conditional` are subclasses that
choose the networks and say, in :meth:`VAE.batch_inputs`, what ``x`` and ``c``
are for a batch of images.
"""

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from pyro_vae.components.distributions import diagonal_normal
from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.components.networks import ARCHITECTURES, Architecture
from pyro_vae.components.priors import Prior, build_prior
from pyro_vae.core.checks import check_value, positive, positive_widths
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import lookup
from pyro_vae.data.images import ImageData
from pyro_vae.data.tables import TableSchema

_instance_numbers = itertools.count()


def unique_pyro_name(prefix: str) -> str:
    """A name for a top-level PyroModule that no other instance in this process has.

    Pyro registers a PyroModule's plain ``nn.Module`` children in the global param
    store under ``<name>.<child>``; with a shared default name, two models in one
    process would alias each other's parameters under SVI.
    """
    return f"{prefix}{next(_instance_numbers)}"


@contextmanager
def without_param_statements(module: nn.Module) -> Iterator[None]:
    """Inside: model and guide use their networks' parameters without ``pyro.param`` statements.

    Each time a model or guide touches a child of a PyroModule, Pyro announces
    every parameter of that child with ``pyro.param`` (one effectful message per
    parameter per step): that is how ``pyro.optim`` finds them. A loop that
    optimizes ``module.parameters()`` with a ``torch.optim`` optimizer, as
    :func:`pyro_vae.train` does, never reads them. Inside this context the
    children and parameters of every PyroModule in ``module`` are plain
    attributes, found without ``PyroModule.__getattr__``; the computation and its
    gradients are unchanged. (``PyroParam`` and ``PyroSample`` attributes still
    go through the lookup: they need it for their constraint or their site.)
    """
    shortcuts = [
        (owner, {**owner._modules, **owner._parameters})
        for owner in module.modules()
        if isinstance(owner, PyroModule)
    ]
    for owner, attributes in shortcuts:
        owner.__dict__.update(attributes)
    try:
        yield
    finally:
        for owner, attributes in shortcuts:
            for name in attributes:
                owner.__dict__.pop(name, None)


def image_shape_and_arch(
    data_dim: int, image_shape: Sequence[int] | None, arch: Architecture | str
) -> tuple[tuple[int, ...], Architecture]:
    """``image_shape`` (default ``(data_dim,)``), checked to hold ``data_dim`` values, and
    the :class:`~pyro_vae.components.networks.Architecture` that ``arch`` is or names."""
    shape = tuple(image_shape) if image_shape is not None else (data_dim,)
    if math.prod(shape) != data_dim:
        raise ConfigError(
            f"image_shape {shape} holds {math.prod(shape)} values, not "
            f"data_dim={data_dim}; pass matching sizes"
        )
    return shape, lookup(ARCHITECTURES, "arch", arch) if isinstance(arch, str) else arch


class VAE(PyroModule):
    """Variational autoencoder with injectable networks, prior and likelihood.

    :param data_dim: size of the flattened data vector (784 for 28x28 images).
    :param latent_dim: size of z.
    :param hidden_dims: widths of the default encoder's fully connected hidden layers
        (the default decoder mirrors them).
    :param image_shape: shape of one example, e.g. ``(1, 28, 28)``, for architectures
        that need it (``arch="conv"``); default ``(data_dim,)``.
    :param arch: the family of the default encoder and decoder: an
        :class:`~pyro_vae.components.networks.Architecture` or its name in
        :data:`~pyro_vae.components.networks.ARCHITECTURES`; default ``"mlp"``
        (:class:`~pyro_vae.components.networks.MLPEncoder`,
        :class:`~pyro_vae.components.networks.MLPDecoder`).
    :param encoder: ``x -> (loc, scale)``; default: built by ``arch``.
    :param decoder: ``z -> likelihood params``; default: built by ``arch``.
    :param prior: a :class:`Prior`, or the name of one in :data:`~pyro_vae.components.priors.PRIORS`
        (built with this VAE's encoder, so ``prior="vamp"`` is all a VampPrior takes);
        default ``"normal"``, N(0, I). Conditional subclasses pass a module whose
        ``forward(*conditions)`` gives p(z|c).
    :param likelihood: a :class:`Likelihood`, or the name of one in
        :data:`~pyro_vae.components.likelihoods.LIKELIHOODS`; default ``"bernoulli"`` (logits).
    :param prior_options: options of a prior given by name, e.g. ``{"components": 50}``.
    :param likelihood_options: options of a likelihood given by name, e.g. ``{"scale": "global"}``.
    :param table: for table data, its :class:`~pyro_vae.data.tables.TableSchema`, from which
        a likelihood of tables (``"mixed"``) is built.

    Use with Pyro directly::

        vae = VAE(prior="vamp", likelihood="continuous-bernoulli")
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x)  # x: (batch, 784) in [0, 1]
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        *,
        image_shape: Sequence[int] | None = None,
        arch: Architecture | str = "mlp",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: Prior | nn.Module | str = "normal",
        likelihood: Likelihood | str = "bernoulli",
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        table: TableSchema | None = None,
    ):
        super().__init__(name=unique_pyro_name("vae"))
        # the checks of the options of the same names
        check_value("data_dim", data_dim, positive)
        check_value("latent_dim", latent_dim, positive)
        check_value("hidden_dims", tuple(hidden_dims), positive_widths)
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.likelihood = build_likelihood(
            likelihood, data_dim=data_dim, options=likelihood_options, table=table
        )
        image_shape, arch = image_shape_and_arch(data_dim, image_shape, arch)
        self.encoder = (
            encoder if encoder is not None else arch.encoder(image_shape, hidden_dims, latent_dim)
        )
        self.decoder = (
            decoder
            if decoder is not None
            else arch.decoder(image_shape, hidden_dims, latent_dim, self.likelihood.params_per_dim)
        )
        # A VampPrior holds this same encoder object: one set of parameters, trained once.
        self.prior = build_prior(
            prior,
            latent_dim=latent_dim,
            data_dim=data_dim,
            encoder=self.encoder,
            options=prior_options,
        )

    #: What the importance-weighted estimate with this guide estimates (for reports).
    evaluates = "log p(x)"
    #: Whether the model draws whole images (reconstructions, samples, latent maps);
    #: a model of part of each image has only its own sample grid.
    draws_whole_images = True
    #: Whether ``model`` and ``guide`` take the images' labels (then only images of the
    #: dataset the model was trained on can be scored).
    conditions_on_labels = False
    #: Whether the guide has a discrete site enumerated in parallel, which the training
    #: objective must sum out (:class:`~pyro.infer.TraceEnum_ELBO`).
    enumerates = False

    def batch_inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``model``/``guide`` arguments ``(x, *conditions)`` for a batch of images.

        Training and evaluation call this hook, so conditional subclasses only
        override it; the plain VAE models the images and ignores the labels.
        """
        return (images,)

    def scoring_inputs(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The ``model``/``guide`` arguments with which validation and ``evaluate`` score
        images: :meth:`batch_inputs`, unless a model scores images without labels it
        trains with (the semi-supervised VAE)."""
        return self.batch_inputs(images, labels)

    @pyro_method
    def model(self, x: torch.Tensor, *conditions: torch.Tensor, beta: float = 1.0) -> None:
        r""":math:`p(x, z|c) = p(z|c)\,p(x|z, c)`, with :math:`\log p(z|c)` scaled by ``beta``."""
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior(*conditions))
            pyro.sample("x", self.likelihood(self.decoder(z, *conditions)), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, *conditions: torch.Tensor, beta: float = 1.0) -> None:
        r""":math:`q(z|x, c)`, with :math:`\log q(z|x, c)` scaled by ``beta``."""
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(self.likelihood.network_input(x), *conditions)
            with poutine.scale(scale=beta):
                pyro.sample("z", diagonal_normal(loc, scale))

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, *conditions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and scale of q(z|x, c)."""
        return self.encoder(self.likelihood.network_input(x), *conditions)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """Likelihood mean E[x|z, c] (e.g. pixel probabilities), not a noisy draw."""
        return self.likelihood.mean(self.decoder(z, *conditions))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each input."""
        return self.decode(self.encode(x, *conditions)[0], *conditions)

    @torch.no_grad()
    def sample(self, num_samples: int, *conditions: torch.Tensor) -> torch.Tensor:
        """Decoder means at ``num_samples`` draws ``z ~ p(z|c)``.

        Shape ``(num_samples, data_dim)`` without conditions, and
        ``(num_samples, N, data_dim)`` with conditions of ``N`` examples.
        """
        return self.decode(self.prior(*conditions).sample((num_samples,)), *conditions)

    @torch.no_grad()
    def sample_grid(self, num: int, label: int | None, data: ImageData) -> tuple[torch.Tensor, int]:
        """Images for ``pyro-vae sample`` and images per row: ``num`` prior samples."""
        if label is not None:
            raise ConfigError(
                "`label` needs a label-conditional run; train one with `model='cvae'`"
            )
        return self.sample(num), math.ceil(math.sqrt(num))
