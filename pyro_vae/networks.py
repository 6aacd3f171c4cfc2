"""Encoder and decoder networks.

The VAE takes any ``torch.nn.Module`` with these signatures, so users can inject
convolutional or residual networks:

* encoder: ``x -> (loc, scale)``, both of shape ``batch + (latent_dim,)``, ``scale > 0``;
* decoder: ``z -> params``, the raw parameters that the likelihood turns into p(x|z).

Conditional models (:mod:`pyro_vae.conditional`) use the same signatures with
several inputs, e.g. ``(x, y) -> (loc, scale)`` and ``(z, y) -> params``.
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


def gaussian_params(
    net_output: torch.Tensor, min_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Split a ``2 * latent_dim`` output into :math:`(\mu, \mathrm{softplus}(h) + \sigma_{\min})`.

    The floor keeps the scale bounded away from zero, so log-densities stay finite.
    """
    loc, raw_scale = net_output.chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + min_scale


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
        return gaussian_params(self.net(x), self.min_scale)


class MLPDecoder(nn.Module):
    """Decoder :math:`z \\mapsto` likelihood parameters (e.g. Bernoulli logits)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        self.net = mlp([latent_dim, *hidden_dims, out_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MultiInputMLP(nn.Module):
    r"""An MLP over the concatenation of several inputs, :math:`f([u_1, \dots, u_n])`.

    The first layer is applied to each input separately and summed,
    :math:`W[u_1; \dots; u_n] = \sum_i W_i u_i`, which broadcasts over leading
    dimensions: with ``z`` of shape ``(K, N, latent)`` (K importance samples) and a
    condition ``y`` of shape ``(N, d)``, :math:`W_y y` is computed once per example
    instead of once per sample.
    """

    def __init__(self, input_dims: Sequence[int], hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        widths = [*hidden_dims, out_dim]
        self.first = nn.ModuleList(
            nn.Linear(dim, widths[0], bias=i == 0) for i, dim in enumerate(input_dims)
        )
        self.rest = mlp(widths)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        h = sum(layer(u) for layer, u in zip(self.first, inputs, strict=True))
        return self.rest(F.relu(h)) if len(self.rest) else h


class MultiInputGaussian(nn.Module):
    r"""Amortized Gaussian over several inputs: :math:`(u_1, \dots, u_n) \mapsto (\mu, \sigma)`.

    Used as the conditional encoder :math:`q(z|x, y)` and as the prior network
    :math:`p(z|x)` of the conditional models; scale as in :class:`MLPEncoder`.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        self.net = MultiInputMLP(input_dims, hidden_dims, 2 * latent_dim)
        self.min_scale = min_scale

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_params(self.net(*inputs), self.min_scale)


class ConvEncoder(nn.Module):
    r"""Convolutional encoder for ``(C, H, W)`` images given as flat vectors.

    Two stride-2 convolutions (each halving H and W) then a linear layer to
    :math:`(\mu, \sigma)`; any leading batch dimensions are kept.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        in_channels, height, width = image_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.image_shape = tuple(image_shape)
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.head = mlp([in_channels * height * width, hidden_dim, 2 * latent_dim])
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = x.shape[:-1]
        h = self.convs(x.reshape(-1, *self.image_shape))
        return gaussian_params(self.head(F.relu(h)).reshape(*batch_shape, -1), self.min_scale)


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder, the mirror of :class:`ConvEncoder`.

    Outputs ``params_per_dim`` maps of the image's shape, flattened channel-major
    to ``batch + (params_per_dim * C * H * W,)``.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        params_per_dim: int = 1,
        channels: Sequence[int] = (64, 32),
        hidden_dim: int = 256,
    ):
        super().__init__()
        out_channels, height, width = image_shape
        scale = 2 ** len(channels)
        if height % scale or width % scale:
            raise ValueError(f"image height and width must be divisible by {scale}")
        self.start_shape = (channels[0], height // scale, width // scale)
        self.head = nn.Sequential(
            mlp([latent_dim, hidden_dim, channels[0] * self.start_shape[1] * self.start_shape[2]]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, (*channels[1:], out_channels * params_per_dim),
                               strict=True):  # fmt: skip
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.deconvs = nn.Sequential(*layers[:-1])  # no ReLU on the output parameters

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start_shape)
        return self.deconvs(h).reshape(*batch_shape, -1)
