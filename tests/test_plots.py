"""Figures: every PNG is written, readable and drawn from the model it claims to show."""

import re
import statistics
from pathlib import Path

import matplotlib.image
import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, ConfigError, Prior, TrainConfig, train
from pyro_vae.cli import main
from pyro_vae.data.images import DATASETS
from pyro_vae.figures.plots import (
    FIGURES,
    FigureInputs,
    image_grid,
    interpolation_figure,
    kl_per_dimension,
    latent_figure,
    lerp,
    manifold_figure,
    plot_run,
    principal_components,
    prior_marginals,
    reconstructions_figure,
    samples_figure,
    slerp,
    training_figure,
    traversals_figure,
)

SYSTEM_COPY = DATASETS["fashion-mnist"].system_dirs[0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(**overrides) -> TrainConfig:
    options = dict(
        latent_dim=2,
        hidden_dims=(32,),
        batch_size=64,
        lr=3e-3,
        epochs=2,
        device="cpu",
        image_shape=(1, 8, 8),
    )
    options.update(overrides)
    return TrainConfig(**options)


def inputs_for(vae: VAE, data, metrics=()) -> FigureInputs:
    return FigureInputs.create(
        vae, data.test, data.test_labels, data.class_names, data.image_shape, list(metrics)
    )


def plotted(fig, panel: int = 0) -> np.ndarray:
    """The image array a figure's panel shows."""
    return np.asarray(fig.axes[panel].images[0].get_array())


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert 2_000 < path.stat().st_size < 500_000, path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 150 <= height <= 4000 and 300 <= width <= 4000, (path, width, height)


class LaplacePrior(Prior):
    """A non-Gaussian prior: independent Laplace(0, 1) coordinates."""

    def forward(self):
        return dist.Laplace(torch.zeros(self.latent_dim), 1.0).to_event(1)


class AffineNormalPrior(Prior):
    """N(loc, scale^2) written as a transformed distribution, so the plots cannot see it is
    Gaussian and must summarize it from draws."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = torch.linspace(-1, 1, latent_dim)
        self.scale = torch.linspace(0.5, 2, latent_dim)

    def forward(self):
        base = dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)
        transform = dist.transforms.AffineTransform(self.loc, self.scale, event_dim=1)
        return dist.TransformedDistribution(base, transform)


@pytest.mark.parametrize("latent_dim", [2, 5])
def test_plot_run_writes_every_figure_as_a_png(tmp_path, tiny_data, latent_dim):
    run = tmp_path / "run"
    train(tiny_config(latent_dim=latent_dim), run, data=tiny_data, progress=False)
    paths = plot_run(run, data=tiny_data)
    assert paths == [run / "figures" / f"{name}.png" for name in FIGURES]
    assert set(FIGURES) == {
        "reconstructions",
        "samples",
        "interpolation",
        "traversals",
        "latent",
        "manifold",
        "training",
    }
    for path in paths:
        check_png(path)
    # Same run, same seed: the figures are reproducible byte for byte.
    again = plot_run(run, tmp_path / "again", data=tiny_data)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_plot_of_a_completion_model_draws_its_completions(tmp_path, tiny_data):
    run = tmp_path / "run"
    train(tiny_config(model="completion", epochs=1), run, data=tiny_data, progress=False)
    assert plot_run(run, data=tiny_data) == [run / "figures" / "completions.png"]
    grid = matplotlib.image.imread(run / "figures" / "completions.png")
    # six test images, a row each: observed, baseline, 8 completions, truth (8x8, 2 apart)
    assert grid.shape[:2] == (6 * 10 + 2, 11 * 10 + 2)


def test_plot_run_rejects_data_of_another_shape(tmp_path, tiny_data):
    train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    wrong = tiny_data.to("cpu")
    wrong.test = torch.zeros(5, 10)
    with pytest.raises(ConfigError, match="models 64 values per example but the images have 10"):
        plot_run(tmp_path / "run", data=wrong)


def test_figures_show_the_models_own_outputs(tmp_path, tiny_data):
    trained = train(tiny_config(epochs=5), tmp_path / "run", data=tiny_data, progress=False)
    untrained = tiny_config(seed=1).build_vae().eval()
    inputs = {
        name: inputs_for(vae, tiny_data)
        for name, vae in (("trained", trained), ("untrained", untrained))
    }

    # Reconstructions: the right panel is exactly the model's reconstructions of the left.
    fig = reconstructions_figure(inputs["trained"], per_class=3)
    shown = tiny_data.test[
        torch.cat([torch.nonzero(tiny_data.test_labels == c)[:3, 0] for c in range(4)])
    ]
    np.testing.assert_array_equal(plotted(fig, 0), image_grid(shown, (1, 8, 8), 3))
    np.testing.assert_allclose(
        plotted(fig, 1), image_grid(trained.reconstruct(shown), (1, 8, 8), 3)
    )
    recon = trained.reconstruct(shown)
    assert (recon[0] - recon[3]).abs().max() > 0.1  # different inputs, different reconstructions

    # Samples: decoder means (grey levels, not 0/1 draws) at prior draws under the same seed.
    torch.manual_seed(3)
    fig = samples_figure(inputs["trained"], side=4)
    torch.manual_seed(3)
    expected = trained.decode(dist.Normal(0, 1).expand([16, 2]).to_event(1).sample())
    np.testing.assert_allclose(plotted(fig), image_grid(expected, (1, 8, 8), 4), atol=1e-6)
    assert not np.isin(plotted(fig)[2:10, 2:10], (0.0, 1.0)).all()

    # Every figure differs between the trained and the untrained model.
    for name, draw in FIGURES.items():
        torch.manual_seed(0)
        a = draw(inputs["trained"])
        torch.manual_seed(0)
        b = draw(inputs["untrained"])
        a.canvas.draw()
        b.canvas.draw()
        pixels = [np.asarray(f.canvas.buffer_rgba()) for f in (a, b)]
        assert pixels[0].shape != pixels[1].shape or not np.array_equal(*pixels), name


def test_manifold_decodes_the_standard_normal_quantile_grid(tiny_data):
    vae = tiny_config().build_vae().eval()
    fig = manifold_figure(inputs_for(vae, tiny_data), steps=5)
    # Kingma & Welling: z = Phi^-1(p) for p evenly spaced in [0.05, 0.95]; z2 grows upwards.
    q = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, 5)]
    z = torch.tensor([[q[col], q[4 - row]] for row in range(5) for col in range(5)])
    np.testing.assert_allclose(plotted(fig), image_grid(vae.decode(z), (1, 8, 8), 5), atol=1e-5)
    assert fig.axes[0].get_xlabel() == "z1" and fig.axes[0].get_ylabel() == "z2"
    legend = latent_figure(inputs_for(vae, tiny_data)).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(tiny_data.class_names)


def test_traversals_sweep_each_dimension_in_kl_order(tmp_path, tiny_data):
    vae = train(
        tiny_config(latent_dim=3, epochs=5), tmp_path / "run", data=tiny_data, progress=False
    )
    inputs = inputs_for(vae, tiny_data)
    fig = traversals_figure(inputs, steps=5, example=2)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    kls = [float(label.split("KL ")[1]) for label in labels]
    assert kls == sorted(kls, reverse=True) and len(set(kls)) == 3
    order = [int(label.split()[0][1:]) - 1 for label in labels]
    expected = []
    for d in order:  # an independent, unvectorized construction of the rows
        for value in (-3.0, -1.5, 0.0, 1.5, 3.0):
            z = vae.encode(tiny_data.test[2:3])[0][0].clone()
            z[d] = value
            expected.append(vae.decode(z))
    np.testing.assert_allclose(
        plotted(fig), image_grid(torch.stack(expected), (1, 8, 8), 5), atol=1e-5
    )


def test_interpolation_rows_follow_straight_and_spherical_paths(tiny_data):
    vae = tiny_config(latent_dim=3).build_vae().eval()
    fig = interpolation_figure(inputs_for(vae, tiny_data), num_pairs=1, steps=3)
    a, b = (int(torch.nonzero(tiny_data.test_labels == c)[0, 0]) for c in (0, 1))
    za, zb = vae.encode(tiny_data.test[[a, b]])[0]
    rows = [
        tiny_data.test[a],
        vae.decode(za),
        vae.decode((za + zb) / 2),
        vae.decode(zb),
        tiny_data.test[b],
    ]
    half_angle = torch.acos(torch.cosine_similarity(za, zb, dim=0)) / 2
    mid = (za + zb) / (2 * torch.cos(half_angle))  # slerp at t = 1/2
    rows += [tiny_data.test[a], vae.decode(za), vae.decode(mid), vae.decode(zb), tiny_data.test[b]]
    np.testing.assert_allclose(plotted(fig), image_grid(torch.stack(rows), (1, 8, 8), 5), atol=1e-5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["a → b, linear", "a → b, spherical"]


def test_non_gaussian_prior_uses_empirical_marginals(tiny_data):
    vae = VAE(data_dim=64, latent_dim=2, hidden_dims=(16,), prior=LaplacePrior(2)).eval()
    torch.manual_seed(0)
    inputs = inputs_for(vae, tiny_data)
    assert not inputs.marginals.exact
    laplace = torch.distributions.Laplace(0.0, 1.0)
    probs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    quantiles = inputs.marginals.quantiles(probs)
    torch.testing.assert_close(
        quantiles, laplace.icdf(probs)[:, None].expand(5, 2), atol=0.05, rtol=0
    )
    torch.testing.assert_close(inputs.marginals.scale, torch.full((2,), 2**0.5), atol=0.05, rtol=0)
    # No spherical rows (their rationale is the Gaussian shell); every figure still draws.
    fig = interpolation_figure(inputs, num_pairs=2)
    assert all("linear" in t.get_text() for t in fig.axes[0].get_yticklabels())
    for draw in FIGURES.values():
        draw(inputs)


def test_kl_per_dimension_matches_a_monte_carlo_estimate(tiny_data):
    torch.manual_seed(0)
    vae = tiny_config(latent_dim=3).build_vae().eval()
    images = tiny_data.test[:32]
    kl = kl_per_dimension(vae, images, prior_marginals(vae.prior()))
    loc, scale = vae.encode(images)
    q = torch.distributions.Normal(loc, scale)
    z = q.sample((20_000,))
    monte_carlo = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).mean((0, 1))
    torch.testing.assert_close(kl, monte_carlo, atol=0.01, rtol=0.02)
    # A Gaussian prior the plots cannot recognize: moment matching recovers the exact KL.
    exact = torch.distributions.Normal(AffineNormalPrior(3).loc, AffineNormalPrior(3).scale)
    q_kl = torch.distributions.kl_divergence(q, exact).mean(0)
    marginals = prior_marginals(AffineNormalPrior(3)())
    assert not marginals.exact
    torch.testing.assert_close(kl_per_dimension(vae, images, marginals), q_kl, atol=0.03, rtol=0.02)


@pytest.mark.parametrize("conditional_prior", [False, True])
def test_a_label_conditional_run_is_drawn_at_the_test_labels(
    tmp_path, tiny_data, conditional_prior
):
    config = tiny_config(model="cvae", conditional_prior=conditional_prior, epochs=3)
    vae = train(config, tmp_path / "run", data=tiny_data, progress=False)
    paths = plot_run(tmp_path / "run", data=tiny_data)
    assert [path.stem for path in paths] == list(FIGURES)
    for path in paths:
        check_png(path)
    inputs = inputs_for(vae, tiny_data)
    y = vae.one_hot(tiny_data.test_labels)
    torch.testing.assert_close(inputs.encodings, vae.encode(tiny_data.test, y)[0])
    # p(z) summarized over the test labels: one N(0, I) for all, or a mixture of p(z|y)
    assert inputs.marginals.exact is not conditional_prior
    if conditional_prior:
        mixture_mean = vae.prior(y).mean.mean(0)
        torch.testing.assert_close(inputs.marginals.loc, mixture_mean, atol=0.05, rtol=0)

    # Reconstructions given each image's own label, which they depend on.
    fig = reconstructions_figure(inputs, per_class=2)
    index = torch.cat([torch.nonzero(tiny_data.test_labels == c)[:2, 0] for c in range(4)])
    shown = tiny_data.test[index]
    expected = vae.reconstruct(shown, y[index])
    np.testing.assert_allclose(plotted(fig, 1), image_grid(expected, (1, 8, 8), 2), atol=1e-6)
    relabelled = vae.reconstruct(shown, y[index].roll(1, dims=1))
    assert (expected - relabelled).abs().max() > 1e-3

    # Samples: a row per class, each drawn from p(z|y) and decoded under y.
    torch.manual_seed(3)
    fig = samples_figure(inputs, side=3)
    torch.manual_seed(3)
    classes = vae.one_hot(torch.arange(4))
    rows = vae.decode(vae.prior(classes).sample((3,)), classes).transpose(0, 1)
    np.testing.assert_allclose(
        plotted(fig), image_grid(rows.flatten(0, 1), (1, 8, 8), 3), atol=1e-6
    )
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(tiny_data.class_names)

    # Interpolation: the labels move with z, from the first image's to the second's.
    fig = interpolation_figure(inputs, num_pairs=1, steps=3)
    a, b = (int(torch.nonzero(tiny_data.test_labels == c)[0, 0]) for c in (0, 1))
    za, zb = inputs.encodings[[a, b]]
    middle = vae.decode((za + zb) / 2, (y[a] + y[b]) / 2)
    linear = torch.stack([tiny_data.test[a], vae.decode(za, y[a]), middle, vae.decode(zb, y[b]),
                          tiny_data.test[b]])  # fmt: skip
    np.testing.assert_allclose(plotted(fig)[:12], image_grid(linear, (1, 8, 8), 5)[:12], atol=1e-6)

    # Traversals and the manifold decode under the label of the image they start from.
    fig = traversals_figure(inputs, steps=3, example=5)
    name = tiny_data.class_names[tiny_data.test_labels[5]]
    assert f"({name}) under its label" in fig.axes[0].get_title()
    d = int(inputs.kl.argmax())  # the first row
    z = inputs.encodings[5].repeat(3, 1)
    z[:, d] = inputs.marginals.loc[d] + torch.tensor([-3.0, 0.0, 3.0]) * inputs.marginals.scale[d]
    first_row = image_grid(vae.decode(z, y[5]), (1, 8, 8), 3)
    np.testing.assert_allclose(plotted(fig)[:12], first_row, atol=1e-6)
    fig = manifold_figure(inputs, steps=3, example=5)
    assert f"under the label of test image 6 ({name})" in fig.axes[0].get_title()
    q = inputs.marginals.quantiles(torch.linspace(0.05, 0.95, 3))
    z = torch.stack([torch.stack([q[c, 0], q[2 - r, 1]]) for r in range(3) for c in range(3)])
    grid = image_grid(vae.decode(z, y[5]), (1, 8, 8), 3)
    np.testing.assert_allclose(plotted(fig), grid, atol=1e-5)


def test_lerp_and_slerp():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t = torch.linspace(0, 1, 5)
    line = lerp(a, b, t)
    torch.testing.assert_close(line[2], torch.tensor([0.5, 0.5]))
    arc = slerp(a, b, t)
    torch.testing.assert_close(arc[[0, -1]], torch.stack([a, b]))
    torch.testing.assert_close(arc.norm(dim=-1), torch.ones(5))  # stays on the unit circle
    angles = torch.atan2(arc[:, 1], arc[:, 0])
    torch.testing.assert_close(angles, t * torch.pi / 2)  # at constant angular speed
    batched = slerp(torch.stack([a, 2 * a]), torch.stack([b, 2 * a]), t)  # (2, 5, 2)
    torch.testing.assert_close(batched[0], arc)
    torch.testing.assert_close(batched[1], (2 * a).expand(5, 2))  # parallel: no NaN


def test_principal_components_find_the_axes_of_largest_variance():
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator))
    z = torch.randn(5000, 4, generator=generator) * torch.tensor([3.0, 1.0, 0.3, 0.1])
    projections, ratio = principal_components(z @ rotation.T + 5)
    torch.testing.assert_close(ratio, torch.tensor([9.0, 1.0]) / 10.1, atol=0.01, rtol=0)
    for i in range(2):
        correlation = torch.corrcoef(torch.stack([projections[:, i], z[:, i]]))[0, 1]
        assert abs(correlation) > 0.99


def test_plot_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error: ") and "config.json does not exist" in err
    assert err.count("\n") == 1


def test_plot_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    text = capsys.readouterr().out
    for option in ("--run", "--out", "--data-root", "--device"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--plot" in capsys.readouterr().out


@pytest.mark.skipif(not SYSTEM_COPY.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_train_plot_and_plot_write_the_figures_of_a_fashion_mnist_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--subset",
                "500",
                "--epochs",
                "1",
                "--latent-dim",
                "2",
                "--out",
                str(run),
                "--data-root",
                str(tmp_path / "data"),
                "--no-progress",
                "--plot",
            ]
        )
        == 0
    )
    assert f"7 figures written to {run / 'figures'}" in capsys.readouterr().out
    for name in FIGURES:
        check_png(run / "figures" / f"{name}.png")
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "figs")]) == 0
    for name in FIGURES:
        copy = (tmp_path / "figs" / f"{name}.png").read_bytes()
        assert copy == (run / "figures" / f"{name}.png").read_bytes()


def test_figures_shown_in_the_readme_and_the_figures_guide_exist_and_are_pngs():
    root = Path(__file__).parents[1]
    pattern = r"!\[[^\]]*\]\((?:docs/|\.\./)figures/([^)]+\.png)\)"
    readme = re.findall(pattern, (root / "README.md").read_text())
    guide = re.findall(pattern, (root / "docs" / "guide" / "figures.md").read_text())
    assert "samples.png" in readme
    assert {"samples.png", "reconstructions.png", "manifold.png"} <= set(guide)
    for name in readme + guide:
        check_png(root / "docs" / "figures" / name)


def test_training_curves_of_an_iwae_run_show_the_bound_that_selects_its_best_epoch(tiny_data):
    vae = tiny_config().build_vae().eval()
    rows = [
        {"epoch": 1, "train_loss": 30.0, "val_elbo": -32.0, "val_iwae": -31.0},
        {"epoch": 2, "train_loss": 29.0, "val_elbo": -31.5, "val_iwae": -30.2},
    ]
    curves = training_figure(inputs_for(vae, tiny_data, rows)).axes[0]
    shown = {line.get_label(): list(line.get_ydata()) for line in curves.lines}
    assert shown["validation −IWAE bound (selects the best epoch)"] == [31.0, 30.2]
    assert shown["train loss (−IWAE bound, running mean)"] == [30.0, 29.0]
    assert all(tick == int(tick) for tick in curves.get_xticks())  # whole epochs only
    plain = [{key: row[key] for key in ("epoch", "train_loss", "val_elbo")} for row in rows]
    labels = [
        line.get_label()
        for line in training_figure(inputs_for(vae, tiny_data, plain)).axes[0].lines
    ]
    assert labels == ["train loss (−β-weighted ELBO, running mean)", "validation −ELBO"]
