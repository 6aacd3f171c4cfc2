"""An interrupted `pyro-vae evaluate` continues where it stopped, with the same result."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from pyro_vae.analysis import evaluation
from pyro_vae.analysis.evaluation import default_max_batch
from pyro_vae.cli import main
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.config import TrainConfig
from pyro_vae.inference import estimators
from pyro_vae.inference.estimators import (
    DEFAULT_MAX_BATCH,
    ImportancePasses,
    estimate_log_likelihood,
)

# 50 test images, 2 per chunk (max-batch 40 // K 20): 25 chunks.
EVALUATE = ["--num-samples", "20", "--max-batch", "40", "--no-progress"]
RESULT_KEYS = (
    "test_log_likelihood",
    "test_elbo",
    "test_kl",
    "log_likelihood_stderr",
    "active_units",
    "num_examples",
    "epoch",
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shared_fashion_dir) -> Path:
    """A one-epoch run on the fake Fashion-MNIST (tests copy it)."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    assert (
        main(
            [
                "train",
                "--batch-size",
                "20",
                "--epochs",
                "1",
                "--hidden-dim",
                "8",
                "--latent-dim",
                "2",
                "--data-root",
                str(shared_fashion_dir),
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def uninterrupted(trained_run, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("straight") / "run"
    shutil.copytree(trained_run, run)
    assert main(["evaluate", "--run", str(run), *EVALUATE]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: the n-th chunk evaluated from now on raises KeyboardInterrupt
    (as Ctrl-C would); returns the list whose length counts the chunks evaluated."""
    monkeypatch.setattr(evaluation, "EVALUATION_SAVE_SECONDS", 0.0)  # save after every chunk
    real = ImportancePasses.__call__
    calls: list[None] = []
    stop = {"at": None}

    def counted(*args, **kwargs):
        calls.append(None)
        if len(calls) == stop["at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ImportancePasses, "__call__", counted)

    def arm(n: int | None) -> list[None]:
        calls.clear()
        stop["at"] = n
        return calls

    return arm


def test_ctrl_c_then_the_same_command_gives_the_uninterrupted_result(
    run_copy, uninterrupted, interrupt_at, capsys
):
    interrupt_at(10)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 130
    error = capsys.readouterr().err
    partial = run_copy / "eval.partial.pt"
    assert f"18 of 50 images are saved in {partial}; run the same command again" in error
    assert partial.exists() and not (run_copy / "eval.json").exists()

    calls = interrupt_at(None)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    assert "continuing the evaluation saved in" in capsys.readouterr().out
    assert len(calls) == 25 - 9  # only the chunks not saved
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}
    assert not partial.exists()  # removed once the result is written


def test_sigterm_saves_the_chunks_done_like_ctrl_c(run_copy, uninterrupted, monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "EVALUATION_SAVE_SECONDS", 1e9)  # saved only on the signal
    real, calls = ImportancePasses.__call__, []

    def terminated_at_the_tenth(*args, **kwargs):
        calls.append(None)
        if len(calls) == 10:
            signal.raise_signal(signal.SIGTERM)  # as a job scheduler stops a job
        return real(*args, **kwargs)

    monkeypatch.setattr(ImportancePasses, "__call__", terminated_at_the_tenth)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 128 + signal.SIGTERM
    assert "images are saved in" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.setattr(ImportancePasses, "__call__", real)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}


def test_out_of_memory_names_the_fix_and_keeps_the_chunks_done(
    run_copy, uninterrupted, monkeypatch, capsys
):
    """A pass too large for the device is a one-line error naming --max-batch; the chunks
    done are saved, and the same command continues from them to the uninterrupted result."""
    monkeypatch.setattr(evaluation, "EVALUATION_SAVE_SECONDS", 0.0)
    real = ImportancePasses.__call__
    calls: list[None] = []
    fail = {"at": 5}

    def out_of_memory_at_the_fifth(*args, **kwargs):
        calls.append(None)
        if len(calls) == fail["at"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(ImportancePasses, "__call__", out_of_memory_at_the_fifth)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 2
    error = capsys.readouterr().err
    assert "ran out of memory evaluating 40 (sample, image) pairs per pass" in error
    assert "pass a smaller --max-batch, e.g. 10 (the 8 images done are saved" in error
    calls.clear()
    fail["at"] = None  # memory freed
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    assert len(calls) == 25 - 4
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}


def test_saved_chunks_of_another_evaluation_are_not_used(
    run_copy, uninterrupted, interrupt_at, capsys
):
    interrupt_at(5)
    other = ["--num-samples", "10", "--max-batch", "40", "--no-progress"]
    assert main(["evaluate", "--run", str(run_copy), *other]) == 130
    calls = interrupt_at(None)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    assert "holds part of another evaluation (num_samples: 10, now 20)" in capsys.readouterr().out
    assert len(calls) == 25
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}


def test_a_damaged_partial_file_is_ignored(run_copy, uninterrupted, interrupt_at, capsys):
    interrupt_at(10)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 130
    partial = run_copy / "eval.partial.pt"
    partial.write_bytes(partial.read_bytes()[:100])  # torn, as by a failing disk
    interrupt_at(None)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    assert "it cannot be read" in capsys.readouterr().out
    result = json.loads((run_copy / "eval.json").read_text())
    assert result["test_log_likelihood"] == uninterrupted["test_log_likelihood"]


def test_another_model_does_not_reuse_the_chunks(run_copy, interrupt_at, capsys):
    """A partial evaluation of ``last`` is not continued for ``best`` once they differ."""
    interrupt_at(10)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 130
    state = torch.load(run_copy / "checkpoint.pt", weights_only=False)
    next(iter(state["model"].values())).add_(0.1)  # as if training had gone on
    torch.save(state, run_copy / "checkpoint.pt")
    calls = interrupt_at(None)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    assert "holds part of another evaluation (another model)" in capsys.readouterr().out
    assert len(calls) == 25


def test_without_max_batch_a_cpu_evaluation_uses_the_architectures_pass_size(
    run_copy, uninterrupted, interrupt_at, monkeypatch
):
    """The default --max-batch on a CPU is the --arch's ``cpu_evaluation_batch``: an
    evaluation stopped with it given explicitly continues, and ends, as if it were omitted."""
    interrupt_at(10)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 130
    monkeypatch.setattr(ARCHITECTURES["mlp"], "cpu_evaluation_batch", 40)  # EVALUATE's
    calls = interrupt_at(None)
    assert main(["evaluate", "--run", str(run_copy), "--num-samples", "20", "--no-progress"]) == 0
    assert len(calls) == 25 - 9  # the saved chunks were reused: the same pass size
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}


def test_default_max_batch_by_architecture_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    conv, mlp = TrainConfig(arch="conv"), TrainConfig(arch="mlp")
    assert default_max_batch(conv, cpu) == ARCHITECTURES["conv"].cpu_evaluation_batch == 2_500
    assert default_max_batch(mlp, cpu) == ARCHITECTURES["mlp"].cpu_evaluation_batch == 5_000
    assert default_max_batch(conv, cuda) == default_max_batch(mlp, cuda) == DEFAULT_MAX_BATCH


def test_reusing_chunks_needs_a_seed():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="only be reused with a seed"):
        estimate_log_likelihood(
            lambda x: None, lambda x: None, x, seed=None, done={0: {"ll": torch.zeros(2)}}
        )


def test_a_run_trained_without_recording_is_evaluated_without_it_to_the_same_result(
    run_copy, uninterrupted, monkeypatch
):
    config = json.loads((run_copy / "config.json").read_text())
    assert config["record_forward"] is True
    (run_copy / "config.json").write_text(json.dumps({**config, "record_forward": False}))

    def refused(*args, **kwargs):
        raise AssertionError("a pass was recorded")

    monkeypatch.setattr(estimators, "RecordedForward", refused)
    assert main(["evaluate", "--run", str(run_copy), *EVALUATE]) == 0
    result = json.loads((run_copy / "eval.json").read_text())
    assert {k: result[k] for k in RESULT_KEYS} == {k: uninterrupted[k] for k in RESULT_KEYS}
