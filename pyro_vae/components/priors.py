r"""Priors p(z).

A prior is a :class:`~pyro.nn.PyroModule` whose ``forward()`` returns a Pyro
distribution with ``event_shape == (latent_dim,)`` and empty batch shape; the
model's data plate broadcasts it over the batch. Learned priors hold their
parameters as module parameters, so SVI and ``torch.optim`` both train them.

Every prior is built the same way, by :func:`build_prior` from a registry name:
:meth:`Prior.build` receives the VAE's pieces (``latent_dim``, ``data_dim``,
``encoder``) and the options the user gave, which must be among the class's
:attr:`Prior.options` (:class:`~pyro_vae.core.registry.Option` objects, which the
command line's ``--prior-*`` flags are generated from). To add a prior, write the
class and add one line to :data:`PRIORS` (see ``docs/extending.md``).
"""

import math
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.components.distributions import diagonal_normal, unit_normal
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Option, check_option_names, lookup, positive_int

#: Floor added to learned scales, so log-densities stay finite.
MIN_SCALE = 1e-4


class Prior(PyroModule):
    """Base class: ``forward() -> Distribution`` over ``R^latent_dim``.

    ``help`` says in a line what the prior is; ``options`` declares the keyword options
    a subclass accepts (option ``components`` is the flag ``--prior-components``).
    """

    help: str = ""
    options: tuple[Option, ...] = ()

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim <= 0:
            raise ConfigError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = latent_dim

    @classmethod
    def build(
        cls, *, latent_dim: int, data_dim: int, encoder: nn.Module | None, **options: Any
    ) -> "Prior":
        """Construct from the VAE's pieces; priors needing more than ``latent_dim`` override it."""
        return cls(latent_dim, **options)

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError


class NormalMixture(dist.TorchDistribution):
    r"""Mixture of diagonal Gaussians.

    .. math:: p(z) = \sum_k \pi_k\,\mathcal N(z; \mu_k, \operatorname{diag}\sigma_k^2)

    The log-densities of all points under all components come from one matrix
    product (in float64: expanding the squares cancels digits when a point sits
    near a narrow component), so memory grows as points x components, not
    points x components x dimensions, and the importance-weighted evaluation
    can score many thousands of points at once.

    :param logits: ``(K,)`` unnormalized log mixture weights.
    :param loc: ``(K, d)`` component means.
    :param scale: ``(K, d)`` component standard deviations.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        validate_args: bool | None = None,
    ):
        if loc.dim() != 2 or scale.shape != loc.shape or logits.shape != loc.shape[:1]:
            raise ValueError(
                "NormalMixture expects logits (K,), loc and scale (K, d); got "
                f"{tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> ExpandedDistribution:
        return ExpandedDistribution(self, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        d = self.event_shape[0]
        z = value.reshape(-1, d).double()
        loc, scale = self.loc.double(), self.scale.double()
        precision = scale.pow(-2)  # (K, d)
        # log pi_k + log N(z; mu_k, s_k) = bias_k - 1/2 sum_j (z_j^2 - 2 z_j mu_kj) / s_kj^2:
        # every point against every component in one matrix product.
        features = torch.cat([z.square(), z], dim=-1)  # (N, 2d)
        weights = torch.cat([precision, -2 * loc * precision], dim=-1)  # (K, 2d)
        bias = (
            self.logits.double()
            - scale.log().sum(-1)
            - 0.5 * d * math.log(2 * math.pi)
            - 0.5 * (loc.square() * precision).sum(-1)
        )
        log_components = torch.addmm(bias, features, weights.T, alpha=-0.5)  # (N, K)
        return log_components.logsumexp(-1).to(value.dtype).reshape(value.shape[:-1])

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        noise = torch.randn(*index.shape, self.event_shape[0], device=self.loc.device)
        return self.loc[index] + self.scale[index] * noise

    @property
    def mean(self) -> torch.Tensor:
        return self.logits.exp() @ self.loc

    @property
    def variance(self) -> torch.Tensor:
        weights = self.logits.exp()
        second_moment = weights @ (self.scale.square() + self.loc.square())
        return second_moment - self.mean.square()


class StandardNormal(Prior):
    r""":math:`p(z) = \mathcal N(0, I)`."""

    help = "N(0, I)"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return unit_normal(self.loc, self.scale)


class LearnedNormal(Prior):
    r""":math:`p(z) = \mathcal N(\mu, \operatorname{diag}\sigma^2)` with learned mean and scale.

    :math:`\sigma = \mathrm{softplus}(\rho) + \sigma_{\min}`, initialized to N(0, I).
    """

    help = "learned mean and scale"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), math.log(math.expm1(1.0))))

    def forward(self) -> dist.TorchDistribution:
        return diagonal_normal(self.loc, F.softplus(self.raw_scale) + MIN_SCALE)


class MixturePrior(Prior):
    r"""Mixture of ``components`` diagonal Gaussians with learned weights, means and scales.

    :math:`p(z) = \sum_{k=1}^K \pi_k \mathcal N(z; \mu_k, \operatorname{diag}\sigma_k^2)`,
    :math:`\pi = \operatorname{softmax}(\alpha)`; means start as N(0, I) draws,
    scales at 1.
    """

    help = "mixture of Gaussians"
    default_components = 10
    options = (
        Option(
            "components", positive_int, f"mixture components (default {default_components})", "K"
        ),
    )

    def __init__(self, latent_dim: int, components: int = default_components):
        super().__init__(latent_dim)
        if components <= 0:
            raise ConfigError(f"the mixture prior needs at least 1 component, got {components}")
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.raw_scale = nn.Parameter(
            torch.full((components, latent_dim), math.log(math.expm1(1.0)))
        )

    def forward(self) -> NormalMixture:
        return NormalMixture(self.logits, self.loc, F.softplus(self.raw_scale) + MIN_SCALE)


class VampPrior(Prior):
    r"""VampPrior (Tomczak & Welling 2018): the encoder's posteriors at K learned pseudo-inputs.

    :math:`p(z) = \frac1K \sum_{k=1}^K q(z \mid u_k)`, where :math:`q` is the VAE's
    own encoder (shared, not copied: its parameters are trained once, by both
    terms of the ELBO) and the pseudo-inputs :math:`u_k \in \mathbb R^D` are
    learned, starting as uniform noise in [0, 1]. The prior does not own the
    encoder: whoever does (the VAE) moves, saves and optimizes it.

    :param encoder: the VAE's encoder, ``x -> (loc, scale)``.
    :param data_dim: D, the size of a flattened input.
    :param components: K, the number of pseudo-inputs.
    """

    help = "VampPrior: encoder posteriors at learned pseudo-inputs"
    default_components = 500
    options = (
        Option("components", positive_int, f"pseudo-inputs (default {default_components})", "K"),
    )

    def __init__(
        self,
        latent_dim: int,
        *,
        encoder: nn.Module,
        data_dim: int,
        components: int = default_components,
    ):
        super().__init__(latent_dim)
        if components <= 0:
            raise ConfigError(f"the VampPrior needs at least 1 pseudo-input, got {components}")
        # Held by reference, not registered as a submodule: the VAE owns the encoder, so its
        # parameters appear once in parameters(), state_dict() and Pyro's param store.
        self._encoder = (encoder,)
        self.pseudo_inputs = nn.Parameter(torch.rand(components, data_dim))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    @classmethod
    def build(
        cls, *, latent_dim: int, data_dim: int, encoder: nn.Module | None, **options: Any
    ) -> Prior:
        if encoder is None:
            raise ConfigError(
                "the VampPrior is built on the VAE's encoder of x alone, and this model's encoder "
                "takes more inputs (a label or the observed pixels); use another `prior`"
            )
        return cls(latent_dim, encoder=encoder, data_dim=data_dim, **options)

    def forward(self) -> NormalMixture:
        loc, scale = self.encoder(self.pseudo_inputs)
        return NormalMixture(loc.new_zeros(loc.shape[0]), loc, scale)


class FlowPrior(Prior):
    r"""Normalizing-flow prior: N(0, I) pushed through learned masked autoregressive layers.

    :math:`z = f^{-1}(\varepsilon)`, :math:`\varepsilon \sim \mathcal N(0, I)`, where
    :math:`f = f_L \circ \dots \circ f_1` and each :math:`f_l` is Pyro's
    :class:`~pyro.distributions.transforms.AffineAutoregressive` (a MADE with its
    own random variable order), so

    .. math:: \log p(z) = \log \mathcal N(f(z); 0, I) + \log|\det \partial f / \partial z|

    costs one network pass per layer (the ELBO scores the guide's ``z``), while
    sampling inverts the layers one latent dimension at a time.

    :param layers: number of autoregressive layers L.
    :param hidden_dims: hidden widths of each MADE (default ``[4 * latent_dim]``).
    """

    help = "masked autoregressive flow over N(0, I)"
    default_layers = 2
    options = (
        Option("layers", positive_int, f"autoregressive layers (default {default_layers})", "L"),
    )

    def __init__(
        self, latent_dim: int, layers: int = default_layers, hidden_dims: list[int] | None = None
    ):
        super().__init__(latent_dim)
        if layers <= 0:
            raise ConfigError(f"the flow prior needs at least 1 layer, got {layers}")
        if latent_dim < 2:
            raise ConfigError(
                "the flow prior needs latent-dim of at least 2 (it is autoregressive)"
            )
        hidden = hidden_dims if hidden_dims is not None else [4 * latent_dim]
        self.layers = nn.ModuleList(
            T.affine_autoregressive(latent_dim, hidden_dims=hidden) for _ in range(layers)
        )
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        base = unit_normal(self.loc, self.scale)
        # Sampling applies these left to right: f_L^{-1} first, f_1^{-1} last.
        return dist.TransformedDistribution(base, [layer.inv for layer in reversed(self.layers)])


#: Registry of priors by CLI name.
PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormal,
    "learned-normal": LearnedNormal,
    "mog": MixturePrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
}


def build_prior(
    prior: nn.Module | str,
    *,
    latent_dim: int,
    data_dim: int,
    encoder: nn.Module | None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """A :class:`Prior` from a registry name and options, or ``prior`` itself if it is an object.

    :param encoder: the model's encoder of x alone, for priors built on it; None if it has none.
    """
    if not isinstance(prior, str):
        if options:
            raise ConfigError("prior options apply to a prior given by name, not to a prior object")
        return prior
    cls = lookup(PRIORS, "prior", prior)
    check_option_names(PRIORS, "prior", prior, options or {})
    return cls.build(latent_dim=latent_dim, data_dim=data_dim, encoder=encoder, **(options or {}))
