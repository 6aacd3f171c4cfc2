"""Encoder and decoder networks.

The VAE takes any ``torch.nn.Module`` with these signatures, so users can inject
convolutional or residual networks:

* encoder: ``x -> (loc, scale)``, both of shape ``batch + (latent_dim,)``, ``scale > 0``;
* decoder: ``z -> params``, the raw parameters that the likelihood turns into p(x|z).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    r"""Amortized Gaussian encoder: :math:`x \mapsto (\mu(x), \sigma(x))`.

    :math:`\sigma = \mathrm{softplus}(h) + \sigma_{\min}` keeps the scale positive and
    bounded away from zero, so :math:`\log q(z|x)` stays finite.
    """

    def __init__(
        self, data_dim: int, hidden_dims: Sequence[int], latent_dim: int, min_scale: float = 1e-4
    ):
        super().__init__()
        self.net = mlp([data_dim, *hidden_dims, 2 * latent_dim])
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale


class MLPDecoder(nn.Module):
    """Decoder :math:`z \\mapsto` likelihood parameters (e.g. Bernoulli logits)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        self.net = mlp([latent_dim, *hidden_dims, out_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
