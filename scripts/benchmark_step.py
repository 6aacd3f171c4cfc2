"""One training step: pyro-vae's against the hand-written PyTorch step.

    python scripts/benchmark_step.py --batch-size 64 [--blocks 12] [--steps 100] [--device cuda]

Whole-epoch timings (scripts/benchmark.py) on a shared VM vary by 10-20% from run
to run. This isolates the step: in one process, the same 784-400-50 MLP and the
same consecutive batches, blocks of ``--steps`` steps alternate (in an order rotated
every block) between

* ``pyro-vae-eager``: pyro-vae's step run eagerly (``record_forward`` and ``cuda_graph``
  off), inside :func:`pyro_vae.training.guards.training_steps`: the ``elbo`` objective
  (ReparamTrace_ELBO) of the model/guide, backward, the loss read on the host and
  checked, fused Adam;
* ``pyro-vae-recorded`` (CPU) or ``pyro-vae-cuda-graph`` (CUDA): the same step as
  `pyro-vae train` runs it there, recorded once and replayed, as an FX graph of its aten
  operations (:class:`pyro_vae.training.graphs.RecordedStep`) or a CUDA graph
  (:class:`pyro_vae.training.graphs.CapturedStep`): Pyro's Python (traces, handlers,
  distributions), autograd's and the optimizer's run only when it is recorded;
* ``pytorch``: the textbook step (closed-form KL, ``binary_cross_entropy_with_logits``,
  ``torch.optim.Adam``);

and the median time per step of each is printed with its ratio to ``pytorch``.
"""

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from benchmark import textbook_loss, textbook_optimizer  # scripts/ is on sys.path

from pyro_vae import VAE, TrainConfig
from pyro_vae.config import resolve_device
from pyro_vae.core.distributed import SINGLE
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.training.guards import training_steps
from pyro_vae.training.steps import StepRunner


def _batch(images: torch.Tensor, step: int, batch: int) -> torch.Tensor:
    first = step * batch % (images.shape[0] - batch)
    return images[first : first + batch]


def pyro_vae_steps(images: torch.Tensor, config: TrainConfig) -> Callable[[int, int], None]:
    """pyro-vae's step as `pyro-vae train` takes it with ``config``
    (:class:`~pyro_vae.training.steps.StepRunner`): replayed from a recorded graph of the
    whole step (an FX graph on a CPU, a CUDA graph on one GPU) unless ``config`` switches
    that off; eager steps read and check the loss before the update."""
    device = images.device
    vae = VAE().to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    runner = StepRunner(config, vae, optimizer, OBJECTIVES["elbo"](1), SINGLE, device, print)
    batch = config.batch_size

    def run(first: int, count: int) -> None:
        with training_steps(vae):
            for i in range(first, first + count):
                loss, _, pending = runner.begin((_batch(images, i, batch),), 1.0, batch, i, None)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"non-finite loss at step {i}")
                if pending:  # eager: the update follows the check
                    runner.finish(batch)

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
    config = TrainConfig(batch_size=args.batch_size, device=str(device))
    graph = "pyro-vae-cuda-graph" if device.type == "cuda" else "pyro-vae-recorded"
    ways = {
        "pyro-vae-eager": pyro_vae_steps(
            images, dataclasses.replace(config, cuda_graph=False, record_forward=False)
        ),
        graph: pyro_vae_steps(images, config),
        "pytorch": pytorch_steps(images, args.batch_size),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for block in range(args.blocks):  # the order rotated, so no way always follows another
        for name in names[block % len(names) :] + names[: block % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            ways[name](block * args.steps, args.steps)
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
