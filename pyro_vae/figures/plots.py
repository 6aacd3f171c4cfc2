r"""Figures of a trained VAE: reconstructions, samples, interpolations, traversals, latents.

Each figure is a function ``FigureInputs -> matplotlib.figure.Figure`` registered in
:data:`FIGURES` under its file name; :func:`plot_run` draws them all for a run directory
and writes ``<name>.png``. Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas
(no pyplot state, whatever pyplot's backend), so they work headless. Images are shown as the
likelihood mean :math:`\mathbb E[x|z]` (``vae.decode``), never as noisy draws.

:func:`plot_run` draws from the *grey-level* test images, also for runs trained on
dynamically binarized data: a binarized image is one noisy draw from these pixel
probabilities, so the grey image is what a reconstruction (a pixel probability) should be
compared with, and it is a valid encoder input in [0, 1] (the mean of the binarization).

Everything that depends on p(z) goes through the :class:`~pyro_vae.components.priors.Prior`
interface, summarized per dimension by :func:`prior_marginals`:

* when p(z) is a factorized Gaussian :math:`\prod_d \mathcal N(m_d, s_d^2)` (the
  ``normal`` prior) the summary is exact: marginal quantiles are
  :math:`m_d + s_d \Phi^{-1}(p)`, interpolation is also shown spherical, and the KL per
  dimension is closed form;
* for any other prior (mixtures, VampPrior, flows) the marginal :math:`p(z_d)` is
  summarized from :data:`NUM_PRIOR_SAMPLES` prior draws: quantiles are empirical
  quantiles of the draws, :math:`(m_d, s_d)` their mean and standard deviation, and the
  "KL per dimension" is :math:`\mathrm{KL}(q(z_d|x)\,\|\,\mathcal N(m_d, s_d^2))` against
  that moment-matched Gaussian: an approximation that ranks dimensions by how far their
  posteriors move from the prior's bulk, not the exact KL (a non-factorized prior has no
  per-dimension KL). Spherical interpolation is omitted: its rationale is the Gaussian shell.

A label-conditional model (:attr:`~pyro_vae.models.vae.VAE.conditions_on_labels`) is drawn
at the test images' own conditions (their one-hot labels): encodings and reconstructions
given each image's label, samples a row per class, traversals and the manifold under the
label of the image they start from, interpolations with the labels interpolated along
with z. Its p(z) is summarized as the mixture of :math:`p(z|y)` over the test labels:
exact when every :math:`p(z|y)` is the same factorized Gaussian (a label-independent
N(0, I)), from draws otherwise.
"""

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch.distributions import Independent, Normal, kl_divergence
from torchvision.utils import make_grid

from pyro_vae.analysis.compare import RunSummary, baseline, paired_text
from pyro_vae.analysis.evaluation import foreign_dataset
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.files import atomic_write, check_writable, make_directory
from pyro_vae.core.seeding import seeded
from pyro_vae.data.images import ImageData, load_images
from pyro_vae.figures.canvas import DPI, agg_figure
from pyro_vae.figures.classification import confusion_figure
from pyro_vae.figures.samples import save_grid
from pyro_vae.inference.estimators import auroc
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.runs import (
    Run,
    examples_path,
    read_config,
    read_evaluation,
    read_examples,
    read_metrics,
    same_model,
)

#: Prior draws used to summarize a non-Gaussian prior's marginals.
NUM_PRIOR_SAMPLES = 20_000
#: Traversals sweep each z_d over m_d + t s_d for t in [-TRAVERSAL_RANGE, TRAVERSAL_RANGE].
TRAVERSAL_RANGE = 3.0
#: The manifold grid spans these marginal quantiles (Kingma & Welling 2014, fig. 4).
MANIFOLD_QUANTILES = (0.05, 0.95)
#: An image tile is TILE_INCHES wide (a 28x28 image at ~2x zoom, at the canvas's DPI),
#: smaller where a grid would exceed GRID_INCHES (keeping PNGs well under 500 KB).
TILE_INCHES = 0.6
GRID_INCHES = 8.0
#: Seed of every random choice in the figures (prior samples), so re-plotting is identical.
PLOT_SEED = 0


@dataclass(frozen=True)
class PriorMarginals:
    r"""Per-dimension summary of p(z): location, scale and quantile function of each marginal.

    ``exact`` is True when p(z) is a factorized Gaussian, whose marginals these are;
    otherwise ``draws`` holds the prior samples the summary was computed from.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    exact: bool
    draws: torch.Tensor | None = None

    def quantiles(self, probs: torch.Tensor) -> torch.Tensor:
        """``(len(probs), latent_dim)``: each marginal's quantile function at ``probs``."""
        if self.draws is None:
            return Normal(self.loc, self.scale).icdf(probs[:, None])
        return torch.quantile(self.draws, probs, dim=0)


@torch.no_grad()
def prior_marginals(
    prior: torch.distributions.Distribution, num_samples: int = NUM_PRIOR_SAMPLES
) -> PriorMarginals:
    """Summarize ``prior`` (event shape ``(latent_dim,)``) per dimension; see the module doc.

    A prior with a batch shape (a conditional prior at the conditions of several examples)
    is summarized as the equally weighted mixture of its batch entries.
    """
    base = prior.base_dist if isinstance(prior, Independent) else prior
    latent_dim = prior.event_shape[-1]
    if isinstance(base, Normal) and base.batch_shape == prior.batch_shape + prior.event_shape:
        loc = base.loc.expand(base.batch_shape).reshape(-1, latent_dim)
        scale = base.scale.expand(base.batch_shape).reshape(-1, latent_dim)
        if (loc == loc[0]).all() and (scale == scale[0]).all():  # one Gaussian for all
            return PriorMarginals(loc[0], scale[0], exact=True)
    per_entry = math.ceil(num_samples / prior.batch_shape.numel())
    draws = prior.sample((per_entry,)).reshape(-1, latent_dim)
    return PriorMarginals(draws.mean(0), draws.std(0), exact=False, draws=draws)


@torch.no_grad()
def kl_per_dimension(
    vae: VAE, images: torch.Tensor, marginals: PriorMarginals, *conditions: torch.Tensor
) -> torch.Tensor:
    r"""Average over ``images`` of :math:`\mathrm{KL}(q(z_d|x, c)\,\|\,\mathcal N(m_d, s_d^2))`.

    Closed form; exact per-dimension KL for a factorized Gaussian prior (see the module
    doc for other priors). ``conditions``: those of a conditional model, one per image.
    Shape ``(latent_dim,)``, nats.
    """
    loc, scale = vae.encode(images, *conditions)
    return kl_divergence(Normal(loc, scale), Normal(marginals.loc, marginals.scale)).mean(0)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points ``(1 - t) a + t b``: ``a, b`` of shape ``(..., d)``, ``t`` (T,) -> ``(..., T, d)``."""
    t = t[:, None]
    return (1 - t) * a[..., None, :] + t * b[..., None, :]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents).

    :math:`\frac{\sin((1-t)\Omega)}{\sin\Omega} a + \frac{\sin(t\Omega)}{\sin\Omega} b` with
    :math:`\Omega` the angle between ``a`` and ``b``; linear where they are (anti)parallel.
    Shapes as in :func:`lerp`.
    """
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
    omega = torch.acos(cos)[..., None, None]  # (..., 1, 1)
    t = t[:, None]
    sin = torch.sin(omega)
    degenerate = sin.abs() < 1e-6
    safe_sin = torch.where(degenerate, torch.ones_like(sin), sin)
    w_a = torch.where(degenerate, 1 - t, torch.sin((1 - t) * omega) / safe_sin)
    w_b = torch.where(degenerate, t, torch.sin(t * omega) / safe_sin)
    return w_a * a[..., None, :] + w_b * b[..., None, :]


def principal_components(z: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of ``z`` (n, d) on its top ``k`` principal axes, and their variance ratios."""
    centred = z - z.mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    return centred @ vh[:k].T, variance[:k] / variance.sum()


def examples_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices ``(num_classes_present, k)`` of the first ``k`` examples of each present class.

    ``k`` is ``per_class`` or the size of the smallest class, whichever is smaller.
    """
    classes = labels.unique()
    members = [torch.nonzero(labels == c).flatten() for c in classes]  # one pass per class
    k = min(per_class, *(len(m) for m in members))
    return torch.stack([m[:k] for m in members])


@dataclass
class FigureInputs:
    """What the figures are drawn from: a trained VAE, test images, and per-run summaries.

    ``encodings`` are the posterior means of ``images``; ``kl`` the average KL per latent
    dimension (:func:`kl_per_dimension`); ``metrics`` the run's per-epoch rows;
    ``conditions`` the model's conditions of each image (a cvae's one-hot labels; none for
    an unconditional model).
    """

    vae: VAE
    images: torch.Tensor
    labels: torch.Tensor
    class_names: Sequence[str]
    image_shape: tuple[int, ...]
    metrics: list[dict[str, Any]]
    marginals: PriorMarginals
    encodings: torch.Tensor
    kl: torch.Tensor
    conditions: tuple[torch.Tensor, ...] = ()

    @classmethod
    @torch.no_grad()
    def create(
        cls,
        vae: VAE,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: Sequence[str],
        image_shape: Sequence[int],
        metrics: list[dict[str, Any]] | None = None,
    ) -> "FigureInputs":
        """Move ``images`` to the VAE's device, encode them (given their labels, for a
        label-conditional model) and summarize the prior."""
        image_shape = tuple(image_shape)
        if images.shape[1] != vae.data_dim or np.prod(image_shape) != vae.data_dim:
            raise ConfigError(
                f"the VAE models {vae.data_dim} values per example but the images have "
                f"{images.shape[1]} (shape {image_shape}); plot it with the data it was trained on"
            )
        device = next(vae.parameters()).device
        images, labels = images.to(device), labels.cpu()
        conditions = ()
        if vae.conditions_on_labels:
            conditions = vae.batch_inputs(images, labels.to(device))[1:]
        marginals = prior_marginals(vae.prior(*conditions))
        return cls(
            vae=vae,
            images=images,
            labels=labels,
            class_names=tuple(class_names),
            image_shape=image_shape,
            metrics=list(metrics or []),
            marginals=marginals,
            encodings=vae.encode(images, *conditions)[0],
            kl=kl_per_dimension(vae, images, marginals, *conditions),
            conditions=conditions,
        )

    def class_name(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]

    def conditions_of(self, index: torch.Tensor | int) -> tuple[torch.Tensor, ...]:
        """The conditions of the images ``index`` (none for an unconditional model)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.images.device)
        return tuple(condition[index] for condition in self.conditions)


def image_grid(images: torch.Tensor, image_shape: tuple[int, ...], ncols: int) -> np.ndarray:
    """Flat images ``(n, prod(image_shape))`` tiled ``ncols`` wide as an RGB array in [0, 1]."""
    tiles = images.detach().float().cpu().clamp(0, 1).reshape(-1, *image_shape)
    return make_grid(tiles, nrow=ncols, padding=2, pad_value=0.5).permute(1, 2, 0).numpy()


def _show_grid(
    ax: Axes,
    images: torch.Tensor,
    image_shape: tuple[int, ...],
    ncols: int,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
) -> None:
    """Draw an image grid on ``ax``, with optional labels centred on its rows and columns."""
    ax.imshow(image_grid(images, image_shape, ncols), interpolation="nearest")
    height, width = image_shape[-2:]
    ax.set_yticks([2 + i * (height + 2) + height / 2 for i in range(len(row_labels))])
    ax.set_yticklabels(row_labels)
    ax.set_xticks([2 + i * (width + 2) + width / 2 for i in range(len(col_labels))])
    ax.set_xticklabels(col_labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _grid_figure(
    rows: int, cols: int, panels: int = 1, label_inches: float = 1.5, extent: float = GRID_INCHES
) -> Figure:
    """A figure sized for ``panels`` grids of ``rows x cols`` tiles plus room for labels.

    Tiles shrink from :data:`TILE_INCHES` so that a grid spans at most ``extent`` inches.
    """
    tile = min(TILE_INCHES, extent / max(rows, cols))
    return agg_figure(figsize=(panels * cols * tile + label_inches, rows * tile + 1.2))


def reconstructions_figure(inputs: FigureInputs, per_class: int = 8) -> Figure:
    """Test images (left) and their reconstructions (right), one row per class."""
    index = examples_per_class(inputs.labels, per_class)
    rows, cols = index.shape
    x = inputs.images[index.flatten().to(inputs.images.device)]
    conditions = inputs.conditions_of(index.flatten())
    fig = _grid_figure(rows, cols, panels=2)
    left, right = fig.subplots(1, 2)
    names = [inputs.class_name(i) for i in index[:, 0]]
    _show_grid(left, x, inputs.image_shape, cols, row_labels=names)
    left.set_title("test images")
    _show_grid(right, inputs.vae.reconstruct(x, *conditions), inputs.image_shape, cols)
    right.set_title("reconstructions" + (" given their labels" if conditions else ""))
    fig.suptitle("Reconstructions: decoder mean E[x|z] at the posterior mean of q(z|x)")
    return fig


def samples_figure(inputs: FigureInputs, side: int = 10) -> Figure:
    """A ``side x side`` grid of decoder means at draws from the prior; for a conditional
    model, ``side`` draws per class, a row each, under that class's conditions."""
    if not inputs.conditions:
        fig = _grid_figure(side, side, label_inches=0.3)
        ax = fig.subplots()
        _show_grid(ax, inputs.vae.sample(side * side), inputs.image_shape, side)
        ax.set_title("Samples: decoder mean E[x|z] at z ~ p(z)")
        return fig
    first = examples_per_class(inputs.labels, 1).flatten()  # one image per class: its label
    images = inputs.vae.sample(side, *inputs.conditions_of(first))  # (side, classes, D)
    fig = _grid_figure(len(first), side, label_inches=1.5)
    ax = fig.subplots()
    names = [inputs.class_name(i) for i in first]
    _show_grid(ax, images.transpose(0, 1).flatten(0, 1), inputs.image_shape, side, names)
    ax.set_title("Samples: decoder mean E[x|z, y] at z ~ p(z|y), a row per class y")
    return fig


def interpolation_figure(inputs: FigureInputs, num_pairs: int = 5, steps: int = 10) -> Figure:
    """Decoded points on lines between test encodings of different classes.

    Each row starts and ends with the two test images; between them, ``steps`` decoded
    points from one encoding to the other, linear and (for a Gaussian prior) spherical.
    Spherical interpolation runs in prior-standardized coordinates ``(z - m) / s``.
    """
    ends = examples_per_class(inputs.labels, 1).flatten()
    if len(ends) < 2:  # a single class: interpolate between its first two images
        ends = torch.arange(2)
    ends = ends[: 2 * min(num_pairs, len(ends) // 2)].reshape(-1, 2)
    device = inputs.images.device
    z = inputs.encodings[ends.to(device)]  # (pairs, 2, d)
    t = torch.linspace(0, 1, steps, device=device)
    paths = {"linear": lerp(z[:, 0], z[:, 1], t)}
    if inputs.marginals.exact:
        m, s = inputs.marginals.loc, inputs.marginals.scale
        paths["spherical"] = slerp((z[:, 0] - m) / s, (z[:, 1] - m) / s, t) * s + m
    # a conditional model's conditions (one-hot labels) move along with z: (pairs, T, C)
    pair_conditions = inputs.conditions_of(ends.flatten())
    conditions = [lerp(*c.reshape(-1, 2, c.shape[-1]).unbind(1), t) for c in pair_conditions]
    decoded = {kind: inputs.vae.decode(path, *conditions) for kind, path in paths.items()}

    x = inputs.images[ends.to(device)]  # (pairs, 2, D)
    rows = torch.stack(
        [torch.cat([x[:, :1], decoded[kind], x[:, 1:]], dim=1) for kind in decoded], dim=1
    )  # (pairs, kinds, T + 2, D)
    labels = [
        f"{inputs.class_name(a)} → {inputs.class_name(b)}, {kind}"
        for a, b in ends.tolist()
        for kind in decoded
    ]
    fig = _grid_figure(len(labels), steps + 2, label_inches=2.6)
    ax = fig.subplots()
    cols = ["start"] + [f"{v:.2g}" for v in t.tolist()] + ["end"]
    _show_grid(ax, rows.flatten(0, 2), inputs.image_shape, steps + 2, labels, cols)
    ax.set_xlabel("interpolation weight t (first and last columns: the test images)")
    along = ", labels interpolated with z" if conditions else ""
    ax.set_title(f"Interpolation between test encodings: decoder mean along each path{along}")
    return fig


def traversals_figure(inputs: FigureInputs, steps: int = 7, example: int = 0) -> Figure:
    """Each latent dimension swept around one test encoding, dimensions sorted by KL.

    Row ``d`` decodes the encoding of test image ``example`` with ``z_d`` replaced by
    ``m_d + t s_d`` (prior marginal location and scale), ``t`` over
    ``[-TRAVERSAL_RANGE, TRAVERSAL_RANGE]``: for N(0, I), ``z_d`` itself over [-3, 3].
    """
    latent_dim = inputs.kl.shape[0]
    order = inputs.kl.argsort(descending=True)
    t = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, steps, device=inputs.kl.device)
    z = inputs.encodings[example].repeat(latent_dim, steps, 1)  # (rows, steps, d)
    m, s = inputs.marginals.loc, inputs.marginals.scale
    z[torch.arange(latent_dim), :, order] = m[order, None] + t * s[order, None]
    labels = [f"z{d + 1}  KL {inputs.kl[d]:.2f}" for d in order.tolist()]
    fig = _grid_figure(latent_dim, steps, label_inches=1.8, extent=2.5 * GRID_INCHES)  # tall
    ax = fig.subplots()
    cols = [f"{round(v, 2) + 0.0:g}" for v in t.tolist()]  # + 0.0: no "-0"
    decoded = inputs.vae.decode(z, *inputs.conditions_of(example))  # under the image's label
    _show_grid(ax, decoded.flatten(0, 1), inputs.image_shape, steps, labels, cols)
    ax.set_xlabel("t: z_d = m_d + t·s_d  (prior marginal location m_d, scale s_d)")
    ax.set_title(
        f"Latent traversals of test image {example + 1} ({inputs.class_name(example)})"
        f"{' under its label' if inputs.conditions else ''},\n"
        "rows sorted by average KL(q(z_d|x) || p(z_d)) on the test set"
    )
    return fig


def latent_figure(inputs: FigureInputs) -> Figure:
    """Test encodings (posterior means) coloured by class: raw in 2-D, else PCA.

    A 1-D latent is drawn as one jittered strip per class.
    """
    z = inputs.encodings.cpu()
    latent_dim = z.shape[1]
    labels = inputs.labels
    if latent_dim == 2:
        xy, axes = z, ("z1", "z2")
        how = "posterior means"
    elif latent_dim > 2:
        xy, ratio = principal_components(z)
        axes = tuple(f"PC{i + 1} ({r:.0%} of variance)" for i, r in enumerate(ratio.tolist()))
        how = f"PCA of the {latent_dim}-D posterior means"
    else:
        jitter = torch.rand(len(labels), generator=torch.Generator().manual_seed(PLOT_SEED))
        xy = torch.stack([z[:, 0], labels + 0.6 * (jitter - 0.5)], dim=1)
        axes, how = ("z1", "class"), "posterior means"
    fig = agg_figure(figsize=(8.5, 6.5))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10" if len(inputs.class_names) <= 10 else "tab20"]
    for c, name in enumerate(inputs.class_names):  # one scatter per class, for the legend
        ax.scatter(
            *xy[labels == c].numpy().T,
            s=3,
            alpha=0.6,
            color=colours(c),
            label=name,
            rasterized=True,
        )
    ax.legend(markerscale=4, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if latent_dim == 1:
        ax.set_yticks(range(len(inputs.class_names)), inputs.class_names)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    examples = "rows" if len(inputs.image_shape) == 1 else "images"
    ax.set_title(f"Latent space: {how} of {len(labels)} test {examples}")
    return fig


def manifold_figure(inputs: FigureInputs, steps: int = 20, example: int = 0) -> Figure:
    """Decoded grid over the prior's marginal quantiles (Kingma & Welling 2014, fig. 4).

    For a 2-D latent, the classic figure. For more dimensions, the plane of the two
    dimensions with the highest KL, the others held at their prior location ``m_d``.
    A conditional model decodes under the conditions of test image ``example``.
    """
    latent_dim = inputs.kl.shape[0]
    dims = inputs.kl.argsort(descending=True)[:2].tolist() if latent_dim > 2 else [0, 1]
    dims = dims[:latent_dim]
    probs = torch.linspace(*MANIFOLD_QUANTILES, steps, device=inputs.kl.device)
    q = inputs.marginals.quantiles(probs)  # (steps, d)
    rows = steps if len(dims) == 2 else 1
    z = inputs.marginals.loc.repeat(rows, steps, 1)
    z[:, :, dims[0]] = q[:, dims[0]]  # columns: first dimension, left to right
    if len(dims) == 2:
        z[:, :, dims[1]] = q.flip(0)[:, dims[1], None]  # rows: second dimension, upwards
    fig = _grid_figure(rows, steps, label_inches=0.8)
    ax = fig.subplots()
    ticks = [f"{v:.2g}" for v in q[:, dims[0]].tolist()]
    row_ticks = [f"{v:.2g}" for v in q.flip(0)[:, dims[1]].tolist()] if len(dims) == 2 else []
    decoded = inputs.vae.decode(z, *inputs.conditions_of(example)).flatten(0, 1)
    _show_grid(ax, decoded, inputs.image_shape, steps, row_ticks, ticks)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel(f"z{dims[0] + 1}")
    if len(dims) == 2:
        ax.set_ylabel(f"z{dims[1] + 1}")
    where = "" if latent_dim <= 2 else f", other {latent_dim - 2} dims at their prior location"
    source = "" if inputs.marginals.exact else " (empirical, from prior draws)"
    if inputs.conditions:
        where += f",\nunder the label of test image {example + 1} ({inputs.class_name(example)})"
    ax.set_title(
        f"Learned manifold: decoder mean over prior quantiles {MANIFOLD_QUANTILES[0]:g}–"
        f"{MANIFOLD_QUANTILES[1]:g}{source}{where}"
    )
    return fig


def training_figure(inputs: FigureInputs) -> Figure:
    """Train loss and validation -ELBO (and -IWAE bound, for runs trained on it) per epoch;
    KL per latent dimension at the end."""
    fig = agg_figure(figsize=(12, 4.5))
    curves, bars = fig.subplots(1, 2, width_ratios=(1, 1.3))
    epochs = [row["epoch"] for row in inputs.metrics]
    iwae = bool(inputs.metrics) and "val_iwae" in inputs.metrics[0]  # trained on the IWAE bound
    objective = "−IWAE bound" if iwae else "−β-weighted ELBO"
    curves.plot(
        epochs,
        [row["train_loss"] for row in inputs.metrics],
        "o-",
        label=f"train loss ({objective}, running mean)",
    )
    curves.plot(
        epochs, [-row["val_elbo"] for row in inputs.metrics], "s-", label="validation −ELBO"
    )
    if iwae:
        curves.plot(
            epochs,
            [-row["val_iwae"] for row in inputs.metrics],
            "^-",
            label="validation −IWAE bound (selects the best epoch)",
        )
    curves.set_xlabel("epoch")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
    curves.set_ylabel("nats per image (lower is better)")
    curves.set_title("Training curves")
    curves.grid(alpha=0.3)
    curves.legend()

    order = inputs.kl.argsort(descending=True).tolist()
    kl = inputs.kl.cpu()[order].numpy()
    bars.bar(range(len(order)), kl, color="tab:purple")
    bars.set_xticks(
        range(len(order)),
        [str(d + 1) for d in order],
        fontsize=7,
        rotation=90 if len(order) > 20 else 0,
    )
    bars.set_xlabel("latent dimension (sorted by KL)")
    against = "p(z_d)" if inputs.marginals.exact else "Gaussian fit to p(z_d)"
    bars.set_ylabel(f"mean KL(q(z_d|x) || {against}), nats")
    bars.set_title(f"KL per latent dimension on the test set (total {kl.sum():.1f} nats)")
    bars.grid(alpha=0.3, axis="y")
    return fig


def draw_validation_curves(
    axis: Axes,
    curves: Mapping[str, Sequence[dict[str, Any]]],
    first_epochs: Mapping[str, int] | None = None,
    window: float = 40.0,
) -> None:
    """The validation ELBO of each run (its metrics rows) per epoch, on ``axis``.

    ``first_epochs`` shifts a run's epochs (a fine-tuned run continues its source's best
    epoch). The y-axis spans at most the ``window`` nats below the highest value, where
    runs are compared; earlier epochs of a long run fall off its bottom.
    """
    values = [row["val_elbo"] for rows in curves.values() for row in rows]
    for name, rows in curves.items():
        shift = (first_epochs or {}).get(name, 0)
        axis.plot(
            [shift + row["epoch"] for row in rows],
            [row["val_elbo"] for row in rows],
            "o-" if len(rows) < 20 else "-",
            markersize=3,
            label=name,
        )
    if values:
        top = max(values) + 2
        axis.set_ylim(max(min(values) - 2, top - window), top)
    axis.set(xlabel="epoch", ylabel="validation ELBO (nats; higher is better)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def comparison_figure(summaries: Sequence[RunSummary]) -> Figure:
    """Runs side by side (``pyro-vae compare``): validation ELBO per epoch (left) and, for
    the runs evaluated, test log-likelihood ± its standard error over the test images."""
    evaluated = [summary for summary in summaries if summary.evaluation is not None]
    fig = agg_figure(figsize=(12, 4.5) if evaluated else (7, 4.5))
    axes = fig.subplots(1, 2 if evaluated else 1, squeeze=False)[0]
    draw_validation_curves(axes[0], {summary.name: summary.metrics for summary in summaries})
    axes[0].set_title("Validation ELBO by epoch")
    if evaluated:
        colours = {line.get_label(): line.get_color() for line in axes[0].lines}
        results = [summary.evaluation for summary in evaluated]
        for row, (summary, result) in enumerate(zip(evaluated, results, strict=True)):
            axes[1].errorbar(
                result["test_log_likelihood"],
                row,
                fmt="o",
                capsize=3,
                xerr=result["log_likelihood_stderr"],
                color=colours[summary.name],
            )
        first, labels = baseline(evaluated), []
        for summary in evaluated:  # each name, with its paired difference where there is one
            paired = "" if first is None or summary is first else paired_text(first, summary)
            labels.append(
                f"{summary.name}\n{paired} vs {first.name}, paired" if paired else summary.name
            )
        axes[1].set_yticks(range(len(results)), labels)
        axes[1].set_ylim(len(results) - 0.5, -0.5)  # first run on top
        samples = sorted({r["num_samples"] for r in results})
        axes[1].set(
            xlabel=f"test log p(x), K={'/'.join(map(str, samples))} (nats; higher is better)",
            title="Test log-likelihood ± standard error",
        )
        axes[1].grid(alpha=0.3, axis="x")
    return fig


def evaluation_figure(
    run_dir: str | Path, split: str = "test", dataset: str | None = None
) -> Figure:
    """Histogram of the per-image log-likelihoods that ``evaluate`` wrote for these images
    (``split`` of the run's dataset, or of ``dataset``), and, where they are other images,
    of the run's test images' (evaluated on the same saved model) beside them: how much
    better the model explains its training images (``split="train"``), or how well it
    tells its own kind of images from another dataset's (with their AUROC)."""
    config = read_config(run_dir)
    dataset = foreign_dataset(config, dataset)
    own_test = dataset is None and split == "test"
    evaluated = read_evaluation(run_dir, split, dataset)
    values = read_examples(run_dir, evaluated, split, dataset)
    if evaluated is None or values is None:
        raise ConfigError(
            f"no per-image estimates in {examples_path(run_dir, split, dataset)}; run "
            "`pyro-vae evaluate` on these images first"
        )
    own = Path(config.dataset).name  # a file's name, not its whole path
    samples = {f"{Path(dataset).name if dataset else own} {split}": values}
    test = None if own_test else read_evaluation(run_dir)
    reference = read_examples(run_dir, test) if same_model(test, evaluated) else None
    if reference is not None:
        samples = {f"{own} test": reference, **samples}
    fig = agg_figure(figsize=(7, 4.5))
    axis = fig.subplots()
    bins = np.histogram_bin_edges(np.concatenate(list(samples.values())), bins=60)
    for name, scores in samples.items():
        axis.hist(
            scores,
            bins=bins,
            alpha=0.5,
            density=True,
            label=f"{name}: mean {scores.mean():.2f}, {scores.size} images",
        )
    title = f"Per-image {evaluated['estimates']}, K={evaluated['num_samples']}"
    if reference is not None and dataset is not None:
        title += f"; AUROC {auroc(reference, values):.3f}"
    axis.set(xlabel=f"{evaluated['estimates']} (nats)", ylabel="density", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return fig


#: Registry of figures by file name (without ``.png``).
#: Completions that ``plot`` draws of a completion model (six test images).
COMPLETIONS = 48

FIGURES: dict[str, Callable[[FigureInputs], Figure]] = {
    "reconstructions": reconstructions_figure,
    "samples": samples_figure,
    "interpolation": interpolation_figure,
    "traversals": traversals_figure,
    "latent": latent_figure,
    "manifold": manifold_figure,
    "training": training_figure,
}


def check_png_path(path: str | Path) -> Path:
    """``path`` if it names a PNG file, else a :class:`ConfigError` saying so."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"cannot write a figure as {path.name!r}; use a .png file name")
    return path


def save_png(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` cropped to its content, losslessly, as 8-bit greyscale when it has no
    colour, else RGB: image grids are grey, and one channel instead of four halves their PNGs.
    The folder is created if needed.
    """
    path = check_png_path(path)
    make_directory(path.parent)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    rgb = np.asarray(Image.open(buffer).convert("RGB"))  # opaque white background
    grey = bool((rgb == rgb[..., :1]).all())
    image = Image.fromarray(rgb[..., 0] if grey else rgb)
    atomic_write(path, lambda file: image.save(file, format="png", optimize=True))


def save_figures(inputs: FigureInputs, out: str | Path) -> list[Path]:
    """Draw every figure of :data:`FIGURES` and write it to ``out/<name>.png``."""
    out = make_directory(Path(out))
    paths = []
    for name, draw in FIGURES.items():
        path = out / f"{name}.png"
        save_png(draw(inputs), path)
        paths.append(path)
    return paths


def plot_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    data: ImageData | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | None = None,
) -> list[Path]:
    """Write every figure of the run in ``run_dir`` to ``out`` (default ``run_dir/figures``).

    :param data: images to use instead of the run's dataset (its ``test`` split is drawn).
    :param data_root: where to find the dataset, if not where the run was trained from.
    :param checkpoint: which saved model, as in :func:`~pyro_vae.load_run`.
    :return: the paths written.
    """
    run = Run(run_dir, device, checkpoint)
    out = check_writable(run.dir / "figures" if out is None else Path(out))
    config, vae = run.config, run.model
    if not vae.draws_whole_images:  # the completion model: its figure is its completions
        data = run.data if data is None else data.to(run.device)
        with seeded(PLOT_SEED, run.device):
            images, nrow = vae.sample_grid(COMPLETIONS, None, data)
        return [save_grid(images, config.image_shape, out / "completions.png", nrow)]
    if data is None:  # grey levels (see the module doc); only the test split is drawn
        root = data_root if data_root is not None else config.data_root
        data = load_images(config.dataset, root, binarize=False, subset=1)
    # figures are reproducible, the caller's RNG kept
    with seeded(PLOT_SEED, next(vae.parameters()).device):
        inputs = FigureInputs.create(
            vae,
            data.test,
            data.test_labels,
            data.class_names,
            data.image_shape,
            read_metrics(run_dir),
        )
        paths = save_figures(inputs, out)
        if isinstance(vae, SemiSupervisedVAE):  # a classifier: its test predictions
            save_png(confusion_figure(vae, data.test, data.test_labels, data.class_names),
                     out / "confusion.png")  # fmt: skip
            paths.append(out / "confusion.png")
        return paths
