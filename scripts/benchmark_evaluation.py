"""Time and peak memory of the importance-weighted evaluation (`pyro-vae evaluate`).

    python scripts/benchmark_evaluation.py --run runs/default                 # 10k x 5000
    python scripts/benchmark_evaluation.py --run runs/default --memory-only   # peak RSS vs K
    python scripts/benchmark_evaluation.py --run runs/conv --sweep 20000 5000 2500 1000

The full run calls `pyro_vae.analysis.evaluation.evaluate_run` exactly as the CLI does. The memory
check evaluates 2 images with growing K, each in a fresh process, and reports the
peak resident memory above what loading the model and data takes: it stays flat in K
because at most --max-batch (sample, image) pairs are evaluated at once. The sweep
times the estimate of the first --subset (default 20) test images with each --max-batch
value, in alternating rounds in one process, to choose an architecture's
``cpu_evaluation_batch`` (the default ``--max-batch`` on a CPU).
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="trained run directory")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
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
    args = parser.parse_args()

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
    print("\n".join(memory_table(args.run, args.max_batch)))


if __name__ == "__main__":
    main()
