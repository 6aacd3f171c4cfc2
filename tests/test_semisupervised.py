"""The semi-supervised VAE: exactness of the enumerated objective and of the estimate of
log p(x) with the label summed out, labels kept, and the command-line path."""

import json
import math
import signal

import numpy as np
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_data, write_tiny_image_file
from test_reliability import assert_same_run, start_training

from pyro_vae import ConfigError, TrainConfig
from pyro_vae.cli import main
from pyro_vae.data.images import keep_labels, repeat_labelled
from pyro_vae.inference.estimators import estimate_log_likelihood
from pyro_vae.inference.objectives import enumerated_elbo
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.runs import load_checkpoint

C, D = 3, 4


@pytest.fixture
def tiny_model() -> tuple[SemiSupervisedVAE, torch.Tensor]:
    """A model of 4 binary pixels, 3 classes and a 1-D z, and five images."""
    torch.manual_seed(0)
    vae = SemiSupervisedVAE(D, C, 1, (8,), classifier_weight=0.5)
    return vae, torch.bernoulli(torch.full((5, D), 0.5))


def _bound(vae: SemiSupervisedVAE, x: torch.Tensor, label: int, n: int = 200_000) -> torch.Tensor:
    """L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)], sampled."""
    y = F.one_hot(torch.tensor([label]), C).float()
    q = dist.Normal(*vae.encoder(x[None], y))
    z = q.sample((n,))
    log_joint = (
        dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - math.log(C)
        + vae.likelihood(vae.decoder(z, y)).log_prob(x)
    )
    return (log_joint - q.log_prob(z).sum(-1)).mean()


@torch.no_grad()
def test_the_enumerated_objective_is_the_hand_summed_elbo(tiny_model):
    """Labelled: L(x, y) + alpha log q(y|x); unlabelled: sum_y q(y|x) (L(x, y) - log q(y|x))."""
    vae, x = tiny_model
    y = torch.tensor([0, -1, 2, -1, -1])
    loss = enumerated_elbo(50_000)(vae.model, vae.guide, x, y)
    total = 0.0
    for image, label in zip(x, y.tolist(), strict=True):
        log_q = F.log_softmax(vae.label_logits(image), -1)
        if label >= 0:
            total += _bound(vae, image, label) + 0.5 * log_q[label]
        else:
            total += sum(log_q[c].exp() * (_bound(vae, image, c) - log_q[c]) for c in range(C))
    assert float(loss) == pytest.approx(-float(total), abs=0.02)


@torch.no_grad()
def test_the_importance_weighted_log_px_sums_the_label_out_exactly(tiny_model):
    """log p(x) = log sum_y p(y) int p(z) p(x|y,z) dz, by quadrature over z."""
    vae, x = tiny_model
    inputs = vae.scoring_inputs(x, torch.tensor([0, 1, 2, 0, 1]))  # scored without labels
    estimates = estimate_log_likelihood(
        vae.model, vae.guide, *inputs, num_samples=20_000, max_batch=100_000, progress=False
    )
    z = torch.linspace(-10, 10, 40_001)[:, None]
    for image, estimate in zip(x, estimates.log_likelihood, strict=True):
        terms = [
            dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            - math.log(C)
            + vae.likelihood(vae.decoder(z, F.one_hot(torch.tensor([c]), C).float())).log_prob(
                image
            )
            for c in range(C)
        ]
        exact = torch.logsumexp(torch.cat(terms), 0) + math.log(float(z[1] - z[0]))
        assert float(estimate) == pytest.approx(float(exact), abs=0.01)
    assert bool((estimates.elbo <= estimates.log_likelihood + 1e-4).all())


def test_kept_labels_are_balanced_seeded_and_the_rest_unknown():
    data = make_tiny_data()
    kept = keep_labels(data, 10, seed=3)
    known = kept.train_labels >= 0
    assert int(known.sum()) == 10
    assert torch.bincount(kept.train_labels[known], minlength=4).tolist() == [3, 3, 2, 2]
    assert (kept.train_labels[known] == data.train_labels[known]).all()
    assert (keep_labels(data, 10, seed=3).train_labels == kept.train_labels).all()
    assert not (keep_labels(data, 10, seed=4).train_labels == kept.train_labels).all()
    with pytest.raises(ConfigError, match="keep fewer labels"):
        keep_labels(data, 10_000, seed=0)


def test_labelled_images_are_repeated_to_about_half_of_an_epoch():
    data = keep_labels(make_tiny_data(), 20, seed=0)  # 20 labelled, 492 unlabelled
    repeated = repeat_labelled(data)
    known = repeated.train_labels >= 0
    assert int(known.sum()) == 20 * 24 and int((~known).sum()) == 492
    assert torch.equal(repeated.train[: len(data.train)], data.train)
    again = repeated.train[len(data.train) :].reshape(23, 20, -1)
    assert all(torch.equal(copy, data.train[data.train_labels >= 0]) for copy in again)
    assert repeat_labelled(make_tiny_data()).train.shape == data.train.shape  # all labelled


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": 10}, "only `model='semi-supervised'` can learn"),
        ({"model": "semi-supervised", "objective": "iwae"}, "TraceEnum_ELBO"),
        ({"classifier_weight": 2.0}, "weighs the classifier"),
    ],
)
def test_semi_supervised_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_the_cli_trains_evaluates_samples_plots_and_resumes(tmp_path):
    write_tiny_image_file(tmp_path / "images.npz")
    run = str(tmp_path / "run")
    command = ["train", "--dataset", str(tmp_path / "images.npz"), "--model", "semi-supervised"]
    command += ["--labels", "40", "--latent-dim", "4", "--hidden-dim", "32", "--batch-size", "64"]
    assert main([*command, "--epochs", "2", "--out", run]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classifier_weight"] == pytest.approx(0.1 * 534 / 40)  # Kingma's 0.1 N / N_l
    assert main([*command, "--epochs", "3", "--out", run, "--resume"]) == 0
    straight = str(tmp_path / "straight")
    assert main([*command, "--epochs", "3", "--out", straight]) == 0
    resumed = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    whole = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)

    assert main(["evaluate", "--run", run, "--num-samples", "20"]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= result["test_accuracy"] <= 1 and math.isfinite(result["test_log_likelihood"])
    assert result["estimates"] == "log p(x)"
    assert main(["sample", "--run", run, "--out", str(tmp_path / "grid.png"), "--num", "8"]) == 0
    assert main(["plot", "--run", run]) == 0
    assert (tmp_path / "run" / "figures" / "confusion.png").is_file()


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    write_tiny_image_file(tmp_path / "images.npz")
    options = ["--dataset", str(tmp_path / "images.npz"), "--model", "semi-supervised"]
    options += ["--labels", "40", "--latent-dim", "4", "--hidden-dim", "32", "--epochs", "2"]
    options += ["--batch-size", "64", "--no-progress", "--device", "cpu"]
    assert main(["train", *options, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "run"
    process = start_training([*options, "--checkpoint-every", "1"], out, resume=False)
    process.kill()
    assert process.wait() == -signal.SIGKILL  # killed while training, not after the end
    assert load_checkpoint(out)["epoch"] < 2
    assert main(["train", *options, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, tmp_path / "straight")


def test_samples_hold_the_style_and_change_the_class(tiny_model):
    vae, _ = tiny_model
    images, per_row = vae.sample_grid(6, None, make_tiny_data())
    assert per_row == C and images.shape == (2 * C, D)
    # a row: one z decoded under each label, so it differs from the next row's z
    assert not torch.equal(images[:C], images[C:])
    single, _ = vae.sample_grid(5, 1, make_tiny_data())
    assert single.shape == (5, D)
    assert np.isfinite(single.numpy()).all()
