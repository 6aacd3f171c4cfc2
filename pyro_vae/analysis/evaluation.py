"""``pyro-vae evaluate``: the importance-weighted log-likelihood of a run's images, with the
train-test gap and the out-of-distribution AUROC read from its results.

Resumable: the chunks done so far are saved every :data:`EVALUATION_SAVE_SECONDS` and on
Ctrl-C (``eval.partial.pt``); the same call again continues from them, with the same
result as an uninterrupted evaluation, and removes the file at the end.

Launched by ``torchrun`` with several processes, the images are shared out among them
(see :func:`~pyro_vae.inference.estimators.estimate_log_likelihood`) and rank 0 writes
the files; the result equals a one-process run's with the same seed.
"""

import contextlib
import dataclasses
import hashlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pyro_vae.components.likelihoods import bits_per_dim
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.config import TrainConfig, resolve_device
from pyro_vae.core import distributed
from pyro_vae.core.errors import ConfigError, TrainingInterrupted, brief
from pyro_vae.core.files import atomic_write, check_writable
from pyro_vae.data.images import ImageData, is_image_file
from pyro_vae.data.tables import TableData, is_table_file
from pyro_vae.inference.estimators import (
    DEFAULT_MAX_BATCH,
    ChunkBuffers,
    ChunkResults,
    Estimates,
    auroc,
    estimate_log_likelihood,
)
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.runs import (
    Run,
    evaluation_path,
    evaluation_stem,
    examples_path,
    locked_run,
    read_config,
    read_evaluation,
    read_examples,
    rows_path,
    same_model,
)

#: Seconds between two saves of an evaluation in progress (it is also saved on Ctrl-C).
EVALUATION_SAVE_SECONDS = 30.0


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

    Its fingerprint says what is being evaluated: the model, ``split``, ``dataset`` and
    ``settings`` (images, K, chunking, seed); saved chunks of any other evaluation, or a
    file that cannot be read, are ignored with a message and then overwritten.
    """

    def __init__(
        self,
        run: Run,
        split: str,
        dataset: str | None,
        settings: dict[str, Any],
        world: distributed.World,
        log: Callable[[str], None],
        num_examples: int,
    ):
        fingerprint = {"model": _model_digest(run.state["model"]), "split": split}
        fingerprint |= {"dataset": dataset, **settings}
        self.run_dir, self.stem = run.dir, evaluation_stem(split, dataset)
        self.fingerprint, self.log = fingerprint, log
        rank = "" if world.size == 1 else f".{world.rank}"
        self.path = self.run_dir / f"{self.stem}.partial{rank}.pt"
        self.chunks = ChunkBuffers(num_examples)
        self.seconds_before = 0.0  # spent by the interrupted calls
        for path in self.files():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                same = saved["fingerprint"] == fingerprint
            except Exception as error:  # torch raises many kinds for damaged files
                log(f"ignoring {path}: it cannot be read ({brief(error)})")
                continue
            if not same:
                log(
                    f"ignoring {path}: it holds part of another evaluation "
                    f"({_differences(saved['fingerprint'], fingerprint)})"
                )
                continue
            for start, results in _unpack_chunks(saved["chunks"]).items():
                self.chunks.put(start, results)
            self.seconds_before = max(self.seconds_before, saved["seconds"])
        self.started = self.saved_at = time.perf_counter()

    def announce(self) -> None:
        """Say that the evaluation goes on from saved chunks, if it does."""
        if self.chunks:
            self.log(
                f"continuing the evaluation saved in {self.path}: {self.examples_done} of "
                f"{self.chunks.num_examples} images done"
            )

    @property
    def examples_done(self) -> int:
        return self.chunks.examples_done

    def files(self) -> list[Path]:
        """The partial files of these images, of every rank."""
        return sorted(self.run_dir.glob(f"{self.stem}.partial*.pt"))

    def remove(self) -> None:
        for path in self.files():
            path.unlink(missing_ok=True)

    @property
    def seconds(self) -> float:
        """Seconds spent on this evaluation, by this call and the interrupted ones."""
        return self.seconds_before + time.perf_counter() - self.started

    def add(self, start: int, results: ChunkResults) -> None:
        self.chunks.put(start, results)  # where they are; moved to the CPU in save()
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


def _pack_chunks(chunks: Mapping[int, ChunkResults]) -> dict[str, Any]:
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


def generalization_gap(run_dir: str | Path) -> float | None:
    """Mean log-likelihood of the training images minus that of the test images, from the
    run's ``eval_train.json`` and ``eval.json``: how much better the model explains the
    images it was fitted to (overfitting, in nats). None unless both are there and
    measured the same saved model (checkpoint and epoch)."""
    train, test = read_evaluation(run_dir, "train"), read_evaluation(run_dir, "test")
    if not same_model(train, test):
        return None
    return train["train_log_likelihood"] - test["test_log_likelihood"]


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
    5,000 for the MLPs); elsewhere :data:`~pyro_vae.inference.estimators.DEFAULT_MAX_BATCH`."""
    if device.type == "cpu":
        return ARCHITECTURES[config.arch].cpu_evaluation_batch
    return DEFAULT_MAX_BATCH


def foreign_dataset(config: TrainConfig, dataset: str | None) -> str | None:
    """``dataset`` if it names images other than the run's own (``config.dataset``; for
    image files, another file), else None: what :func:`evaluate_run` scores and names its
    files after (:func:`evaluation_stem`)."""
    if dataset is None:
        return None
    if _is_file(dataset) and _is_file(config.dataset):
        return None if Path(dataset).resolve() == Path(config.dataset).resolve() else dataset
    return None if dataset == config.dataset else dataset


def _other_images(run: Run, dataset: str, data_root: str | Path | None) -> ImageData:
    """Another dataset's images, loaded as the run's own were, for ``evaluate --dataset``."""
    config, vae = run.config, run.model
    if vae.conditions_on_labels:
        raise ConfigError(
            f"this run's model ({config.model}) is conditioned on its dataset's labels, which "
            f"{dataset}'s labels do not fit; `dataset` scores images with models of p(x)"
        )
    if data_root is not None:
        config = dataclasses.replace(config, data_root=str(data_root))
    data = config.load_data(run.device, dataset)
    if data.data_dim != vae.data_dim or data.image_shape != tuple(config.image_shape):
        raise ConfigError(
            f"the run models {'x'.join(map(str, config.image_shape))} images but {dataset} "
            f"holds {'x'.join(map(str, data.image_shape))} images; score images of the run's size"
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
    """Importance-weighted log-likelihood of a trained run's images of ``split``: writes the
    summary to :func:`evaluation_path` (``eval.json``, ``eval_val.json``, ``eval_train.json``;
    training images binarized once: against the test split, how much the model overfits)
    and the per-image estimates beside it (:func:`examples_path`); returns the summary.

    :param subset: evaluate the first ``subset`` images of the split only.
    :param dataset: score another dataset's images (a name or an image file, loaded as the
        run's own, from ``data_root`` or the run's), for :func:`detection_auroc`; the files
        are named after it (:func:`evaluation_stem`). Not for label-conditioned models.
    :param max_batch: (sample, image) pairs per pass (as in
        :func:`~pyro_vae.inference.estimators.estimate_log_likelihood`); None:
        :func:`default_max_batch`.
    :param checkpoint: which saved model, as in :func:`load_run`.
    :param log: receives a line when an interrupted evaluation is continued (resuming
        and several processes: see the module's description).
    """
    _check_arguments(num_samples, max_batch, subset)
    world, torch_device = distributed.init(resolve_device(device))
    run = Run(run_dir, torch_device, checkpoint)
    dataset = _other_dataset(run.config, dataset)
    max_batch = max_batch or default_max_batch(run.config, torch_device)  # 0 was rejected
    data = run.data if dataset is None else _other_images(run, dataset, data_root)
    images, labels = (tensor[:subset] for tensor in data.evaluation_images(split))
    rows = data.rows[split][:subset] if isinstance(data, TableData) else None
    run.model.likelihood.validate(images)
    settings = {"subset": subset, "num_samples": num_samples, "max_batch": max_batch, "seed": seed}
    # one writer per run directory: not beside its training or another evaluation of it
    with locked_run(run.dir, "evaluation") if world.is_main else contextlib.nullcontext():
        return _evaluate(
            run, (images, labels, rows), split, dataset, settings, world, progress, log
        )


def _evaluate(
    run: Run,
    examples: tuple[torch.Tensor, torch.Tensor, np.ndarray | None],
    split: str,
    dataset: str | None,
    settings: dict[str, Any],
    world: distributed.World,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The body of :func:`evaluate_run`, with the run directory locked: ``examples`` are
    the images, their labels and, of a table, their row numbers in the file."""
    images, labels, rows = examples
    if world.is_main:
        check_writable(run.dir)  # before the work, not after it
    log = world.main_only(log)
    saved = _EvaluationInProgress(run, split, dataset, settings, world, log, images.shape[0])
    saved.announce()
    max_batch = settings["max_batch"]
    with _saved_on_failure(saved, images.shape[0], max_batch, images.device):
        estimates = estimate_log_likelihood(
            run.model.model,
            run.model.guide,
            *run.model.scoring_inputs(images, labels),
            num_samples=settings["num_samples"],
            max_batch=max_batch,
            seed=settings["seed"],
            progress=progress and world.is_main,
            world=world,
            done=saved.chunks,
            on_chunk=saved.add,
            record=run.config.record_forward,
        )
    result = _summary(run, estimates, split, dataset, settings["seed"], saved.seconds)
    if isinstance(run.model, SemiSupervisedVAE) and dataset is None:
        result[f"{split}_accuracy"] = label_accuracy(run.model, images, labels)
    if world.is_main:
        _write_result(run.dir, result, estimates, rows, (split, dataset))
        saved.remove()  # the result is written: what led to it can go
    return result


@torch.no_grad()
def label_accuracy(
    vae: SemiSupervisedVAE, images: torch.Tensor, labels: torch.Tensor, batch: int = 10_000
) -> float:
    """The share of ``images`` whose most probable label under :math:`q(y|x)` is theirs."""
    right = sum(
        int((vae.classify(x) == y).sum())
        for x, y in zip(images.split(batch), labels.split(batch), strict=True)
    )
    return right / max(1, len(labels))


def _other_dataset(config: TrainConfig, dataset: str | None) -> str | None:
    """:func:`foreign_dataset`, with an image file as an absolute path (as ``train``
    records one: found from anywhere)."""
    dataset = foreign_dataset(config, dataset)
    if dataset is not None and _is_file(dataset):
        return str(Path(dataset).resolve())
    return dataset


def _is_file(dataset: str) -> bool:
    """Whether ``dataset`` names a file of the user's (images or a table)."""
    return is_image_file(dataset) or is_table_file(dataset)


def _check_arguments(num_samples: int, max_batch: int | None, subset: int | None) -> None:
    if num_samples <= 0 or (max_batch is not None and max_batch <= 0):
        raise ConfigError(
            f"`num_samples` and `max_batch` must be positive, got {num_samples}, {max_batch}"
        )
    if subset is not None and subset <= 0:
        raise ConfigError(f"`subset` must be positive, got {subset}")


@contextlib.contextmanager
def _saved_on_failure(
    saved: _EvaluationInProgress, num_images: int, max_batch: int, device: torch.device
) -> Iterator[None]:
    """Save the chunks done when the evaluation is interrupted (Ctrl-C, SIGTERM) or runs out
    of memory, and say how to continue."""
    try:
        with _terminate_as_interrupt():
            yield
    except KeyboardInterrupt as interrupt:
        saved.save()
        raise TrainingInterrupted(
            f"evaluation stopped; {saved.examples_done} of {num_images} images are saved "
            f"in {saved.path}; run the same command again to continue",
            getattr(interrupt, "signum", signal.SIGINT),
        ) from None
    except torch.OutOfMemoryError:
        # A pass's activations grow with max_batch: the fix is a smaller one (the default on
        # a GPU, 20,000 pairs, takes tens of GB with the full-resolution convolutions).
        saved.save()
        raise ConfigError(
            f"{device} ran out of memory evaluating {max_batch} (sample, image) pairs per "
            f"pass; pass a smaller `max_batch`, e.g. {max(1, max_batch // 4)} (the "
            f"{saved.examples_done} images done are saved in {saved.path}, to continue with "
            f"this `max_batch` once memory is free)"
        ) from None


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's stop) raises like Ctrl-C, so the work done is saved."""

    def interrupt(signum: int, frame: Any) -> None:
        error = KeyboardInterrupt()
        error.signum = signum
        raise error

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(
    run: Run,
    estimates: Estimates,
    split: str,
    dataset: str | None,
    seed: int,
    seconds: float,
) -> dict[str, Any]:
    """What ``eval.json`` records: the estimates' means and what they were measured on."""
    vae, config = run.model, run.config
    result = {
        "split": split,
        "dataset": config.dataset if dataset is None else dataset,
        "model": config.model,
        "estimates": vae.evaluates,
        **estimates.summary(prefix=split),
        "seconds": seconds,  # with the interrupted calls' time
        "latent_dim": config.latent_dim,
        "device": str(run.device),
        "seed": seed,
        "checkpoint": run.checkpoint,
        "epoch": run.state["epoch"],  # of the checkpoint: "best" moves while training goes on
    }
    if vae.likelihood.is_discrete:  # a probability of discrete pixels: also a code length
        log_likelihood = result[f"{split}_log_likelihood"]
        result[f"{split}_bits_per_dim"] = bits_per_dim(log_likelihood, vae.data_dim)
    return result


def _write_result(
    run_dir: Path,
    result: dict[str, Any],
    estimates: Estimates,
    rows: np.ndarray | None,
    images: tuple[str, str | None],
) -> None:
    """The summary (:func:`evaluation_path`) and the per-image estimates beside it; of a
    table's rows (``rows``: their numbers in the file), also as a table
    (:func:`rows_path`)."""
    split, dataset = images
    per_image = {
        name: getattr(estimates, name).cpu().numpy() for name in ("log_likelihood", "elbo", "kl")
    }
    if rows is not None:
        per_image["row"] = rows
        frame = pd.DataFrame(per_image).set_index("row")
        atomic_write(rows_path(run_dir, split, dataset), lambda f: frame.to_csv(f, mode="wb"))
    atomic_write(examples_path(run_dir, split, dataset), lambda f: np.savez(f, **per_image))
    text = (json.dumps(result, indent=2) + "\n").encode()
    atomic_write(evaluation_path(run_dir, split, dataset), lambda f: f.write(text))
