"""One training step: pyro-vae's against the hand-written PyTorch step.

    python scripts/benchmark_step.py --batch-size 64 [--blocks 12] [--steps 100] [--device cuda]

Whole-epoch timings (scripts/benchmark.py) on a shared VM vary by 10-20% from run
to run. This isolates the step: in one process, the same 784-400-50 MLP and the
same randomly ordered batches, blocks of ``--steps`` steps alternate between

* ``pyro-vae-eager``: pyro-vae's step run eagerly, as `pyro-vae train` runs it on a CPU,
  inside :func:`pyro_vae.training.guards.training_steps`: the ``elbo`` objective
  (ReparamTrace_ELBO) of the model/guide, backward, the loss read on the host and
  checked, fused Adam;
* ``pytorch``: the textbook step (closed-form KL, ``binary_cross_entropy_with_logits``,
  ``torch.optim.Adam``);
* ``pyro-vae-cuda-graph`` (CUDA only): the same step recorded once in a CUDA graph and
  replayed (:class:`pyro_vae.training.graphs.CapturedStep`), as `pyro-vae train` runs it on one
  GPU: Pyro's Python (traces, handlers, distributions) runs only at capture.

and the median time per step of each is printed with its ratio to ``pytorch``.
"""

import argparse
import math
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from benchmark import textbook_loss, textbook_optimizer  # scripts/ is on sys.path

from pyro_vae import VAE, TrainConfig
from pyro_vae.config import resolve_device
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.training.graphs import CapturedStep, skip_update_unless_finite
from pyro_vae.training.guards import training_steps


def _batch(images: torch.Tensor, step: int, batch: int) -> torch.Tensor:
    first = step * batch % (images.shape[0] - batch)
    return images[first : first + batch]


def pyro_vae_steps(images: torch.Tensor, batch: int, graph: bool) -> Callable[[int, int], None]:
    """pyro-vae's step as `pyro-vae train` takes it: eagerly (the loss is read and checked
    before the update), or with ``graph`` replayed from a CUDA graph that skips the update
    of a non-finite loss (:class:`~pyro_vae.training.graphs.CapturedStep`, as on one GPU)."""
    vae = VAE().to(images.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True, capturable=graph)
    loss_fn = OBJECTIVES["elbo"](1)

    def gradient(x: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(vae.model, vae.guide, x, beta=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def graphed_step(x: torch.Tensor) -> tuple[torch.Tensor]:
        loss = gradient(x)
        with skip_update_unless_finite(optimizer, loss):
            optimizer.step()
        return (loss,)

    captured = CapturedStep(graphed_step) if graph else None

    def run(first: int, count: int) -> None:
        with training_steps(vae):
            for i in range(first, first + count):
                x = _batch(images, i, batch)
                loss = gradient(x) if captured is None else captured(x)[0]
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"non-finite loss at step {i}")
                if captured is None:  # eager: the update follows the check
                    optimizer.step()

    return run


def pytorch_steps(images: torch.Tensor, batch: int) -> Callable[[int, int], None]:
    vae = VAE().to(images.device)
    optimizer = textbook_optimizer(vae, lr=1e-3)

    def run(first: int, count: int) -> None:
        for i in range(first, first + count):
            loss = textbook_loss(vae, _batch(images, i, batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=12, help="blocks per way (median taken)")
    parser.add_argument("--steps", type=int, default=100, help="steps per block")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pyro.set_rng_seed(0)
    # Fashion-MNIST, binarized once; batches are consecutive rows.
    images = TrainConfig(device=str(device)).load_data(device).training_images()
    ways = {
        "pyro-vae-eager": pyro_vae_steps(images, args.batch_size, graph=False),
        "pytorch": pytorch_steps(images, args.batch_size),
    }
    if device.type == "cuda":
        ways["pyro-vae-cuda-graph"] = pyro_vae_steps(images, args.batch_size, graph=True)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for block in range(args.blocks):
        for name, run in ways.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            run(block * args.steps, args.steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) / args.steps * 1000)
    base = statistics.median(times["pytorch"])
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{args.threads} threads"
    print(f"batch {args.batch_size}, {where}, {args.blocks} blocks of {args.steps} steps per way")
    for name, block_times in times.items():
        median = statistics.median(block_times)
        print(f"{name:<20} {median:6.3f} ms/step  {median / base:.3f}x pytorch")


if __name__ == "__main__":
    main()
