"""The two-level hierarchical VAE (--model hvae): structure, objective, training, estimates."""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import make_tiny_data
from PIL import Image
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae import TrainConfig, VampPrior, load_run, read_metrics, train
from pyro_vae.cli import main
from pyro_vae.components.networks import ConvEncoder
from pyro_vae.figures.plots import FIGURES, plot_run
from pyro_vae.figures.samples import sample_run
from pyro_vae.inference.estimators import estimate_log_likelihood, log_densities
from pyro_vae.models.hierarchical import HierarchicalVAE


def tiny_config(**overrides) -> TrainConfig:
    options = dict(
        model="hvae",
        latent_dim=4,
        hidden_dims=(32,),
        batch_size=64,
        lr=3e-3,
        epochs=2,
        device="cpu",
    )
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[HierarchicalVAE, Path]:
    """An HVAE with a VampPrior on p(z2), trained for 8 epochs on the tiny data."""
    out = tmp_path_factory.mktemp("hvae") / "run"
    config = tiny_config(epochs=8, prior="vamp", prior_options={"components": 10})
    return train(config, out, data=make_tiny_data(), progress=False, log=lambda line: None), out


def traces(vae, x, beta=1.0):
    guide_trace = poutine.trace(vae.guide).get_trace(x, beta=beta)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
        x, beta=beta
    )
    return model_trace, guide_trace


def sample_sites(trace) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def test_sites_dependencies_and_beta_in_model_and_guide():
    vae = HierarchicalVAE(data_dim=12, latent_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    model_trace, guide_trace = traces(vae, x, beta=0.25)
    assert sample_sites(model_trace) == ["z2", "z1", "x"]
    assert sample_sites(guide_trace) == ["z2", "z1"]
    for trace in (model_trace, guide_trace):
        assert trace.nodes["z2"]["scale"] == trace.nodes["z1"]["scale"] == 0.25
        assert trace.nodes["z1"]["value"].shape == (5, 3)
    assert model_trace.nodes["x"]["scale"] == 1.0

    z2, z1 = (guide_trace.nodes[name]["value"] for name in ("z2", "z1"))
    # p(z1|z2) and q(z1|x, z2) are functions of the sampled z2; the decoder reads both layers
    assert torch.equal(model_trace.nodes["z1"]["fn"].base_dist.loc, vae.prior_z1(z2)[0])
    assert torch.equal(guide_trace.nodes["z1"]["fn"].base_dist.loc, vae.encoder_z1(x, z2)[0])
    assert torch.equal(model_trace.nodes["x"]["fn"].base_dist.logits, vae.decoder(z1, z2))


def test_importance_weights_sum_both_latent_layers():
    """log w = log p(x|z1,z2) + log p(z2) + log p(z1|z2) - log q(z2|x) - log q(z1|x,z2),
    for K particles at once (latents of shape (K, N, d))."""
    vae = HierarchicalVAE(
        data_dim=12, latent_dim=3, hidden_dims=(8,), prior="vamp", prior_options={"components": 4}
    )
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    with torch.no_grad():
        pyro.set_rng_seed(4)
        dens = log_densities(vae.model, vae.guide, x, num_particles=7)
        pyro.set_rng_seed(4)  # the same draws again, to recompute by hand
        with pyro.plate("particles", 7, dim=-2):
            guide_trace = poutine.trace(vae.guide).get_trace(x)
        z2, z1 = (guide_trace.nodes[name]["value"] for name in ("z2", "z1"))
        normal = lambda loc_scale: dist.Normal(*loc_scale).to_event(1)  # noqa: E731
        expected = (
            torch.distributions.Bernoulli(logits=vae.decoder(z1, z2)).log_prob(x).sum(-1)
            + vae.prior().log_prob(z2)
            + normal(vae.prior_z1(z2)).log_prob(z1)
            - normal(vae.encoder(x)).log_prob(z2)
            - normal(vae.encoder_z1(x, z2)).log_prob(z1)
        )
    assert z1.shape == (7, 5, 3) and dens.log_weights.shape == (7, 5)
    assert torch.allclose(dens.log_weights, expected, atol=1e-4)


def test_trace_elbo_scales_both_kl_terms_by_beta():
    """With the same samples, loss(beta) - loss(1) = (beta - 1) * (log q - log p) over z1, z2."""
    vae = HierarchicalVAE(data_dim=12, latent_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    losses = []
    for beta in (1.0, 3.0):
        pyro.set_rng_seed(2)
        losses.append(Trace_ELBO().loss(vae.model, vae.guide, x, beta=beta))
    pyro.set_rng_seed(2)
    model_trace, guide_trace = traces(vae, x)
    log_ratio = sum(
        (
            guide_trace.nodes[s]["fn"].log_prob(guide_trace.nodes[s]["value"])
            - model_trace.nodes[s]["fn"].log_prob(guide_trace.nodes[s]["value"])
        ).sum()
        for s in ("z2", "z1")
    )
    assert losses[1] - losses[0] == pytest.approx(2 * log_ratio.item(), rel=1e-4)


def test_training_lowers_the_loss_and_the_vamp_prior_is_over_z2(trained, tiny_data):
    vae, run = trained
    rows = read_metrics(run)
    losses = [row["train_loss"] for row in rows]
    assert losses[-1] < 0.8 * losses[0]
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"]
    # p(z2) = mean of q(z2|u_k): the VampPrior holds the top encoder, stored once
    assert isinstance(vae.prior, VampPrior) and vae.prior.encoder is vae.encoder
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert [k for k in state if k.startswith("prior.")] == ["prior.pseudo_inputs"]

    loaded = load_run(run)
    assert type(loaded) is HierarchicalVAE and loaded.prior.encoder is loaded.encoder
    log_w = []
    for model in (vae, loaded):
        torch.manual_seed(0)
        with torch.no_grad():
            log_w.append(
                log_densities(
                    model.model, model.guide, tiny_data.test[:16], num_particles=5
                ).log_weights
            )
    assert bool(torch.isfinite(log_w[0]).all())
    assert torch.equal(log_w[0], log_w[1])  # the checkpoint restores all four networks


def test_iw_estimate_is_above_the_elbo_and_grows_with_k(trained, tiny_data):
    vae, _ = trained
    means = []
    for k in (1, 10, 500):
        estimates = estimate_log_likelihood(vae.model, vae.guide, tiny_data.val, num_samples=k)
        assert bool((estimates.elbo <= estimates.log_likelihood + 1e-4).all())
        means.append(estimates.log_likelihood.mean().item())
    assert means[0] < means[1] < means[2], means
    assert estimates.latent_units == 8  # active units count z2 and z1


def test_figures_and_sample_grid_of_an_hvae_run(trained, tiny_data, tmp_path):
    vae, run = trained
    paths = plot_run(run, tmp_path / "figures", data=tiny_data)
    assert [p.stem for p in paths] == list(FIGURES)
    path = sample_run(run, tmp_path / "samples.png", num=9, data=tiny_data, device="cpu")
    assert Image.open(path).size == (3 * 8 + 4 * 2, 3 * 8 + 4 * 2)
    # reconstructions use both posterior layers and are closer to the data than prior samples
    x = tiny_data.test
    error = (vae.reconstruct(x) - x).square().mean()
    assert error < (vae.sample(len(x)) - x).square().mean()
    assert vae.decode(vae.encode(x)[0]).shape == x.shape


def test_conv_hvae_trains_from_the_command_line_then_evaluates_and_samples(
    tmp_path, fake_fashion_dir, capsys
):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "hvae",
            "--arch",
            "conv",
            "--data-root",
            str(fake_fashion_dir),
            "--subset",
            "100",
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--latent-dim",
            "3",
            "--hidden-dim",
            "16",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"], saved["arch"]) == ("hvae", "conv")
    vae = load_run(out)
    assert isinstance(vae.encoder, ConvEncoder) and isinstance(vae.encoder_z1, ConvEncoder)
    capsys.readouterr()

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
    assert result["model"] == "hvae" and result["num_examples"] == 8
    assert result["test_log_likelihood"] >= result["test_elbo"]
    assert f"/{result['latent_units']}" in capsys.readouterr().out and result["latent_units"] == 6

    assert (
        main(
            [
                "sample",
                "--run",
                str(out),
                "--out",
                str(tmp_path / "s.png"),
                "--num",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "s.png").size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
