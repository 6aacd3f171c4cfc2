"""Run directories: ``config.json``, ``checkpoint.pt`` and ``metrics.jsonl``.

Checkpoints are written atomically (temporary file, fsync, rename), so a crash
at any moment leaves either the previous checkpoint or the new one, never a
torn file.
"""

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pyro_vae.config import TrainConfig, resolve_device
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.evaluation import DEFAULT_MAX_BATCH, estimate_log_likelihood
from pyro_vae.vae import VAE

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
#: Evaluation results by split.
EVAL_FILES = {"test": "eval.json", "val": "eval_val.json"}


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Run ``write(file)`` on a temporary file beside ``path``, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid pyro-vae config ({error})") from error


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
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(run_dir / CHECKPOINT_FILE, lambda f: torch.save(state, f))


def load_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; train first with `pyro-vae train --out {run_dir}`"
        )
    try:
        # weights_only=False: the checkpoint holds Python RNG state tuples; it is our own file.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"{path} is corrupted or not a pyro-vae checkpoint ({type(error).__name__}: {error}); "
            "delete it to start over, or restore it from a backup"
        ) from error


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as file:
        file.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop rows of epochs after ``last_epoch`` (written before a crash lost their checkpoint)."""
    rows = [row for row in read_metrics(run_dir) if row["epoch"] <= last_epoch]
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    atomic_write(run_dir / METRICS_FILE, lambda f: f.write(text))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The trained model of a run directory (its ``config.model`` class), in eval mode."""
    config = read_config(run_dir)
    checkpoint = load_checkpoint(run_dir, map_location=device)
    vae = config.build_vae()
    vae.load_state_dict(checkpoint["model"])
    return vae.to(device).eval()


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    num_samples: int = 5000,
    subset: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Importance-weighted log-likelihood of a trained run; writes ``eval.json`` (test split)
    or ``eval_val.json`` (validation split) into the run directory and returns its contents.

    :param subset: evaluate the first ``subset`` images of the split only.
    """
    if split not in EVAL_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(EVAL_FILES)}")
    if num_samples <= 0 or max_batch <= 0:
        raise ConfigError(
            f"num-samples and max-batch must be positive, got {num_samples}, {max_batch}"
        )
    if subset is not None and subset <= 0:
        raise ConfigError(f"subset must be positive, got {subset}")
    config = read_config(run_dir)
    torch_device = resolve_device(device)
    vae = load_run(run_dir, torch_device)
    data = config.load_data(torch_device)
    images = (data.test if split == "test" else data.val)[:subset]
    labels = (data.test_labels if split == "test" else data.val_labels)[:subset]
    vae.likelihood.validate(images)
    estimates = estimate_log_likelihood(
        vae.model, vae.guide, *vae.batch_inputs(images, labels), num_samples=num_samples,
        max_batch=max_batch, seed=seed, progress=progress,
    )  # fmt: skip
    result = {
        "split": split,
        "model": config.model,
        "estimates": vae.evaluates,
        **estimates.summary(prefix=split),
        "latent_dim": config.latent_dim,
        "device": str(torch_device),
        "seed": seed,
    }
    text = (json.dumps(result, indent=2) + "\n").encode()
    atomic_write(Path(run_dir) / EVAL_FILES[split], lambda f: f.write(text))
    return result
