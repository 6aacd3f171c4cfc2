import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE
from pyro_vae.evaluation import log_importance_weights
from pyro_vae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder


@pytest.mark.parametrize("batch_shape", [(5,), (3, 5)])
def test_networks_keep_leading_batch_dimensions(batch_shape):
    x = torch.rand(*batch_shape, 784)
    z = torch.randn(*batch_shape, 6)
    for encoder in (MLPEncoder(784, (32,), 6), ConvEncoder((1, 28, 28), 6)):
        loc, scale = encoder(x)
        assert loc.shape == scale.shape == (*batch_shape, 6) and bool((scale > 0).all())
    assert MLPDecoder(6, (32,), 784)(z).shape == (*batch_shape, 784)
    assert ConvDecoder(6, (1, 28, 28))(z).shape == (*batch_shape, 784)
    assert ConvDecoder(6, (1, 28, 28), params_per_dim=2)(z).shape == (*batch_shape, 2 * 784)


def test_conv_encoder_matches_per_example_computation():
    """Folding particle and batch dims into one conv batch must not mix examples."""
    encoder = ConvEncoder((1, 28, 28), 4)
    x = torch.rand(3, 2, 784)
    loc, _ = encoder(x)
    assert torch.allclose(loc[1, 0], encoder(x[1, 0:1])[0][0], atol=1e-6)


def test_decoder_rejects_image_sizes_it_cannot_produce():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvDecoder(4, (1, 30, 30))


def test_conv_vae_trains_and_evaluates():
    pyro.set_rng_seed(0)
    prototypes = (torch.rand(3, 784) > 0.5).float()
    x = torch.bernoulli(0.9 * prototypes[torch.arange(96) % 3] + 0.05)
    vae = VAE(784, 4, encoder=ConvEncoder((1, 28, 28), 4, channels=(8, 16), hidden_dim=32),
              decoder=ConvDecoder(4, (1, 28, 28), channels=(16, 8), hidden_dim=32))  # fmt: skip
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    losses = [svi.step(x) / len(x) for _ in range(60)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    with torch.no_grad():
        assert log_importance_weights(vae.model, vae.guide, x[:4], num_particles=7).shape == (7, 4)
