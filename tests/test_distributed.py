"""Data-parallel training and evaluation: 2 CPU processes (gloo) launched by ``torchrun``.

One ``torchrun`` launch of tests/distributed_worker.py trains and evaluates; one
launch of ``python -m pyro_vae train --resume`` continues a run through the CLI.
The references are one-process runs with the same seed and global batch size.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import TrainConfig, load_run, read_metrics, train
from pyro_vae.analysis.evaluation import evaluate_run
from pyro_vae.inference.estimators import estimate_log_likelihood
from pyro_vae.runs import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not FASHION.is_dir() or not TORCHRUN.is_file(), reason="needs Fashion-MNIST and torchrun"
)

# 601 images in batches of 100: the last batch has one row, so rank 1's share of it is empty.
CONFIG = {
    "subset": 601,
    "epochs": 3,
    "batch_size": 100,
    "hidden_dims": [64],
    "latent_dim": 8,
    "lr": 1e-3,
    "device": "cpu",
    "seed": 3,
}
EVALUATE = {"split": "test", "subset": 40, "num_samples": 50, "max_batch": 300, "seed": 5}
#: Ranks draw their own latent noise, so the 2-process loss differs from the 1-process
#: one by Monte Carlo noise only: we require it within 1% per epoch
#: (measured: at most 0.2%).
RELATIVE_TOLERANCE = 0.01
TIMED_KEYS = ("seconds", "train_seconds")


def torchrun(*args: str) -> str:
    """Run ``torchrun --standalone --nproc-per-node 2 ARGS`` (a free port is picked)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The worker's runs, each rank's results, and the CLI's output resuming ``part``."""
    root = tmp_path_factory.mktemp("distributed")
    job = {"config": CONFIG, "evaluate": EVALUATE, "results": str(root)}
    job |= {name: str(root / name) for name in ("full", "part", "rollback")}
    job["nan_at_call"] = 10  # rank 1's 10th loss (epoch 2) turns NaN, rank 0's stays finite
    (root / "job.json").write_text(json.dumps(job))
    evaluated = torchrun("tests/distributed_worker.py", str(root / "job.json"))
    resumed = torchrun(
        "-m",
        "pyro_vae",
        "train",
        "--resume",
        "--out",
        job["part"],
        "--no-progress",
        "--subset",
        "601",
        "--epochs",
        "3",
        "--batch-size",
        "100",
        "--hidden-dim",
        "64",
        "--latent-dim",
        "8",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--seed",
        "3",
    )
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {**job, "ranks": ranks, "resumed_output": resumed, "evaluated_output": evaluated}


def test_ranks_end_with_identical_parameters(launched):
    first, second = (rank["params"] for rank in launched["ranks"])
    saved = load_checkpoint(launched["full"])["model"]
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
        assert torch.equal(value, saved[name]), name


def test_loss_trajectory_matches_one_process_with_the_same_global_batch(launched, tmp_path):
    train(TrainConfig(**CONFIG), tmp_path / "single", progress=False, log=lambda _: None)
    single, parallel = read_metrics(tmp_path / "single"), read_metrics(launched["full"])
    assert len(parallel) == len(single) == CONFIG["epochs"]
    for one, two in zip(single, parallel, strict=True):
        for key in ("train_loss", "val_elbo"):
            assert abs(two[key] - one[key]) <= RELATIVE_TOLERANCE * abs(one[key]), (key, one, two)
    assert parallel[-1]["train_loss"] < parallel[0]["train_loss"] - 20  # it did learn


def test_resume_through_the_cli_continues_the_run_exactly(launched):
    assert launched["resumed_output"].count("run written to") == 1  # rank 0 only
    assert launched["resumed_output"].count("epoch 3/3") == 1
    full, part = load_checkpoint(launched["full"]), load_checkpoint(launched["part"])
    for name, value in full["model"].items():
        assert torch.equal(value, part["model"][name]), name
    strip = [{k: v for k, v in row.items() if k not in TIMED_KEYS} for row in full["metrics"]]
    assert strip == [
        {k: v for k, v in row.items() if k not in TIMED_KEYS} for row in part["metrics"]
    ]


def test_a_nan_on_one_rank_rolls_back_every_rank_together(launched):
    first, second = (rank["rollback"] for rank in launched["ranks"])
    assert any("rolled back to the checkpoint after epoch 1" in m for m in first["messages"])
    assert second["messages"] == []  # only rank 0 logs
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    assert [row["lr"] for row in read_metrics(launched["rollback"])] == [1e-3, 5e-4]


def test_sharded_evaluation_matches_one_process_with_the_same_seed(launched):
    vae = load_run(launched["full"])
    images = TrainConfig(**CONFIG).load_data("cpu").test[: EVALUATE["subset"]]
    options = {k: EVALUATE[k] for k in ("num_samples", "max_batch", "seed")}
    one = estimate_log_likelihood(vae.model, vae.guide, images, **options)
    assert EVALUATE["subset"] > EVALUATE["max_batch"] // EVALUATE["num_samples"]  # > 1 chunk
    for rank in launched["ranks"]:  # every rank gathers all the estimates, in order
        assert torch.equal(rank["estimates"]["log_likelihood"], one.log_likelihood)
        assert torch.equal(rank["estimates"]["elbo"], one.elbo)
    assert launched["evaluated_output"].count("written to") == 1  # the CLI's, rank 0 only
    written = json.loads((Path(launched["full"]) / "eval.json").read_text())
    summary = evaluate_run(launched["full"], **EVALUATE, device="cpu", progress=False)
    for key in (
        "test_log_likelihood",
        "test_elbo",
        "test_kl",
        "log_likelihood_stderr",
        "active_units",
        "num_examples",
    ):
        assert written[key] == summary[key] == launched["ranks"][1]["summary"][key], key
