import contextlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.components.networks import MLPEncoder
from pyro_vae.models.vae import without_param_statements


def traces(vae, x, beta=1.0):
    guide_trace = poutine.trace(vae.guide).get_trace(x, beta=beta)
    replayed = poutine.replay(vae.model, trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(x, beta=beta)
    return model_trace, guide_trace


def test_model_and_guide_sites_and_shapes():
    vae = VAE(data_dim=20, latent_dim=3, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((5, 20), 0.5))
    model_trace, guide_trace = traces(vae, x)

    z_prior = model_trace.nodes["z"]
    assert isinstance(z_prior["fn"].base_dist, dist.Normal)
    assert z_prior["fn"].event_shape == (3,) and z_prior["fn"].batch_shape == (5,)
    assert torch.equal(z_prior["fn"].base_dist.loc, torch.zeros(5, 3))
    assert torch.equal(z_prior["fn"].base_dist.scale, torch.ones(5, 3))
    assert [frame.name for frame in z_prior["cond_indep_stack"]] == ["data"]

    obs = model_trace.nodes["x"]
    assert obs["is_observed"] and torch.equal(obs["value"], x)
    assert isinstance(obs["fn"].base_dist, dist.Bernoulli)
    assert obs["fn"].event_shape == (20,) and obs["fn"].batch_shape == (5,)
    # Logits straight from the decoder: no sigmoid/log round trip.
    z = guide_trace.nodes["z"]["value"]
    assert torch.equal(obs["fn"].base_dist.logits, vae.decoder(z))

    z_guide = guide_trace.nodes["z"]
    assert z_guide["fn"].event_shape == (3,) and z_guide["value"].shape == (5, 3)
    assert bool((z_guide["fn"].base_dist.scale > 0).all())


def test_encoder_scale_is_bounded_away_from_zero():
    encoder = MLPEncoder(4, (8,), 2, min_scale=1e-3)
    with torch.no_grad():
        for p in encoder.parameters():
            p.fill_(-100.0)  # drives the raw scale to -inf
        _, scale = encoder(torch.ones(3, 4))
    assert bool((scale >= 1e-3).all())


def test_svi_quick_start_reduces_loss():
    x = torch.bernoulli(torch.full((64, 20), 0.2))
    vae = VAE(data_dim=20, latent_dim=2, hidden_dims=(16,))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(200)]
    assert sum(losses[-20:]) < 0.9 * sum(losses[:20])


def test_beta_scales_the_kl_in_model_and_guide():
    """Trace_ELBO with the same z: -loss = log p(x|z) + beta * (log p(z) - log q(z|x))."""
    vae = VAE(data_dim=12, latent_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    beta = 0.3
    pyro.set_rng_seed(7)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x, beta=beta)
    pyro.set_rng_seed(7)
    model_trace, guide_trace = traces(vae, x, beta=beta)

    z = guide_trace.nodes["z"]["value"]
    loc, scale = vae.encoder(x)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        vae.decoder(z), x, reduction="sum"
    )
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    expected = -(log_lik + beta * (log_prior - log_q))
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_beta_objective_with_closed_form_kl():
    """TraceMeanField_ELBO: -loss = log p(x|z) - beta * KL(q || N(0, I)), KL in closed form."""
    vae = VAE(data_dim=12, latent_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    beta = 4.0
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, beta=beta)
    pyro.set_rng_seed(3)
    _, guide_trace = traces(vae, x, beta=beta)

    z = guide_trace.nodes["z"]["value"]
    loc, scale = vae.encoder(x)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        vae.decoder(z), x, reduction="sum"
    )
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum()
    assert loss == pytest.approx((-(log_lik - beta * kl)).item(), rel=1e-5)
    # and beta really matters: the unscaled objective differs by (beta - 1) * KL
    pyro.set_rng_seed(3)
    loss_1 = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    assert loss - loss_1 == pytest.approx(((beta - 1) * kl).item(), rel=1e-4)


def test_decode_returns_probabilities_and_sample_shapes():
    vae = VAE(data_dim=10, latent_dim=2, hidden_dims=(8,))
    samples = vae.sample(7)
    assert samples.shape == (7, 10)
    assert bool(((samples > 0) & (samples < 1)).all())
    assert vae.reconstruct(torch.zeros(3, 10)).shape == (3, 10)


def test_two_vaes_in_one_process_do_not_share_parameters():
    """Pyro's global param store must not alias the parameters of separate instances."""
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    first = VAE(data_dim=20, latent_dim=2, hidden_dims=(8,))
    second = VAE(data_dim=20, latent_dim=2, hidden_dims=(8,))
    before = {k: v.clone() for k, v in second.state_dict().items()}
    svi_first = SVI(first.model, first.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi_second = SVI(second.model, second.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi_first.step(x)
    assert all(torch.equal(v, before[k]) for k, v in second.state_dict().items())
    first_before = {k: v.clone() for k, v in first.state_dict().items()}
    svi_second.step(x)
    assert all(torch.equal(v, first_before[k]) for k, v in first.state_dict().items())
    assert not all(torch.equal(v, before[k]) for k, v in second.state_dict().items())


def test_bernoulli_log_prob_matches_torch_in_training_and_importance_sampling_shapes():
    from pyro_vae.components.likelihoods import BernoulliLikelihood

    logits = torch.randn(7, 3, 10)  # (particles, batch, pixels)
    x = torch.bernoulli(torch.full((3, 10), 0.4))
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    likelihood = BernoulliLikelihood()
    assert torch.allclose(likelihood(logits).log_prob(x), reference, atol=1e-5)  # shared x
    same_shape = likelihood(logits).log_prob(x.expand(7, 3, 10))  # one x per sample
    assert torch.allclose(same_shape, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("prior", "options"), [("normal", None), ("vamp", {"components": 4}), ("mog", None)]
)
def test_without_param_statements_gives_the_same_loss_and_gradients(prior, options):
    vae = VAE(data_dim=20, latent_dim=3, hidden_dims=(16,), prior=prior, prior_options=options)
    x = torch.bernoulli(torch.full((6, 20), 0.5))

    def loss_and_grads(context):
        vae.zero_grad()
        pyro.clear_param_store()
        with context, poutine.trace(param_only=True) as params:
            pyro.set_rng_seed(1)
            loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
        return loss, [p.grad.clone() for p in vae.parameters()], set(params.trace.nodes)

    with_statements = loss_and_grads(contextlib.nullcontext())
    without = loss_and_grads(without_param_statements(vae))
    assert torch.equal(with_statements[0], without[0])
    assert all(torch.equal(a, b) for a, b in zip(with_statements[1], without[1], strict=True))
    assert len(with_statements[2]) == len(list(vae.parameters())) and without[2] == set()
    # outside the context the statements are back, so SVI with pyro.optim still finds them
    assert loss_and_grads(contextlib.nullcontext())[2] == with_statements[2]
