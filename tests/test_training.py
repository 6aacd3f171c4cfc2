import json
import math

import pyro
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pyro_vae import VAE, CheckpointError, ConfigError, TrainConfig, load_run, read_metrics, train
from pyro_vae.config import MODELS
from pyro_vae.training.loop import kl_weight


def tiny_config(**overrides) -> TrainConfig:
    options = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, lr=3e-3, epochs=2, device="cpu")
    options.update(overrides)
    return TrainConfig(**options)


def params(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_training_reduces_the_loss_and_writes_the_run(tmp_path, tiny_data):
    vae = train(tiny_config(epochs=10), tmp_path / "run", data=tiny_data, progress=False)
    metrics = read_metrics(tmp_path / "run")
    assert [row["epoch"] for row in metrics] == list(range(1, 11))
    assert set(metrics[0]) >= {
        "epoch",
        "train_loss",
        "val_elbo",
        "beta",
        "seconds",
        "train_seconds",
    }
    losses = [row["train_loss"] for row in metrics]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.8 * losses[0]
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["latent_dim"] == 4 and saved["image_shape"] == [1, 8, 8]
    loaded = load_run(tmp_path / "run")
    for name, value in params(vae).items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_data):
    straight = train(tiny_config(epochs=2), tmp_path / "a", data=tiny_data, progress=False)

    first = train(tiny_config(epochs=1), tmp_path / "b", data=tiny_data, progress=False)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            params(first).values(), params(load_run(tmp_path / "b")).values(), strict=True
        )
    )
    resumed = train(
        tiny_config(epochs=2), tmp_path / "b", data=tiny_data, resume=True, progress=False
    )

    second_epoch = [read_metrics(tmp_path / run)[1]["train_loss"] for run in ("a", "b")]
    assert second_epoch[0] == second_epoch[1]
    for name, value in params(straight).items():
        assert torch.equal(params(resumed)[name], value), name


def test_existing_run_is_not_overwritten_and_resume_checks_config(tmp_path, tiny_data):
    train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a trained run"):
        train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    with pytest.raises(CheckpointError, match="latent_dim: saved 4, requested 5"):
        train(
            tiny_config(epochs=2, latent_dim=5),
            tmp_path / "run",
            data=tiny_data,
            resume=True,
            progress=False,
        )
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    # a run that spikes may be continued with clipping
    train(
        tiny_config(epochs=2, clip_grad_norm=1.0),
        tmp_path / "run",
        data=tiny_data,
        resume=True,
        progress=False,
    )
    assert read_metrics(tmp_path / "run")[-1]["clipped_steps"] == 8
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train(tiny_config(), tmp_path / "empty", data=tiny_data, resume=True, progress=False)


def test_beta_warmup_is_linear_and_positive(tmp_path, tiny_data):
    config = tiny_config(beta=2.0, warmup_epochs=2)
    betas = [kl_weight(config, step, steps_per_epoch=10) for step in range(30)]
    assert betas[0] == pytest.approx(0.1) and betas[0] > 0
    assert betas[19] == pytest.approx(2.0) and betas[29] == 2.0
    steps = [b2 - b1 for b1, b2 in zip(betas[:19], betas[1:20], strict=True)]
    assert steps == pytest.approx([0.1] * 19)
    train(
        tiny_config(beta=2.0, warmup_epochs=2, epochs=3),
        tmp_path / "run",
        data=tiny_data,
        progress=False,
    )
    assert [row["beta"] for row in read_metrics(tmp_path / "run")] == [1.0, 2.0, 2.0]


def test_gradient_clipping_bounds_every_step_and_counts_the_clipped_ones(tmp_path, tiny_data):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms.append(torch.nn.utils.get_total_norm([g for g in grads if g is not None]).item())

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(tiny_config(), tmp_path / "free", data=tiny_data, progress=False)
        free, norms[:] = list(norms), []
        train(tiny_config(clip_grad_norm=0.5), tmp_path / "clipped", data=tiny_data, progress=False)
    finally:
        hook.remove()
    limit = 0.5 * 64  # per example, times the batch size (the loss is summed over the batch)
    assert min(free) > limit  # so every step of the clipped run is clipped...
    assert len(norms) == 16 and max(norms) == pytest.approx(limit, rel=1e-4)  # ...to the limit
    metrics = read_metrics(tmp_path / "clipped")
    assert [row["clipped_steps"] for row in metrics] == [8, 8]
    assert "clipped_steps" not in read_metrics(tmp_path / "free")[0]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # Adam trains on


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latent_dim": 0}, "`latent_dim` must be positive"),
        ({"clip_grad_norm": 0.0}, "`clip_grad_norm` must be a positive number"),
        ({"clip_grad_norm": float("inf")}, "`clip_grad_norm` must be a positive number"),
        ({"weight_decay": -0.1}, "`weight_decay` must be 0 or more"),
        ({"weight_decay": float("nan")}, "`weight_decay` must be 0 or more"),
        ({"beta": -1.0}, "`beta` must be a positive number"),
        ({"prior": "cauchy"}, "unknown `prior` 'cauchy'; choose one of: normal"),
        ({"objective": "iwae", "beta": 2.0}, "no separate KL term"),
    ],
)
def test_invalid_config_is_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_batch_larger_than_data_is_rejected(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="larger than the 512 training images"):
        train(tiny_config(batch_size=1000), tmp_path / "run", data=tiny_data, progress=False)


def test_a_mismatched_guide_fails_before_training_with_pyros_message(tmp_path, tiny_data):
    class MisnamedGuide(VAE):
        def guide(self, x, *conditions, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                loc, scale = self.encoder(x)
                pyro.sample("w", pyro.distributions.Normal(loc, scale).to_event(1))

    config = tiny_config()
    MODELS["misnamed"] = lambda c, shape, _: MisnamedGuide(
        math.prod(shape), c.latent_dim, c.hidden_dims
    )
    try:
        config.model = "misnamed"
        with pytest.raises(ConfigError, match="do not match .*Found vars in model but not guide"):
            train(config, tmp_path / "run", data=tiny_data, progress=False)
    finally:
        del MODELS["misnamed"]
    assert read_metrics(tmp_path / "run") == []  # no step was taken


@pytest.mark.parametrize(
    ("options", "described"),
    [
        ({}, "vae (mlp networks, normal prior, bernoulli likelihood)"),
        (
            {"model": "cvae", "conditional_prior": True},
            "cvae (mlp networks, learned conditional prior, bernoulli likelihood)",
        ),
    ],
)
def test_a_run_starts_by_saying_what_it_trains_on_what(tmp_path, tiny_data, options, described):
    logs = []
    vae = train(
        tiny_config(epochs=1, **options),
        tmp_path / "run",
        data=tiny_data,
        progress=False,
        log=logs.append,
    )
    parameters = sum(p.numel() for p in vae.parameters())
    assert logs[0] == (
        f"{described}: {parameters:,} parameters; 512 training and 128 "
        "validation images (1x8x8) on cpu"
    )
    assert logs[1].startswith("epoch 1/1 ")
