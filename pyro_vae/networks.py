"""Encoder and decoder networks.

The VAE takes any ``torch.nn.Module`` with these signatures, so users can inject
their own (e.g. residual) networks:

* encoder: ``x -> (loc, scale)``, both of shape ``batch + (latent_dim,)``, ``scale > 0``;
* decoder: ``z -> params``, the raw parameters that the likelihood turns into p(x|z).

Conditional models (:mod:`pyro_vae.conditional`) use the same signatures with
several inputs, e.g. ``(x, y) -> (loc, scale)`` and ``(z, y) -> params``.

The built-in families, fully connected and convolutional, are :class:`Architecture`
objects registered in :data:`ARCHITECTURES` by their ``--arch`` name.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError


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
    r"""Convolutional Gaussian encoder for ``(C, H, W)`` images given as flat vectors.

    Two stride-2 convolutions (each halving H and W) extract features :math:`h(x)`,
    then an MLP with ``hidden_dims`` maps them to :math:`(\mu, \sigma)` (scale as in
    :class:`MLPEncoder`); any leading batch dimensions are kept. With ``extra_dims``
    the MLP also takes further vectors, ``(x, u_1, ...) -> (loc, scale)`` over
    :math:`[h(x), u_1, \dots]` (:class:`MultiInputGaussian`, so a ``u`` with more
    leading dimensions than ``x``, e.g. K samples of a latent, broadcasts against
    features computed once per image).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden_dims: Sequence[int] = (256,),
        extra_dims: Sequence[int] = (),
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
        self.head = MultiInputGaussian(
            (in_channels * height * width, *extra_dims), hidden_dims, latent_dim, min_scale
        )

    def forward(self, x: torch.Tensor, *extras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.convs(x.reshape(-1, *self.image_shape)).reshape(*x.shape[:-1], -1)
        return self.head(features, *extras)


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder, the mirror of :class:`ConvEncoder`.

    An MLP with ``hidden_dims`` maps ``z`` (and, with ``extra_dims``, further vectors,
    as in :class:`MultiInputMLP`) to a small feature map that two stride-2 transposed
    convolutions enlarge to ``params_per_dim`` maps of the image's shape, flattened
    channel-major to ``batch + (params_per_dim * C * H * W,)``.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        params_per_dim: int = 1,
        channels: Sequence[int] = (64, 32),
        hidden_dims: Sequence[int] = (256,),
        extra_dims: Sequence[int] = (),
    ):
        super().__init__()
        out_channels, height, width = image_shape
        scale = 2 ** len(channels)
        if height % scale or width % scale:
            raise ConfigError(
                f"the convolutional decoder needs image height and width divisible by {scale}, "
                f"got {height}x{width}; use --arch mlp"
            )
        self.start_shape = (channels[0], height // scale, width // scale)
        self.head = MultiInputMLP(
            (latent_dim, *extra_dims), hidden_dims, math.prod(self.start_shape)
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, (*channels[1:], out_channels * params_per_dim),
                               strict=True):  # fmt: skip
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.deconvs = nn.Sequential(*layers[:-1])  # no ReLU on the output parameters

    def forward(self, z: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.head(z, *extras))
        batch_shape = h.shape[:-1]
        return self.deconvs(h.reshape(-1, *self.start_shape)).reshape(*batch_shape, -1)


class Architecture:
    """A family of encoder and decoder networks for images, chosen by ``--arch``.

    Images of shape ``image_shape`` (``(C, H, W)``, or ``(D,)`` for plain vectors
    where the architecture allows) come as flat vectors. ``hidden_dims`` are the
    widths of the fully connected hidden layers in encoder order; decoders mirror
    them. ``extra_dims`` are the sizes of further vector inputs, such as an upper
    latent layer (:mod:`pyro_vae.hierarchical`): the networks then take
    ``(x, *extras)`` and ``(z, *extras)``. To add one, subclass this and add an
    instance to :data:`ARCHITECTURES`.
    """

    def encoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        """Gaussian encoder ``(x, *extras) -> (loc, scale)`` with ``latent_dim`` outputs each."""
        raise NotImplementedError

    def decoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        params_per_dim: int = 1,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        """Decoder ``(z, *extras) -> params``: ``params_per_dim`` values per pixel."""
        raise NotImplementedError


class MLPArchitecture(Architecture):
    """Fully connected networks (:class:`MLPEncoder`, :class:`MLPDecoder`; with extra inputs
    :class:`MultiInputGaussian`, :class:`MultiInputMLP`); any image shape."""

    def encoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        data_dim = math.prod(image_shape)
        if extra_dims:
            return MultiInputGaussian((data_dim, *extra_dims), hidden_dims, latent_dim)
        # The single-input classes keep the parameter names of checkpoints already written.
        return MLPEncoder(data_dim, hidden_dims, latent_dim)

    def decoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        params_per_dim: int = 1,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        out_dim = math.prod(image_shape) * params_per_dim
        if extra_dims:
            return MultiInputMLP((latent_dim, *extra_dims), hidden_dims[::-1], out_dim)
        return MLPDecoder(latent_dim, hidden_dims[::-1], out_dim)


class ConvArchitecture(Architecture):
    """Convolutional networks (:class:`ConvEncoder`, :class:`ConvDecoder`) with the given
    convolution ``channels`` (the decoder's in reverse); needs ``(C, H, W)`` images
    with H and W divisible by ``2 ** len(channels)``."""

    def __init__(self, channels: Sequence[int] = (32, 64)):
        self.channels = tuple(channels)

    def _check_shape(self, image_shape: Sequence[int]) -> None:
        if len(image_shape) != 3:
            raise ConfigError(
                "the convolutional architecture needs the image shape (channels, height, width), "
                f"got {tuple(image_shape)}; pass image_shape, or use the mlp architecture"
            )

    def encoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        self._check_shape(image_shape)
        return ConvEncoder(image_shape, latent_dim, self.channels, hidden_dims, extra_dims)

    def decoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        params_per_dim: int = 1,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        self._check_shape(image_shape)
        return ConvDecoder(latent_dim, image_shape, params_per_dim, self.channels[::-1],
                           hidden_dims[::-1], extra_dims)  # fmt: skip


#: Registry of architectures by ``--arch`` name.
ARCHITECTURES: dict[str, Architecture] = {
    "mlp": MLPArchitecture(),
    "conv": ConvArchitecture(),
}
