"""Encoder and decoder networks.

The VAE takes any ``torch.nn.Module`` with these signatures, so users can inject
their own (e.g. residual) networks:

* encoder: ``x -> (loc, scale)``, both of shape ``batch + (latent_dim,)``, ``scale > 0``;
* decoder: ``z -> params``, the raw parameters that the likelihood turns into p(x|z).

Conditional models (:mod:`pyro_vae.models.conditional`) use the same signatures with
several inputs, e.g. ``(x, y) -> (loc, scale)`` and ``(z, y) -> params``.

The built-in families, fully connected (with ReLU or gated hidden layers, see
:class:`HiddenLayer`) and convolutional, are :class:`Architecture` objects
registered in :data:`ARCHITECTURES` by their ``--arch`` name.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pyro.nn.auto_reg_nn import MaskedLinear, create_mask
from torch import nn

from pyro_vae.core.errors import ConfigError
from pyro_vae.inference.estimators import DEFAULT_MAX_BATCH


@dataclass(frozen=True)
class HiddenLayer:
    r"""A kind of fully connected hidden layer: ``n_in`` inputs to ``n_out`` features.

    The layer is a linear map to ``expansion * n_out`` values, then ``activation``
    (built for the dimension of the features), which turns them into the ``n_out``
    features:

    * :data:`RELU`: :math:`h = \max(0, W u + b)`;
    * :data:`GATED`: the gated dense layer of Tomczak & Welling (2018) (a gated
      linear unit, Dauphin et al. 2017),
      :math:`h = (W_1 u + b_1) \odot \sigma(W_2 u + b_2)`, with
      :math:`W = [W_1; W_2]` and :math:`b = [b_1; b_2]` stacked in one linear map of
      ``2 * n_out`` outputs that :class:`torch.nn.GLU` splits into halves (one
      matrix product instead of two).

    :meth:`conv` makes the same kind of layer over feature maps, the convolution
    taking the linear map's place and the channels the features' (for ``GATED``,
    the gated convolution of Tomczak & Welling's convolutional models).
    """

    expansion: int
    #: ``dim -> module``: the activation over the features in dimension ``dim``.
    activation: Callable[[int], nn.Module]

    def __call__(self, n_in: int, n_out: int) -> list[nn.Module]:
        """The layer's modules, to apply in turn."""
        return [nn.Linear(n_in, self.expansion * n_out), self.activation(-1)]

    def conv(
        self, convolution: Callable[[int, int], nn.Module], c_in: int, c_out: int
    ) -> list[nn.Module]:
        """``convolution(c_in, expansion * c_out)`` then the activation over the channels
        of ``(..., C, H, W)`` maps, giving ``c_out`` channels."""
        return [convolution(c_in, self.expansion * c_out), self.activation(-3)]


def _relu(dim: int) -> nn.Module:
    # in place: it follows a linear map or convolution, whose output nothing else reads, and
    # one large temporary less per layer shows in the evaluation's passes (about 1%)
    return nn.ReLU(inplace=True)


#: :math:`h = \max(0, W u + b)`.
RELU = HiddenLayer(1, _relu)
#: :math:`h = (W_1 u + b_1) \odot \sigma(W_2 u + b_2)` (``nn.GLU`` splits the features' dimension).
GATED = HiddenLayer(2, nn.GLU)


def mlp(sizes: Sequence[int], layer: HiddenLayer = RELU) -> nn.Sequential:
    """Hidden layers of the kind ``layer`` with the widths ``sizes[1:-1]``, then a linear
    output layer of ``sizes[-1]``; by default, linear layers with ReLU between them."""
    pairs = zip(sizes[:-2], sizes[1:-1], strict=True)
    hidden = [module for n_in, n_out in pairs for module in layer(n_in, n_out)]
    output = [nn.Linear(sizes[-2], sizes[-1])] if len(sizes) > 1 else []
    return nn.Sequential(*hidden, *output)


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
    bounded away from zero, so :math:`\log q(z|x)` stays finite. ``layer`` is the kind
    of the hidden layers (:class:`HiddenLayer`).
    """

    def __init__(
        self,
        data_dim: int,
        hidden_dims: Sequence[int],
        latent_dim: int,
        min_scale: float = 1e-4,
        *,
        layer: HiddenLayer = RELU,
    ):
        super().__init__()
        self.net = mlp([data_dim, *hidden_dims, 2 * latent_dim], layer)
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_params(self.net(x), self.min_scale)


class MLPDecoder(nn.Module):
    """Decoder :math:`z \\mapsto` likelihood parameters (e.g. Bernoulli logits), an MLP
    with hidden layers of the kind ``layer``."""

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        *,
        layer: HiddenLayer = RELU,
    ):
        super().__init__()
        self.net = mlp([latent_dim, *hidden_dims, out_dim], layer)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class AutoregressiveLogits(nn.Module):
    r"""MADE (Germain et al. 2015): logits of D binary variables, each given those before it.

    .. math:: a_i(x_{<i}) = \sum_{j<i} S_{ij} x_j + v_i^\top h_L, \qquad
              h_1 = \mathrm{relu}(W_1 x + b_1), \quad h_l = \mathrm{relu}(W_l h_{l-1} + b_l),

    with the MADE masks (Pyro's :func:`~pyro.nn.auto_reg_nn.create_mask`, natural
    order) on :math:`S, W_l, v`, so that :math:`a_i` sees only :math:`x_{<i}`; ``S``
    is the direct (skip) connection. The output and skip weights start at zero, so
    an untrained net adds nothing.
    """

    def __init__(self, data_dim: int, hidden_dims: Sequence[int] = (500,)):
        super().__init__()
        if not hidden_dims:
            raise ConfigError("AutoregressiveLogits needs at least one hidden layer")
        masks, skip_mask = create_mask(data_dim, 0, list(hidden_dims), torch.arange(data_dim), 1)
        self.inputs = MaskedLinear(data_dim, hidden_dims[0], masks[0])
        sizes = zip(hidden_dims[:-1], hidden_dims[1:], masks[1:-1], strict=True)
        self.hidden = nn.ModuleList(MaskedLinear(n_in, n_out, mask) for n_in, n_out, mask in sizes)
        self.output = MaskedLinear(hidden_dims[-1], data_dim, masks[-1], bias=False)
        self.skip = MaskedLinear(data_dim, data_dim, skip_mask, bias=False)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.skip.weight)
        # The masks follow from the sizes: keep them out of checkpoints (5.6 MB of the 15.7 MB
        # of a 784-500 MADE's model), and accept checkpoints that still hold them.
        for _, layer in self._masked_layers():
            layer.register_buffer("mask", layer.mask, persistent=False)
        self.register_load_state_dict_pre_hook(self._drop_saved_masks)

    def _masked_layers(self) -> Iterator[tuple[str, MaskedLinear]]:
        return ((name, m) for name, m in self.named_modules() if isinstance(m, MaskedLinear))

    @staticmethod
    def _drop_saved_masks(
        module: "AutoregressiveLogits",
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load hook (torch's pre-hook signature): remove the masks a checkpoint of an
        earlier pyro-vae holds, after checking that they are the masks this network
        derives (else refuse the load)."""
        for name, layer in module._masked_layers():
            saved = state_dict.pop(f"{prefix}{name}.mask", None)
            if saved is not None and not torch.equal(saved.to(layer.mask), layer.mask):
                error_msgs.append(f"the saved MADE mask of {prefix}{name} differs from its own")

    def _top(self, first_preactivation: torch.Tensor) -> torch.Tensor:
        h = F.relu(first_preactivation)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.output(self._top(self.inputs(x)))

    @torch.no_grad()
    def sample(self, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Ancestral samples of :math:`x_i \sim \mathrm{Bernoulli}(\sigma(o_i + a_i(x_{<i})))`
        for logit offsets ``o`` of shape ``(N, D)``, and the probabilities they were
        drawn with.

        One pixel at a time, in D small steps. The first layer is updated by one
        column per pixel instead of recomputed, so with one hidden layer the whole
        sample costs the arithmetic of about one forward pass; each further hidden
        layer is recomputed at every step.
        """
        x = torch.zeros_like(offset)
        probs = torch.empty_like(offset)
        preactivation = self.inputs.bias.expand(offset.shape[0], -1).clone()
        w_in = self.inputs.weight * self.inputs.mask
        w_out = self.output.weight * self.output.mask
        w_skip = self.skip.weight * self.skip.mask
        for i in range(offset.shape[-1]):
            logit = offset[:, i] + x @ w_skip[i] + self._top(preactivation) @ w_out[i]
            probs[:, i] = torch.sigmoid(logit)
            x[:, i] = torch.bernoulli(probs[:, i])
            preactivation += x[:, i : i + 1] * w_in[:, i]
        return x, probs


class MultiInputMLP(nn.Module):
    r"""An MLP over the concatenation of several inputs, :math:`f([u_1, \dots, u_n])`.

    The first layer is applied to each input separately and summed,
    :math:`W[u_1; \dots; u_n] = \sum_i W_i u_i`, which broadcasts over leading
    dimensions: with ``z`` of shape ``(K, N, latent)`` (K importance samples) and a
    condition ``y`` of shape ``(N, d)``, :math:`W_y y` is computed once per example
    instead of once per sample. The hidden layers are of the kind ``layer``
    (:class:`HiddenLayer`); a gated first layer is
    :math:`(\sum_i W_{1i} u_i + b_1) \odot \sigma(\sum_i W_{2i} u_i + b_2)`.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        hidden_dims: Sequence[int],
        out_dim: int,
        *,
        layer: HiddenLayer = RELU,
    ):
        super().__init__()
        widths = [*hidden_dims, out_dim]
        # The first layer is hidden, so widened and activated, unless it is the output.
        first_width = widths[0] * layer.expansion if hidden_dims else widths[0]
        self.first = nn.ModuleList(
            nn.Linear(dim, first_width, bias=i == 0) for i, dim in enumerate(input_dims)
        )
        self.activation = layer.activation(-1) if hidden_dims else nn.Identity()
        self.rest = mlp(widths, layer)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        h = sum(linear(u) for linear, u in zip(self.first, inputs, strict=True))
        return self.rest(self.activation(h))


class MultiInputGaussian(nn.Module):
    r"""Amortized Gaussian over several inputs: :math:`(u_1, \dots, u_n) \mapsto (\mu, \sigma)`.

    Used as the conditional encoder :math:`q(z|x, y)` and as the prior network
    :math:`p(z|x)` of the conditional models; scale as in :class:`MLPEncoder`, hidden
    layers of the kind ``layer``.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        min_scale: float = 1e-4,
        *,
        layer: HiddenLayer = RELU,
    ):
        super().__init__()
        self.net = MultiInputMLP(input_dims, hidden_dims, 2 * latent_dim, layer=layer)
        self.min_scale = min_scale

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_params(self.net(*inputs), self.min_scale)


@dataclass(frozen=True)
class Convolution:
    """One convolution of a stack: ``channels`` out, a ``kernel`` x ``kernel`` window,
    ``stride``.

    In an encoder (:class:`ConvEncoder`) it is a convolution padded by
    ``(kernel - 1) // 2`` whose stride divides H and W (an odd kernel with stride 1 keeps
    them). In a decoder (:class:`ConvDecoder`) stride 1 keeps H and W (odd kernel) and
    stride 2 doubles them (a transposed convolution, even kernel). A bare number of
    channels in a stack stands for ``Convolution(channels, 4, 2)``, which halves H and W
    in an encoder and doubles them in a decoder.
    """

    channels: int
    kernel: int = 3
    stride: int = 1

    @classmethod
    def of(cls, spec: "int | Convolution") -> "Convolution":
        """``spec`` itself, or for a bare channel count the 4x4 stride-2 convolution."""
        return spec if isinstance(spec, Convolution) else cls(spec, 4, 2)

    @property
    def encoder_padding(self) -> int:
        """The encoder convolution's padding: an odd kernel with stride 1 keeps H and W."""
        return (self.kernel - 1) // 2

    def encoding(self, c_in: int, c_out: int) -> nn.Module:
        """The encoder's convolution: ``c_in`` to ``c_out`` channels, H and W divided by
        ``stride``."""
        return nn.Conv2d(c_in, c_out, self.kernel, self.stride, self.encoder_padding)

    def encoded_size(self, size: int) -> int:
        """The height (or width) of the encoder convolution's output for an input of ``size``."""
        return (size + 2 * self.encoder_padding - self.kernel) // self.stride + 1

    def decoding(self, c_in: int, c_out: int) -> nn.Module:
        """The decoder's convolution: ``c_in`` to ``c_out`` channels, H and W times ``stride``."""
        if self.stride == 1 and self.kernel % 2 == 1:
            return nn.Conv2d(c_in, c_out, self.kernel, padding=self.kernel // 2)
        if self.stride == 2 and self.kernel % 2 == 0:
            return ChannelsLastConvTranspose2d(c_in, c_out, self.kernel, 2, self.kernel // 2 - 1)
        raise ConfigError(
            f"a decoder convolution keeps H and W (stride 1, odd kernel) or doubles them "
            f"(stride 2, even kernel), got stride {self.stride} and kernel {self.kernel}"
        )


class ConvEncoder(nn.Module):
    r"""Convolutional Gaussian encoder for ``(C, H, W)`` images given as flat vectors.

    A stack of convolutions (``channels``: :class:`Convolution` specs, or channel counts
    for 4x4 stride-2 convolutions that each halve H and W) extracts features
    :math:`h(x)`, then an MLP with ``hidden_dims`` maps them to :math:`(\mu, \sigma)`
    (scale as in :class:`MLPEncoder`); any leading batch dimensions are kept. Convolutions
    and hidden layers are of the kind ``layer`` (:class:`HiddenLayer`: ReLU or gated).
    With ``extra_dims`` the MLP also takes further vectors, ``(x, u_1, ...) -> (loc,
    scale)`` over :math:`[h(x), u_1, \dots]` (:class:`MultiInputGaussian`, so a ``u`` with
    more leading dimensions than ``x``, e.g. K samples of a latent, broadcasts against
    features computed once per image).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int | Convolution] = (32, 64),
        hidden_dims: Sequence[int] = (256,),
        extra_dims: Sequence[int] = (),
        min_scale: float = 1e-4,
        *,
        layer: HiddenLayer = RELU,
    ):
        super().__init__()
        in_channels, height, width = image_shape
        layers: list[nn.Module] = []
        for conv in map(Convolution.of, channels):
            layers += layer.conv(conv.encoding, in_channels, conv.channels)
            in_channels = conv.channels
            height, width = conv.encoded_size(height), conv.encoded_size(width)
            if min(height, width) < 1:
                raise ConfigError(
                    f"the encoder's convolutions leave nothing of a {tuple(image_shape)} image "
                    f"(at {conv}); use fewer or smaller-strided convolutions, or `arch='mlp'`"
                )
        self.image_shape = tuple(image_shape)
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.head = MultiInputGaussian(
            (in_channels * height * width, *extra_dims),
            hidden_dims,
            latent_dim,
            min_scale,
            layer=layer,
        )

    def forward(self, x: torch.Tensor, *extras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.convs(x.reshape(-1, *self.image_shape)).reshape(*x.shape[:-1], -1)
        return self.head(features, *extras)


class ChannelsLastConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` computed in the channels-last (NHWC) memory format.

    On CPU this made the importance-weighted evaluation of the convolutional models,
    which the decoder's transposed convolutions dominate, ~20% faster than PyTorch's
    default NCHW (training: no change; docs/results/index.md). Only the
    computation changes format: the weight stays an NCHW parameter, converted on each
    call, because Pyro's param store keeps ``.contiguous()`` copies of parameters, so
    ``pyro.optim`` would otherwise train a copy the module does not use. Same
    parameters and state-dict keys as ``nn.ConvTranspose2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            x.contiguous(memory_format=torch.channels_last),
            self.weight.contiguous(memory_format=torch.channels_last),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class ConvDecoder(nn.Module):
    """Convolutional decoder, by default the mirror of :class:`ConvEncoder`.

    An MLP with ``hidden_dims`` maps ``z`` (and, with ``extra_dims``, further vectors,
    as in :class:`MultiInputMLP`) to a feature map of ``channels[0]`` channels, which the
    convolutions ``channels[1:]`` and then ``output`` (:class:`Convolution` specs; a bare
    number of channels is a 4x4 stride-2 transposed convolution that doubles H and W)
    turn into ``params_per_dim`` maps of the image's shape, flattened channel-major to
    ``batch + (params_per_dim * C * H * W,)``; the feature map is as much smaller than
    the image as the strides enlarge it. ``output`` gives the last convolution's kernel
    and stride (its channels are the parameters'). Hidden layers, the feature map and
    every convolution but the last are of the kind ``layer``; the last is linear.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        params_per_dim: int = 1,
        channels: Sequence[int | Convolution] = (64, 32),
        hidden_dims: Sequence[int] = (256,),
        extra_dims: Sequence[int] = (),
        *,
        layer: HiddenLayer = RELU,
        output: Convolution = Convolution(0, 4, 2),
    ):
        super().__init__()
        out_channels, height, width = image_shape
        if not isinstance(channels[0], int):
            raise ConfigError(
                f"the decoder's channels start with the channels of its first feature map, a "
                f"number, got {channels[0]}"
            )
        convs = [*map(Convolution.of, channels[1:]), output]
        layers, c_in = [], channels[0]
        for conv in convs[:-1]:
            layers += layer.conv(conv.decoding, c_in, conv.channels)
            c_in = conv.channels
        layers.append(output.decoding(c_in, out_channels * params_per_dim))
        scale = math.prod(conv.stride for conv in convs)
        if height % scale or width % scale:
            raise ConfigError(
                f"the convolutional decoder needs image height and width divisible by {scale}, "
                f"got {height}x{width}; use `arch='mlp'`"
            )
        self.start_shape = (channels[0], height // scale, width // scale)
        self.head = MultiInputMLP(
            (latent_dim, *extra_dims),
            hidden_dims,
            layer.expansion * math.prod(self.start_shape),
            layer=layer,
        )
        self.head_activation = layer.activation(-1)
        # Registered after the head: parameters() keeps the order of the checkpoints already
        # written, whose optimizer state follows it.
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        h = self.head_activation(self.head(z, *extras))
        batch_shape = h.shape[:-1]
        return self.deconvs(h.reshape(-1, *self.start_shape)).reshape(*batch_shape, -1)


class Architecture:
    """A family of encoder and decoder networks for images, chosen by ``--arch``.

    Images of shape ``image_shape`` (``(C, H, W)``, or ``(D,)`` for plain vectors
    where the architecture allows) come as flat vectors. ``hidden_dims`` are the
    widths of the fully connected hidden layers in encoder order; decoders mirror
    them. ``extra_dims`` are the sizes of further vector inputs, such as an upper
    latent layer (:mod:`pyro_vae.models.hierarchical`): the networks then take
    ``(x, *extras)`` and ``(z, *extras)``. To add one, subclass this and add an
    instance to :data:`ARCHITECTURES`.
    """

    #: What the architecture is, in one line (for ``--help``).
    help: str = ""
    #: The kind of hidden layer of the fully connected networks over latents alone,
    #: such as :math:`p(z_1|z_2)` of the hierarchical VAE.
    layer: HiddenLayer = RELU
    #: (sample, image) pairs per pass of the importance-weighted evaluation that ran
    #: fastest on a CPU (``scripts/benchmark_evaluation.py --sweep``, docs/results/index.md).
    cpu_evaluation_batch: int = DEFAULT_MAX_BATCH

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
    :class:`MultiInputGaussian`, :class:`MultiInputMLP`) whose hidden layers are of the
    kind ``layer`` (:class:`HiddenLayer`); any image shape.

    With ``layer=GATED`` and ``hidden_dims=(300, 300)`` these are the networks of
    Tomczak & Welling (2018): two gated dense layers of 300 units, then a linear map
    to the parameters (the encoder's scale keeps the softplus parameterization of
    :func:`gaussian_params`)."""

    # Passes of 5,000 pairs (one image at K = 5,000) took 0.70 times as long per image as
    # 20,000 on a 2-core CPU: their activations stay in the caches (docs/results/index.md).
    cpu_evaluation_batch = 5_000

    def __init__(self, layer: HiddenLayer = RELU, *, help: str = ""):
        self.layer = layer
        self.help = help

    def encoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        data_dim = math.prod(image_shape)
        if extra_dims:
            return MultiInputGaussian(
                (data_dim, *extra_dims), hidden_dims, latent_dim, layer=self.layer
            )
        # The single-input classes keep the parameter names of checkpoints already written.
        return MLPEncoder(data_dim, hidden_dims, latent_dim, layer=self.layer)

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
            return MultiInputMLP(
                (latent_dim, *extra_dims), hidden_dims[::-1], out_dim, layer=self.layer
            )
        return MLPDecoder(latent_dim, hidden_dims[::-1], out_dim, layer=self.layer)


class ConvArchitecture(Architecture):
    """Convolutional networks (:class:`ConvEncoder`, :class:`ConvDecoder`) with the
    encoder's convolutions ``channels``, the decoder's ``decoder_channels`` and ``output``
    (by default the encoder's 4x4 stride-2 ones in reverse), convolutions and hidden
    layers of the kind ``layer`` (:class:`HiddenLayer`); needs ``(C, H, W)`` images with
    H and W divisible by the product of the decoder's strides.

    With ``layer=GATED`` every convolution and hidden layer is gated, as in the
    convolutional VAEs of Tomczak & Welling (2018), whose gated dense layers did
    better here than ReLU ones (the ``gated`` rows of docs/results/index.md)."""

    # Passes of 20,000 pairs, whose activations run to hundreds of MB, took 1.5-1.8
    # times as long per image as 2,500 on a 2-core CPU (docs/results/index.md).
    cpu_evaluation_batch = 2_500

    def __init__(
        self,
        channels: Sequence[int | Convolution] = (32, 64),
        layer: HiddenLayer = RELU,
        *,
        decoder_channels: Sequence[int | Convolution] | None = None,
        output: Convolution = Convolution(0, 4, 2),
        help: str = "",
    ):
        self.help = help
        self.channels = tuple(channels)
        if decoder_channels is None and not all(isinstance(c, int) for c in self.channels):
            raise ConfigError(
                "only an encoder of bare channel counts (4x4 stride-2 convolutions) is mirrored "
                "by default; give decoder_channels (and output) for Convolution specs"
            )
        self.decoder_channels = (
            self.channels[::-1] if decoder_channels is None else tuple(decoder_channels)
        )
        self.output = output
        self.layer = layer

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
        return ConvEncoder(
            image_shape, latent_dim, self.channels, hidden_dims, extra_dims, layer=self.layer
        )

    def decoder(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        params_per_dim: int = 1,
        extra_dims: Sequence[int] = (),
    ) -> nn.Module:
        self._check_shape(image_shape)
        return ConvDecoder(
            latent_dim,
            image_shape,
            params_per_dim,
            self.decoder_channels,
            hidden_dims[::-1],
            extra_dims,
            layer=self.layer,
            output=self.output,
        )


#: The convolutions of the convolutional VAEs of Tomczak & Welling (2018), every layer
#: gated: the encoder's five (7x7, 3x3 halving, 5x5, 3x3 halving, 3x3 to 6 channels); the
#: decoder's MLP gives one full-size channel, refined by four 3x3 convolutions of 64
#: channels at full resolution, then a 1x1 convolution to the parameters. The fully
#: connected parts are pyro-vae's ``hidden_dims`` heads, as in the other architectures;
#: theirs differ in details (q(z2|x) linear in the features, q(z1|x, z2) with 3x3
#: convolutions and its own layer for z2).
GATED_FULL_RESOLUTION = ConvArchitecture(
    (
        Convolution(32, 7),
        Convolution(32, 3, 2),
        Convolution(64, 5),
        Convolution(64, 3, 2),
        Convolution(6, 3),
    ),
    GATED,
    decoder_channels=(1, *[Convolution(64)] * 4),
    output=Convolution(0, 1),
    help="the VampPrior paper's gated convolutions: five in the encoder, a decoder that "
    "refines a full-size map with four 3x3 convolutions of 64 channels",
)

#: Registry of architectures by ``--arch`` name.
ARCHITECTURES: dict[str, Architecture] = {
    "mlp": MLPArchitecture(help="fully connected, ReLU"),
    "conv": ConvArchitecture(
        help="two stride-2 convolutions with 32 and 64 channels, mirrored by transposed "
        "convolutions"
    ),
    "gated": MLPArchitecture(
        GATED,
        help="fully connected with gated dense layers (W1 u + b1) * sigmoid(W2 u + b2), as "
        "in the VampPrior paper with `hidden_dims=(300, 300)`",
    ),
    "gated-conv": ConvArchitecture(
        layer=GATED, help="conv with every convolution and hidden layer gated so"
    ),
    "gated-fullres-conv": GATED_FULL_RESOLUTION,
}
