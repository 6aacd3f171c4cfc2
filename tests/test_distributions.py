"""pyro_vae.components.distributions: the densities of ``.to_event``, without the copy in plates."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import tiny_schema
from pyro import poutine

from pyro_vae import VAE
from pyro_vae.components.distributions import Independent, diagonal_normal, unit_normal
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


def test_the_density_of_a_draw_comes_from_its_noise_with_the_same_gradient():
    loc = torch.randn(5, 3, requires_grad=True)
    scale = (torch.rand(5, 3) + 0.1).requires_grad_()
    theirs = dist.Normal(loc, scale).to_event(1).expand((4, 5))
    ours = diagonal_normal(loc, scale).expand((4, 5))
    torch.manual_seed(1)
    z = ours.rsample((2,))
    torch.manual_seed(1)
    assert torch.equal(z, theirs.rsample((2,)))  # torch's draw
    ours_log_q, their_log_q = ours.log_prob(z), theirs.log_prob(z)
    torch.testing.assert_close(ours_log_q, their_log_q, rtol=1e-6, atol=1e-5)
    # the reparameterized gradient: d/dloc is 0, d/dscale is -1/scale per draw
    d_loc, d_scale = torch.autograd.grad(ours_log_q.sum(), (loc, scale), allow_unused=True)
    their_d_loc, their_d_scale = torch.autograd.grad(their_log_q.sum(), (loc, scale))
    assert d_loc is None  # exactly 0: the draw's standardized value does not depend on loc
    torch.testing.assert_close(their_d_loc, torch.zeros(5, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(d_scale, -8 / scale.detach())  # 8 draws of each coordinate
    torch.testing.assert_close(their_d_scale, d_scale, rtol=1e-4, atol=1e-4)
    # a value it did not draw, or its draw changed in place: torch's formula
    other = z.detach().clone()
    assert torch.equal(ours.log_prob(other), theirs.log_prob(other))
    drawn = ours.rsample()
    with torch.no_grad():
        drawn.add_(1.0)
    assert torch.equal(ours.log_prob(drawn), theirs.log_prob(drawn))
    with torch.inference_mode():  # no version counters: torch's formula
        drawn = ours.rsample()
        assert torch.equal(ours.log_prob(drawn), theirs.log_prob(drawn))


def test_the_unit_normal_density_is_torchs_bit_for_bit():
    ours = unit_normal(torch.zeros(3), torch.ones(3)).expand((4, 5))
    theirs = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1).expand((4, 5))
    x = torch.randn(2, 4, 5, 3) * 3
    x[0, 0, 0] = torch.tensor([0.0, -0.0, 1e-30])
    assert torch.equal(ours.log_prob(x), theirs.log_prob(x))
    z = ours.rsample()
    assert torch.equal(ours.log_prob(z), theirs.log_prob(z))


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
