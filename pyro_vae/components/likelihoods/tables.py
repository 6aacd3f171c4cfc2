r"""The likelihood of a table's rows: each column group its own distribution, missing
cells left out (HI-VAE style, Nazábal et al. 2020)."""

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from pyro_vae.components.likelihoods.base import Likelihood
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Option
from pyro_vae.data.tables import TableSchema

#: Likelihoods of the count columns of a table.
COUNT_MODELS = ("negative-binomial", "poisson")


def parse_count_model(value: str) -> str:
    if value not in COUNT_MODELS:
        raise ConfigError(
            f"likelihood-counts must be one of {', '.join(COUNT_MODELS)}, got {value!r}"
        )
    return value


class _RealOrMissing(constraints.Constraint):
    """Real numbers, or NaN for a missing cell."""

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return ~torch.isinf(value)

    def __repr__(self) -> str:
        return "RealOrMissing()"


class TableDistribution(dist.TorchDistribution):
    r"""Rows of a table given the decoder's output ``params`` (one value per element of a
    row's vector): per cell, continuous :math:`\mathcal N(\mu, \sigma^2)`, binary
    :math:`\mathrm{Bernoulli}(\sigma(\ell))`, categorical
    :math:`\mathrm{Categorical}(\operatorname{softmax}(\ell_{\text{group}}))` over the
    one-hot group, counts Poisson or negative binomial. ``log_prob`` sums over the observed
    cells only; a NaN cell (missing) adds 0, so an incomplete row is scored on what it has.
    """

    arg_constraints: dict = {}
    support = constraints.independent(_RealOrMissing(), 1)

    def __init__(self, likelihood: "MixedLikelihood", params: torch.Tensor):
        self.likelihood, self.params = likelihood, params
        super().__init__(params.shape[:-1], params.shape[-1:], validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "TableDistribution":
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return TableDistribution(
            self.likelihood, self.params.expand(batch_shape + self.event_shape)
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        params, value = torch.broadcast_tensors(self.params, value)
        observed, value = ~torch.isnan(value), torch.nan_to_num(value)
        lik = self.likelihood
        total = torch.zeros(params.shape[:-1], dtype=params.dtype, device=params.device)
        for index, cells in lik.cell_distributions(params):
            log_p = cells.log_prob(value[..., index])
            total = total + torch.where(observed[..., index], log_p, 0).sum(-1)
        if lik.num_groups:
            log_p = (lik.grouped(value) * lik.group_log_probs(params)).sum(-1)
            total = total + torch.where(observed[..., lik.group_first], log_p, 0).sum(-1)
        return total

    @property
    def mean(self) -> torch.Tensor:
        lik, mean = self.likelihood, torch.empty_like(self.params)
        for index, cells in lik.cell_distributions(self.params):
            mean[..., index] = cells.mean
        if lik.num_groups:
            lik.ungroup(lik.group_log_probs(self.params).exp(), out=mean)
        return mean

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        lik = self.likelihood
        params = self.params.expand(self._extended_shape(sample_shape))
        drawn = torch.empty_like(params)
        for index, cells in lik.cell_distributions(params):
            drawn[..., index] = cells.sample().to(drawn.dtype)
        if lik.num_groups:
            logits = lik.group_log_probs(params)
            choice = dist.Categorical(logits=logits).sample()
            lik.ungroup(F.one_hot(choice, logits.shape[-1]).to(drawn.dtype), out=drawn)
        return drawn


class MixedLikelihood(Likelihood):
    r"""A table's likelihood: each column by its kind in the
    :class:`~pyro_vae.data.tables.TableSchema`,

    .. math:: \log p(x|z) = \sum_{c\ \text{observed}} \log p_c(x_c \mid \eta_c(z)),

    continuous columns (standardized) Gaussian with a learned :math:`\sigma_c`
    (softplus, starting at 1, at least :math:`10^{-3}`), binary Bernoulli from logits,
    categorical a softmax over the column's one-hot group, counts negative binomial with
    a learned dispersion per column (or Poisson, ``counts="poisson"``), means
    :math:`\bar x_c\, \mathrm{softplus}(\eta) / \log 2 + 10^{-4}` with
    :math:`\bar x_c` the column's training mean (so that an output of 0 is the column's
    mean, whatever its scale). Every value of a row's vector gets one decoder
    output. Missing cells (NaN) are left out of the sum; the encoder sees them as 0
    (:meth:`network_input`): the training mean of a standardized column, no category.

    :param table: the schema of the table.
    :param counts: the likelihood of count columns, one of :data:`COUNT_MODELS`.
    """

    help = (
        "tables (the default for a table file): Gaussian, Bernoulli, categorical or count "
        "likelihood per column; missing cells left out"
    )
    options = (
        Option(
            "counts",
            parse_count_model,
            "count columns of a table: negative-binomial (the default; learned dispersion per "
            "column) or poisson",
            "MODEL",
        ),
    )
    needs_table = True
    domain = "rows of the table the model was trained on"
    min_scale, min_mean, min_dispersion = 1e-3, 1e-4, 1e-3

    def __init__(self, table: TableSchema, counts: str = "negative-binomial"):
        super().__init__()
        self.table, self.counts = table, parse_count_model(counts)
        for kind in ("continuous", "binary", "count"):
            index = torch.tensor(table.indices(kind), dtype=torch.long)
            self.register_buffer(f"{kind}_index", index, False)
        start = math.log(math.expm1(1.0))  # softplus^-1(1)
        self.raw_scale = nn.Parameter(torch.full((len(self.continuous_index),), start))
        # softplus(0) = log 2: a decoder output of 0 means the column's training mean
        scale = torch.tensor([c.mean / math.log(2) for c in table.of_kind("count")])
        self.register_buffer("count_scale", scale, False)
        if self.counts == "negative-binomial":
            self.raw_dispersion = nn.Parameter(torch.full((len(self.count_index),), start))
        self._register_groups(table)

    def _register_groups(self, table: TableSchema) -> None:
        """Index ``(groups, widest)`` into a row's vector with one padding value appended
        (at position ``data_dim``), so that every categorical column is one row of it."""
        groups = [
            list(range(start, start + column.width))
            for start, column in zip(table.offsets, table.columns, strict=True)
            if column.kind == "categorical"
        ]
        self.num_groups = len(groups)
        widest = max((len(group) for group in groups), default=0)
        padded = [group + [table.data_dim] * (widest - len(group)) for group in groups]
        index = torch.tensor(padded, dtype=torch.long).reshape(len(groups), widest)
        self.register_buffer("group_index", index, False)
        self.register_buffer("group_padding", self.group_index == table.data_dim, False)
        self.register_buffer("group_first", self.group_index[:, :1].reshape(-1), False)

    @classmethod
    def build(cls, *, data_dim: int, table: TableSchema, **options: Any) -> "MixedLikelihood":
        if data_dim != table.data_dim:
            raise ConfigError(
                f"the table's rows have {table.data_dim} values but data_dim is {data_dim}"
            )
        return cls(table, **options)

    def cell_distributions(
        self, params: torch.Tensor
    ) -> list[tuple[torch.Tensor, dist.TorchDistribution]]:
        """The distributions of the one-value columns, with their positions in the row."""
        cells = []
        if len(self.continuous_index):
            scale = F.softplus(self.raw_scale) + self.min_scale
            loc = params[..., self.continuous_index]
            cells.append((self.continuous_index, dist.Normal(loc, scale.expand(loc.shape))))
        if len(self.binary_index):
            logits = params[..., self.binary_index]
            bernoulli = dist.Bernoulli(logits=logits, validate_args=False)
            cells.append((self.binary_index, bernoulli))
        if len(self.count_index):
            cells.append((self.count_index, self._counts(params[..., self.count_index])))
        return cells

    def _counts(self, raw: torch.Tensor) -> dist.TorchDistribution:
        mean = self.count_scale * F.softplus(raw) + self.min_mean
        if self.counts == "poisson":
            return dist.Poisson(mean, validate_args=False)
        theta = (F.softplus(self.raw_dispersion) + self.min_dispersion).expand(mean.shape)
        return dist.NegativeBinomial(theta, logits=mean.log() - theta.log(), validate_args=False)

    def grouped(self, values: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
        """``values (..., data_dim)`` arranged ``(..., groups, widest)``, padded."""
        pad = values.new_full((*values.shape[:-1], 1), padding)
        return torch.cat([values, pad], -1)[..., self.group_index]

    def ungroup(self, grouped: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``grouped (..., groups, widest)`` back into the row vectors ``out``."""
        keep = ~self.group_padding
        out[..., self.group_index[keep]] = grouped[..., keep]

    def group_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the categories ``(..., groups, widest)``, 0 at padding."""
        logits = self.grouped(params, padding=-math.inf)
        return torch.log_softmax(logits, -1).masked_fill(self.group_padding, 0)

    def forward(self, params: torch.Tensor) -> TableDistribution:
        return TableDistribution(self, params)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x)

    def in_domain(self, x: torch.Tensor) -> bool:
        """Rows as :class:`~pyro_vae.data.tables.TableSchema` codes them: binary cells 0 or 1,
        categorical groups one-hot, counts non-negative integers, NaN where missing."""
        if x.shape[-1] != self.table.data_dim or torch.isinf(x).any():
            return False
        observed, x = ~torch.isnan(x), torch.nan_to_num(x)
        binary = x[..., self.binary_index]
        counts = x[..., self.count_index]
        groups = self.grouped(x)
        one_hot = ((groups == 0) | (groups == 1)).all(-1) & (groups.sum(-1) == 1)
        return bool(
            ((binary == 0) | (binary == 1)).all()
            and ((counts >= 0) & (counts == counts.round())).all()
            and (one_hot | ~observed[..., self.group_first]).all()
        )

    def validate(self, x: torch.Tensor, what: str = "the data") -> None:
        """:class:`ConfigError` unless ``x`` holds rows of the table (:meth:`in_domain`)."""
        if not self.in_domain(x):
            raise ConfigError(
                f"{what} are not rows of the table the model was trained on "
                f"({self.table.data_dim} values each, coded by its schema, NaN where missing); "
                "load them with the run's schema (pyro_vae.data.tables.load_table(..., "
                "schema=...))"
            )
