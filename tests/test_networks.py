import json

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae import (
    VAE,
    ConfigError,
    HierarchicalVAE,
    TrainConfig,
    VampPrior,
    load_run,
    read_metrics,
    train,
)
from pyro_vae.cli import main
from pyro_vae.components.networks import (
    ARCHITECTURES,
    GATED,
    GATED_FULL_RESOLUTION,
    ChannelsLastConvTranspose2d,
    ConvArchitecture,
    ConvDecoder,
    ConvEncoder,
    Convolution,
    MLPDecoder,
    MLPEncoder,
    MultiInputMLP,
    mlp,
)
from pyro_vae.inference.estimators import log_importance_weights


@pytest.mark.parametrize("batch_shape", [(5,), (3, 5)])
def test_networks_keep_leading_batch_dimensions(batch_shape):
    x = torch.rand(*batch_shape, 784)
    z = torch.randn(*batch_shape, 6)
    for encoder in (
        MLPEncoder(784, (32,), 6),
        MLPEncoder(784, (32, 16), 6, layer=GATED),
        ConvEncoder((1, 28, 28), 6),
    ):
        loc, scale = encoder(x)
        assert loc.shape == scale.shape == (*batch_shape, 6) and bool((scale > 0).all())
    assert MLPDecoder(6, (32,), 784)(z).shape == (*batch_shape, 784)
    assert MLPDecoder(6, (16, 32), 784, layer=GATED)(z).shape == (*batch_shape, 784)
    assert ConvDecoder(6, (1, 28, 28))(z).shape == (*batch_shape, 784)
    assert ConvDecoder(6, (1, 28, 28), params_per_dim=2)(z).shape == (*batch_shape, 2 * 784)


def test_conv_encoder_matches_per_example_computation():
    """Folding particle and batch dims into one conv batch must not mix examples."""
    encoder = ConvEncoder((1, 28, 28), 4)
    x = torch.rand(3, 2, 784)
    loc, _ = encoder(x)
    assert torch.allclose(loc[1, 0], encoder(x[1, 0:1])[0][0], atol=1e-6)


def test_channels_last_transposed_convolution_computes_what_nchw_does():
    """Outputs and gradients equal nn.ConvTranspose2d's, in NCHW order, for an NCHW input
    with several output channels; the weight and its gradient stay NCHW."""
    torch.manual_seed(0)
    layer = ChannelsLastConvTranspose2d(3, 2, 4, stride=2, padding=1)
    reference = nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3, 7, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, expected = layer(x), reference(x_ref)
    assert torch.allclose(out, expected, atol=1e-6)
    weights = torch.randn_like(expected)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-5)
    assert layer.weight.is_contiguous() and layer.weight.grad.is_contiguous()


def test_decoder_rejects_image_sizes_it_cannot_produce():
    with pytest.raises(ConfigError, match="height and width divisible by 4, got 30x30"):
        ConvDecoder(4, (1, 30, 30))


def test_default_conv_networks_are_the_4x4_stride_2_ones():
    """Bare channel counts stand for 4x4 stride-2 convolutions, padded by 1: the layers that
    the ``conv`` checkpoints already written hold."""
    encoder, decoder = ConvEncoder((1, 28, 28), 4), ConvDecoder(4, (1, 28, 28))
    convs = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in convs)
    assert encoder.head.net.first[0].in_features == 64 * 7 * 7
    assert decoder.start_shape == (64, 7, 7)
    deconvs = [m for m in decoder.deconvs if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in deconvs] == [(64, 32), (32, 1)]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in deconvs)


def test_full_resolution_networks_have_the_published_shapes():
    """The VampPrior paper's gated ConvHVAE networks: 6 x 7 x 7 = 294 encoder features from
    five gated convolutions; a decoder that refines one full-size map with four gated 3x3
    convolutions of 64 channels, then a linear 1x1 convolution to the parameters."""
    encoder = GATED_FULL_RESOLUTION.encoder((1, 28, 28), (300,), 40)
    decoder = GATED_FULL_RESOLUTION.decoder((1, 28, 28), (300,), 40, params_per_dim=2)
    assert encoder.head.net.first[0].in_features == 294
    assert [m.kernel_size[0] for m in encoder.convs if isinstance(m, nn.Conv2d)] == [7, 3, 5, 3, 3]
    assert sum(isinstance(m, nn.GLU) for m in encoder.convs) == 5
    assert decoder.start_shape == (1, 28, 28)
    convs = [m for m in decoder.deconvs if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 128, 3),
        (64, 128, 3),
        (64, 128, 3),
        (64, 128, 3),
        (64, 2, 1),
    ]
    assert isinstance(list(decoder.deconvs)[-1], nn.Conv2d)  # linear output, no gate after it
    z = torch.randn(3, 5, 40)
    assert decoder(z).shape == (3, 5, 2 * 784)


@pytest.mark.parametrize("conv", [Convolution(8, 4, 1), Convolution(8, 3, 2), Convolution(8, 3, 3)])
def test_decoder_rejects_convolutions_that_neither_keep_nor_double_the_size(conv):
    with pytest.raises(ConfigError, match=f"got stride {conv.stride} and kernel {conv.kernel}"):
        ConvDecoder(4, (1, 28, 28), channels=(8, conv), output=Convolution(0, 1))


def test_conv_networks_reject_stacks_that_do_not_fit_the_image():
    with pytest.raises(ConfigError, match=r"leave nothing of a \(1, 8, 8\) image"):
        ConvEncoder((1, 8, 8), 4, channels=(8, 8, 8, 8))
    with pytest.raises(ConfigError, match="first feature map, a number"):
        ConvDecoder(4, (1, 28, 28), channels=(Convolution(8), 8))
    with pytest.raises(ConfigError, match="give decoder_channels"):
        ConvArchitecture((Convolution(8, 5), 16))


def test_conv_vae_trains_and_evaluates():
    pyro.set_rng_seed(0)
    prototypes = (torch.rand(3, 784) > 0.5).float()
    x = torch.bernoulli(0.9 * prototypes[torch.arange(96) % 3] + 0.05)
    vae = VAE(
        784,
        4,
        encoder=ConvEncoder((1, 28, 28), 4, channels=(8, 16), hidden_dims=(32,)),
        decoder=ConvDecoder(4, (1, 28, 28), channels=(16, 8), hidden_dims=(32,)),
    )
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    losses = [svi.step(x) / len(x) for _ in range(60)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    with torch.no_grad():
        assert log_importance_weights(vae.model, vae.guide, x[:4], num_particles=7).shape == (7, 4)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architectures_take_extra_inputs_that_broadcast(arch):
    """``(x, u)`` with K values of ``u`` per image: features of x computed once, no mixing."""
    torch.manual_seed(0)
    encoder = ARCHITECTURES[arch].encoder((1, 8, 8), (16,), 3, extra_dims=(2,))
    decoder = ARCHITECTURES[arch].decoder((1, 8, 8), (16,), 3, params_per_dim=2, extra_dims=(2,))
    x, u, z = torch.rand(5, 64), torch.randn(7, 5, 2), torch.randn(7, 5, 3)
    loc, scale = encoder(x, u)
    assert loc.shape == scale.shape == (7, 5, 3)
    assert torch.allclose(loc[4], encoder(x, u[4])[0], atol=1e-6)
    params = decoder(z, u[0])
    assert params.shape == (7, 5, 128)
    assert torch.allclose(params[4], decoder(z[4], u[0]), atol=1e-6)


@pytest.mark.parametrize("model", [VAE, HierarchicalVAE])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_pyro_optim_updates_every_parameter(arch, model):
    """SVI with a ``pyro.optim`` optimizer (the Pyro-example way, as in the README) must
    train every parameter. Pyro's param store keeps ``.contiguous()`` copies of module
    parameters, so a parameter in another memory format (channels-last convolution
    weights, once tried for speed) would be optimized as a copy the module never uses."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = model(
        784,
        3,
        (16,),
        image_shape=(1, 28, 28),
        arch=arch,
        prior="vamp",
        prior_options={"components": 4},
    )
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(torch.bernoulli(torch.full((8, 784), 0.3)))
    frozen = [name for name, p in vae.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not frozen


def test_mlp_architecture_keeps_the_parameter_names_of_existing_checkpoints():
    state = VAE(784, 50, (400,)).state_dict()
    assert [k for k in state if k.startswith(("encoder.", "decoder."))] == [
        f"{net}.net.{i}.{p}"
        for net in ("encoder", "decoder")
        for i in (0, 2)
        for p in ("weight", "bias")
    ]
    hierarchical = HierarchicalVAE(784, 50, (400,)).state_dict()
    assert [k for k in hierarchical if k.startswith("prior_z1.")] == [
        "prior_z1.net.first.0.weight",
        "prior_z1.net.first.0.bias",
        "prior_z1.net.rest.0.weight",
        "prior_z1.net.rest.0.bias",
    ]


def test_conv_architecture_keeps_the_parameter_names_of_existing_checkpoints():
    state = VAE(784, 40, (300, 300), image_shape=(1, 28, 28), arch="conv").state_dict()
    assert [k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")] == [
        "encoder.convs.0",
        "encoder.convs.2",
        "encoder.head.net.first.0",
        "encoder.head.net.rest.0",
        "encoder.head.net.rest.2",
        "decoder.head.first.0",
        "decoder.head.rest.0",
        "decoder.head.rest.2",
        "decoder.deconvs.0",
        "decoder.deconvs.2",
    ]


def test_gated_conv_architecture_gates_every_convolution_and_hidden_layer():
    """Each convolution gives twice its channels, halves that a GLU over the channels
    multiplies; the decoder's last convolution, the parameters, stays linear."""
    torch.manual_seed(0)
    vae = VAE(784, 40, (300, 300), image_shape=(1, 28, 28), arch="gated-conv")
    convs = [m for m in vae.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [c.out_channels for c in convs] == [64, 128, 64, 1]
    glus = [m for m in vae.modules() if isinstance(m, nn.GLU)]
    assert sorted(g.dim for g in glus) == [-3] * 3 + [-1] * 5  # 3 gated convs, 5 dense
    assert not any(isinstance(m, nn.ReLU) for m in vae.modules())
    first = vae.encoder.convs[0]
    x = torch.rand(2, 1, 28, 28)
    value, gate = first(x).chunk(2, dim=1)
    assert torch.allclose(vae.encoder.convs[1](first(x)), value * torch.sigmoid(gate))
    loc, scale = vae.encoder(x.reshape(2, 784))
    assert loc.shape == scale.shape == (2, 40) and bool((scale > 0).all())
    assert vae.decoder(loc).shape == (2, 784)


def test_gated_layers_compute_a_gated_linear_unit():
    """h = (W1 u + b1) * sigmoid(W2 u + b2), by hand from the layer's weights."""
    torch.manual_seed(0)
    net, u = mlp([5, 3, 2], GATED), torch.randn(4, 5)
    weight, bias = net[0].weight, net[0].bias
    assert weight.shape == (6, 5)  # W = [W1; W2]
    h = (u @ weight[:3].T + bias[:3]) * torch.sigmoid(u @ weight[3:].T + bias[3:])
    assert torch.allclose(net(u), h @ net[2].weight.T + net[2].bias, atol=1e-6)
    # with several inputs the gate and the value both see the sum over the inputs
    multi, y = MultiInputMLP((5, 2), (3,), 2, layer=GATED), torch.randn(4, 2)
    pre = u @ multi.first[0].weight.T + y @ multi.first[1].weight.T + multi.first[0].bias
    h = pre[:, :3] * torch.sigmoid(pre[:, 3:])
    assert torch.allclose(multi(u, y), h @ multi.rest[0].weight.T + multi.rest[0].bias, atol=1e-6)


def test_gated_architecture_has_the_size_of_the_vamp_prior_papers_networks():
    """Two GatedDense(., 300) layers and linear heads each way: as many parameters as the
    paper's networks, with p(z1|z2) of the hierarchical VAE gated too."""

    def gated_dense(n_in, n_out):
        return 2 * (n_in * n_out + n_out)

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    vae = VAE(784, 40, (300, 300), arch="gated")
    assert sum(p.numel() for p in vae.encoder.parameters()) == (
        gated_dense(784, 300) + gated_dense(300, 300) + 2 * linear(300, 40)
    )
    assert sum(p.numel() for p in vae.decoder.parameters()) == (
        gated_dense(40, 300) + gated_dense(300, 300) + linear(300, 784)
    )
    hierarchical = HierarchicalVAE(784, 40, (300, 300), arch="gated")
    for net in (
        hierarchical.encoder,
        hierarchical.encoder_z1,
        hierarchical.decoder,
        hierarchical.prior_z1,
    ):
        assert sum(isinstance(m, nn.GLU) for m in net.modules()) == 2
        assert not any(isinstance(m, nn.ReLU) for m in net.modules())


@pytest.mark.parametrize("model", ["vae", "hvae"])
def test_gated_vae_and_hvae_with_vamp_prior_train_and_estimate(model, tmp_path, tiny_data):
    config = TrainConfig(
        model=model,
        arch="gated",
        latent_dim=4,
        hidden_dims=(32, 32),
        batch_size=64,
        lr=3e-3,
        epochs=3,
        device="cpu",
        prior="vamp",
        prior_options={"components": 10},
    )
    trained = train(config, tmp_path, data=tiny_data, progress=False, log=lambda line: None)
    losses = [row["train_loss"] for row in read_metrics(tmp_path)]
    assert losses[2] < losses[1] < losses[0]
    assert isinstance(trained.prior, VampPrior) and trained.prior.encoder is trained.encoder
    loaded = load_run(tmp_path)
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with torch.no_grad():
        log_w = log_importance_weights(loaded.model, loaded.guide, tiny_data.test, num_particles=5)
    assert log_w.shape == (5, 128) and bool(torch.isfinite(log_w).all())


@pytest.mark.parametrize("model", ["vae", "hvae"])
def test_gated_models_train_and_evaluate_from_the_command_line(
    model, tmp_path, learnable_fashion_dir
):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                model,
                "--arch",
                "gated",
                "--data-root",
                str(learnable_fashion_dir),
                "--subset",
                "100",
                "--epochs",
                "2",
                "--batch-size",
                "50",
                "--lr",
                "1e-2",
                "--latent-dim",
                "3",
                "--hidden-dim",
                "16",
                "16",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["arch"] == "gated"
    losses = [row["train_loss"] for row in read_metrics(out)]
    assert losses[1] < losses[0]
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(out),
                "--num-samples",
                "10",
                "--subset",
                "8",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["model"] == model and result["num_examples"] == 8
    assert result["test_log_likelihood"] >= result["test_elbo"]


def conv_config(**overrides) -> TrainConfig:
    options = dict(
        arch="conv",
        latent_dim=4,
        hidden_dims=(32,),
        batch_size=64,
        lr=3e-3,
        epochs=2,
        device="cpu",
        prior="vamp",
        prior_options={"components": 10},
    )
    options.update(overrides)
    return TrainConfig(**options)


def test_conv_vae_with_vamp_prior_trains_resumes_and_loads(tmp_path, tiny_data):
    straight = train(conv_config(), tmp_path / "a", data=tiny_data, progress=False)
    losses = [row["train_loss"] for row in read_metrics(tmp_path / "a")]
    assert losses[1] < losses[0]
    assert isinstance(straight.encoder, ConvEncoder) and isinstance(straight.decoder, ConvDecoder)
    # the VampPrior feeds its flat pseudo-inputs to the convolutional encoder
    assert isinstance(straight.prior, VampPrior) and straight.prior.encoder is straight.encoder
    assert straight.prior().loc.shape == (10, 4)

    train(conv_config(epochs=1), tmp_path / "b", data=tiny_data, progress=False)
    resumed = train(conv_config(), tmp_path / "b", data=tiny_data, resume=True, progress=False)
    loaded = load_run(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["arch"] == "conv"
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
        assert torch.equal(loaded.state_dict()[name], value), name
    with torch.no_grad():
        log_w = log_importance_weights(loaded.model, loaded.guide, tiny_data.test, num_particles=5)
    assert log_w.shape == (5, 128) and bool(torch.isfinite(log_w).all())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TrainConfig(model="cvae", arch="conv"),
            "`arch='conv'` is available for `model` vae and hvae; the cvae model's networks",
        ),
        (lambda: TrainConfig(model="completion", arch="conv"), "available for `model` vae and"),
        (
            lambda: TrainConfig(arch="resnet"),
            "unknown `arch` 'resnet'; choose one of: mlp, conv, ga",
        ),
        (
            lambda: TrainConfig(arch="conv", image_shape=(1, 30, 30)).build_vae(),
            "divisible by 4, got 30x30; use `arch='mlp'`",
        ),
        (lambda: VAE(64, 3, arch="conv"), r"needs the image shape \(channels, height, width\)"),
        (lambda: VAE(64, 3, image_shape=(1, 8, 9)), "holds 72 values, not data_dim=64"),
    ],
)
def test_architecture_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_cli_rejects_arch_for_conditional_models(tmp_path, capsys):
    assert main(["train", "--model", "cvae", "--arch", "conv", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith(
        "pyro-vae: error: --arch conv is available for --model vae and hvae"
    )
    assert not (tmp_path / "r").exists()
