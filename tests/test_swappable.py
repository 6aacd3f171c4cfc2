"""Priors and likelihoods swap through one config field / CLI option, end to end."""

import json
import math

import pytest
import torch
from conftest import same_seed_log_weights

from pyro_vae import VAE, ConfigError, TrainConfig, load_run, read_metrics, train
from pyro_vae.cli import main
from pyro_vae.components.likelihoods import GaussianLikelihood
from pyro_vae.components.priors import PRIORS, MixturePrior
from pyro_vae.core.registry import declared_options
from pyro_vae.inference.estimators import log_importance_weights
from pyro_vae.inference.objectives import OBJECTIVES


def tiny_config(**overrides) -> TrainConfig:
    options = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, lr=3e-3, epochs=2, device="cpu")
    options.update(overrides)
    return TrainConfig(**options)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
@pytest.mark.parametrize("prior", list(PRIORS))
def test_every_prior_trains_evaluates_and_samples(tmp_path, tiny_data, prior, likelihood):
    takes_components = "components" in declared_options(PRIORS[prior])
    components = {"prior_options": {"components": 20}} if takes_components else {}
    config = tiny_config(prior=prior, likelihood=likelihood, **components)
    vae = train(config, tmp_path / "run", data=tiny_data, progress=False)
    losses = [row["train_loss"] for row in read_metrics(tmp_path / "run")]
    assert losses[1] < losses[0]

    loaded = load_run(tmp_path / "run")
    assert type(loaded.prior) is PRIORS[prior]
    log_w = same_seed_log_weights((vae, loaded), tiny_data.test[:16], num_particles=10)
    assert log_w[0].shape == (10, 16) and bool(torch.isfinite(log_w[0]).all())
    assert torch.equal(log_w[0], log_w[1])  # the checkpoint restores every parameter

    samples = loaded.sample(5)
    assert samples.shape == (5, 64) and bool(torch.isfinite(samples).all())


def test_options_reach_the_classes_and_survive_the_run_directory(tmp_path, tiny_data):
    config = tiny_config(
        epochs=1,
        prior="mog",
        prior_options={"components": 3},
        likelihood="gaussian",
        likelihood_options={"scale": "global"},
    )
    train(config, tmp_path / "run", data=tiny_data, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["prior_options"] == {"components": 3}
    assert saved["likelihood_options"] == {"scale": "global"}
    vae = load_run(tmp_path / "run")
    assert isinstance(vae.prior, MixturePrior) and vae.prior.loc.shape == (3, 4)
    assert isinstance(vae.likelihood, GaussianLikelihood)
    assert vae.likelihood.raw_scale.shape == (1,)
    assert vae.decoder.net[-1].out_features == 64


def test_vamp_prior_checkpoint_holds_one_encoder(tmp_path, tiny_data):
    train(
        tiny_config(epochs=1, prior="vamp", prior_options={"components": 7}),
        tmp_path / "run",
        data=tiny_data,
        progress=False,
    )
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert [k for k in state if k.startswith("prior.")] == ["prior.pseudo_inputs"]
    assert state["prior.pseudo_inputs"].shape == (7, 64)
    vae = load_run(tmp_path / "run")
    assert vae.prior.encoder is vae.encoder
    assert torch.equal(vae.prior.pseudo_inputs, state["prior.pseudo_inputs"])


def test_two_parameter_likelihoods_widen_the_decoder(tmp_path, tiny_data):
    config = tiny_config(
        epochs=1, likelihood="beta", likelihood_options={"squeeze": 1e-3}, binarize="none"
    )
    vae = train(config, tmp_path / "run", data=tiny_data, progress=False)
    assert vae.decoder.net[-1].out_features == 2 * 64
    assert vae.decode(torch.zeros(2, 4)).shape == (2, 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"prior": "mog", "prior_options": {"components": 0}},
            r"`prior_options\[components\]` must be positive",
        ),
        (
            {"prior": "flow", "prior_options": {"layers": -1}},
            r"`prior_options\[layers\]` must be positive",
        ),
        (
            {"prior_options": {"components": 5}},
            r"the 'normal' prior takes no option 'components' "
            r"\(`prior_options\[components\]`\); it applies to: mog, vamp",
        ),
        ({"likelihood_options": {"scale": "0.1"}}, "takes no option 'scale'"),
        (
            {"likelihood": "gaussian", "likelihood_options": {"scale": "wide"}},
            "per-pixel or global",
        ),
        ({"likelihood": "beta", "likelihood_options": {"squeeze": 0.7}}, r"must be in \[0, 0.5\)"),
        ({"likelihood": "gamma"}, "unknown `likelihood` 'gamma'; choose one of: bernoulli, "),
    ],
)
def test_invalid_options_are_rejected_when_the_config_is_made(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_fixed_scale_given_as_text_round_trips():
    config = TrainConfig(likelihood="laplace", likelihood_options={"scale": "0.25"})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert float(config.build_vae().likelihood.scale()) == 0.25


def test_cli_options_and_their_errors(tmp_path, fake_fashion_dir, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
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
            "--prior",
            "flow",
            "--prior-layers",
            "1",
            "--likelihood",
            "discretized-logistic",
            "--binarize",
            "none",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["prior"], saved["prior_options"]) == ("flow", {"layers": 1})
    assert len(load_run(out).prior.layers) == 1
    capsys.readouterr()

    code = main(
        [
            "evaluate",
            "--run",
            str(out),
            "--num-samples",
            "20",
            "--subset",
            "10",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    expected = -result["test_log_likelihood"] / (784 * math.log(2))
    assert result["test_bits_per_dim"] == pytest.approx(expected)
    assert f"bits/dim           {expected:.4f}" in capsys.readouterr().out

    code = main(["train", "--prior", "vamp", "--prior-layers", "2", "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "pyro-vae: error: the 'vamp' prior takes no option 'layers' (--prior-layers); it applies "
        "to: flow. Drop --prior-layers or choose another --prior"
    )
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--prior-components",
        "--prior-layers",
        "--likelihood-scale",
        "--likelihood-squeeze",
        "continuous-bernoulli",
        "vamp",
    ):
        assert option in text


@pytest.mark.parametrize("objective", ["analytic-kl", "iwae"])
@pytest.mark.parametrize("prior", list(PRIORS))
def test_every_objective_works_with_every_prior(prior, objective):
    """analytic-kl falls back to Monte Carlo where no closed-form KL exists (mixtures, flows)."""
    vae = VAE(data_dim=12, latent_dim=3, hidden_dims=(8,), prior=prior)
    x = torch.bernoulli(torch.full((16, 12), 0.5))
    loss = OBJECTIVES[objective](4)(vae.model, vae.guide, x)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert all(p.grad is not None for p in vae.parameters())


def test_conditional_models_take_priors_and_likelihoods_by_name(tiny_data):
    cvae = tiny_config(
        model="cvae",
        prior="mog",
        prior_options={"components": 3},
        likelihood="gaussian",
        likelihood_options={"scale": "global"},
        num_classes=4,
        image_shape=(1, 8, 8),
    )
    cvae = cvae.build_vae()
    assert isinstance(cvae.prior.prior, MixturePrior) and cvae.prior.prior.loc.shape == (3, 4)
    x, y = cvae.batch_inputs(tiny_data.test[:8], tiny_data.test_labels[:8])
    assert bool(torch.isfinite(log_importance_weights(cvae.model, cvae.guide, x, y)).all())

    completion = tiny_config(model="completion", likelihood="laplace", image_shape=(1, 8, 8))
    completion = completion.build_vae()
    assert completion.likelihood.raw_scale.shape == (48,)  # the 3 missing 4x4 quadrants

    with pytest.raises(ConfigError, match="VampPrior is built on the VAE's encoder of x alone"):
        tiny_config(model="cvae", prior="vamp", num_classes=4).build_vae()
