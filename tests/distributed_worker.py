"""One rank of the data-parallel test run, launched by ``torchrun`` from test_distributed.py.

Usage: ``torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py JOB.json``.
Trains ``full`` for the configured epochs and ``part`` for one epoch less (the test
resumes it through the CLI), trains ``rollback`` with a NaN injected on rank 1 only,
evaluates ``full`` sharded, and saves what each rank ended with to ``rank{RANK}.pt``
for the test to compare; then evaluates ``full`` again through the CLI.
"""

import json
import os
import sys
from pathlib import Path

import torch

from pyro_vae import TrainConfig, load_run, train
from pyro_vae.analysis.evaluation import evaluate_run
from pyro_vae.cli import main as cli
from pyro_vae.core import distributed
from pyro_vae.inference.estimators import estimate_log_likelihood
from pyro_vae.inference.objectives import OBJECTIVES

torch.set_num_threads(1)


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    config = TrainConfig(**job["config"])
    vae = train(config, job["full"], progress=False)
    train(
        TrainConfig(**{**job["config"], "epochs": config.epochs - 1}), job["part"], progress=False
    )
    rollback = rollback_run(job)
    summary = evaluate_run(job["full"], **job["evaluate"], device="cpu", progress=False)
    world, device = distributed.init(torch.device("cpu"))
    estimates = evaluation_estimates(job, world)
    torch.save(
        {
            "params": vae.state_dict(),
            "summary": summary,
            "estimates": estimates,
            "rollback": rollback,
        },
        Path(job["results"]) / f"rank{os.environ['RANK']}.pt",
    )
    options = [f"--{key.replace('_', '-')}={value}" for key, value in job["evaluate"].items()]
    sys.exit(cli(["evaluate", "--run", job["full"], *options, "--device=cpu", "--no-progress"]))


def rollback_run(job: dict) -> dict:
    """Train ``rollback`` with ``on_nan="rollback"`` while rank 1's loss turns NaN once."""
    make = OBJECTIVES["elbo"]
    rank, calls = int(os.environ["RANK"]), [0]

    def faulty(particles: int):
        loss_fn = make(particles)

        def loss(*args, **kwargs):
            calls[0] += 1
            value = loss_fn(*args, **kwargs)
            return value * float("nan") if rank == 1 and calls[0] == job["nan_at_call"] else value

        return loss

    messages: list[str] = []
    OBJECTIVES["elbo"] = faulty
    try:
        # eager forward passes: a recorded one would run the injection only when recorded
        config = TrainConfig(
            **{**job["config"], "epochs": 2, "on_nan": "rollback", "record_forward": False}
        )
        vae = train(config, job["rollback"], progress=False, log=messages.append)
    finally:
        OBJECTIVES["elbo"] = make
    return {"params": vae.state_dict(), "messages": messages}


def evaluation_estimates(job: dict, world: distributed.World) -> dict[str, torch.Tensor]:
    """Per-example estimates of the ``full`` run, sharded over the ranks and gathered."""
    vae = load_run(job["full"])
    images = TrainConfig(**job["config"]).load_data("cpu").test[: job["evaluate"]["subset"]]
    options = {k: job["evaluate"][k] for k in ("num_samples", "max_batch", "seed")}
    estimates = estimate_log_likelihood(vae.model, vae.guide, images, world=world, **options)
    return {"log_likelihood": estimates.log_likelihood, "elbo": estimates.elbo}


if __name__ == "__main__":
    main(sys.argv[1])
