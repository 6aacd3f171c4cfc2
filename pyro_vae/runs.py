"""Run directories: ``config.json``, ``checkpoint.pt`` and ``metrics.jsonl``.

Every file is written atomically (:func:`pyro_vae.core.files.atomic_write`), so a
crash at any moment leaves either the previous version or the new one, never a
torn file. A checkpoint with a non-finite value is refused rather than written
over a good one, and a checkpoint that is truncated, corrupted, incomplete or
does not fit the model raises :class:`CheckpointError` with what to do.

A checkpoint is a dict with the keys of :data:`CHECKPOINT_KEYS`: the model's and
optimizer's state, the position (``epoch`` epochs done and ``step`` steps into
the next), the RNG state, the config, the metrics rows so far and the number of
training images. Mid-epoch checkpoints (``step > 0``) also hold ``epoch_rng``,
``loss_sum`` and ``seconds`` of the epoch in progress (see :mod:`pyro_vae.training.loop`).
"""

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.components.likelihoods import bits_per_dim
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.config import DATA_FIELDS, MODEL_FIELDS, TrainConfig, resolve_device
from pyro_vae.core import distributed
from pyro_vae.core.errors import CheckpointError, ConfigError, NumericalError
from pyro_vae.core.files import atomic_write
from pyro_vae.data.images import SPLITS, ImageData, is_image_file, load_images
from pyro_vae.inference.estimators import (
    DEFAULT_MAX_BATCH,
    ChunkResults,
    auroc,
    estimate_log_likelihood,
)
from pyro_vae.models.vae import VAE

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
#: The model of the epoch with the best validation ELBO so far (what early stopping keeps).
BEST_FILE = "best.pt"
#: Which saved model ``load_run`` and the commands load, by ``--checkpoint`` name.
CHECKPOINTS = {"last": CHECKPOINT_FILE, "best": BEST_FILE}
METRICS_FILE = "metrics.jsonl"
#: Per-image estimates, written beside each result file (``eval_examples.npz``, ...):
#: what a paired comparison of two runs on the same images needs.
EXAMPLES_SUFFIX = "_examples.npz"
#: Seconds between two saves of an evaluation in progress (it is also saved on Ctrl-C).
EVALUATION_SAVE_SECONDS = 30.0

#: Version of the checkpoint layout; bumped when keys change meaning.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = (
    "format",
    "model",
    "optimizer",
    "epoch",
    "step",
    "rng",
    "config",
    "metrics",
    "num_train",
)
#: Extra keys of a checkpoint taken in the middle of an epoch.
MID_EPOCH_KEYS = ("epoch_rng", "loss_sum", "seconds")


def _brief(error: BaseException) -> str:
    """An exception as a short one-line detail (torch's messages run to paragraphs)."""
    text = " ".join(str(error).split())
    first = text.split(". ")[0]
    return f"{type(error).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"


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


def rng_state() -> dict[str, Any]:
    """Every random number generator training draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned; a damaged state raises :class:`CheckpointError`."""
    try:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"the checkpoint's random number generator state is damaged ({_brief(error)}); "
            "restore the checkpoint from a backup"
        ) from error


def _float_tensors(value: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating-point tensor inside nested dicts/lists/tuples, with its path."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _float_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _float_tensors(item, f"{name}[{i}]")


def nonfinite_entries(state: Any) -> list[str]:
    """Paths of the floating-point tensors in ``state`` that hold NaN or infinity."""
    return [name for name, tensor in _float_tensors(state) if not torch.isfinite(tensor).all()]


def save_checkpoint(run_dir: Path, state: dict[str, Any], file: str = CHECKPOINT_FILE) -> None:
    """Write ``state`` atomically; refuse non-finite values so a good checkpoint is never lost."""
    path = run_dir / file
    bad = nonfinite_entries(state)
    if bad:
        raise NumericalError(
            f"refusing to write a checkpoint with non-finite values in {', '.join(bad[:3])}"
            f"{' and more' if len(bad) > 3 else ''}; the previous checkpoint in {path} is unchanged"
        )
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as error:
        raise CheckpointError(
            f"could not write {path} ({error}); the previous checkpoint is unchanged. "
            "Free disk space or fix permissions, then continue with `resume=True`"
        ) from error


def load_checkpoint(
    run_dir: str | Path,
    map_location: str | torch.device = "cpu",
    keys: Sequence[str] = ("model",),
    file: str = CHECKPOINT_FILE,
) -> dict[str, Any]:
    """The checkpoint ``file`` of ``run_dir``, checked to hold ``keys`` (but not yet to fit
    a model).

    Resuming needs :data:`CHECKPOINT_KEYS` (and :data:`MID_EPOCH_KEYS` mid-epoch);
    loading a trained model needs only ``model``.
    """
    path = Path(run_dir) / file
    if not path.is_file():
        if file == BEST_FILE and (Path(run_dir) / CHECKPOINT_FILE).is_file():
            raise CheckpointError(
                f"no {BEST_FILE} in {run_dir}: no epoch has finished yet, or an older pyro-vae "
                "trained it; use the last checkpoint (`checkpoint='last'`)"
            )
        raise CheckpointError(f"no checkpoint at {path}; train a run in {run_dir} first")
    try:
        # weights_only=False: the checkpoint holds Python RNG state tuples; it is our own file.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"{path} is corrupted or not a pyro-vae checkpoint ({_brief(error)}); "
            "restore it from a backup, or delete the run directory to start over"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a pyro-vae checkpoint; "
            "restore it from a backup, or delete the run directory to start over"
        )
    missing = [key for key in keys if key not in state]
    if not missing and state.get("step"):
        missing = [key for key in MID_EPOCH_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is incomplete (missing {', '.join(missing)}): it is damaged or was not "
            "written by this version of pyro-vae; restore it from a backup, or delete the run "
            "directory to start over"
        )
    if "format" in keys and state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}, this pyro-vae reads format "
            f"{CHECKPOINT_FORMAT}; use the pyro-vae version that wrote it"
        )
    return state


def checkpoint_config(state: dict[str, Any], run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint."""
    try:
        return TrainConfig.from_dict(state["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(
            f"{Path(run_dir) / CHECKPOINT_FILE} holds an invalid configuration ({error}); "
            "restore it from a backup"
        ) from error


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``Optimizer.load_state_dict`` accepts moments of the wrong shape; fail here instead."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state.get("state", {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise ValueError(f"state for unknown parameter {index!r}")
        shape = params[index].shape
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != shape:
                raise ValueError(
                    f"{key} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(shape)}"
                )


def restore(target: torch.nn.Module | torch.optim.Optimizer, state: Any, path: str | Path) -> None:
    """``target.load_state_dict(state)``, any mismatch raised as :class:`CheckpointError`."""
    what = "optimizer" if isinstance(target, torch.optim.Optimizer) else "model"
    try:
        if not isinstance(state, dict):
            raise TypeError(f"expected a state dict, got {type(state).__name__}")
        if isinstance(target, torch.optim.Optimizer):
            _check_optimizer_shapes(target, state)
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"the {what} state in {path} does not fit the configured "
            f"model ({_brief(error)}); it is damaged or belongs to another run"
        ) from error


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


def resolve_checkpoint(config: TrainConfig, checkpoint: str | None) -> str:
    """``checkpoint`` checked to be a :data:`CHECKPOINTS` name; None: ``best`` for a run
    trained with early stopping (``config.patience``), else ``last``."""
    if checkpoint is None:
        return "best" if config.patience else "last"
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(
            f"unknown checkpoint {checkpoint!r}; choose one of: {', '.join(CHECKPOINTS)}"
        )
    return checkpoint


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


class Run:
    """A run directory, read once: its configuration, its model, its data, its metrics and
    its evaluations. The model and the data are loaded when first asked for.

    :param run_dir: the directory ``pyro-vae train`` wrote.
    :param device: where the model and the data go (``"auto"``: CUDA when available).
    :param checkpoint: ``"last"`` (the end of training), ``"best"`` (the epoch with the
        best validation ELBO, ``best.pt``), or None: ``best`` when the run was trained
        with early stopping (``patience``), else ``last``.
    """

    def __init__(
        self, run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None
    ):
        self.dir = Path(run_dir)
        self.config = read_config(self.dir)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.checkpoint = resolve_checkpoint(self.config, checkpoint)

    @cached_property
    def state(self) -> dict[str, Any]:
        """The checkpoint the model comes from (``model``, ``epoch``, ``config``, ...)."""
        return load_checkpoint(
            self.dir, map_location=self.device, file=CHECKPOINTS[self.checkpoint]
        )

    @cached_property
    def model(self) -> VAE:
        """The trained model (its ``config.model`` class), in eval mode."""
        vae = self.config.build_vae()
        restore(vae, self.state["model"], self.dir / CHECKPOINTS[self.checkpoint])
        return vae.to(self.device).eval()

    @cached_property
    def data(self) -> ImageData:
        """The dataset the run was trained on, on the run's device."""
        return self.config.load_data(self.device)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """One row per trained epoch (``metrics.jsonl``)."""
        return read_metrics(self.dir)

    def evaluation(self, split: str = "test", dataset: str | None = None) -> dict[str, Any] | None:
        """What ``pyro-vae evaluate`` wrote for those images; None if they were not evaluated."""
        return read_evaluation(self.dir, split, dataset)


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None
) -> VAE:
    """The trained model of a run directory (:attr:`Run.model`); the arguments are
    :class:`Run`'s."""
    return Run(run_dir, device, checkpoint).model


def fine_tuning_source(init_from: str | Path) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The model ``init_from`` names: its checkpoint file, the checkpoint (model and
    configuration) and the :class:`TrainConfig` it was trained with.

    ``init_from`` is a run directory (its ``best.pt``: the model early stopping keeps) or
    a checkpoint file (``best.pt`` or ``checkpoint.pt`` of a run).
    """
    source = Path(init_from)
    if not source.exists():
        raise CheckpointError(
            f"`init_from` {source} does not exist; pass a run directory or its "
            f"{BEST_FILE} or {CHECKPOINT_FILE}"
        )
    run_dir, file = (source, BEST_FILE) if source.is_dir() else (source.parent, source.name)
    if source.is_dir() and not (source / BEST_FILE).is_file():
        raise CheckpointError(
            f"`init_from` {source}: the directory holds no {BEST_FILE} (no epoch of that run "
            f"has finished); pass a checkpoint file instead, such as {source / CHECKPOINT_FILE}"
        )
    state = load_checkpoint(run_dir, keys=("model", "config"), file=file)
    return run_dir / file, state, checkpoint_config(state, run_dir)


def initialize_from(vae: VAE, config: TrainConfig) -> str:
    """Load the model ``config.init_from`` names (:func:`fine_tuning_source`) into ``vae``
    (fine-tuning); return the file and epoch.

    Its configuration must agree with ``config`` on :data:`~pyro_vae.config.MODEL_FIELDS`,
    so a differently shaped or differently meant model is a :class:`CheckpointError`
    naming the fields, not a silent partial load.
    """
    path, state, saved = fine_tuning_source(config.init_from)
    changed = {k: v for k, v in saved.differences(config).items() if k in MODEL_FIELDS}
    if changed:
        listed = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot initialize from {path}: its model differs ({listed}); "
            "use the same model options as that run (on the command line, leave them out)"
        )
    restore(vae, state["model"], path)
    return f"{path} (epoch {state.get('epoch', '?')})"


def _model_digest(state: dict[str, torch.Tensor]) -> str:
    """A hash of a model's parameters and buffers: which model an evaluation measured."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _EvaluationInProgress:
    """The chunks an evaluation has done so far, kept in ``<result>.partial.pt`` beside its
    result file (``<result>.partial.<rank>.pt`` per rank under ``torchrun``), so that an
    interrupted ``evaluate`` goes on where it stopped.

    ``fingerprint`` says what is being evaluated (model, split, images, K, chunking, seed);
    saved chunks of any other evaluation, or a file that cannot be read, are ignored with a
    message and then overwritten.
    """

    def __init__(
        self,
        run_dir: Path,
        stem: str,
        fingerprint: dict[str, Any],
        world: distributed.World,
        log: Callable[[str], None],
    ):
        self.run_dir, self.stem, self.fingerprint = run_dir, stem, fingerprint
        rank = "" if world.size == 1 else f".{world.rank}"
        self.path = run_dir / f"{stem}.partial{rank}.pt"
        self.chunks: dict[int, ChunkResults] = {}
        self.seconds_before = 0.0  # spent by the interrupted calls
        for path in self.files():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                same = saved["fingerprint"] == fingerprint
            except Exception as error:  # torch raises many kinds for damaged files
                log(f"ignoring {path}: it cannot be read ({_brief(error)})")
                continue
            if not same:
                log(
                    f"ignoring {path}: it holds part of another evaluation "
                    f"({_differences(saved['fingerprint'], fingerprint)})"
                )
                continue
            self.chunks.update(_unpack_chunks(saved["chunks"]))
            self.seconds_before = max(self.seconds_before, saved["seconds"])
        self.started = self.saved_at = time.perf_counter()

    def files(self) -> list[Path]:
        """The partial files of these images, of every rank."""
        return sorted(self.run_dir.glob(f"{self.stem}.partial*.pt"))

    @property
    def examples_done(self) -> int:
        return sum(chunk["ll"].numel() for chunk in self.chunks.values())

    @property
    def seconds(self) -> float:
        """Seconds spent on this evaluation, by this call and the interrupted ones."""
        return self.seconds_before + time.perf_counter() - self.started

    def add(self, start: int, results: ChunkResults) -> None:
        # kept where they are (the estimator holds them too); moved to the CPU in save()
        self.chunks[start] = results
        if time.perf_counter() - self.saved_at >= EVALUATION_SAVE_SECONDS:
            self.save()

    def save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "chunks": _pack_chunks(self.chunks),
            "seconds": self.seconds,
        }
        atomic_write(self.path, lambda f: torch.save(state, f))
        self.saved_at = time.perf_counter()


def _pack_chunks(chunks: dict[int, ChunkResults]) -> dict[str, Any]:
    """Chunks as a few long tensors: thousands of small ones take seconds to save."""
    starts = sorted(chunks)
    keys = chunks[starts[0]].keys() if starts else ()
    return {
        "starts": starts,
        "sizes": [chunks[start]["ll"].shape[0] for start in starts],
        **{key: torch.cat([chunks[start][key].cpu() for start in starts]) for key in keys},
    }


def _unpack_chunks(packed: dict[str, Any]) -> dict[int, ChunkResults]:
    keys = [key for key in packed if key not in ("starts", "sizes")]
    parts = {key: packed[key].split(packed["sizes"]) for key in keys}
    return {start: {key: parts[key][i] for key in keys} for i, start in enumerate(packed["starts"])}


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    keys = [key for key in wanted if saved.get(key) != wanted[key]]
    return ", ".join(
        f"{key}: {saved.get(key)!r}, now {wanted[key]!r}" if key != "model" else "another model"
        for key in keys
    )


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


def read_evaluation(
    run_dir: str | Path, split: str = "test", dataset: str | None = None
) -> dict[str, Any] | None:
    """What :func:`evaluate_run` wrote (:func:`evaluation_path`), or None if those images
    were not evaluated."""
    path = evaluation_path(run_dir, split, dataset)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}); evaluate the run again to rewrite it"
        ) from error


def same_model(first: dict[str, Any] | None, second: dict[str, Any] | None) -> bool:
    """Whether two evaluations exist and measured the same saved model (checkpoint, epoch)."""
    if first is None or second is None:
        return False
    return all(first.get(key) == second.get(key) for key in ("checkpoint", "epoch"))


def generalization_gap(run_dir: str | Path) -> float | None:
    """Mean log-likelihood of the training images minus that of the test images, from the
    run's ``eval_train.json`` and ``eval.json``: how much better the model explains the
    images it was fitted to (overfitting, in nats). None unless both are there and
    measured the same saved model (checkpoint and epoch)."""
    train, test = read_evaluation(run_dir, "train"), read_evaluation(run_dir, "test")
    if not same_model(train, test):
        return None
    return train["train_log_likelihood"] - test["test_log_likelihood"]


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


def detection_auroc(run_dir: str | Path, dataset: str) -> float | None:
    """How well the run's model tells its own test images from the test images of
    ``dataset`` by their log-likelihood: :func:`~pyro_vae.inference.estimators.auroc` of the
    per-image estimates of ``evaluate`` and ``evaluate --dataset``. None unless both
    were evaluated, with per-image estimates, on the same saved model."""
    dataset = foreign_dataset(read_config(run_dir), dataset)
    if dataset is None:
        return None
    ours, theirs = read_evaluation(run_dir), read_evaluation(run_dir, dataset=dataset)
    if not same_model(ours, theirs):
        return None
    inliers = read_examples(run_dir, ours)
    outliers = read_examples(run_dir, theirs, dataset=dataset)
    if inliers is None or outliers is None:
        return None
    return auroc(inliers, outliers)


def default_max_batch(config: TrainConfig, device: torch.device) -> int:
    """(sample, image) pairs per evaluation pass when none is given: on a CPU, what ran
    fastest for the run's architecture
    (:attr:`~pyro_vae.components.networks.Architecture.cpu_evaluation_batch`: 2,500 for ``conv``,
    20,000 for the MLPs); elsewhere :data:`~pyro_vae.inference.estimators.DEFAULT_MAX_BATCH`."""
    if device.type == "cpu":
        return ARCHITECTURES[config.arch].cpu_evaluation_batch
    return DEFAULT_MAX_BATCH


def foreign_dataset(config: TrainConfig, dataset: str | None) -> str | None:
    """``dataset`` if it names images other than the run's own (``config.dataset``; for
    image files, another file), else None: what :func:`evaluate_run` scores and names its
    files after (:func:`evaluation_stem`)."""
    if dataset is None:
        return None
    if is_image_file(dataset) and is_image_file(config.dataset):
        return None if Path(dataset).resolve() == Path(config.dataset).resolve() else dataset
    return None if dataset == config.dataset else dataset


def _other_images(
    config: TrainConfig,
    vae: VAE,
    dataset: str,
    data_root: str | Path | None,
    device: torch.device,
) -> ImageData:
    """Another dataset's images, loaded as the run's own were, for ``evaluate --dataset``."""
    if vae.conditions_on_labels:
        raise ConfigError(
            f"this run's model ({config.model}) is conditioned on its dataset's labels, which "
            f"{dataset}'s labels do not fit; `dataset` scores images with models of p(x)"
        )
    data = load_images(
        dataset,
        config.data_root if data_root is None else data_root,
        binarize=config.binarize == "dynamic",
        device=device,
    )
    if data.data_dim != vae.data_dim or (
        config.image_shape is not None and data.image_shape != tuple(config.image_shape)
    ):
        shape = "x".join(map(str, config.image_shape or (vae.data_dim,)))
        raise ConfigError(
            f"the run models {shape} images but {dataset} holds "
            f"{'x'.join(map(str, data.image_shape))} images; score images of the run's size"
        )
    return data


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    num_samples: int = 5000,
    subset: int | None = None,
    max_batch: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | None = None,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Importance-weighted log-likelihood of a trained run; writes ``eval.json`` (test split),
    ``eval_val.json`` (validation) or ``eval_train.json`` (training images, binarized once:
    :meth:`~pyro_vae.data.images.ImageData.evaluation_images`; against the test split, how much
    the model overfits) into the run directory and returns its contents, and the per-image
    estimates beside it (:func:`examples_path`).

    :param subset: evaluate the first ``subset`` images of the split only.
    :param dataset: score the images of another dataset (a
        :data:`~pyro_vae.data.images.DATASETS` name or an image file, loaded and binarized as the
        run's own; found in ``data_root``, default the run's): how well the model tells
        its own kind of images from others (:func:`detection_auroc`). The files are named
        after it (:func:`evaluation_stem`: ``eval-mnist.json``, ...). Not for models
        conditioned on labels, which another dataset's labels do not fit.
    :param max_batch: (sample, image) pairs per pass, as in
        :func:`~pyro_vae.inference.estimators.estimate_log_likelihood`; None:
        :func:`default_max_batch`.
    :param checkpoint: which saved model, as in :func:`load_run`.
    :param log: receives a line when an interrupted evaluation is continued.

    Resumable: the chunks done so far are saved every :data:`EVALUATION_SAVE_SECONDS`
    and on Ctrl-C (``eval.partial.pt``); the same call again continues from them, with
    the same result as an uninterrupted evaluation, and removes the file at the end.

    Launched by ``torchrun`` with several processes, the images are shared out
    among them (see :func:`~pyro_vae.inference.estimators.estimate_log_likelihood`) and
    rank 0 writes the file; the result equals a one-process run's with the same seed.
    """
    if num_samples <= 0 or (max_batch is not None and max_batch <= 0):
        raise ConfigError(
            f"num-samples and max-batch must be positive, got {num_samples}, {max_batch}"
        )
    if subset is not None and subset <= 0:
        raise ConfigError(f"subset must be positive, got {subset}")
    config = read_config(run_dir)
    dataset = foreign_dataset(config, dataset)  # None: the run's own, under the usual names
    if dataset is not None and is_image_file(dataset):
        dataset = str(Path(dataset).resolve())  # as train records one: found from anywhere
    stem = evaluation_stem(split, dataset)
    world, torch_device = distributed.init(resolve_device(device))
    if max_batch is None:
        max_batch = default_max_batch(config, torch_device)
    run = Run(run_dir, torch_device, checkpoint)
    checkpoint, vae, state = run.checkpoint, run.model, run.state
    if dataset is None:
        data = run.data
    else:
        data = _other_images(config, vae, dataset, data_root, torch_device)
    images, labels = (tensor[:subset] for tensor in data.evaluation_images(split))
    vae.likelihood.validate(images)
    fingerprint = {
        "model": _model_digest(state["model"]),
        "split": split,
        "dataset": dataset,
        "subset": subset,
        "num_samples": num_samples,
        "max_batch": max_batch,
        "seed": seed,
    }
    rank_log = world.main_only(log)
    saved = _EvaluationInProgress(Path(run_dir), stem, fingerprint, world, rank_log)
    if saved.chunks:
        rank_log(
            f"continuing the evaluation saved in {saved.path}: {saved.examples_done} of "
            f"{images.shape[0]} images done"
        )
    try:
        estimates = estimate_log_likelihood(
            vae.model,
            vae.guide,
            *vae.batch_inputs(images, labels),
            num_samples=num_samples,
            max_batch=max_batch,
            seed=seed,
            progress=progress and world.is_main,
            world=world,
            done=saved.chunks,
            on_chunk=saved.add,
        )
    except KeyboardInterrupt:
        saved.save()
        raise KeyboardInterrupt(
            f"evaluation stopped; {saved.examples_done} of {images.shape[0]} images are saved "
            f"in {saved.path}; run the same command again to continue"
        ) from None
    except torch.OutOfMemoryError:
        # A pass's activations grow with max_batch: the fix is a smaller one (the default on
        # a GPU, 20,000 pairs, takes tens of GB with the full-resolution convolutions).
        saved.save()
        raise ConfigError(
            f"{torch_device} ran out of memory evaluating {max_batch} (sample, image) pairs per "
            f"pass; pass a smaller `max_batch`, e.g. {max(1, max_batch // 4)} (the "
            f"{saved.examples_done} images done are saved in {saved.path}, to continue with "
            f"this `max_batch` once memory is free)"
        ) from None
    result = {
        "split": split,
        "dataset": config.dataset if dataset is None else dataset,
        "model": config.model,
        "estimates": vae.evaluates,
        **estimates.summary(prefix=split),
        "seconds": saved.seconds,  # with the interrupted calls' time
        "latent_dim": config.latent_dim,
        "device": str(torch_device),
        "seed": seed,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],  # of the checkpoint: "best" moves while training goes on
    }
    if vae.likelihood.is_discrete:  # a probability of discrete pixels: also a code length
        log_likelihood = result[f"{split}_log_likelihood"]
        result[f"{split}_bits_per_dim"] = bits_per_dim(log_likelihood, vae.data_dim)
    if world.is_main:
        per_image = {
            name: getattr(estimates, name).cpu().numpy()
            for name in ("log_likelihood", "elbo", "kl")
        }
        atomic_write(examples_path(run_dir, split, dataset), lambda f: np.savez(f, **per_image))
        text = (json.dumps(result, indent=2) + "\n").encode()
        atomic_write(evaluation_path(run_dir, split, dataset), lambda f: f.write(text))
        for path in saved.files():  # the result is written: what led to it can go
            path.unlink(missing_ok=True)
    return result
