"""Likelihoods of pixels: binary (Bernoulli, also given the pixels before each), grey
levels in [0, 1] (continuous Bernoulli, Beta) and 8-bit levels (discretized logistic)."""

import math
from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.util import broadcast_shape

from pyro_vae.components.distributions import Independent, independent
from pyro_vae.components.likelihoods.base import Likelihood, in_unit_interval
from pyro_vae.components.networks import AutoregressiveLogits
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Option


class IndependentBernoulli(Independent):
    r"""Independent Bernoulli pixels from logits, with the fastest log-density per case

    .. math:: \log p(x) = \sum_d x_d \ell_d - \operatorname{softplus}(\ell_d).

    When ``x`` is shared by many particles (importance sampling: logits
    ``(K, B, D)``, data ``(B, D)``) the dot product is one batched matrix product,
    about twice as fast as broadcasting ``binary_cross_entropy_with_logits``, and
    without gradients the softplus takes the cheaper form of
    :func:`shared_value_log_prob`; in training (one sample per example) torch's fused
    BCE kernel is the faster one.

    Its support is [0, 1], not {0, 1}: a grey level is taken as the probability of a
    black pixel (the cross-entropy), as dynamic binarization draws it.
    """

    support = constraints.independent(constraints.unit_interval, 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.base_dist.logits
        if logits.dim() > value.dim() == 2 and logits.shape[-2:] == value.shape:
            if not logits.requires_grad:
                return shared_value_log_prob(logits, value)
            dot = torch.einsum("...bd,bd->...b", logits, value)
            return dot - F.softplus(logits).sum(-1)
        logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


def shared_value_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_d x_d \ell_d - \operatorname{softplus}(\ell_d)` for logits
    ``(..., B, D)`` and data ``(B, D)`` shared by the leading dimensions, without gradients,

    .. math:: \sum_d (x_d - \tfrac12)\,\ell_d - \tfrac12 |\ell_d|
              + \log \sigma(|\ell_d|).

    The last sum is taken as a sum of logs of products: :math:`\sigma(|\ell|) \in
    [\frac12, 1)`, so a product of 64 of them stays above :math:`2^{-64}`, and one
    ``log`` serves 64 pixels. torch's ``softplus`` runs a ``log1p`` per pixel, whose
    cost dominated the importance-weighted evaluation after the matrix products;
    this form runs a ``sigmoid`` and a product reduction, with one temporary, about
    twice as fast. Its rounding errors are about those of the softplus form (against
    float64, both within :math:`6 \cdot 10^{-4}` nats for 784 pixels).
    """
    magnitude = logits.abs()
    linear = torch.einsum("...bd,bd->...b", logits, value - 0.5) - 0.5 * magnitude.sum(-1)
    return linear + sum_of_logs(magnitude.sigmoid_())


def sum_of_logs(factors: torch.Tensor, group: int = 64) -> torch.Tensor:
    """``factors.log().sum(-1)`` as logs of products of ``group`` consecutive factors (the
    last few fewer), which must multiply to a finite, normal number: one ``log`` per
    ``group`` factors instead of one per factor."""
    width = factors.shape[-1]
    whole = width - width % group
    logs = factors[..., :whole].unflatten(-1, (-1, group)).prod(-1).log().sum(-1)
    if whole < width:
        logs = logs + factors[..., whole:].prod(-1).log()
    return logs


class IndependentContinuousBernoulli(IndependentBernoulli):
    r"""Independent continuous Bernoulli pixels: the fused Bernoulli term plus the normalizer.

    In logits, :math:`C(\lambda) = \ell / \tanh(\ell / 2)` (2 at :math:`\ell = 0`), so

    .. math:: \log p(x) = \sum_d x_d \ell_d - \operatorname{softplus}(\ell_d)
              + \log \frac{\ell_d}{\tanh(\ell_d / 2)},

    which costs a few elementwise operations per pixel, several times less than
    torch's probability-space form (which matters for importance sampling).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.base_dist.logits
        # Near 0 use the series 2 + l^2/6 (error < 1e-10), and keep l/tanh(l/2) away from 0/0.
        small = logits.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(logits), logits)
        normalizer = torch.where(small, 2 + logits.square() / 6, safe / torch.tanh(safe / 2))
        return super().log_prob(value) + normalizer.log().sum(-1)


class BernoulliLikelihood(Likelihood):
    r""":math:`p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(\ell_i(z)))`, from logits.

    Accepts values in [0, 1]: binary data gives a normalized likelihood; grey
    levels give the usual cross-entropy, which is not a normalized density (use
    the continuous Bernoulli for that).
    """

    help = "binary data"

    domain = "values in [0, 1]"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False: grey-level targets are allowed (see class docstring).
        return IndependentBernoulli(dist.Bernoulli(logits=params, validate_args=False), 1)

    def in_domain(self, x: torch.Tensor) -> bool:
        return in_unit_interval(x)


class ContinuousBernoulliLikelihood(Likelihood):
    r"""Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the Bernoulli, normalized on [0, 1].

    .. math:: p(x \mid \lambda) = C(\lambda)\,\lambda^x (1-\lambda)^{1-x}, \qquad
              C(\lambda) = \frac{2 \operatorname{artanh}(1 - 2\lambda)}{1 - 2\lambda}
              \ (C(\tfrac12) = 2),

    with :math:`\lambda = \sigma(\ell(z))`: a proper density for grey levels in
    [0, 1], and also for binary data (its values at 0 and 1). Its mean is not
    :math:`\lambda` but
    :math:`\frac{\lambda}{2\lambda - 1} + \frac{1}{2\operatorname{artanh}(1-2\lambda)}`.
    """

    help = "normalized on [0, 1]"

    domain = "values in [0, 1]"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return IndependentContinuousBernoulli(dist.ContinuousBernoulli(logits=params), 1)

    def in_domain(self, x: torch.Tensor) -> bool:
        return in_unit_interval(x)


def parse_squeeze(value: float | str) -> float:
    """A Beta squeeze in [0, 0.5) (0: none), from a number or its text, else
    :class:`ConfigError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0 <= number < 0.5:
        raise ConfigError(f"likelihood-squeeze must be in [0, 0.5) (0: none), got {value}")
    return number


class BetaLikelihood(Likelihood):
    r"""Beta likelihood for data in the open interval (0, 1).

    :math:`p(x|z) = \prod_i \mathrm{Beta}(x_i; a_i(z), b_i(z))` with
    :math:`a, b = \mathrm{softplus}(\cdot) + c_{\min}` from the decoder's two
    outputs per dimension.

    The Beta density is 0 or infinite at exactly 0 and 1, and grey-level images
    (Fashion-MNIST: about half the pixels) sit exactly there. With ``squeeze``
    :math:`=\epsilon > 0` the Beta models :math:`y = \epsilon + (1 - 2\epsilon)x`
    instead, and the density of x includes the Jacobian,
    :math:`\log p(x|z) = \log \mathrm{Beta}(y; a, b) + D \log(1 - 2\epsilon)`: a proper
    density on the slightly wider interval :math:`[-\epsilon, 1+\epsilon]/(1-2\epsilon)`,
    not a density on [0, 1] (it leaves mass outside). Without ``squeeze``, data
    with exact 0s or 1s is rejected rather than given a meaningless density.
    """

    help = "data in (0, 1)"

    params_per_dim = 2
    options = (
        Option(
            "squeeze",
            parse_squeeze,
            "model eps + (1 - 2 eps) x (Jacobian included), so that pixels at exactly 0 or 1, "
            "as in Fashion-MNIST grey levels, get a finite density; e.g. 1e-3",
            "EPS",
        ),
    )
    min_concentration = 1e-3

    def __init__(self, squeeze: float = 0.0):
        super().__init__()
        self.squeeze = parse_squeeze(squeeze)

    @property
    def domain(self) -> str:
        return "values in [0, 1]" if self.squeeze else "values strictly inside (0, 1)"

    @property
    def domain_fix(self) -> str:
        if self.squeeze:
            return Likelihood.domain_fix
        return (
            "the Beta density is 0 or infinite at exactly 0 and 1: pass "
            "`likelihood_options[squeeze]=EPS` (e.g. 1e-3) to model eps + (1 - 2 eps) x, Jacobian "
            "included, or use the continuous-bernoulli likelihood"
        )

    def in_domain(self, x: torch.Tensor) -> bool:
        if self.squeeze:
            return in_unit_interval(x)
        return bool(((x > 0) & (x < 1)).all())

    def _concentrations(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_a, raw_b = params.chunk(2, dim=-1)
        return (
            F.softplus(raw_a) + self.min_concentration,
            F.softplus(raw_b) + self.min_concentration,
        )

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        beta = dist.Beta(*self._concentrations(params))
        if self.squeeze:
            eps = self.squeeze
            # x = (y - eps) / (1 - 2 eps): TransformedDistribution adds the log-Jacobian.
            to_data = dist.transforms.AffineTransform(-eps / (1 - 2 * eps), 1 / (1 - 2 * eps))
            beta = dist.TransformedDistribution(beta, to_data)
        return independent(beta)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        a, b = self._concentrations(params)
        return (a / (a + b) - self.squeeze) / (1 - 2 * self.squeeze)


class DiscretizedLogistic(dist.TorchDistribution):
    r"""A logistic distribution discretized to the grid :math:`\{0, \frac1{n-1}, \dots, 1\}`.

    Level :math:`k` gets the logistic mass of its bin,
    :math:`P(x_k) = \sigma(\frac{x_k + \delta/2 - \mu}{s}) - \sigma(\frac{x_k - \delta/2 - \mu}{s})`
    with :math:`\delta = \frac1{n-1}`, and the end levels absorb the tails (as in
    PixelCNN++, Salimans et al. 2017). The difference is computed exactly as
    :math:`\log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-(a-b)})`, so it stays accurate
    when both CDFs are near 0 or 1.

    :param loc: :math:`\mu`, in data units.
    :param scale: :math:`s > 0`.
    :param num_levels: n, 256 for 8-bit images.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_levels: int = 256,
        validate_args: bool | None = None,
    ):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_levels = num_levels
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "DiscretizedLogistic":
        shape = torch.Size(broadcast_shape(self.batch_shape, batch_shape))
        return DiscretizedLogistic(
            self.loc.expand(shape), self.scale.expand(shape), self.num_levels, self._validate_args
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        last = self.num_levels - 1
        upper = (value + 0.5 / last - self.loc) / self.scale
        lower = (value - 0.5 / last - self.loc) / self.scale
        # upper - lower = 1 / (last * scale), exactly
        bin_mass = (
            F.logsigmoid(upper)
            + F.logsigmoid(-lower)
            + torch.log(-torch.expm1(-1 / (last * self.scale)))
        )
        level = torch.round(value * last)
        return torch.where(
            level <= 0,
            F.logsigmoid(upper),
            torch.where(level >= last, F.logsigmoid(-lower), bin_mass),
        )

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        x = self.loc.expand(shape) + self.scale.expand(shape) * (u.log() - (-u).log1p())
        last = self.num_levels - 1
        return torch.round(x * last).clamp(0, last) / last

    @property
    def mean(self) -> torch.Tensor:
        # E[x] = (1/last) * sum_{k=1}^{last} P(level >= k), one bin boundary at a time.
        last = self.num_levels - 1
        total = torch.zeros_like(self.loc)
        for k in range(1, last + 1):
            total = total + torch.sigmoid((self.loc - (k - 0.5) / last) / self.scale)
        return total / last


class DiscretizedLogisticLikelihood(Likelihood):
    r"""8-bit images: :class:`DiscretizedLogistic` per pixel, location and scale from the decoder.

    :math:`s = \mathrm{softplus}(\cdot) + s_{\min}`. A probability, not a density,
    so :math:`\log p(x)` is also reported in bits per dimension.
    """

    help = "8-bit grey levels, use `binarize='none'`; also reported in bits/dim"

    params_per_dim = 2
    is_discrete = True
    num_levels = 256
    min_scale = 1e-3
    domain = "8-bit grey levels k/255 (k = 0, ..., 255)"
    domain_fix = (
        "quantize the data to round(255 x) / 255 (the loader's grey levels, `binarize='none'`, "
        "already are), or choose a continuous likelihood"
    )

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = params.chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        return independent(DiscretizedLogistic(loc, scale, self.num_levels))

    def in_domain(self, x: torch.Tensor) -> bool:
        levels = x * (self.num_levels - 1)
        on_grid = (levels - levels.round()).abs() < 1e-3
        return in_unit_interval(x) and bool(on_grid.all())


class AutoregressiveBernoulli(dist.TorchDistribution):
    r"""Binary pixels in raster order, each Bernoulli given ``logits`` and the pixels before it:

    .. math:: \log p(x) = \sum_i x_i \ell_i - \operatorname{softplus}(\ell_i),
              \qquad \ell_i = c_i + a_i(x_{<i}),

    with :math:`c` the ``logits`` (batch shape ``logits.shape[:-1]``) and :math:`a`
    an :class:`~pyro_vae.components.networks.AutoregressiveLogits` network ``net``.
    ``log_prob`` is one pass of the network, once per image even when ``logits``
    hold many particles per image (``(K, B, D)`` against data ``(B, D)``);
    ``sample`` draws one pixel at a time. The mean has no closed form (figures use
    the probabilities along a sample, :meth:`AutoregressiveBernoulliLikelihood.mean`).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.unit_interval, 1)  # grey: a probability

    def __init__(self, net: AutoregressiveLogits, logits: torch.Tensor):
        self.net, self.logits = net, logits
        # validate_args=False: grey-level targets give the cross-entropy, as for the Bernoulli.
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "AutoregressiveBernoulli":
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:  # Pyro's plates ask for this every step
            return self
        return AutoregressiveBernoulli(self.net, self.logits.expand(batch_shape + self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits + self.net(value), value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def sample_with_probs(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples, and the probability each pixel was drawn with."""
        shape = self._extended_shape(sample_shape)
        x, probs = self.net.sample(self.logits.expand(shape).reshape(-1, shape[-1]))
        return x.reshape(shape), probs.reshape(shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        return self.sample_with_probs(sample_shape)[0]


class AutoregressiveBernoulliLikelihood(Likelihood):
    r"""Bernoulli pixels given z and the pixels before them: a MADE added to the decoder.

    :math:`p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(c_i(z) + a_i(x_{<i})))`:
    the decoder's logits :math:`c(z)` say what the image is, an
    :class:`~pyro_vae.components.networks.AutoregressiveLogits` network :math:`a` (one hidden
    layer of 500 units by default) what neighbouring pixels say about each other,
    which a factorized decoder cannot express (PixelVAE-style models, Gulrajani et
    al. 2017, with a MADE for the PixelCNN). The two add in logit space, so
    :math:`a` is computed once per image: K importance samples of z cost the
    decoder K times, as with :class:`BernoulliLikelihood`, and nothing more.
    Drawing an image takes D sequential steps.

    E[x|z] has no closed form: :meth:`mean`, which figures show, is the
    probabilities along one ancestral draw (a smooth picture of one sample).
    """

    help = "binary data, each pixel also given the pixels before it"

    domain = "values in [0, 1]"

    def __init__(self, data_dim: int, hidden_dims: Sequence[int] = (500,)):
        super().__init__()
        self.net = AutoregressiveLogits(data_dim, hidden_dims)

    @classmethod
    def build(cls, *, data_dim: int, **options: Any) -> Likelihood:
        return cls(data_dim, **options)

    def forward(self, params: torch.Tensor) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(self.net, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self(params).sample_with_probs()[1]

    def in_domain(self, x: torch.Tensor) -> bool:
        return in_unit_interval(x)
