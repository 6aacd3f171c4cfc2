r"""Tables from a trained run of a table: its missing cells filled in (``pyro-vae impute``)
and new rows drawn from the model (``pyro-vae sample`` of a table's run).

Every missing cell of the file's rows gets the most likely value under the posterior
predictive distribution given the row's observed cells
(:func:`~pyro_vae.inference.prediction.posterior_predictive_mean`): a continuous cell its
predictive mean, a count its mean rounded, a binary or categorical cell its most probable
value. Observed cells, and the columns the model does not model (the label, those
declared ``ignore``), are written back as they were read.

Generated rows are draws :math:`x \sim p(x|z)`, :math:`z \sim p(z)` (for ``cvae``, of the
given label, or of every label in turn), not decoder means: their columns should be
distributed as the real ones are.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyro import poutine

from pyro_vae.core.errors import ConfigError
from pyro_vae.core.files import atomic_write, check_writable, make_directory
from pyro_vae.core.seeding import seeded
from pyro_vae.data.tables import TableSchema, read_table
from pyro_vae.inference.prediction import posterior_predictive_mean
from pyro_vae.models.vae import VAE
from pyro_vae.runs import Run

#: The formats ``impute`` writes, by file suffix.
TABLE_WRITERS = {
    ".csv": lambda frame, file: frame.to_csv(file, index=False, mode="wb"),
    ".parquet": lambda frame, file: frame.to_parquet(file, index=False),
}


@torch.no_grad()
def impute_rows(
    vae: VAE,
    frame: pd.DataFrame,
    schema: TableSchema,
    *,
    num_samples: int = 1000,
    max_batch: int = 20_000,
) -> pd.DataFrame:
    """``frame`` with every missing cell of a modelled column filled in (see the module
    doc), as a new table; ``schema`` codes the rows as the model was trained."""
    device = next(vae.parameters()).device
    vectors = torch.from_numpy(schema.encode(frame, "the table to impute")).to(device)
    labels = torch.from_numpy(schema.labels(frame, "the table to impute")).to(device)
    predicted = posterior_predictive_mean(
        vae.model,
        vae.guide,
        *vae.batch_inputs(vectors, labels),
        num_particles=num_samples,
        max_batch=max_batch,
    )
    filled = schema.decode(predicted)
    completed = frame.copy()
    for column in schema.columns:
        missing = completed[column.name].isna().to_numpy()
        if missing.any():
            completed[column.name] = completed[column.name].astype(object)
            completed.loc[missing, column.name] = filled[column.name].to_numpy()[missing]
            completed[column.name] = completed[column.name].infer_objects()
    return completed


def impute_run(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    device: str = "auto",
    checkpoint: str | None = None,
) -> Path:
    """Fill in the missing cells of the table file ``data`` with the run's model and write
    the completed table to ``out`` (``.csv`` or ``.parquet``, written atomically).

    :param num_samples: importance samples of z per row.
    :param checkpoint: which saved model, as in :func:`~pyro_vae.load_run`.
    """
    out = Path(out)
    _check_table_path(out)
    if num_samples <= 0:
        raise ConfigError(f"`num_samples` must be positive, got {num_samples}")
    run = _table_run(run_dir, device, checkpoint)
    schema = run.config.table_schema
    frame, test_rows = read_table(data)
    if test_rows is not None:
        frame = pd.concat([frame, test_rows], ignore_index=True)
    with seeded(seed, run.device):
        completed = impute_rows(run.model, frame, schema, num_samples=num_samples)
    return write_table(completed, out)


def _check_table_path(path: Path) -> None:
    if path.suffix not in TABLE_WRITERS:
        raise ConfigError(
            f"cannot write a table as {path.name!r}; use a file name ending in "
            f"{' or '.join(TABLE_WRITERS)}"
        )
    check_writable(path.parent)  # before the work


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` atomically in the format of ``path``'s suffix."""
    make_directory(path.parent)
    atomic_write(path, lambda file: TABLE_WRITERS[path.suffix](frame, file))
    return path


@torch.no_grad()
def generate_rows(
    vae: VAE, schema: TableSchema, num: int, label: int | None = None
) -> pd.DataFrame:
    """``num`` rows drawn from the model (see the module doc), with the label column of a
    labelled table."""
    device = next(vae.parameters()).device
    classes = max(1, len(schema.label_values))
    if label is not None and not 0 <= label < classes:
        raise ConfigError(f"`label` must be between 0 and {classes - 1}, got {label}")
    labels = torch.arange(num, device=device) % classes if label is None else None
    labels = torch.full((num,), label, device=device) if labels is None else labels
    blank = torch.full((num, vae.data_dim), float("nan"), device=device)
    trace = poutine.trace(poutine.uncondition(vae.model)).get_trace(
        *vae.batch_inputs(blank, labels)
    )
    frame = schema.decode(trace.nodes["x"]["value"])
    if schema.label is not None:
        codes = labels.cpu().numpy()
        frame[schema.label] = np.asarray(schema.label_values, dtype=object)[codes]
    return frame


def sample_rows_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    num: int = 1000,
    label: int | None = None,
    seed: int = 0,
    device: str = "auto",
    checkpoint: str | None = None,
) -> Path:
    """Draw ``num`` rows from a table's run (:func:`generate_rows`) and write them to
    ``out`` (``.csv`` or ``.parquet``, written atomically)."""
    out = Path(out)
    _check_table_path(out)
    if num <= 0:
        raise ConfigError(f"`num` must be positive, got {num}")
    run = _table_run(run_dir, device, checkpoint)
    with seeded(seed, run.device):
        frame = generate_rows(run.model, run.config.table_schema, num, label)
    return write_table(frame, out)


def _table_run(run_dir: str | Path, device: str, checkpoint: str | None) -> Run:
    run = Run(run_dir, device, checkpoint)
    if run.config.table is None:
        raise ConfigError(f"{run_dir} models images, not a table; give the run of a table")
    return run


__all__ = ["generate_rows", "impute_rows", "impute_run", "sample_rows_run", "write_table"]
