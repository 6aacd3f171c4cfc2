"""The training objectives: the default ELBO against Pyro's Trace_ELBO."""

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import table_rows, tiny_schema
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.inference.objectives import OBJECTIVES, ReparamTrace_ELBO
from pyro_vae.models.conditional import CompletionCVAE, LabelCVAE
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.training.guards import training_steps

X = torch.bernoulli(torch.full((6, 16), 0.4), generator=torch.Generator().manual_seed(3))
LABELS = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()


def _model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    if name == "completion-cvae":  # its baseline's log-likelihood is an auxiliary site
        vae = CompletionCVAE(image_shape=(1, 4, 4), latent_dim=2, hidden_dims=(8,))
        return vae, vae.batch_inputs(X, LABELS)
    return {
        "vae": lambda: (VAE(16, 3, (8,)), (X,)),
        "vamp-prior": lambda: (VAE(16, 3, (8,), prior="vamp"), (X,)),
        "hvae": lambda: (HierarchicalVAE(16, 3, (8,)), (X,)),
        "label-cvae": lambda: (LabelCVAE(16, 3, 2, (8,)), (X, LABELS)),
    }[name]()


MODELS = ["vae", "vamp-prior", "hvae", "label-cvae", "completion-cvae"]


def _loss_and_grads(loss_fn, vae, inputs, seed: int = 1):
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    with training_steps(vae):
        loss = loss_fn(vae.model, vae.guide, *inputs, beta=0.3)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters()]


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_default_elbo_equals_trace_elbo_in_value_and_gradient(name, particles):
    """Same draws (same seed): the same loss and the same gradient of every parameter,
    with the KL weight beta=0.3, vectorized particles, conditions and auxiliary sites."""
    vae, inputs = _model(name)
    options = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    ours, our_grads = _loss_and_grads(OBJECTIVES["elbo"](particles), vae, inputs)
    pyros, pyro_grads = _loss_and_grads(Trace_ELBO(**options).differentiable_loss, vae, inputs)
    assert isinstance(OBJECTIVES["elbo"](particles).__self__, ReparamTrace_ELBO)
    assert torch.allclose(ours, pyros, rtol=1e-5)
    for mine, theirs in zip(our_grads, pyro_grads, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in our_grads)


def test_svi_with_the_default_elbo_steps_as_with_trace_elbo():
    """SVI calls loss_and_grads: the same loss and the same parameters after each step
    (with Pyro's validation off, as in training, where the traces are the lean ones)."""
    stepped = []
    for elbo in (ReparamTrace_ELBO(), Trace_ELBO()):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae, (x,) = _model("vae")
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        with pyro.validation_enabled(False):
            losses = [svi.step(x) for _ in range(30)]
        stepped.append((losses, [p.detach().clone() for p in vae.parameters()]))
    (ours, our_params), (pyros, pyro_params) = stepped
    assert ours == pytest.approx(pyros, rel=1e-4)
    assert ours[-1] < ours[0]
    for mine, theirs in zip(our_params, pyro_params, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-3, atol=1e-5)


def _host_read(*args):
    raise AssertionError("a tensor was read on the host")


@contextmanager
def host_reads_forbidden() -> Iterator[None]:
    """Inside: ``.item()``, ``bool()``, ``float()`` or ``.tolist()`` of a tensor raises."""
    with pytest.MonkeyPatch.context() as patch:
        for method in ("item", "__bool__", "__float__", "tolist"):
            patch.setattr(torch.Tensor, method, _host_read)
        yield


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("objective", "particles"), [("elbo", 1), ("elbo", 3), ("iwae", 4)])
def test_the_objectives_read_nothing_on_the_host(model, objective, particles):
    """No .item(), bool() or float() of a tensor in the loss or its backward pass, also
    with the KL weight as a tensor: on a GPU each read would wait for the device, and the
    training step could not be recorded as a CUDA graph, which passes the weight as a
    tensor (pyro_vae.training.graphs). (Pyro's Trace_ELBO reads every site's log-density.)"""
    vae, inputs = _model(model)
    loss_fn = OBJECTIVES[objective](particles)
    with training_steps(vae), host_reads_forbidden():
        loss_fn(vae.model, vae.guide, *inputs, beta=torch.tensor(0.3)).backward()
        with pytest.raises(AssertionError, match="read on the host"):
            Trace_ELBO().differentiable_loss(vae.model, vae.guide, *inputs)


REGISTERED = [
    *(("prior", name) for name in PRIORS),
    *(("likelihood", name) for name in LIKELIHOODS),
]


@pytest.mark.parametrize(("kind", "name"), REGISTERED)
def test_every_registered_prior_and_likelihood_reads_nothing_on_the_host(kind, name):
    """A new prior or likelihood keeps GPU training recordable as a CUDA graph (a step
    that reads a value on the host trains eagerly, much slower there)."""
    vae = VAE(16, 3, (8,), **{kind: name}, table=tiny_schema(16))
    generator = torch.Generator().manual_seed(4)
    on_grid = torch.randint(1, 255, (6, 16), generator=generator) / 255
    rows = table_rows(tiny_schema(16), 6, generator, missing=0.2)
    x = next(data for data in (X, on_grid, rows) if vae.likelihood.in_domain(data))
    with training_steps(vae), host_reads_forbidden():
        OBJECTIVES["elbo"](1)(vae.model, vae.guide, x, beta=torch.tensor(0.3)).backward()


def test_discrete_guide_sites_get_trace_elbos_score_function_gradient():
    """A guide site without rsample: the gradient is Trace_ELBO's (score-function terms
    included), the value the ELBO's."""
    logit = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    data = torch.tensor([1.0, 2.0, 0.5])

    def model(y):
        with pyro.plate("data", 3):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("y", dist.Normal(3 * c, 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(logits=logit))

    def grad_and_loss(loss_fn):
        logit.grad = None
        pyro.set_rng_seed(5)
        with pyro.validation_enabled(False):
            loss = loss_fn(model, guide, data)
        loss.backward()
        return logit.grad.clone(), loss.detach()

    ours = grad_and_loss(ReparamTrace_ELBO(num_particles=4).differentiable_loss)
    pyros = grad_and_loss(Trace_ELBO(num_particles=4).differentiable_loss)
    assert torch.allclose(ours[0], pyros[0]) and bool(ours[0].abs().sum() > 0)
    assert torch.allclose(ours[1], pyros[1])
