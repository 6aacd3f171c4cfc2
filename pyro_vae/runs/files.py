"""The files of a run directory: ``config.json``, ``metrics.jsonl`` and the results of
``evaluate`` (``eval*.json`` and the per-image estimates beside them).

Every file is written atomically (:func:`pyro_vae.core.files.atomic_write`), so a
crash at any moment leaves either the previous version or the new one, never a
torn file.
"""

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from pyro_vae.config import DATA_FIELDS, TrainConfig
from pyro_vae.core.errors import CheckpointError, ConfigError
from pyro_vae.core.files import atomic_write
from pyro_vae.data.images import SPLITS

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
#: The model of the epoch with the best validation ELBO so far (what early stopping keeps).
BEST_FILE = "best.pt"
#: Which saved model ``load_run`` and the commands load, by ``checkpoint`` name.
CHECKPOINTS = {"last": CHECKPOINT_FILE, "best": BEST_FILE}
METRICS_FILE = "metrics.jsonl"
#: Per-image estimates, written beside each result file (``eval_examples.npz``, ...):
#: what a paired comparison of two runs on the same images needs.
EXAMPLES_SUFFIX = "_examples.npz"
#: Suffix of the per-row estimates of a table's rows, as a table.
ROWS_SUFFIX = "_rows.csv"


def save_config(run_dir: Path, config: TrainConfig) -> None:
    text = json.dumps(config.to_dict(), indent=2).encode()
    atomic_write(run_dir / CONFIG_FILE, lambda f: f.write(text))


def read_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a run was started with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist; is {run_dir} a directory made by `pyro-vae train`?"
        )
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:  # bad JSON, or values TrainConfig rejects
        raise CheckpointError(f"{path} is not a valid pyro-vae config ({error})") from error


def read_options(path: str | Path) -> dict[str, Any]:
    """The train options a JSON file sets: a run's ``config.json`` (or the run directory
    itself), or any subset of its keys, checked as :class:`TrainConfig` checks them. The
    fields set from the data are left out."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    try:
        values = json.loads(file.read_text())
        config = TrainConfig.from_dict(values)  # names, types and values checked
    except OSError as error:
        raise ConfigError(
            f"cannot read {file} ({error.strerror}); pass a JSON file of train options "
            "or a run directory"
        ) from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file} is not valid JSON ({error}); fix it or pass another") from error
    except ConfigError as error:
        raise ConfigError(f"{file} does not hold valid train options: {error}") from error
    return {name: getattr(config, name) for name in values if name not in DATA_FIELDS}


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as file:
        file.write(json.dumps(row) + "\n")


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` by ``rows`` (the checkpoint's copy is the reference)."""
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    atomic_write(run_dir / METRICS_FILE, lambda f: f.write(text))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path} line {number} is not valid JSON ({error}); the run was probably "
                "killed while writing it: continue it with `resume=True`, which rewrites the file"
            ) from error
    return rows


def evaluation_stem(split: str = "test", dataset: str | None = None) -> str:
    """The name, without suffix, of the files that :func:`evaluate_run` writes for the
    images of ``split`` (one of :data:`~pyro_vae.data.images.SPLITS`): ``eval`` for the test
    images, ``eval_val``, ``eval_train``; of another dataset's (``dataset``: a
    :data:`~pyro_vae.data.images.DATASETS` name or an image file), ``eval-mnist``,
    ``eval-mnist_val``, ..., after the name or the file's stem."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    stem = "eval" if dataset is None else "eval-" + re.sub(r"[^\w.-]", "-", Path(dataset).stem)
    return stem if split == "test" else f"{stem}_{split}"


def evaluation_path(run_dir: str | Path, split: str = "test", dataset: str | None = None) -> Path:
    """Where :func:`evaluate_run` writes its summary (``eval.json`` for the test images)."""
    return Path(run_dir) / f"{evaluation_stem(split, dataset)}.json"


def examples_path(run_dir: str | Path, split: str = "test", dataset: str | None = None) -> Path:
    """Where :func:`evaluate_run` writes the per-image estimates beside its summary: arrays
    ``log_likelihood``, ``elbo`` and ``kl``, one entry per image, in nats."""
    return Path(run_dir) / f"{evaluation_stem(split, dataset)}{EXAMPLES_SUFFIX}"


def rows_path(run_dir: str | Path, split: str = "test", dataset: str | None = None) -> Path:
    """Where :func:`evaluate_run` writes the per-row estimates of a table's rows as a
    table: the row's number in the file, ``log_likelihood``, ``elbo`` and ``kl``."""
    return Path(run_dir) / f"{evaluation_stem(split, dataset)}{ROWS_SUFFIX}"


def read_evaluation(
    run_dir: str | Path, split: str = "test", dataset: str | None = None
) -> dict[str, Any] | None:
    """What :func:`evaluate_run` wrote (:func:`evaluation_path`), or None if those images
    were not evaluated."""
    path = evaluation_path(run_dir, split, dataset)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}); evaluate the run again to rewrite it"
        ) from error
    numbers = ("num_examples", "num_samples", f"{split}_log_likelihood", "log_likelihood_stderr")
    if not isinstance(result, dict) or not all(
        isinstance(result.get(key), int | float) for key in numbers
    ):
        raise CheckpointError(
            f"{path} is not an evaluation pyro-vae wrote (it needs the numbers "
            f"{', '.join(numbers)}); evaluate the run again to rewrite it"
        )
    return result


def same_model(first: dict[str, Any] | None, second: dict[str, Any] | None) -> bool:
    """Whether two evaluations exist and measured the same saved model (checkpoint, epoch)."""
    if first is None or second is None:
        return False
    return all(first.get(key) == second.get(key) for key in ("checkpoint", "epoch"))


def read_examples(
    run_dir: str | Path,
    evaluation: dict[str, Any] | None,
    split: str = "test",
    dataset: str | None = None,
) -> np.ndarray | None:
    """The per-image log-likelihoods that :func:`evaluate_run` wrote beside its summary
    ``evaluation`` (as :func:`read_evaluation` returned it for the same ``split`` and
    ``dataset``; read once by the caller), or None where there are none that belong to it
    (evaluated by an older pyro-vae, or evaluated again since)."""
    path = examples_path(run_dir, split, dataset)
    if evaluation is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            values = stored["log_likelihood"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error}); evaluate the run again to rewrite it"
        ) from error
    mean = float(values.mean(dtype=np.float64))  # float32 sums drift on large magnitudes
    matches = values.shape == (evaluation["num_examples"],) and math.isclose(
        mean, evaluation[f"{split}_log_likelihood"], rel_tol=1e-5, abs_tol=1e-3
    )
    return values if matches else None
