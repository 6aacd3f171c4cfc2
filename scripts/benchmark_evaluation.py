"""Time and peak memory of the importance-weighted evaluation (`pyro-vae evaluate`).

    python scripts/benchmark_evaluation.py --run runs/default                 # 10k x 5000
    python scripts/benchmark_evaluation.py --run runs/default --memory-only   # peak RSS vs K
    python scripts/benchmark_evaluation.py --run runs/conv --sweep 20000 5000 2500 1000
    python scripts/benchmark_evaluation.py --run runs/default --flops --subset 1000 --write

The full run calls `pyro_vae.analysis.evaluation.evaluate_run` exactly as the CLI does. The memory
check evaluates 2 images with growing K, each in a fresh process, and reports the
peak resident memory above what loading the model and data takes: it stays flat in K
because at most --max-batch (sample, image) pairs are evaluated at once. The sweep
times the estimate of the first --subset (default 20) test images with each --max-batch
value, in alternating rounds in one process, to choose an architecture's
``cpu_evaluation_batch`` (the default ``--max-batch`` on a CPU).

The FLOP/s mode sets the evaluation against the hardware: it estimates log p(x) of the
first --subset test images as `pyro-vae evaluate` does (default --max-batch of the
device), counts the multiply-adds of its matrix products and convolutions (torch's
FLOP counter, on the first pass), and replays those same products, with the same
shapes and memory layouts, alone: the FLOP/s torch reaches on them is the machine's
ceiling for this work. Evaluation and replays take turns (every --every passes, the
products of those passes), so that both are timed in the same state of the machine.
The achieved FLOP/s of the evaluation is reported as a share of the ceiling, with the
evaluation's wall time scaled to 10,000 images. ``--estimates FILE.npy`` saves the
per-image estimates, ``--paired-with FILE.npy`` prints the paired difference to saved
ones (another version, the same seed), and ``--write`` adds a row to the results
page's table (docs/results/tables/evaluation-flops.md).
"""

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from pyro_vae.inference.estimators import DEFAULT_MAX_BATCH

MEMORY_PROBE = """
import json, os, sys, threading, time
from pyro_vae import load_run, read_config
from pyro_vae.inference.estimators import estimate_log_likelihood

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

run, k, max_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vae = load_run(run)
images = read_config(run).load_data().test[:2].clone()
base, peak, done = rss_mib(), [0.0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mib())
        time.sleep(0.005)

thread = threading.Thread(target=sample)
thread.start()
estimate_log_likelihood(vae.model, vae.guide, images, num_samples=k, max_batch=max_batch)
done.set()
thread.join()
print(json.dumps({"k": k, "base_mib": base, "peak_mib": peak[0]}))
"""


def memory_table(run: str, max_batch: int) -> list[str]:
    rows = ["| K | RSS before (MiB) | peak RSS during (MiB) | growth (MiB) |", "|---|---|---|---|"]
    for k in (1000, 10_000, 100_000, 1_000_000):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, run, str(k), str(max_batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        growth = probe["peak_mib"] - probe["base_mib"]
        rows.append(f"| {k} | {probe['base_mib']:.0f} | {probe['peak_mib']:.0f} | {growth:.0f} |")
    return rows


def sweep_table(
    run: str, max_batches: list[int], num_images: int, num_samples: int, rounds: int
) -> list[str]:
    from pyro_vae import load_run, read_config
    from pyro_vae.inference.estimators import estimate_log_likelihood

    vae = load_run(run)
    data = read_config(run).load_data()
    inputs = vae.batch_inputs(data.test[:num_images], data.test_labels[:num_images])
    seconds: dict[int, list[float]] = {max_batch: [] for max_batch in max_batches}
    for _ in range(rounds):
        for max_batch in max_batches:
            estimates = estimate_log_likelihood(
                vae.model, vae.guide, *inputs, num_samples=num_samples, max_batch=max_batch
            )
            seconds[max_batch].append(estimates.seconds / num_images)
    rows = [f"| --max-batch | s per image, median (min-max of {rounds} rounds) |", "|---|---|"]
    for max_batch, times in seconds.items():
        rows.append(
            f"| {max_batch} | {statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f}) |"
        )
    return rows


class MatrixProducts(TorchDispatchMode):
    """Records every call of an operator that torch's FLOP counter counts (matrix products,
    convolutions), with the layout of its tensor arguments, to replay them alone."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry:
            self.calls.append((func, *tree_map(_layout, (args, kwargs))))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Layout:
    """A tensor argument's shape, strides, dtype and device, without its values."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _layout(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Layout(tuple(value.shape), value.stride(), value.dtype, value.device)
    return value


def _materialize(value: Any) -> Any:
    if isinstance(value, Layout):
        empty = torch.empty_strided(value.shape, value.stride, dtype=value.dtype)
        return empty.to(value.device).normal_()
    return value


class InterleavedProducts:
    """An ``on_chunk`` callback of the estimator that, after every ``every`` chunks,
    replays the matrix products of the passes those chunks ran, alone, on random tensors of
    the same layouts: the evaluation and its products alone are timed in turns, so that
    both see the same state of the machine (this VM's speed moves by up to a factor of two
    over seconds). The replays' time is kept out of the evaluation's."""

    def __init__(self, calls: list[tuple[Any, tuple, dict]], images_per_pass: int, every: int):
        self.replays = [(func, *tree_map(_materialize, (a, k))) for func, a, k in calls]
        self.images_per_pass, self.every = images_per_pass, every
        self.device = self.replays[0][1][0].device
        self.evaluation_seconds = self.product_seconds = 0.0
        self.images = self.pending = 0
        self.mark = time.perf_counter()

    def __call__(self, start: int, results: dict[str, torch.Tensor]) -> None:
        self.pending += results["ll"].shape[0]
        self.images += results["ll"].shape[0]
        if self.images % (self.every * self.images_per_pass) == 0:
            self.flush()

    def flush(self) -> None:
        """Time the evaluation since the last flush, then replay its passes' products."""
        self._synchronize()
        self.evaluation_seconds += time.perf_counter() - self.mark
        started = time.perf_counter()
        for _ in range(round(self.pending / self.images_per_pass)):
            for func, args, kwargs in self.replays:
                func(*args, **kwargs)
        self._synchronize()
        self.product_seconds += time.perf_counter() - started
        self.pending, self.mark = 0, time.perf_counter()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def flops_report(args: argparse.Namespace) -> None:
    """The achieved FLOP/s of the importance-weighted estimate vs the same products alone."""
    from pyro_vae import load_run, read_config
    from pyro_vae.analysis.evaluation import default_max_batch
    from pyro_vae.inference.estimators import estimate_log_likelihood, log_densities

    vae = load_run(args.run, args.device)
    config, device = read_config(args.run), next(vae.parameters()).device
    data = config.load_data(device)
    images = vae.batch_inputs(data.test[: args.subset], data.test_labels[: args.subset])
    max_batch = args.max_batch or default_max_batch(config, device)
    per_pass = max(1, max_batch // args.num_samples)  # images in one pass of the estimator
    first = [tensor[:per_pass] for tensor in images]
    with torch.no_grad(), FlopCounterMode(display=False) as counter, MatrixProducts() as products:
        log_densities(vae.model, vae.guide, *first, num_particles=min(args.num_samples, max_batch))
    passes = math.ceil(args.num_samples / max_batch)
    flops_per_image = counter.get_total_flops() * passes / first[0].shape[0]
    # the products of one image's passes (or of one pass of several images), in turns
    interleaved = InterleavedProducts(products.calls * passes, per_pass, every=args.every)
    estimates = estimate_log_likelihood(
        vae.model,
        vae.guide,
        *images,
        num_samples=args.num_samples,
        max_batch=max_batch,
        on_chunk=interleaved,
    )
    interleaved.flush()
    report(args, estimates, flops_per_image, interleaved, max_batch, device)


def report(
    args: argparse.Namespace,
    estimates: Any,
    flops_per_image: float,
    interleaved: InterleavedProducts,
    max_batch: int,
    device: torch.device,
) -> None:
    """Print the FLOP/s report (and add its row to the results table with ``--write``)."""
    flops = flops_per_image * interleaved.images
    achieved = flops / interleaved.evaluation_seconds
    ceiling = flops / interleaved.product_seconds
    ten_thousand = interleaved.evaluation_seconds * 10_000 / interleaved.images
    ll = estimates.log_likelihood.cpu().numpy()
    print(
        f"{interleaved.images} test images, K={args.num_samples}, --max-batch {max_batch}: "
        f"{interleaved.evaluation_seconds:.1f} s ({ten_thousand / 60:.1f} min for 10,000 images)\n"
        f"{flops_per_image / 1e9:.2f} GFLOP per image in matrix products; achieved "
        f"{achieved / 1e9:.1f} GFLOP/s, the same products alone, in turns with it, "
        f"{ceiling / 1e9:.1f} GFLOP/s: {achieved / ceiling:.0%}\n"
        f"log p(x) {ll.mean():.3f} +- {ll.std() / math.sqrt(ll.size):.3f} (stderr)"
    )
    if args.estimates:
        np.save(args.estimates, ll)
    if args.paired_with:
        difference = ll - np.load(args.paired_with)
        print(
            f"paired difference to {args.paired_with}: {difference.mean():+.4f} +- "
            f"{difference.std() / math.sqrt(difference.size):.4f} nats (stderr)"
        )
    if args.write:
        command = " ".join(["python scripts/benchmark_evaluation.py", *sys.argv[1:]])
        append_row(
            TABLES / "evaluation-flops.md",
            "<!-- scripts/benchmark_evaluation.py --flops appends rows above this line -->",
            f"| {today()} | {machine(device)} | {args.subset} | {args.num_samples} | {max_batch} "
            f"| {flops_per_image / 1e9:.2f} | {achieved / 1e9:.1f} | {ceiling / 1e9:.1f} | "
            f"{achieved / ceiling:.0%} | {ten_thousand / 60:.1f} | {ll.mean():.2f} | "
            f"{versions()} | `{command}` |",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="trained run directory")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=None, help="default: the device's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="+",
        metavar="MAX_BATCH",
        help="only time these --max-batch values (CPU)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the sweep")
    parser.add_argument("--flops", action="store_true", help="only the FLOP/s report")
    parser.add_argument(
        "--every", type=int, default=20, help="--flops: passes between turns of products alone"
    )
    parser.add_argument("--estimates", help="save the per-image estimates (.npy)")
    parser.add_argument("--paired-with", help="per-image estimates (.npy) to compare with")
    parser.add_argument("--write", action="store_true", help="add the --flops row to its table")
    args = parser.parse_args()
    if args.flops:
        flops_report(args)
        return

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    print(
        f"machine: {platform.node()} {device or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if args.sweep:
        num_images = args.subset or 20
        print(f"run {args.run}, K={args.num_samples}, first {num_images} test images")
        print(
            "\n".join(sweep_table(args.run, args.sweep, num_images, args.num_samples, args.rounds))
        )
        return
    if not args.memory_only:
        from pyro_vae.analysis.evaluation import evaluate_run

        result = evaluate_run(
            args.run,
            num_samples=args.num_samples,
            subset=args.subset,
            max_batch=args.max_batch,
            device=args.device,
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        print(json.dumps({**result, "peak_rss_mib": peak, "peak_gpu_mib": gpu}, indent=2))
    print("\n".join(memory_table(args.run, args.max_batch or DEFAULT_MAX_BATCH)))


if __name__ == "__main__":
    main()
