"""Runs side by side: what each one is, how far it trained, what it reached.

:func:`summarize_run` reads a run directory (``config.json``, ``metrics.jsonl`` and, once
``pyro-vae evaluate`` has run, ``eval.json`` and its per-image estimates; no checkpoint
is needed, so copied records of runs work too) into a :class:`RunSummary`;
:func:`comparison_table` puts several in a Markdown table naming the options they differ
in, with each run's :func:`paired_difference` to a baseline where the per-image
estimates allow. ``pyro-vae compare RUN...`` prints it and draws
:func:`~pyro_vae.figures.plots.comparison_figure`.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pyro_vae.analysis.evaluation import generalization_gap
from pyro_vae.config import DATA_FIELDS, TrainConfig
from pyro_vae.runs import (
    best_epoch,
    read_config,
    read_evaluation,
    read_examples,
    read_metrics,
    stopped_early,
    validation_name,
    validation_score,
)

#: Options that say where or how safely a run was computed, not what it computed: they
#: are not listed among the options runs differ in.
INCIDENTAL_FIELDS = (
    "data_root",
    "device",
    "checkpoint_every",
    "on_nan",
    "cuda_graph",
    "record_forward",
    *DATA_FIELDS,
)


@dataclass(frozen=True, eq=False)  # a run is itself: its arrays have no plain equality
class RunSummary:
    """One run as its directory tells it.

    :param name: how tables and figures call it.
    :param metrics: one row per finished epoch (``metrics.jsonl``).
    :param evaluation: the test-set estimate (``eval.json``), or None before ``evaluate``.
    :param per_image: its log-likelihood estimate of each test image, where ``evaluate``
        wrote them (:func:`~pyro_vae.runs.examples_path`) and they match ``evaluation``.
    :param overfitting: train minus test log-likelihood, where the training images were
        evaluated too (:func:`~pyro_vae.analysis.evaluation.generalization_gap`).
    """

    name: str
    config: TrainConfig
    metrics: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    per_image: np.ndarray | None = None
    overfitting: float | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        """The best epoch's metrics row (:func:`~pyro_vae.runs.best_epoch`)."""
        return best_epoch(self.metrics)

    @property
    def status(self) -> str:
        """``finished`` (all ``epochs`` trained), ``early-stopped`` (no validation gain
        for ``patience`` epochs) or ``unfinished`` (resumable with ``--resume``)."""
        if self.metrics and self.metrics[-1]["epoch"] >= self.config.epochs:
            return "finished"
        if stopped_early(self.metrics, self.config.patience):
            return "early-stopped"
        return "unfinished"

    @property
    def hours(self) -> float:
        """Wall time of the finished epochs, validation included."""
        return sum(row["seconds"] for row in self.metrics) / 3600


def summarize_run(run_dir: str | Path, name: str | None = None) -> RunSummary:
    """The :class:`RunSummary` of ``run_dir``, called ``name`` (default: its path)."""
    run_dir = Path(run_dir)
    config, metrics = read_config(run_dir), read_metrics(run_dir)
    evaluation = read_evaluation(run_dir)
    name = str(run_dir) if name is None else name
    return RunSummary(
        name,
        config,
        metrics,
        evaluation,
        read_examples(run_dir, evaluation),
        generalization_gap(run_dir),
    )


def summarize_runs(run_dirs: Sequence[str | Path]) -> list[RunSummary]:
    """:func:`summarize_run` of each, named by their directory names where those are
    unique, else by their paths."""
    paths = [Path(run_dir) for run_dir in run_dirs]
    unique = len({path.resolve().name for path in paths}) == len(paths)
    return [summarize_run(path, path.resolve().name if unique else str(path)) for path in paths]


def differing_options(configs: Sequence[TrainConfig]) -> list[str]:
    """The options (:class:`~pyro_vae.config.TrainConfig` fields) whose values are not the
    same in all ``configs``, :data:`INCIDENTAL_FIELDS` left out."""
    return [
        f.name
        for f in fields(TrainConfig)
        if f.name not in INCIDENTAL_FIELDS
        and any(getattr(c, f.name) != getattr(configs[0], f.name) for c in configs[1:])
    ]


def _option(name: str, value: Any) -> str:
    if isinstance(value, dict):  # a component's options: prior_options, likelihood_options
        return (
            ", ".join(f"{name.removesuffix('options')}{key}={item}" for key, item in value.items())
            or f"{name}={{}}"
        )
    shown = " ".join(map(str, value)) if isinstance(value, tuple | list) else value
    return f"{name}={shown}"


def _estimate(evaluation: dict[str, Any] | None) -> str:
    if evaluation is None:
        return "not evaluated"
    return (
        f"{evaluation['test_log_likelihood']:.2f} ± {evaluation['log_likelihood_stderr']:.2f} "
        f"(epoch {evaluation.get('epoch', '?')}, K={evaluation['num_samples']}, "
        f"{evaluation['num_examples']} images)"
    )


def paired_difference(baseline: RunSummary, other: RunSummary) -> tuple[float, float] | None:
    r"""Mean and standard error of ``other``'s minus ``baseline``'s test log-likelihood,
    image by image: :math:`\bar d \pm s_d/\sqrt n` with :math:`d_i = \log p_2(x_i) -
    \log p_1(x_i)`; None unless both have per-image estimates of the same test images.

    Scored on the same images, two models' estimates share each image's difficulty, so
    the difference is known far better than the ± of each mean suggests.
    """
    first, second = baseline.per_image, other.per_image
    if first is None or second is None or first.shape != second.shape:
        return None
    same_images = ("dataset", "binarize")
    if any(getattr(baseline.config, name) != getattr(other.config, name) for name in same_images):
        return None
    difference = second.astype(np.float64) - first
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(difference.size))


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{hours:.2f} h"


def baseline(summaries: Sequence[RunSummary]) -> RunSummary | None:
    """The run the others' :func:`paired_difference` is taken to: the first with per-image
    estimates."""
    return next((summary for summary in summaries if summary.per_image is not None), None)


def paired_text(baseline: RunSummary, other: RunSummary) -> str:
    """``+0.59 ± 0.07``, or nothing when the two cannot be paired."""
    difference = paired_difference(baseline, other)
    return f"{difference[0]:+.2f} ± {difference[1]:.2f}" if difference else ""


def comparison_table(summaries: Sequence[RunSummary]) -> str:
    """A Markdown table with a row per run: the options it differs in from the others, its
    best epoch, status, best validation bound, test log-likelihood (± its standard error
    over the test images), training time, where any run's training images were evaluated
    its overfitting (train minus test log-likelihood), and, where per-image estimates
    allow, its :func:`paired_difference` to the first run that has them."""
    differing = differing_options([summary.config for summary in summaries])
    first = baseline(summaries)
    overfitting = any(summary.overfitting is not None for summary in summaries)
    extra = (" train − test |" if overfitting else "") + (
        f" vs {first.name} (paired) |" if first is not None else ""
    )
    lines = [
        "| run | options | best epoch / trained | status | best validation | "
        f"test log-likelihood | training time |{extra}",
        "|---|---|---|---|---|---|---|" + "---|" * extra.count("|"),
    ]
    for summary in summaries:
        options = ", ".join(_option(name, getattr(summary.config, name)) for name in differing)
        best = summary.best
        epochs = f"{best['epoch']} / {summary.metrics[-1]['epoch']}" if best else "0"
        validation = f"{validation_name(best)} {validation_score(best):.2f}" if best else ""
        row = (
            f"| {summary.name} | {options or 'same'} | {epochs} | {summary.status} | "
            f"{validation} | {_estimate(summary.evaluation)} | {_duration(summary.hours)} |"
        )
        if overfitting:
            gap = summary.overfitting
            row += f" {gap:.2f} |" if gap is not None else " |"
        if first is not None:
            row += " baseline |" if summary is first else f" {paired_text(first, summary)} |"
        lines.append(row)
    return "\n".join(lines)
