"""Label-conditional and completion CVAEs: structure, training, estimates, sampling."""

import json
from pathlib import Path

import pyro
import pytest
import torch
from conftest import make_tiny_data
from PIL import Image
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import ConfigError, TrainConfig, load_run, read_config, read_metrics, train
from pyro_vae.cli import main
from pyro_vae.components.networks import MultiInputMLP
from pyro_vae.components.priors import PRIORS, StandardNormal
from pyro_vae.data.images import DATASETS
from pyro_vae.figures.samples import sample_run
from pyro_vae.inference.estimators import estimate_log_likelihood, log_densities
from pyro_vae.models.conditional import (
    ClassConditionalNormal,
    CompletionCVAE,
    LabelCVAE,
    quadrant_mask,
)

SYSTEM_COPY = DATASETS["fashion-mnist"].system_dirs[0]


def tiny_config(**overrides) -> TrainConfig:
    options = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, lr=1e-2, epochs=12, device="cpu")
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One short run per model on the tiny data, shared by the tests below."""
    data = make_tiny_data()
    out = tmp_path_factory.mktemp("runs")
    configs = {
        "vae": tiny_config(),
        "cvae": tiny_config(model="cvae"),
        "cvae-prior": tiny_config(model="cvae", conditional_prior=True),
        "completion": tiny_config(model="completion", observed_quadrants=2),
    }
    for name, config in configs.items():
        train(config, out / name, data=data, progress=False, log=lambda line: None)
    return {name: out / name for name in configs}


def nearest_class_mean(images: torch.Tensor, data) -> torch.Tensor:
    """A minimal classifier: the class whose mean training image is closest."""
    means = torch.stack([data.train[data.train_labels == c].mean(0) for c in range(4)])
    return torch.cdist(images, means).argmin(dim=1)


def test_multi_input_mlp_is_an_mlp_of_the_concatenation_and_broadcasts():
    torch.manual_seed(0)
    net = MultiInputMLP((3, 2), (8,), 5)
    z, y = torch.randn(7, 4, 3), torch.randn(4, 2)  # 7 samples of z per example
    joint = torch.nn.Linear(5, 8)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([layer.weight for layer in net.first], dim=1))
        joint.bias.copy_(net.first[0].bias)
    expected = net.rest(torch.relu(joint(torch.cat([z, y.expand(7, 4, 2)], dim=-1))))
    assert torch.allclose(net(z, y), expected, atol=1e-6)


def test_label_cvae_conditions_prior_encoder_and_decoder_on_the_label():
    model = LabelCVAE(
        data_dim=12,
        num_classes=3,
        latent_dim=2,
        hidden_dims=(8,),
        prior=ClassConditionalNormal(3, 2),
    )
    with torch.no_grad():
        model.prior.loc.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 0.0]]))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    inputs = model.batch_inputs(x, torch.tensor([0, 1, 2, 1]))
    guide_trace = poutine.trace(model.guide).get_trace(*inputs)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*inputs)
    prior = model_trace.nodes["z"]["fn"]
    assert prior.batch_shape == (4,) and prior.event_shape == (2,)
    assert torch.equal(prior.base_dist.loc[:, 0], torch.tensor([0.0, 5.0, -5.0, 5.0]))
    z = guide_trace.nodes["z"]["value"]
    y_other = model.one_hot(torch.tensor([1, 2, 0, 0]))
    assert not torch.allclose(model.decoder(z, inputs[1]), model.decoder(z, y_other))
    assert not torch.allclose(model.encoder(x, inputs[1])[0], model.encoder(x, y_other)[0])
    assert model_trace.nodes["x"]["is_observed"]
    assert model.sample(5, model.one_hot(torch.tensor([2, 0]))).shape == (5, 2, 12)


def test_label_cvae_samples_are_of_their_class(runs):
    data = make_tiny_data()
    model = load_run(runs["cvae"])
    assert isinstance(model, LabelCVAE) and model.num_classes == 4
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(50)
    samples = model.sample(1, model.one_hot(labels))[0]
    accuracy = (nearest_class_mean(samples, data) == labels).float().mean()
    assert accuracy > 0.9, accuracy
    # an untrained model's samples are not: the property comes from training
    untrained = tiny_config(model="cvae", num_classes=4, image_shape=(1, 8, 8)).build_vae()
    untrained_samples = untrained.sample(1, untrained.one_hot(labels))[0]
    assert (nearest_class_mean(untrained_samples, data) == labels).float().mean() < 0.5


def test_conditional_log_likelihood_is_higher_than_unconditional(runs):
    data = make_tiny_data()
    estimates = {}
    for name in ("vae", "cvae", "cvae-prior"):
        model = load_run(runs[name])
        inputs = model.batch_inputs(data.test, data.test_labels)
        estimates[name] = estimate_log_likelihood(
            model.model, model.guide, *inputs, num_samples=200
        ).log_likelihood
    for name in ("cvae", "cvae-prior"):
        gain = estimates[name] - estimates["vae"]
        assert gain.mean() > 3 * gain.std() / gain.numel() ** 0.5, (name, gain.mean())


def test_learned_class_prior_separates_the_classes(runs):
    model = load_run(runs["cvae-prior"])
    assert isinstance(model.prior, ClassConditionalNormal)
    loc = model.prior.loc.detach()
    assert torch.cdist(loc, loc)[~torch.eye(4, dtype=torch.bool)].min() > 0.1
    metrics = read_metrics(runs["cvae-prior"])
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"] + 5


def test_quadrant_masks_follow_the_tutorial_order():
    expected = {
        1: [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]],  # bottom-left
        2: [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]],  # + top-left
        3: [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]],  # + top-right
    }
    for quadrants, rows in expected.items():
        mask = quadrant_mask((1, 4, 4), quadrants)
        assert mask.tolist() == [bool(v) for row in rows for v in row]
    model = CompletionCVAE((1, 4, 4), observed_quadrants=3, latent_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 16)
    x_missing, x_observed = model.batch_inputs(x, torch.zeros(5, dtype=torch.long))
    assert x_missing.shape == (5, 4) and x_observed.shape == (5, 12)
    assert torch.equal(model.assemble(x_missing, x_observed), x)


def test_completion_weights_leave_out_the_baseline_and_prior_proposal_is_plain_mc():
    torch.manual_seed(0)
    model = CompletionCVAE((1, 8, 8), observed_quadrants=1, latent_dim=3, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((6, 64), 0.5))
    x_missing, x_observed = model.batch_inputs(x, torch.zeros(6, dtype=torch.long))
    pyro.set_rng_seed(1)
    dens = log_densities(model.model, model.prior_guide, x_missing, x_observed, num_particles=4)
    pyro.set_rng_seed(1)
    z = model.prior(x_observed).sample((4,))
    # with p(z|x_o) as proposal the weight is p(x_m|z, x_o): prior and proposal cancel
    expected = model.likelihood(model.decoder(z, x_observed)).log_prob(x_missing)
    assert torch.allclose(dens.log_weights, expected, atol=1e-4)
    baseline = model.baseline_log_likelihood(x_missing, x_observed)
    assert torch.allclose(dens.log_auxiliary, baseline.expand(4, 6))


def test_baseline_trains_on_its_own_likelihood_only():
    """The CVAE's terms send no gradient into the baseline (its guess is detached)."""
    model = CompletionCVAE((1, 8, 8), observed_quadrants=2, latent_dim=3, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((6, 64), 0.5))
    inputs = model.batch_inputs(x, torch.zeros(6, dtype=torch.long))
    Trace_ELBO().differentiable_loss(model.model, model.guide, *inputs).backward()
    elbo_grads = [p.grad.clone() for p in model.baseline.parameters()]
    model.zero_grad()
    x_missing, x_observed = inputs
    (-model.likelihood(model.baseline(x_observed)).log_prob(x_missing).sum()).backward()
    for elbo_grad, p in zip(elbo_grads, model.baseline.parameters(), strict=True):
        assert torch.allclose(elbo_grad, p.grad, atol=1e-5)


def test_completion_trains_and_both_proposals_agree(runs):
    data = make_tiny_data()
    metrics = read_metrics(runs["completion"])
    assert metrics[-1]["train_loss"] < 0.8 * metrics[0]["train_loss"]
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]
    model = load_run(runs["completion"])
    assert isinstance(model, CompletionCVAE) and model.observed_quadrants == 2
    inputs = model.batch_inputs(data.test[:32], data.test_labels[:32])
    recognition = estimate_log_likelihood(model.model, model.guide, *inputs, num_samples=2000)
    prior = estimate_log_likelihood(model.model, model.prior_guide, *inputs, num_samples=2000)
    # two consistent estimates of the same log p(x_m | x_o)
    assert abs(recognition.log_likelihood.mean() - prior.log_likelihood.mean()) < 0.1
    assert bool((recognition.elbo <= recognition.log_likelihood + 1e-4).all())
    untrained = tiny_config(model="completion", observed_quadrants=2, image_shape=(1, 8, 8))
    start = untrained.build_vae().baseline_log_likelihood(*inputs).mean()
    assert model.baseline_log_likelihood(*inputs).mean() > start + 5


def test_iwae_objective_trains_the_baseline_too(tmp_path, tiny_data):
    config = tiny_config(model="completion", objective="iwae", particles=3, epochs=3)
    model = train(config, tmp_path / "run", data=tiny_data, progress=False)
    inputs = model.batch_inputs(tiny_data.test, tiny_data.test_labels)
    start = read_config(tmp_path / "run").build_vae().baseline_log_likelihood(*inputs).mean()
    assert model.baseline_log_likelihood(*inputs).mean() > start + 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "gan"}, "unknown `model` 'gan'; choose one of: vae, hvae, cvae, completion"),
        (
            {"model": "completion", "observed_quadrants": 4},
            "unknown `observed_quadrants` 4; choose one of: 1, 2, 3",
        ),
        ({"conditional_prior": True}, "use `model='cvae'`"),
        ({"model": "completion", "prior": "other"}, "`prior='other'` does not apply"),
        ({"model": "cvae", "conditional_prior": True, "prior": "other"}, "does not apply"),
    ],
)
def test_invalid_conditional_config_is_rejected(monkeypatch, options, message):
    monkeypatch.setitem(PRIORS, "other", StandardNormal)
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_sample_grids(runs, tmp_path):
    data = make_tiny_data()
    side = 8 + 2  # image plus padding

    def size(path):
        with Image.open(path) as image:
            return image.size

    path = sample_run(runs["cvae"], tmp_path / "c2.png", num=9, label=2, data=data)
    assert size(path) == (3 * side + 2, 3 * side + 2)
    path = sample_run(runs["cvae"], tmp_path / "all.png", num=12, data=data)
    assert size(path) == (3 * side + 2, 4 * side + 2)  # a row of 12 // 4 per class
    path = sample_run(runs["completion"], tmp_path / "completion.png", num=16, data=data)
    assert size(path) == (11 * side + 2, 2 * side + 2)  # observed, guess, 8, truth; 2 rows
    path = sample_run(runs["vae"], tmp_path / "vae.png", num=4, data=data)
    assert size(path) == (2 * side + 2, 2 * side + 2)
    with pytest.raises(ConfigError, match="`label` 7 is not a class of this run"):
        sample_run(runs["cvae"], tmp_path / "x.png", label=7, data=data)
    with pytest.raises(ConfigError, match="needs a label-conditional run"):
        sample_run(runs["vae"], tmp_path / "x.png", label=1, data=data)
    with pytest.raises(ConfigError, match="use a .png"):
        sample_run(runs["vae"], tmp_path / "x.nope", data=data)
    # seeded: the same grid twice
    again = sample_run(runs["cvae"], tmp_path / "again.png", num=12, data=data)
    assert again.read_bytes() == (tmp_path / "all.png").read_bytes()


@pytest.mark.skipif(not SYSTEM_COPY.is_dir(), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.parametrize(
    "variant", [["--model", "cvae"], ["--model", "completion", "--observed-quadrants", "2"]]
)
def test_cli_trains_evaluates_and_samples_each_variant(tmp_path, capsys, variant):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *variant,
                "--subset",
                "2000",
                "--epochs",
                "2",
                "--out",
                str(run),
                "--no-progress",
                "--data-root",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--num-samples",
                "20",
                "--subset",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((run / "eval.json").read_text())
    assert result["model"] == variant[1]
    assert result["test_log_likelihood"] > result["test_elbo"]
    assert f"{result['estimates']} (IW)" in capsys.readouterr().out
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    if variant[1] == "cvae":
        assert (
            main(
                [
                    "sample",
                    "--run",
                    str(run),
                    "--label",
                    "3",
                    "--num",
                    "16",
                    "--out",
                    str(tmp_path / "dress.png"),
                ]
            )
            == 0
        )
        assert (
            main(["sample", "--run", str(run), "--label", "10", "--out", str(tmp_path / "x.png")])
            == 2
        )
        assert "choose one of: 0 T-shirt/top" in capsys.readouterr().err
