"""One rank of the data-parallel test run, launched by ``torchrun`` from test_distributed.py.

Usage: ``torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py JOB.json``.
Trains ``full`` for the configured epochs and ``part`` for one epoch less (the test
resumes it through the CLI), evaluates ``full`` sharded, and saves what each rank
ended with to ``rank{RANK}.pt`` for the test to compare.
"""

import json
import os
import sys
from pathlib import Path

import torch

from pyro_vae import TrainConfig, distributed, load_run, train
from pyro_vae.evaluation import estimate_log_likelihood
from pyro_vae.runs import evaluate_run

torch.set_num_threads(1)


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    config = TrainConfig(**job["config"])
    vae = train(config, job["full"], progress=False)
    train(TrainConfig(**{**job["config"], "epochs": config.epochs - 1}), job["part"],
          progress=False)  # fmt: skip
    summary = evaluate_run(job["full"], **job["evaluate"], device="cpu", progress=False)
    world, device = distributed.init(torch.device("cpu"))
    estimates = evaluation_estimates(job, world)
    torch.save(
        {"params": vae.state_dict(), "summary": summary, "estimates": estimates},
        Path(job["results"]) / f"rank{os.environ['RANK']}.pt",
    )
    distributed.shutdown()


def evaluation_estimates(job: dict, world: distributed.World) -> dict[str, torch.Tensor]:
    """Per-example estimates of the ``full`` run, sharded over the ranks and gathered."""
    vae = load_run(job["full"])
    images = TrainConfig(**job["config"]).load_data("cpu").test[: job["evaluate"]["subset"]]
    options = {k: job["evaluate"][k] for k in ("num_samples", "max_batch", "seed")}
    estimates = estimate_log_likelihood(vae.model, vae.guide, images, world=world, **options)
    return {"log_likelihood": estimates.log_likelihood, "elbo": estimates.elbo}


if __name__ == "__main__":
    main(sys.argv[1])
