"""Every registered prior is a normalized density whose samples follow its log_prob."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE, ConfigError
from pyro_vae.components.networks import MLPEncoder
from pyro_vae.components.priors import PRIORS, NormalMixture, VampPrior, build_prior

#: Small settings so that each prior is quick, and non-trivial once perturbed.
OPTIONS = {"mog": {"components": 3}, "vamp": {"components": 4}}


def make_prior(name: str, latent_dim: int, seed: int = 0):
    """The prior ``name`` with its parameters (and the encoder's) moved off their initial values."""
    torch.manual_seed(seed)
    encoder = MLPEncoder(3, (8,), latent_dim)
    prior = build_prior(
        name, latent_dim=latent_dim, data_dim=3, encoder=encoder, options=OPTIONS.get(name)
    )
    with torch.no_grad():
        for p in [*prior.parameters(), *encoder.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    return prior, encoder


def grid(half_width: float = 16.0, n: int = 801):
    """Cell centres of an n x n grid over [-w, w]^2, and the cell width."""
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
    return axis, torch.stack([z1, z2], dim=-1), float(axis[1] - axis[0])


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_is_a_normalized_density_matching_its_samples(name):
    """In 2-D: the density sums to 1 on a grid; sample statistics and marginals match it."""
    prior, _ = make_prior(name, latent_dim=2)
    with torch.no_grad():
        p = prior()
        assert p.event_shape == (2,) and p.batch_shape == ()
        axis, points, width = grid()
        mass = p.log_prob(points.float()).double().exp() * width**2  # (n, n)
        assert float(mass.sum()) == pytest.approx(1.0, abs=2e-3)

        samples = p.sample((20_000,)).double()
        assert samples.shape == (20_000, 2)
        # Bounded statistics (the flow's tails are heavy): standard errors below 1/sqrt(n) = 0.007.
        center = samples.median(0).values

        def statistics(z):
            t = torch.tanh(z - center)
            return torch.stack([t[..., 0], t[..., 1], t[..., 0] * t[..., 1]], dim=-1)

        expected = (statistics(points) * mass[..., None]).sum((0, 1))
        assert torch.allclose(statistics(samples).mean(0), expected, atol=0.03)

        # Kolmogorov-Smirnov distance of each marginal, at the grid's cell edges
        edges = axis + width / 2
        for dim, marginal in enumerate((mass.sum(1), mass.sum(0))):
            cdf = marginal.cumsum(0) / marginal.sum()
            empirical = (samples[:, dim, None] <= edges).double().mean(0)
            assert float((empirical - cdf).abs().max()) < 0.02  # 99% critical value: 0.0115


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_integrates_to_one_in_more_dimensions(name):
    r"""In 4-D, by importance sampling: :math:`E_{q}[p(z)/q(z)] = 1` for a broad :math:`q`.

    :math:`q` is a Gaussian twice as wide as the prior's own samples.
    """
    prior, _ = make_prior(name, latent_dim=4, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        p = prior()
        own = p.sample((10_000,))
        proposal = torch.distributions.Normal(own.mean(0), 2 * own.std(0))
        z = proposal.sample((200_000,))
        ratio = (p.log_prob(z) - proposal.log_prob(z).sum(-1)).double().exp()
    estimate, stderr = float(ratio.mean()), float(ratio.std() / math.sqrt(ratio.numel()))
    assert stderr < 0.01
    assert estimate == pytest.approx(1.0, abs=4 * stderr)


@pytest.mark.parametrize("name", list(PRIORS))
def test_gradients_reach_the_prior_parameters(name):
    prior, encoder = make_prior(name, latent_dim=3)
    params = dict(prior.named_parameters())
    if name == "normal":
        assert not params  # nothing to learn
        return
    (-prior().log_prob(torch.randn(16, 3)).sum()).backward()
    for param_name, param in params.items():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), param_name
    if name == "vamp":  # the shared encoder is trained through the prior too
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_normal_mixture_matches_torch_reference_in_every_batch_layout():
    torch.manual_seed(0)
    logits, loc = torch.randn(5), 2 * torch.randn(5, 3)
    scale = torch.rand(5, 3) * 0.5 + 0.01  # includes small scales, where cancellation would bite
    ours = NormalMixture(logits, loc, scale)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1),
    )
    near_a_component = loc[2] + 0.01 * torch.randn(7, 6, 3)
    for z in (torch.randn(3), 3 * torch.randn(4, 3), near_a_component):
        expected = reference.log_prob(z)
        assert ours.log_prob(z).shape == expected.shape
        assert torch.allclose(ours.log_prob(z), expected, rtol=1e-5, atol=1e-4)
    # inside plates, as the model and the IW evaluator use it
    expanded = ours.expand((7, 6))
    assert expanded.batch_shape == (7, 6)
    assert torch.allclose(
        expanded.log_prob(near_a_component),
        reference.log_prob(near_a_component),
        rtol=1e-5,
        atol=1e-4,
    )
    assert torch.allclose(ours.mean, reference.mean, atol=1e-6)
    assert torch.allclose(ours.variance, reference.variance, atol=1e-5)


def test_vamp_prior_shares_the_encoder_and_trains_it_once_with_svi():
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    vae = VAE(
        data_dim=20, latent_dim=4, hidden_dims=(16,), prior="vamp", prior_options={"components": 8}
    )
    assert isinstance(vae.prior, VampPrior) and vae.prior.encoder is vae.encoder
    assert vae.prior.pseudo_inputs.shape == (8, 20)
    # one copy of the encoder in the checkpoint and in Pyro's parameter store
    assert [k for k in vae.state_dict() if k.startswith("prior.")] == ["prior.pseudo_inputs"]
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    lr = 1e-2
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    svi.step(x)
    prefix = f"{vae._pyro_name}."
    assert sorted(pyro.get_param_store().keys()) == sorted(
        [f"{prefix}encoder$$${k}" for k, _ in vae.encoder.named_parameters()]
        + [f"{prefix}decoder$$${k}" for k, _ in vae.decoder.named_parameters()]
        + [f"{prefix}prior.pseudo_inputs"]
    )
    # Adam's first step moves each entry by at most lr; a doubly registered encoder would move 2 lr.
    for name, p in vae.named_parameters():
        change = (p.detach() - before[name]).abs().max()
        assert lr * 0.9 < change <= lr * 1.001, name


def test_build_prior_rejects_unknown_names_and_options():
    encoder = MLPEncoder(3, (8,), 2)
    with pytest.raises(ConfigError, match="unknown `prior` 'cauchy'; choose one of: normal, "):
        build_prior("cauchy", latent_dim=2, data_dim=3, encoder=encoder)
    with pytest.raises(
        ConfigError,
        match=r"takes no option 'layers' \(`prior_options\[layers\]`\); "
        "it applies to: flow",
    ):
        build_prior("mog", latent_dim=2, data_dim=3, encoder=encoder, options={"layers": 2})
    with pytest.raises(ConfigError, match="at least 1 component"):
        build_prior("mog", latent_dim=2, data_dim=3, encoder=encoder, options={"components": 0})
