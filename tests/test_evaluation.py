"""The importance-weighted estimator against exact answers (probabilistic PCA)."""

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import prototype_images
from PIL import Image

from pyro_vae import ModelConfig, TrainConfig, load_run, train
from pyro_vae.analysis.evaluation import detection_auroc, generalization_gap
from pyro_vae.cli import main
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.images import DATASETS
from pyro_vae.figures.plots import evaluation_figure
from pyro_vae.inference import estimators
from pyro_vae.inference.estimators import auroc, estimate_log_likelihood, log_importance_weights
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.runs import evaluation_stem

torch.manual_seed(0)
DATA_DIM, LATENT_DIM, NOISE = 5, 2, 0.5
W = torch.randn(DATA_DIM, LATENT_DIM)
B = torch.randn(DATA_DIM)
# Exact posterior of z | x: N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I.
M_INV = torch.linalg.inv(W.T @ W + NOISE**2 * torch.eye(LATENT_DIM))
POSTERIOR_COV = NOISE**2 * M_INV


def ppca_model(x):
    """z ~ N(0, I), x | z ~ N(W z + b, s^2 I)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, NOISE).to_event(1), obs=x)


def posterior_mean(x):
    return (x - B) @ W @ M_INV.T


def exact_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(posterior_mean(x), POSTERIOR_COV))


def imperfect_guide(x):
    """Diagonal, shifted by half a posterior std, over-dispersed: a deliberately wrong encoder."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", imperfect_posterior(x))


def imperfect_posterior(x):
    std = POSTERIOR_COV.diagonal().sqrt()
    return dist.Normal(posterior_mean(x) + 0.5 * std, 1.5 * std).to_event(1)


def ppca_data(n=20, seed=1):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT_DIM, generator=generator)
    return z @ W.T + B + NOISE * torch.randn(n, DATA_DIM, generator=generator)


def exact_log_likelihood(x):
    covariance = W @ W.T + NOISE**2 * torch.eye(DATA_DIM)
    return dist.MultivariateNormal(B, covariance).log_prob(x)


def test_exact_posterior_gives_exact_log_likelihood_whatever_the_chunking():
    x = ppca_data()
    for max_batch in (7, 100_000):  # 7: both particles and examples are split into chunks
        estimates = estimate_log_likelihood(
            ppca_model, exact_guide, x, num_samples=50, max_batch=max_batch
        )
        assert torch.allclose(estimates.log_likelihood, exact_log_likelihood(x), atol=1e-4)


def test_imperfect_encoder_is_within_005_nats_of_exact_with_k5000():
    x = ppca_data()
    estimates = estimate_log_likelihood(ppca_model, imperfect_guide, x, num_samples=5000)
    errors = (estimates.log_likelihood - exact_log_likelihood(x)).abs()
    assert errors.max() < 0.05, errors
    # and the ELBO of the wrong encoder is clearly below log p(x): the estimate did real work
    assert (exact_log_likelihood(x) - estimates.elbo).min() > 0.1


def test_kl_estimate_matches_closed_form():
    x = ppca_data(n=5)
    estimates = estimate_log_likelihood(ppca_model, imperfect_guide, x, num_samples=20_000)
    prior = dist.Normal(torch.zeros(LATENT_DIM), 1.0).to_event(1)
    exact_kl = torch.distributions.kl_divergence(imperfect_posterior(x), prior)
    assert torch.allclose(estimates.kl, exact_kl, atol=0.03)


def test_per_example_not_per_batch():
    """Each example gets its own estimate: permuting the data permutes the estimates."""
    x = ppca_data(n=6)
    forward = estimate_log_likelihood(ppca_model, exact_guide, x, num_samples=10).log_likelihood
    backward = estimate_log_likelihood(ppca_model, exact_guide, x.flip(0), num_samples=10)
    assert forward.shape == (6,)
    assert torch.allclose(backward.log_likelihood.flip(0), forward, atol=1e-4)


def test_seeded_estimates_repeat_and_keep_the_rng_unseeded_ones_draw_afresh():
    x = ppca_data(n=4)

    def estimate(seed):
        return estimate_log_likelihood(
            ppca_model, imperfect_guide, x, num_samples=20, max_batch=40, seed=seed
        ).log_likelihood

    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert torch.equal(estimate(3), estimate(3))
    assert torch.equal(torch.get_rng_state(), state)  # seeded: the caller's RNG is untouched
    assert not torch.equal(estimate(None), estimate(None))  # unseeded: independent draws
    assert not torch.equal(torch.get_rng_state(), state)


def test_active_units_and_stderr():
    def half_dead_guide(x):
        loc = posterior_mean(x)
        loc = torch.stack([loc[:, 0], torch.zeros_like(loc[:, 1])], dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 0.5).to_event(1))

    x = ppca_data(n=200)
    assert estimate_log_likelihood(ppca_model, exact_guide, x, num_samples=2).active_units == 2
    estimates = estimate_log_likelihood(ppca_model, half_dead_guide, x, num_samples=2)
    assert estimates.active_units == 1
    expected = estimates.log_likelihood.std().item() / math.sqrt(200)
    assert estimates.log_likelihood_stderr == pytest.approx(expected)


@pytest.fixture
def trained_vae(tmp_path, tiny_data):
    config = TrainConfig(
        latent_dim=4, hidden_dims=(32,), batch_size=64, lr=3e-3, epochs=5, device="cpu"
    )
    return train(config, tmp_path / "run", data=tiny_data, progress=False)


def test_elbo_below_iw_and_iw_grows_with_k(trained_vae, tiny_data):
    x = tiny_data.val
    means = []
    for k in (1, 10, 1000):
        estimates = estimate_log_likelihood(trained_vae.model, trained_vae.guide, x, num_samples=k)
        assert bool((estimates.elbo <= estimates.log_likelihood + 1e-4).all())
        means.append(estimates.log_likelihood.mean().item())
    assert means[0] < means[1] < means[2], means
    # K=1: the IW estimate is the single-sample ELBO
    estimates = estimate_log_likelihood(trained_vae.model, trained_vae.guide, x, num_samples=1)
    assert torch.allclose(estimates.log_likelihood, estimates.elbo)


def test_iwae_with_one_particle_is_the_elbo(tiny_data):
    from pyro_vae import VAE

    vae = VAE(data_dim=64, latent_dim=3, hidden_dims=(16,))
    x = tiny_data.val[:32]
    pyro.set_rng_seed(5)
    iwae = OBJECTIVES["iwae"](1)(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    elbo = OBJECTIVES["elbo"](1)(vae.model, vae.guide, x)
    assert iwae.item() == pytest.approx(elbo.item(), rel=1e-5)
    # With more particles the bound is tighter (lower loss) on average.
    pyro.set_rng_seed(5)
    iwae_50 = OBJECTIVES["iwae"](50)(vae.model, vae.guide, x)
    assert iwae_50 < elbo
    expected = -log_importance_weights(vae.model, vae.guide, x, num_particles=1)[0].sum()
    assert torch.isfinite(expected)


@pytest.mark.parametrize(
    ("objective", "particles"), [("elbo", 1), ("analytic-kl", 1), ("iwae", 5), ("elbo", 3)]
)
def test_every_objective_trains(tmp_path, tiny_data, objective, particles):
    config = TrainConfig(
        latent_dim=4,
        hidden_dims=(32,),
        batch_size=64,
        lr=3e-3,
        epochs=4,
        device="cpu",
        objective=objective,
        particles=particles,
    )
    train(config, tmp_path / "run", data=tiny_data, progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"]


@pytest.mark.skipif(
    not DATASETS["fashion-mnist"].system_dirs[0].is_dir(),
    reason="needs Debian's dataset-fashion-mnist",
)
def test_cli_evaluate_writes_eval_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--subset",
                "1000",
                "--epochs",
                "1",
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
                "50",
                "--subset",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((run / "eval.json").read_text())
    for key in (
        "test_elbo",
        "test_log_likelihood",
        "log_likelihood_stderr",
        "num_samples",
        "num_examples",
        "active_units",
        "seconds",
    ):
        assert key in result
    assert result["num_examples"] == 64 and result["num_samples"] == 50
    assert (result["checkpoint"], result["epoch"]) == ("last", 1)  # which model it measured
    assert result["test_log_likelihood"] > result["test_elbo"]
    assert "log p(x) (IW)" in capsys.readouterr().out
    # the same seed gives the same estimate; the model comes back from the checkpoint
    again = main(
        ["evaluate", "--run", str(run), "--num-samples", "50", "--subset", "64", "--no-progress"]
    )
    assert again == 0
    assert json.loads((run / "eval.json").read_text())["test_log_likelihood"] == pytest.approx(
        result["test_log_likelihood"]
    )
    assert load_run(run).latent_dim == 50


def test_training_images_are_binarized_once_for_evaluation(tiny_data):
    images, labels = tiny_data.evaluation_images("train")
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(images, tiny_data.evaluation_images("train")[0])  # the same every call
    assert torch.equal(labels, tiny_data.train_labels)
    assert abs(images.mean() - tiny_data.train.mean()) < 0.01  # drawn from the grey levels
    assert torch.equal(tiny_data.evaluation_images("test")[0], tiny_data.test)
    grey = replace(tiny_data, binarize=False)
    assert torch.equal(grey.evaluation_images("train")[0], grey.train)
    with pytest.raises(ConfigError, match="unknown split 'training'; choose one of: train, val"):
        tiny_data.evaluation_images("training")


def train_on_random_patterns(tmp_path: Path, run: Path, *options: str) -> None:
    """Train a model on unrelated random patterns, where all it can learn from the training
    images is the images themselves, and evaluate it on the training and test images."""
    rng = np.random.default_rng(0)
    patterns = np.where(rng.random((72, 8, 8)) < 0.5, 242, 13).astype(np.uint8)
    np.savez(tmp_path / "noise.npz", train=patterns[:60], test=patterns[60:])
    assert (
        main(
            [
                "train",
                "--dataset",
                str(tmp_path / "noise.npz"),
                "--epochs",
                "300",
                "--batch-size",
                "10",
                "--hidden-dim",
                "128",
                "--latent-dim",
                "8",
                "--lr",
                "3e-3",
                "--out",
                str(run),
                "--no-progress",
                *options,
            ]
        )
        == 0
    )
    for split in ("train", "test"):
        assert (
            main(
                [
                    "evaluate",
                    "--run",
                    str(run),
                    "--split",
                    split,
                    "--num-samples",
                    "200",
                    "--no-progress",
                ]
            )
            == 0
        )


def test_evaluating_the_training_images_measures_overfitting(tmp_path, capsys):
    run = tmp_path / "run"
    train_on_random_patterns(tmp_path, run)  # memorized: the training images explained best
    train_result = json.loads((run / "eval_train.json").read_text())
    test_result = json.loads((run / "eval.json").read_text())
    assert train_result["num_examples"] == 50  # the last sixth of train is validation
    assert np.load(run / "eval_train_examples.npz")["log_likelihood"].shape == (50,)
    gap = train_result["train_log_likelihood"] - test_result["test_log_likelihood"]
    assert gap > 5
    assert generalization_gap(run) == pytest.approx(gap)
    assert f"train - test log p(x): {gap:.2f} nats" in capsys.readouterr().out
    # weight decay keeps the model from memorizing them, and so explains unseen ones better
    decayed = tmp_path / "decayed"
    train_on_random_patterns(tmp_path, decayed, "--weight-decay", "1")
    assert generalization_gap(decayed) < gap / 4
    decayed_test = json.loads((decayed / "eval.json").read_text())["test_log_likelihood"]
    assert decayed_test > test_result["test_log_likelihood"] + 1
    # estimates of two different saved models are not set against each other
    test_result["epoch"] = 149
    (run / "eval.json").write_text(json.dumps(test_result))
    assert generalization_gap(run) is None


def test_auroc_counts_the_pairs_an_inlier_wins_ties_by_half():
    rng = np.random.default_rng(0)
    inliers, outliers = rng.integers(0, 5, 40), rng.integers(1, 7, 30)  # many ties
    pairs = inliers[:, None] - outliers[None, :]
    assert auroc(inliers, outliers) == pytest.approx((pairs > 0).mean() + 0.5 * (pairs == 0).mean())
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0 and auroc([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError, match="at least one inlier and one outlier"):
        auroc([], [1.0])


def test_the_files_of_an_evaluation_are_named_after_its_images():
    assert [evaluation_stem(split) for split in ("test", "val", "train")] == [
        "eval",
        "eval_val",
        "eval_train",
    ]
    assert evaluation_stem("test", "mnist") == "eval-mnist"
    assert evaluation_stem("val", "/data/my digits.npz") == "eval-my-digits_val"
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        evaluation_stem("dev")


def test_scoring_another_dataset_tells_the_run_s_own_images_apart(tmp_path, capsys):
    images, labels = prototype_images(120)
    grey = (images * 255).round().to(torch.uint8).reshape(-1, 8, 8).numpy()
    own = tmp_path / "blocks.npz"
    np.savez(
        own,
        train=grey[:100],
        test=grey[100:],
        train_labels=labels[:100].numpy(),
        test_labels=labels[100:].numpy(),
    )
    noise = (np.random.default_rng(0).random((36, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "noise.npz", train=noise[:24], test=noise[24:])
    np.savez(tmp_path / "wide.npz", train=noise[:24, :, :4], test=noise[24:, :, :4])
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                str(own),
                "--epochs",
                "30",
                "--batch-size",
                "10",
                "--hidden-dim",
                "64",
                "--latent-dim",
                "4",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    evaluate = ["evaluate", "--run", str(run), "--num-samples", "50", "--no-progress"]
    assert main([*evaluate, "--dataset", str(tmp_path / "noise.npz")]) == 0
    assert detection_auroc(run, str(tmp_path / "noise.npz")) is None  # own images not yet
    result = json.loads((run / "eval-noise.json").read_text())
    assert result["num_examples"] == 12 and result["dataset"] == str(tmp_path / "noise.npz")
    assert main([*evaluate, "--dataset", str(own)]) == 0  # the run's own: the usual names
    own_result = json.loads((run / "eval.json").read_text())
    assert own_result["num_examples"] == 20
    capsys.readouterr()
    figure = tmp_path / "ood.png"
    assert main([*evaluate, "--dataset", str(tmp_path / "noise.npz"), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    area = detection_auroc(run, str(tmp_path / "noise.npz"))
    ours = np.load(run / "eval_examples.npz")["log_likelihood"]
    theirs = np.load(run / "eval-noise_examples.npz")["log_likelihood"]
    assert area == auroc(ours, theirs) and area > 0.9  # blocks look far likelier than noise
    assert f"AUROC {area:.3f}: how often one of the run's own test images" in out
    assert ours.mean() > theirs.mean() + 5
    assert Image.open(figure).size[0] > 300 and f"figure written to {figure}" in out
    with pytest.raises(ConfigError, match="no per-image estimates in .*eval_val_examples.npz"):
        evaluation_figure(run, "val")
    # a dataset of another image size, a label-conditional model, a figure not .png
    assert main([*evaluate, "--dataset", str(tmp_path / "wide.npz")]) == 2
    assert "the run models 1x8x8 images but" in capsys.readouterr().err
    assert main([*evaluate, "--dataset", "x.npz", "--figure", str(tmp_path / "f.jpg")]) == 2
    assert "cannot write a figure as 'f.jpg'; use a .png file name" in capsys.readouterr().err
    cvae = tmp_path / "cvae"
    assert (
        main(
            [
                "train",
                "--dataset",
                str(own),
                "--model",
                "cvae",
                "--epochs",
                "1",
                "--batch-size",
                "10",
                "--hidden-dim",
                "16",
                "--latent-dim",
                "2",
                "--out",
                str(cvae),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(cvae),
                "--dataset",
                str(tmp_path / "noise.npz"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "conditioned on its dataset's labels" in capsys.readouterr().err


def test_the_evaluation_guide_s_out_of_distribution_example_matches_its_record():
    repo = Path(__file__).parents[1]
    guide = (repo / "docs" / "guide" / "evaluation.md").read_text()
    record = repo / "docs" / "runs" / "fashion-mnist-first-1000" / "hvae-vamp-conv"
    area = detection_auroc(record, "/tmp/fashion-flipped.npz")  # found by the file's name
    assert f"`AUROC {area:.3f}: how often one of the run's own test images" in guide
    upright = np.load(record / "eval_examples.npz")["log_likelihood"]
    flipped = np.load(record / "eval-fashion-flipped_examples.npz")["log_likelihood"]
    assert f"{(upright > flipped).mean():.1%} of the images score lower" in guide


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"model": "hvae"},
        {"model": "cvae"},
        {"model": "completion"},
        {"model": "semi-supervised"},
        {"prior": "flow"},
        {"prior": "vamp"},
        {"likelihood": "autoregressive-bernoulli"},
        {"likelihood": "discretized-logistic"},
    ],
    ids=lambda options: "-".join(options.values()) or "vae",
)
def test_recorded_passes_give_the_eager_estimates_bit_for_bit(options, caplog):
    vae = ModelConfig(latent_dim=3, hidden_dims=(16,), **options).build((1, 8, 8), num_classes=4)
    images, labels = prototype_images(5)
    if options.get("likelihood") == "discretized-logistic":
        images = (images * 255).round() / 255
    inputs = vae.scoring_inputs(images, labels)
    # 50 samples in passes of 40 and 10: two recorded graphs per input shape
    settings = {"num_samples": 50, "max_batch": 40, "seed": 3}
    with caplog.at_level(logging.INFO, logger=estimators.__name__):
        recorded = estimate_log_likelihood(vae.model, vae.guide, *inputs, **settings)
    assert "without recorded passes" not in caplog.text  # replayed, not run eagerly
    eager = estimate_log_likelihood(vae.model, vae.guide, *inputs, record=False, **settings)
    for key in ("log_likelihood", "elbo", "kl", "posterior_mean"):
        assert torch.equal(getattr(recorded, key), getattr(eager, key)), key
    assert torch.isfinite(recorded.log_likelihood).all()


def test_a_guide_that_reads_values_on_the_host_is_evaluated_eagerly(caplog):
    def host_reading_guide(x):
        widen = 1.5 if float(x.sum()) > 0 else 1.0  # a Python branch on a value
        std = POSTERIOR_COV.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(posterior_mean(x), widen * std).to_event(1))

    x = torch.randn(6, DATA_DIM) + B
    settings = {"num_samples": 200, "max_batch": 400, "seed": 0}
    with caplog.at_level(logging.INFO, logger=estimators.__name__):
        estimates = estimate_log_likelihood(ppca_model, host_reading_guide, x, **settings)
    assert "evaluating without recorded passes: it reads a tensor's value" in caplog.text
    eager = estimate_log_likelihood(ppca_model, host_reading_guide, x, record=False, **settings)
    assert torch.equal(estimates.log_likelihood, eager.log_likelihood)
    exact = dist.MultivariateNormal(B, W @ W.T + NOISE**2 * torch.eye(DATA_DIM)).log_prob(x)
    assert torch.allclose(estimates.log_likelihood, exact, atol=0.05)
