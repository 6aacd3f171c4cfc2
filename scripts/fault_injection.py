"""Fault injection: kill -9 training at random moments, inject a NaN, tear a checkpoint.

1. Train a reference run with ``pyro-vae train`` on a Fashion-MNIST subset, uninterrupted.
2. Train the same run again, SIGKILLing it ``--kills`` times at random moments (seeded)
   and resuming with ``--resume`` after each kill; check after every kill that the
   checkpoint loads, then compare the final parameters and metrics with the reference.
3. Inject NaN into the first training batch of the second epoch (Python API, same config): the
   run must stop naming the step, leave the last good checkpoint byte-identical, and,
   resumed on clean data, end identical to the reference.
4. Truncate a checkpoint and resume it: one clear line on stderr, exit status 2.

Every process uses ``--threads`` torch threads (default 1) so that parameters compare
bit for bit. Prints a Markdown report (``--markdown FILE`` also writes it).

    python scripts/fault_injection.py --kills 12 --seed 0
"""

import argparse
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyro_vae import ImageData, NumericalError, TrainConfig, train  # noqa: E402
from pyro_vae import runs as runs_module  # noqa: E402
from pyro_vae.runs import CHECKPOINT_FILE, CHECKPOINT_KEYS, load_checkpoint, read_metrics  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs to inject (at least 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--subset", type=int, default=5000, help="training images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--checkpoint-every", type=int, default=5, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pyro-vae-fault-injection"))
    p.add_argument("--markdown", type=Path, help="also write the report here")
    return p.parse_args()


class Runs:
    """Starts ``pyro-vae train`` processes that all share one set of options."""

    def __init__(self, args: argparse.Namespace):
        self.options = [
            "--subset",
            str(args.subset),
            "--epochs",
            str(args.epochs),
            "--checkpoint-every",
            str(args.checkpoint_every),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ]
        threads = str(args.threads)
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONPATH": str(REPO),
        }
        self.steps_per_epoch = -(-args.subset // TrainConfig().batch_size)
        self.epochs = args.epochs

    def command(self, out: Path, resume: bool) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            *self.options,
            "--out",
            str(out),
            *(["--resume"] if resume else []),
        ]

    def start(self, out: Path, resume: bool) -> tuple[subprocess.Popen, int]:
        """Start a run; return it once it has written a checkpoint, with the start time."""
        started = time.time_ns()
        process = subprocess.Popen(
            self.command(out, resume),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        checkpoint = out / CHECKPOINT_FILE
        while not (checkpoint.exists() and checkpoint.stat().st_mtime_ns >= started):
            if process.poll() is not None:
                sys.exit(f"training stopped unexpectedly: {process.stderr.read()}")
            time.sleep(0.01)
        return process, started

    def position(self, out: Path) -> tuple[int, int]:
        checkpoint = load_checkpoint(out, keys=CHECKPOINT_KEYS)  # raises if not loadable
        return checkpoint["epoch"], checkpoint["step"]

    def describe(self, position: tuple[int, int]) -> str:
        """A checkpoint position as steps done, e.g. ``step 45/200 (epoch 2)``."""
        done = position[0] * self.steps_per_epoch + position[1]
        total = self.epochs * self.steps_per_epoch
        return f"step {done}/{total} (epoch {position[0] + (position[1] > 0)})"


def same_run(a: Path, b: Path) -> tuple[bool, bool]:
    """(identical final parameters, identical metrics apart from wall-clock times)."""
    params_a, params_b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    params = params_a.keys() == params_b.keys() and all(
        torch.equal(value, params_b[name]) for name, value in params_a.items()
    )

    def rows(run):
        timings = ("seconds", "train_seconds")
        return [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(run)]

    return params, rows(a) == rows(b)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def kill_runs(args, runs: Runs, reference_seconds: float, lines: list[str]) -> Path:
    out = args.workdir / "killed"
    rng = random.Random(args.seed)
    # Delays average 40% of the training time in all; each resumed process also trains
    # --checkpoint-every steps before its window opens, so the kills end before the run.
    window = 0.8 * reference_seconds / args.kills
    lines += [
        f"Kill moments: uniform in [0, {window:.2f}] s after each process has written its "
        f"first checkpoint (seed {args.seed}).",
        "",
        "| kill | delay (s) | checkpoint before | checkpoint after kill | loadable | "
        "temporary file left |",
        "|---|---|---|---|---|---|",
    ]
    kills = 0
    while kills < args.kills:
        resume = (out / CHECKPOINT_FILE).exists()
        before = runs.position(out) if resume else (0, 0)
        if before == (args.epochs, 0):
            sys.exit(f"the run was complete after {kills} kills; use more --epochs")
        process, _ = runs.start(out, resume)
        delay = rng.uniform(0, window)
        time.sleep(delay)
        process.kill()
        if process.wait() != -9:
            sys.exit("the run finished before the kill; use more --epochs or fewer --kills")
        kills += 1
        left = sorted(p.name for p in out.glob(f".{CHECKPOINT_FILE}.*.tmp"))
        after = runs.position(out)
        lines.append(
            f"| {kills} | {delay:.2f} | {runs.describe(before)} | {runs.describe(after)} | yes | "
            f"{'yes' if left else 'no'} |"
        )
    process = subprocess.run(
        runs.command(out, resume=True), env=runs.env, capture_output=True, text=True
    )
    if process.returncode:
        sys.exit(f"the final resume failed: {process.stderr}")
    return out


def inject_nan(args, runs: Runs, reference: Path, lines: list[str]) -> bool:
    """The NaN run uses the Python API with the CLI's options, on the same data."""
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        subset=args.subset,
        epochs=args.epochs,
        seed=0,
        device="cpu",
        checkpoint_every=args.checkpoint_every,
    )
    out = args.workdir / "nan"
    draw, write, calls, written = ImageData.training_batch, runs_module.write_checkpoint, [0], []
    steps = math.ceil(config.load_data(torch.device("cpu")).train.shape[0] / config.batch_size)

    def poisoned(self: ImageData, index: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        batch = draw(self, index)
        first_of_epoch_2 = calls[0] == steps + 1
        return batch.index_fill(0, torch.tensor([0]), float("nan")) if first_of_epoch_2 else batch

    def recorded(path: Path, state: dict) -> None:
        write(path, state)
        if path.name == CHECKPOINT_FILE:  # note what each good write of the checkpoint wrote
            written.append(sha256(path))

    ImageData.training_batch, runs_module.write_checkpoint = poisoned, recorded
    try:
        train(config, out, progress=False, log=lambda line: None)
        sys.exit("the NaN was not caught")
    except NumericalError as error:
        message = str(error)
    finally:
        ImageData.training_batch, runs_module.write_checkpoint = draw, write
    kept = sha256(out / CHECKPOINT_FILE) == written[-1]
    position = runs.position(out)
    train(config, out, resume=True, progress=False, log=lambda line: None)
    params, metrics = same_run(out, reference)
    lines += [
        "NaN written into the first training batch of epoch 2 (Python API, same options):",
        "",
        f"- message: `{message}`",
        f"- checkpoint after the fault: {runs.describe(position)}, byte-identical to the last "
        f"one written before the NaN: {'yes' if kept else 'NO'}",
        f"- resumed on clean data, final parameters identical to the reference: "
        f"{'yes' if params else 'NO'}; metrics identical: {'yes' if metrics else 'NO'}",
    ]
    return kept and params and metrics


def tear_checkpoint(args, runs: Runs, source: Path, lines: list[str]) -> bool:
    out = args.workdir / "torn"
    shutil.copytree(source, out)
    path = out / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = subprocess.run(
        runs.command(out, resume=True), env=runs.env, capture_output=True, text=True
    )
    lines += [
        "Checkpoint truncated to half its size, then `--resume`:",
        "",
        f"- exit status {result.returncode}, stderr ({len(result.stderr.splitlines())} line):",
        f"  `{result.stderr.strip()}`",
    ]
    return result.returncode == 2 and len(result.stderr.splitlines()) == 1


def main() -> None:
    args = parse_args()
    if args.kills < 1:
        sys.exit("--kills must be positive")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    runs = Runs(args)
    began = time.perf_counter()

    reference = args.workdir / "reference"
    process, _ = runs.start(reference, resume=False)
    training_began = time.time_ns()
    _, stderr = process.communicate()
    if process.returncode:
        sys.exit(f"the reference run failed: {stderr}")
    reference_seconds = (time.time_ns() - training_began) / 1e9

    command = " ".join(["pyro-vae", "train", *runs.options])
    lines = [
        f"Command: `python scripts/fault_injection.py --kills {args.kills} --seed {args.seed} "
        f"--subset {args.subset} --epochs {args.epochs} --checkpoint-every "
        f"{args.checkpoint_every} --threads {args.threads}`",
        "",
        f"Every run: `{command} --out DIR` ({runs.steps_per_epoch} steps per epoch, "
        f"{args.epochs * runs.steps_per_epoch} in all); the reference trained for "
        f"{reference_seconds:.1f} s after its first checkpoint.",
        "",
    ]
    killed = kill_runs(args, runs, reference_seconds, lines)
    params, metrics = same_run(killed, reference)
    lines += [
        "",
        f"After {args.kills} kills and {args.kills} resumes: final parameters identical to the "
        f"uninterrupted run: **{'yes' if params else 'NO'}**; metrics identical (apart from "
        f"wall-clock times): **{'yes' if metrics else 'NO'}**.",
        "",
    ]
    results = [inject_nan(args, runs, reference, lines)]
    lines.append("")
    results.append(tear_checkpoint(args, runs, reference, lines))
    lines += ["", f"Total time: {time.perf_counter() - began:.0f} s."]

    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    if not (params and metrics and all(results)):
        sys.exit(1)


if __name__ == "__main__":
    main()
