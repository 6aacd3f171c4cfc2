"""Model selection over a run's metrics: the best epoch and early stopping."""

from collections.abc import Sequence
from typing import Any


def validation_score(row: dict[str, Any]) -> float:
    """What selects the best epoch, early-stops and steps the lr schedule: the validation
    value of the bound the run trains on, ``val_iwae`` (the IWAE bound with the run's
    particles, runs with ``objective="iwae"``) or else ``val_elbo``. An IWAE-trained model
    can gain in log-likelihood while its single-sample ELBO falls."""
    return row.get("val_iwae", row["val_elbo"])


def validation_name(row: dict[str, Any]) -> str:
    """The name of :func:`validation_score`'s bound in messages."""
    return "IWAE bound" if "val_iwae" in row else "ELBO"


def best_epoch(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The metrics row with the highest :func:`validation_score` (the first of ties); None
    if none."""
    return max(rows, key=validation_score, default=None)


def epochs_without_improvement(rows: Sequence[dict[str, Any]]) -> int:
    """Epochs since the best :func:`validation_score`."""
    best = best_epoch(rows)
    return 0 if best is None else rows[-1]["epoch"] - best["epoch"]


def stopped_early(rows: Sequence[dict[str, Any]], patience: int) -> bool:
    """Early stopping: with ``patience`` > 0, the validation score of ``rows`` (metrics, one
    per epoch) has not improved for ``patience`` epochs."""
    return patience > 0 and epochs_without_improvement(rows) >= patience
