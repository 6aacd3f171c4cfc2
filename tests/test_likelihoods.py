"""Each likelihood's log_prob against its textbook formula, its mean, and its data domain."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import table_rows, tiny_schema

from pyro_vae import ConfigError, TrainConfig, load_images, train
from pyro_vae.components.likelihoods import (
    LIKELIHOODS,
    DiscretizedLogistic,
    bits_per_dim,
    build_likelihood,
)
from pyro_vae.inference.estimators import estimate_log_likelihood

D = 6
#: The table that builds the likelihood of tables (the others ignore it).
SCHEMA = tiny_schema(D)
GRID = torch.arange(256, dtype=torch.float64) / 255


def data_for(name: str, generator: torch.Generator) -> torch.Tensor:
    """(4, D) data in each likelihood's domain: strictly inside (0, 1), and on the 8-bit grid."""
    x = torch.randint(1, 255, (4, D), generator=generator).double() / 255
    if name in ("bernoulli", "autoregressive-bernoulli"):
        return x.round()
    if name in COUNTS:
        return torch.randint(0, 12, (4, D), generator=generator).double()
    if name == "mixed":
        return table_rows(SCHEMA, 4, generator).double()
    return x


def bernoulli(params, x, lik):
    p = torch.sigmoid(params)
    return x * p.log() + (1 - x) * (1 - p).log()


def continuous_bernoulli(params, x, lik):
    lam = torch.sigmoid(params)
    half = lam == 0.5  # C(1/2) = 2, the limit
    lam_safe = torch.where(half, torch.full_like(lam, 0.25), lam)
    log_norm = torch.log(2 * torch.atanh(1 - 2 * lam_safe) / (1 - 2 * lam_safe))
    log_norm = torch.where(half, torch.full_like(lam, math.log(2)), log_norm)
    return log_norm + x * lam.log() + (1 - x) * (1 - lam).log()


def gaussian(params, x, lik):
    s = lik.scale().double()
    return -0.5 * ((x - params) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)


def laplace(params, x, lik):
    b = lik.scale().double()
    return -(x - params).abs() / b - torch.log(2 * b)


def beta(params, x, lik):
    a, b = (F.softplus(p) + lik.min_concentration for p in params.chunk(2, -1))
    log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (a - 1) * x.log() + (b - 1) * (1 - x).log() - log_beta_fn


def discretized_logistic(params, x, lik):
    loc, raw = params.chunk(2, -1)
    s = F.softplus(raw) + lik.min_scale
    a, b = (x + 0.5 / 255 - loc) / s, (x - 0.5 / 255 - loc) / s
    a = torch.where(x >= 1, torch.full_like(x, math.inf), a)
    b = torch.where(x <= 0, torch.full_like(x, -math.inf), b)
    # F(a) - F(b), or (1 - F(b)) - (1 - F(a)) right of the mean, where float64 keeps its digits
    mass = torch.where(
        x > loc, torch.sigmoid(-b) - torch.sigmoid(-a), torch.sigmoid(a) - torch.sigmoid(b)
    )
    return torch.log(mass)


def autoregressive_bernoulli(params, x, lik):
    """Bernoulli with logits c_i + S_i x + v_i relu(W x + b), every product masked to x_{<i}:
    hidden unit k (of H) sees x_j for j < m_k, m = round(linspace(1, D - 1, H))."""
    net = lik.net
    (w, b), v, s = (net.inputs.weight, net.inputs.bias), net.output.weight, net.skip.weight
    m = torch.linspace(1, D - 1, w.shape[0]).round()
    j = torch.arange(D)
    sees = j < m[:, None]  # (H, D)
    used_by = m[None, :] <= j[:, None]  # (D, H): unit k feeds logit i if it sees only x_{<i}
    h = torch.relu(x @ (w * sees).double().T + b.double())
    logits = params + x @ (s * (j[None, :] < j[:, None])).double().T + h @ (v * used_by).double().T
    return bernoulli(logits, x, lik)


def _count_mean(raw, lik):
    return F.softplus(raw) + lik.min_mean


def poisson(params, x, lik):
    mu = _count_mean(params, lik)
    return x * mu.log() - mu - torch.lgamma(x + 1)


def negative_binomial(params, x, lik):
    """Gamma(x + theta) / (x! Gamma(theta)) (theta / (theta + mu))^theta (mu / (theta + mu))^x."""
    mu, theta = _count_mean(params, lik), lik.dispersion().double()
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(x + 1)
        - torch.lgamma(theta)
        + theta * torch.log(theta / (theta + mu))
        + x * torch.log(mu / (theta + mu))
    )


def zinb(params, x, lik):
    raw_mean, gate_logits = params.chunk(2, -1)
    gate, nb = torch.sigmoid(gate_logits), negative_binomial(raw_mean, x, lik)
    return torch.where(x == 0, torch.log(gate + (1 - gate) * nb.exp()), torch.log1p(-gate) + nb)


def mixed(params, x, lik):
    """Per column of :data:`SCHEMA` (categorical over values 0-2 at position 0, binary at
    3, count at 4, continuous at 5), placed at the column's first position."""
    log_p = torch.zeros_like(params + x)
    log_p[..., 0] = (x[..., :3] * torch.log_softmax(params[..., :3], -1)).sum(-1)
    log_p[..., 3] = bernoulli(params[..., 3], x[..., 3], lik)
    theta = (F.softplus(lik.raw_dispersion) + lik.min_dispersion).double()
    mu = lik.count_scale.double() * F.softplus(params[..., 4]) + lik.min_mean
    log_p[..., 4] = (
        torch.lgamma(x[..., 4] + theta)
        - torch.lgamma(x[..., 4] + 1)
        - torch.lgamma(theta)
        + theta * torch.log(theta / (theta + mu))
        + x[..., 4] * torch.log(mu / (theta + mu))
    )
    s = (F.softplus(lik.raw_scale) + lik.min_scale).double()
    log_p[..., 5] = (
        -0.5 * ((x[..., 5] - params[..., 5]) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)
    )
    return log_p


#: The likelihoods of counts, whose test data are counts.
COUNTS = ("poisson", "negative-binomial", "zinb")
#: Per-dimension log-densities written from the definitions, in float64.
REFERENCES = {
    "bernoulli": bernoulli,
    "continuous-bernoulli": continuous_bernoulli,
    "gaussian": gaussian,
    "laplace": laplace,
    "beta": beta,
    "discretized-logistic": discretized_logistic,
    "autoregressive-bernoulli": autoregressive_bernoulli,
    "poisson": poisson,
    "negative-binomial": negative_binomial,
    "zinb": zinb,
    "mixed": mixed,
}


def test_every_registered_likelihood_has_a_reference():
    assert set(REFERENCES) == set(LIKELIHOODS)


@pytest.mark.parametrize(
    ("name", "options"),
    [(name, None) for name in REFERENCES]
    + [("gaussian", {"scale": "global"}), ("gaussian", {"scale": 0.3}), ("laplace", {"scale": 2})],
)
def test_log_prob_matches_the_formula(name, options):
    generator = torch.Generator().manual_seed(0)
    lik = build_likelihood(name, data_dim=D, options=options, table=SCHEMA)
    with torch.no_grad():
        for p in lik.parameters():  # learned scales away from their initial value
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    params = 2 * torch.randn(4, lik.params_per_dim * D, generator=generator)
    x = data_for(name, generator)
    lik.validate(x)
    log_prob = lik(params).log_prob(x.float())
    assert log_prob.shape == (4,)  # one value per example: the event is the data vector
    expected = REFERENCES[name](params.double(), x, lik).sum(-1)
    assert torch.allclose(log_prob.double(), expected, rtol=1e-5, atol=1e-4)
    # with a leading particle dimension and shared data, as in importance sampling
    particles = torch.stack([params, params.flip(0), torch.zeros_like(params)])
    expected = REFERENCES[name](particles.double(), x, lik).sum(-1)
    log_prob = lik(particles).log_prob(x.float())
    assert log_prob.shape == (3, 4)
    assert torch.allclose(log_prob.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "name",
    ["continuous-bernoulli", "gaussian", "laplace", "beta", "discretized-logistic", "bernoulli"]
    + list(COUNTS)
    + ["mixed"],
)
def test_mean_is_the_mean_of_the_samples(name):
    torch.manual_seed(0)
    options = {"squeeze": 0.05} if name == "beta" else None
    lik = build_likelihood(name, data_dim=D, options=options, table=SCHEMA)
    params = torch.randn(1, lik.params_per_dim * D)
    with torch.no_grad():
        samples = lik(params).sample((40_000,))
        mean = lik.mean(params)
    assert samples.shape == (40_000, 1, D) and mean.shape == (1, D)
    # within 4.5 standard errors (counts have variances of several units)
    stderr = samples.std(0) / math.sqrt(40_000)
    assert bool(((samples.mean(0) - mean).abs() <= 4.5 * stderr + 1e-3).all())


def test_discretized_logistic_is_a_normalized_probability_and_stable():
    loc = torch.tensor([[-3.0], [0.0], [0.5], [0.999], [4.0]])
    scale = torch.tensor([[0.5], [1e-3], [0.05], [1e-3], [1e-4]])
    log_p = DiscretizedLogistic(loc, scale).log_prob(GRID.float())  # (5, 256)
    assert bool(torch.isfinite(log_p).all())
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(5), atol=1e-5)
    # far from the mean a CDF difference underflows in float32; the log-space form does not
    tiny = DiscretizedLogistic(torch.tensor(0.9), torch.tensor(0.005)).log_prob(torch.tensor(0.2))
    reference = -(0.9 - 0.2) / 0.005 + math.log(2 * math.sinh(0.5 / 255 / 0.005))  # about -140
    assert float(tiny) == pytest.approx(reference, rel=1e-4)


def test_beta_squeeze_is_a_density_with_its_jacobian():
    """With squeeze eps, p(x) integrates to 1 over [-eps, 1 + eps] / (1 - 2 eps)."""
    eps = 0.05
    lik = build_likelihood("beta", data_dim=1, options={"squeeze": eps})
    params = torch.tensor([[1.5, 2.0]])  # a, b > 1: a bounded density, easy to integrate
    lo, hi = -eps / (1 - 2 * eps), (1 - eps) / (1 - 2 * eps)
    x = torch.linspace(lo, hi, 200_001)[1:-1, None, None]
    density = lik(params).log_prob(x).exp().squeeze()
    assert float(torch.trapezoid(density, x.squeeze())) == pytest.approx(1.0, abs=2e-3)
    y = eps + (1 - 2 * eps) * torch.tensor([[0.0]])
    plain = build_likelihood("beta", data_dim=1)(params).log_prob(y)
    assert torch.allclose(
        lik(params).log_prob(torch.tensor([[0.0]])), plain + math.log(1 - 2 * eps)
    )


@pytest.mark.parametrize(
    ("name", "options", "data", "message"),
    [
        (
            "bernoulli",
            None,
            torch.tensor([[0.0, 128.0, 255.0]]),
            r"BernoulliLikelihood expects values in \[0, 1\].*\[0, 255\]"
            r".*divide 8-bit pixels by 255",
        ),
        ("continuous-bernoulli", None, torch.tensor([[-0.1, 0.5]]), "expects values in"),
        (
            "beta",
            None,
            torch.tensor([[0.0, 0.5]]),
            r"strictly inside \(0, 1\).*`likelihood_options\[squeeze\]=EPS`",
        ),
        ("beta", {"squeeze": 1e-3}, torch.tensor([[0.5, 1.2]]), r"expects values in \[0, 1\]"),
        (
            "discretized-logistic",
            None,
            torch.tensor([[0.5, 0.25]]),
            "8-bit grey levels k/255.*round",
        ),
        ("discretized-logistic", None, torch.tensor([[0.0, 255.0]]), "8-bit grey levels"),
        ("gaussian", None, torch.tensor([[0.0, float("nan")]]), "NaN or infinite"),
        (
            "poisson",
            None,
            torch.tensor([[0.0, 0.25, 3.0]]),
            r"PoissonLikelihood expects non-negative integer counts.*\[0, 3\].*raw counts",
        ),
        ("negative-binomial", None, torch.tensor([[-1.0, 2.0]]), "non-negative integer counts"),
        ("zinb", None, torch.tensor([[0.0, 2.5]]), "non-negative integer counts"),
    ],
)
def test_data_outside_the_domain_is_rejected(name, options, data, message):
    with pytest.raises(ConfigError, match=message):
        build_likelihood(name, data_dim=data.shape[1], options=options).validate(data)


@pytest.mark.parametrize(
    "name", ["continuous-bernoulli", "gaussian", "laplace", "discretized-logistic"]
)
def test_binarized_data_is_in_these_domains(name):
    build_likelihood(name, data_dim=3).validate(torch.tensor([[0.0, 1.0, 1.0]]))


def test_scale_options():
    per_pixel = build_likelihood("gaussian", data_dim=D)
    assert dict(per_pixel.named_parameters())["raw_scale"].shape == (D,)
    assert torch.allclose(per_pixel.scale(), torch.full((D,), 0.1))
    assert dict(
        build_likelihood("laplace", data_dim=D, options={"scale": "global"}).named_parameters()
    )["raw_scale"].shape == (1,)
    fixed = build_likelihood("gaussian", data_dim=D, options={"scale": "0.5"})
    assert not list(fixed.parameters()) and float(fixed.scale()) == 0.5
    for bad in ("wide", -1.0, "nan"):
        with pytest.raises(ConfigError, match="per-pixel or global .* or a positive number"):
            build_likelihood("gaussian", data_dim=D, options={"scale": bad})
    with pytest.raises(
        ConfigError,
        match=r"takes no option 'scale' \(`likelihood_options\[scale\]`\); "
        "it applies to: gaussian, laplace",
    ):
        build_likelihood("bernoulli", data_dim=D, options={"scale": 0.1})


@pytest.mark.parametrize("name", COUNTS)
def test_count_likelihoods_are_normalized_over_the_counts(name):
    """sum over x = 0, 1, 2, ... of p(x|z) is 1, each dimension with its own mean (and
    dispersion and gate): the probabilities of every count, not a density."""
    lik = build_likelihood(name, data_dim=3)
    with torch.no_grad():
        for p in lik.parameters():  # dispersions away from their start, one per dimension
            p.copy_(torch.tensor([-1.0, 0.5, 3.0]))
    params = torch.tensor([[-2.0, 1.0, 2.5] * lik.params_per_dim])
    counts = torch.arange(400.0)[:, None, None].expand(400, 1, 3)
    base = lik(params).base_dist
    total = base.log_prob(counts).double().exp().sum(0)  # per dimension
    assert torch.allclose(total, torch.ones(1, 3, dtype=torch.float64), atol=1e-5)


def test_negative_binomial_is_over_dispersed_and_the_poisson_is_its_limit():
    lik = build_likelihood("negative-binomial", data_dim=1)
    params = torch.tensor([[1.5]])
    mu = float(_count_mean(params, lik))
    with torch.no_grad():
        draws = lik(params).sample((200_000,)).squeeze()
    theta = float(lik.dispersion().detach())
    assert float(draws.var()) == pytest.approx(mu + mu**2 / theta, rel=0.03)
    x = torch.arange(10.0)[:, None]
    poisson_log_prob = build_likelihood("poisson", data_dim=1)(params).log_prob(x)
    assert (lik(params).log_prob(x) - poisson_log_prob).abs().max() > 0.3  # theta = 1
    with torch.no_grad():
        lik.raw_dispersion.fill_(1e4)  # theta -> infinity: (x - mu)^2 / (2 theta) -> 0
    assert torch.allclose(lik(params).log_prob(x), poisson_log_prob, atol=1e-2)


def test_bits_per_dim():
    assert bits_per_dim(-784 * 3 * math.log(2), 784) == pytest.approx(3.0)
    assert torch.allclose(
        bits_per_dim(torch.tensor([0.0, -math.log(2)]), 1), torch.tensor([0.0, 1.0])
    )


def test_the_negative_binomial_beats_the_poisson_on_over_dispersed_counts(tmp_path):
    """Counts with variance mu + mu^2 / 1.5 (means 1-8): trained the same way, the model
    with a learned dispersion scores the held-out rows higher, by more than the standard
    error of the per-row differences."""
    rng = np.random.default_rng(0)
    mean = np.exp(rng.normal(1.2, 0.6, (1, 1, 12)))
    counts = rng.negative_binomial(1.5, 1.5 / (1.5 + mean), size=(900, 1, 12))
    np.savez(
        tmp_path / "counts.npz",
        train=counts[:700].astype(np.float32),
        test=counts[700:].astype(np.float32),
    )
    data = load_images(str(tmp_path / "counts.npz"), binarize=False)
    scores = {}
    for likelihood in ("poisson", "negative-binomial"):
        config = TrainConfig(
            dataset=str(tmp_path / "counts.npz"),
            binarize="none",
            likelihood=likelihood,
            latent_dim=2,
            hidden_dims=(16,),
            epochs=10,
            batch_size=50,
            lr=1e-2,
            device="cpu",
        )
        vae = train(config, tmp_path / likelihood, data=data, progress=False, log=lambda _: None)
        estimates = estimate_log_likelihood(vae.model, vae.guide, data.test, num_samples=200)
        scores[likelihood] = estimates.log_likelihood
    difference = scores["negative-binomial"] - scores["poisson"]
    assert difference.mean() > 3 * difference.std() / math.sqrt(difference.numel())


@pytest.mark.parametrize("pixels", [784, 49, 1])
def test_the_bernoulli_log_likelihood_of_many_samples_is_as_accurate_as_softplus(pixels):
    """Without gradients, samples sharing an image take the sigmoid-and-products form;
    against float64 it errs about as much as torch's softplus form, large logits included."""
    generator = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(2000, 3, pixels, generator=generator) - 1
    logits[0, 0, :2] = torch.tensor([90.0, -90.0])[:pixels]
    x = (torch.rand(3, pixels, generator=generator) < 0.4).float()
    x[2] = torch.rand(pixels, generator=generator)  # grey levels: the cross-entropy
    exact = torch.einsum("kbd,bd->kb", logits.double(), x.double())
    exact = exact - F.softplus(logits.double()).sum(-1)
    bernoulli = build_likelihood("bernoulli", data_dim=pixels)
    fast = bernoulli(logits).log_prob(x)
    differentiable = bernoulli(logits.requires_grad_()).log_prob(x).detach()
    assert fast.shape == (2000, 3)
    fast_error = (fast.double() - exact).abs().max()
    assert fast_error <= 2 * (differentiable.double() - exact).abs().max() + 1e-5
    assert fast_error < 1e-3
