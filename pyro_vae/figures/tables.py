"""Figures of a run trained on a table: what ``pyro-vae plot`` draws for rows instead of images.

- ``latent``: the test rows' posterior means, coloured by the label column (``latent``
  of :mod:`pyro_vae.figures.plots`);
- ``columns``: how well each column of the test rows is reconstructed (decoder mean at the
  posterior mean, observed cells only), beside the error of predicting every cell by the
  training rows' mean (numbers) or most frequent value (categories);
- ``marginals``: each column's distribution in the test rows and in rows drawn from the
  model (:func:`~pyro_vae.analysis.tables.generate_rows`);
- ``training``: the learning curves and the KL per latent dimension.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pyro_vae.analysis.tables import generate_rows
from pyro_vae.core.files import check_writable
from pyro_vae.core.seeding import seeded
from pyro_vae.data.tables import Column, TableData, table_frame
from pyro_vae.figures.canvas import agg_figure
from pyro_vae.figures.plots import (
    PLOT_SEED,
    FigureInputs,
    latent_figure,
    save_png,
    training_figure,
)
from pyro_vae.runs import Run

#: Rows drawn from the model for the ``marginals`` figure, and columns it shows at most.
GENERATED_ROWS = 2000
MAX_MARGINALS = 24


def column_errors(
    schema_columns: tuple[Column, ...], real: pd.DataFrame, guess: pd.DataFrame
) -> pd.Series:
    """Per column, the error of ``guess`` against ``real`` on the cells ``real`` has:
    numbers, the root mean squared error in the column's standard deviations (of the
    ``real`` rows for counts); categories, the share of wrong values."""
    errors = {}
    for column in schema_columns:
        observed = real[column.name].notna().to_numpy()
        truth, guessed = real[column.name][observed], guess[column.name][observed]
        if column.kind in ("binary", "categorical"):
            errors[column.name] = float((truth.astype(str) != guessed.astype(str)).mean())
            continue
        scale = column.std if column.kind == "continuous" else max(float(truth.std()), 1e-12)
        difference = truth.to_numpy(float) - guessed.to_numpy(float)
        errors[column.name] = float(np.sqrt(np.mean(difference**2))) / scale
    return pd.Series(errors)


def baseline_guess(data: TableData, rows: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ``rows`` guessed by the training rows' mean (numbers) or most
    frequent value (categories)."""
    training = table_frame(data, "train")
    guesses = {}
    for column in data.schema.columns:
        cells = training[column.name].dropna()
        if column.kind in ("binary", "categorical"):
            guesses[column.name] = cells.astype(str).mode().iloc[0]
        else:
            guesses[column.name] = float(cells.astype(float).mean())
    return pd.DataFrame({name: [value] * len(rows) for name, value in guesses.items()})


def columns_figure(vae, data: TableData) -> Figure:
    """Reconstruction error per column of the test rows, against the mean/mode guess."""
    real = table_frame(data, "test").reset_index(drop=True)
    reconstructed = data.schema.decode(
        vae.reconstruct(*vae.batch_inputs(data.test, data.test_labels))
    )
    model = column_errors(data.schema.columns, real, reconstructed)
    baseline = column_errors(data.schema.columns, real, baseline_guess(data, real))
    kinds = {column.name: column.kind for column in data.schema.columns}
    numeric = [name for name in model.index if kinds[name] in ("continuous", "count")]
    categories = [name for name in model.index if name not in numeric]
    panels = [
        (names, unit)
        for names, unit in ((numeric, "RMSE (standard deviations)"), (categories, "share wrong"))
        if names
    ]
    height = max(len(names) for names, _ in panels) * 0.28 + 1.5
    fig = agg_figure(figsize=(6.0 * len(panels), height))
    for ax, (names, unit) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        where = np.arange(len(names))
        ax.barh(where + 0.2, model[names], height=0.4, label="reconstruction")
        ax.barh(where - 0.2, baseline[names], height=0.4, color="0.7", label="mean / mode")
        ax.set_yticks(where, names)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.legend(loc="lower right", frameon=False)
    fig.suptitle(f"Reconstruction of the {len(real)} test rows' observed cells")
    return fig


def marginals_figure(data: TableData, generated: pd.DataFrame) -> Figure:
    """Each column's distribution: test rows against rows drawn from the model."""
    real = table_frame(data, "test")
    columns = data.schema.columns[:MAX_MARGINALS]
    cols = min(4, len(columns))
    rows = -(-len(columns) // cols)
    fig = agg_figure(figsize=(3.2 * cols, 2.4 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, column in zip(axes, columns, strict=False):
        _draw_marginal(ax, column, real[column.name].dropna(), generated[column.name])
    for ax in axes[len(columns) :]:
        ax.set_axis_off()
    axes[0].legend(frameon=False, fontsize="small")
    shown = "" if len(columns) == len(data.schema.columns) else f" (first {len(columns)})"
    fig.suptitle(f"Columns{shown}: {len(real)} test rows and {len(generated)} generated rows")
    return fig


def _draw_marginal(ax, column: Column, real: pd.Series, generated: pd.Series) -> None:
    if column.kind in ("binary", "categorical"):
        names = [str(value) for value in column.values]
        shares = [
            series.astype(str).value_counts(normalize=True).reindex(names, fill_value=0)
            for series in (real, generated)
        ]
        where = np.arange(len(names))
        ax.bar(where - 0.2, shares[0], width=0.4, label="test rows")
        ax.bar(where + 0.2, shares[1], width=0.4, label="generated", color="C1")
        ax.set_xticks(where, names, rotation=45 if len(names) > 4 else 0, fontsize="small")
    else:
        values = np.concatenate([real.to_numpy(float), generated.to_numpy(float)])
        bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=30)
        if column.kind == "count" and values.max() - values.min() < 30:  # a bar per count
            bins = np.arange(values.min(), values.max() + 2) - 0.5
        ax.hist(real.to_numpy(float), bins=bins, density=True, alpha=0.6, label="test rows")
        ax.hist(generated.to_numpy(float), bins=bins, density=True, alpha=0.6, label="generated")
    ax.set_title(f"{column.name} ({column.kind})", fontsize="medium")


@torch.no_grad()
def plot_table_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    checkpoint: str | None = None,
) -> list[Path]:
    """Write the figures of a table's run (see the module doc) to ``out`` (default
    ``run_dir/figures``); the arguments are :func:`~pyro_vae.figures.plots.plot_run`'s."""
    run = Run(run_dir, device, checkpoint)
    out = check_writable(run.dir / "figures" if out is None else Path(out))
    data, vae = run.data, run.model
    with seeded(PLOT_SEED, run.device):
        generated = generate_rows(vae, data.schema, GENERATED_ROWS)
        inputs = FigureInputs.create(
            vae, data.test, data.test_labels, data.class_names, data.image_shape, run.metrics
        )
        figures = {
            "latent": latent_figure(inputs),
            "columns": columns_figure(vae, data),
            "marginals": marginals_figure(data, generated),
            "training": training_figure(inputs),
        }
    paths = []
    for name, fig in figures.items():
        save_png(fig, out / f"{name}.png")
        paths.append(out / f"{name}.png")
    return paths
