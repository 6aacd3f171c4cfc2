"""What the reliability guards cost: the finiteness checks and a checkpoint write.

Times ``--steps`` training steps of the default 784-400-50 VAE (batch 128) with and
without the per-step check (the loss read on the host and tested for NaN),
interleaved in rounds so that load from other processes hits both alike; the
parameter scan :func:`pyro_vae.training.guards.nonfinite_update` that runs before every
checkpoint and after every epoch (and on the rare non-finite loss); and
``runs.save_checkpoint`` of the model with its Adam state.

    python scripts/benchmark_reliability.py --steps 200 --rounds 5 --threads 1
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_vae import TrainConfig, runs  # noqa: E402
from pyro_vae.inference.objectives import OBJECTIVES  # noqa: E402
from pyro_vae.training.guards import nonfinite_update  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = TrainConfig(device="cpu")
    vae = config.build_vae()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    loss_fn = OBJECTIVES["elbo"](1)
    parameters = list(vae.parameters())
    images = torch.bernoulli(torch.rand(args.steps * 128, 784))

    def steps(check: bool) -> float:
        started = time.perf_counter()
        for batch in images.split(128):
            loss = loss_fn(vae.model, vae.guide, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if check and not math.isfinite(loss.item()):
                raise RuntimeError("non-finite loss")
            optimizer.step()
        return (time.perf_counter() - started) / args.steps * 1e3

    steps(True)  # warm-up
    timings = {True: [], False: []}
    for _ in range(args.rounds):
        for check in (False, True):
            timings[check].append(steps(check))
    plain, checked = statistics.median(timings[False]), statistics.median(timings[True])

    checks = []
    for _ in range(50):
        started = time.perf_counter()
        nonfinite_update(parameters)
        checks.append((time.perf_counter() - started) * 1e3)

    saves = []
    with tempfile.TemporaryDirectory() as directory:
        state = {
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": runs.rng_state(),
        }
        for _ in range(10):
            started = time.perf_counter()
            runs.save_checkpoint(Path(directory), state)
            saves.append((time.perf_counter() - started) * 1e3)
        size = (Path(directory) / runs.CHECKPOINT_FILE).stat().st_size / 2**20

    print(f"threads {args.threads}, {args.steps} steps x {args.rounds} rounds (medians)")
    print(f"step without check: {plain:.2f} ms; with check: {checked:.2f} ms")
    print(f"nonfinite_update alone: {statistics.median(checks):.3f} ms")
    print(f"save_checkpoint ({size:.1f} MiB): {statistics.median(saves):.1f} ms")


if __name__ == "__main__":
    main()
