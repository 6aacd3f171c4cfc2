"""pyro_vae.components.distributions: the densities of ``.to_event``, without the copy in plates."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import tiny_schema
from pyro import poutine

from pyro_vae import VAE
from pyro_vae.components.distributions import Independent, diagonal_normal
from pyro_vae.components.likelihoods import LIKELIHOODS, build_likelihood


def test_diagonal_normal_is_normal_to_event():
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    x = torch.randn(5, 3)
    ours, theirs = diagonal_normal(loc, scale), dist.Normal(loc, scale).to_event(1)
    assert (ours.batch_shape, ours.event_shape) == (theirs.batch_shape, theirs.event_shape)
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))


def test_expand_to_own_shape_is_the_distribution_itself():
    normal = diagonal_normal(torch.zeros(5, 3), torch.ones(5, 3))
    assert normal.expand((5,)) is normal
    assert normal.expand(torch.Size([5])) is normal


def test_a_real_expansion_gives_torchs_values_bit_for_bit():
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    expanded = diagonal_normal(loc, scale).expand((4, 5))
    theirs = dist.Normal(loc, scale).to_event(1).expand((4, 5))
    assert isinstance(expanded, Independent)
    assert expanded.batch_shape == (4, 5) and expanded.event_shape == (3,)
    assert expanded.base_dist.unexpanded == (loc, scale)  # what the log-density reads
    torch.manual_seed(0)
    ours_drawn = expanded.rsample((2,))
    torch.manual_seed(0)
    assert torch.equal(ours_drawn, theirs.rsample((2,)))
    assert ours_drawn.shape == (2, 4, 5, 3)
    x = torch.randn(4, 5, 3)
    assert torch.equal(expanded.log_prob(x), theirs.log_prob(x))
    prior = diagonal_normal(torch.zeros(3), torch.ones(3))  # batch shape (): to the batch
    assert prior.expand((5,)).batch_shape == (5,)
    assert prior.expand((5,)).sample().shape == (5, 3)


def test_a_site_in_a_plate_keeps_the_distribution_object():
    """Pyro's plate broadcasting expands every site's distribution; ours is kept as it is,
    while a particle plate around it still expands it for real."""
    normal = diagonal_normal(torch.zeros(5, 3), torch.ones(5, 3))

    def guide():
        with pyro.plate("data", 5):
            pyro.sample("z", normal)

    assert poutine.trace(guide).get_trace().nodes["z"]["fn"] is normal

    def particles():
        with pyro.plate("particles", 4, dim=-2):
            guide()

    site = poutine.trace(particles).get_trace().nodes["z"]
    assert site["fn"].batch_shape == (4, 5) and site["value"].shape == (4, 5, 3)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_every_likelihood_expands_to_itself(name):
    """Each built-in likelihood's distribution takes the shortcut; a real expand still works."""
    likelihood = build_likelihood(name, data_dim=6, table=tiny_schema(6))
    params = torch.randn(5, 6 * likelihood.params_per_dim)
    fn = likelihood(params)
    assert fn.expand((5,)) is fn
    assert fn.expand((3, 5)).batch_shape == (3, 5)


def test_vae_trace_sites():
    vae = VAE(data_dim=6, latent_dim=2, hidden_dims=(4,))
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert isinstance(guide_trace.nodes["z"]["fn"], Independent)
    assert isinstance(model_trace.nodes["x"]["fn"], Independent)
    assert model_trace.nodes["z"]["fn"].batch_shape == (5,)  # the prior, expanded to the batch
