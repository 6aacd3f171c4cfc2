"""Training speed: pyro-vae vs a hand-written PyTorch VAE vs the Pyro-example way.

    python scripts/benchmark.py --batch-size 256 --epochs 5 [--device cuda] [--write]

One process, one network (784-400-50 MLP), one seed, the same dynamically
binarized Fashion-MNIST training images; the three ways run interleaved, one
epoch each in turn (in an order rotated every epoch), and the median epoch time of
each is reported, with the per-epoch ratios of back-to-back epochs:

1. ``pyro-vae``: one `pyro_vae.train` run (what `pyro-vae train` runs), whose
   callback runs the other ways' epochs between its own. Two times per epoch:
   its training steps alone (``train_seconds`` of metrics.jsonl) and the **whole
   epoch** a user waits for: the wall time of pyro-vae's loop from one epoch's end to
   the next's, the other ways' epochs left out. That is metrics.jsonl's ``seconds``
   (drawing the epoch's binary images, the steps, the validation ELBO) and the epoch's
   callbacks: the snapshots of ``best.pt`` and the checkpoint, whose background writes
   the next epoch pays for, and a wait for ``best.pt`` to be written;
2. ``pytorch``: the textbook hand-written VAE: closed-form Gaussian KL,
   ``binary_cross_entropy_with_logits``, ``torch.optim.Adam``, device tensors; its
   epoch is its steps and the drawing of each batch's binary images (with pyro-vae's
   function, so that neither gains by how it draws);
3. ``pyro-example``: ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO())`` fed by
   a ``torch.utils.data.DataLoader``, as in Pyro's VAE example (on the epoch's
   binary images, drawn at its start).

After the epochs each model's validation ELBO (same estimator, same seed) is
printed, to show that the speed costs no quality. With ``--write`` a row is added
to each of the results page's tables (docs/results/tables/training-speed.md: the
steps; whole-epoch.md: the whole epoch).
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import VAE, ImageData, TrainConfig, train
from pyro_vae.config import resolve_device
from pyro_vae.core.seeding import derived_seed, seeded
from pyro_vae.training.callbacks import Callback
from pyro_vae.training.loop import Trainer, validation_bound

#: pyro-vae's two times per epoch: the whole epoch (metrics.jsonl ``seconds``) and its steps.
PYRO_VAE_TIMES = ("pyro-vae", "pyro-vae steps")
ROWS_MARKER = "<!-- scripts/benchmark.py appends rows above this line -->"

#: Runs one epoch on the data's training images, drawing their binary images as it goes.
EpochFn = Callable[[ImageData], None]


def textbook_loss(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """The hand-written negative ELBO of a batch: one reparameterized sample,
    ``binary_cross_entropy_with_logits`` and the closed-form Gaussian KL."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    recon = F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
    return recon + kl


def textbook_optimizer(vae: VAE, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with its defaults over the encoder and decoder."""
    return torch.optim.Adam([*vae.encoder.parameters(), *vae.decoder.parameters()], lr=lr)


def hand_written(vae: VAE, lr: float, batch_size: int) -> EpochFn:
    """The textbook PyTorch VAE step on the same encoder/decoder modules, each batch's
    binary images drawn as pyro-vae draws them (``ImageData.training_batch``)."""
    optimizer = textbook_optimizer(vae, lr)

    def epoch(data: ImageData) -> None:
        size = data.train.shape[0]
        order = torch.randperm(size, device=data.train.device)
        for first in range(0, size, batch_size):
            loss = textbook_loss(vae, data.training_batch(order[first : first + batch_size]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def pyro_example(vae: VAE, lr: float, batch_size: int) -> EpochFn:
    """SVI with pyro.optim.Adam over a DataLoader, as Pyro's VAE example trains."""
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())

    def epoch(data: ImageData) -> None:
        images = data.training_images()
        loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True)
        for (x,) in loader:
            svi.step(x)

    return epoch


class Interleaved(Callback):
    """Runs one epoch of each other way between two of pyro-vae's, and records the times
    of all: pyro-vae's steps from its metrics row, the rest timed here. Each other way's
    epoch draws from an RNG seeded by its epoch, so pyro-vae's own draws are those of a
    run alone."""

    def __init__(self, ways: dict[str, EpochFn], data: ImageData, seed: int):
        self.ways, self.data, self.seed = ways, data, seed
        self.times: dict[str, list[float]] = {name: [] for name in (*PYRO_VAE_TIMES, *ways)}

    def on_train_start(self, trainer: Trainer) -> None:
        self.resumed = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        device, epoch = self.data.train.device, row["epoch"]
        trainer.writes.wait()  # best.pt, written in the background, counts for pyro-vae
        # since pyro-vae's loop resumed after the last epoch's other ways: its callbacks
        # after this one (the checkpoint's snapshot) count in the next epoch
        self.times["pyro-vae"].append(time.perf_counter() - self.resumed)
        self.times["pyro-vae steps"].append(row["train_seconds"])
        names = list(self.ways)  # rotated each epoch, so no way always follows the same other
        for name in names[epoch % len(names) :] + names[: epoch % len(names)]:
            with seeded(derived_seed(self.seed, epoch, names.index(name)), device):
                _synchronize(device)
                started = time.perf_counter()
                self.ways[name](self.data)
                _synchronize(device)
                self.times[name].append(time.perf_counter() - started)
        print(f"epoch {epoch}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in self.times.items()))
        self.resumed = time.perf_counter()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _quiet(message: str) -> None:
    pass


def peak_memory_of_training(device: str, epochs: int = 1) -> float:
    """Peak resident memory (MiB) of `pyro-vae train` on full Fashion-MNIST, in a fresh process."""
    out = Path(tempfile.mkdtemp(prefix="pyro-vae-memory-")) / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "--epochs",
            str(epochs),
            "--out",
            str(out),
            "--device",
            device,
            "--no-progress",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def peak_gpu_memory_of_training(epochs: int = 1) -> float:
    """Peak GPU memory (MiB) allocated by one `pyro-vae train` epoch on full Fashion-MNIST, in
    this process (`pyro_vae.train`, which the command runs; torch's allocator counts it)."""
    torch.cuda.reset_peak_memory_stats()
    out = Path(tempfile.mkdtemp(prefix="pyro-vae-memory-")) / "run"
    train(TrainConfig(epochs=epochs, device="cuda"), out, progress=False, log=_quiet)
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per way (median taken)")
    parser.add_argument("--subset", type=int, default=None, help="training images (default 50k)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="append rows to the results tables")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only measure the peak RSS of one `pyro-vae train` epoch "
        "(and, on CUDA, its peak GPU memory)",
    )
    args = parser.parse_args()
    if args.memory:
        print(
            f"peak RSS of `pyro-vae train --epochs 1` (full Fashion-MNIST, {args.device}): "
            f"{peak_memory_of_training(args.device):.0f} MiB"
        )
        if resolve_device(args.device).type == "cuda":
            peak = peak_gpu_memory_of_training()
            print(
                f"peak GPU memory of one training epoch ({torch.cuda.get_device_name()}): "
                f"{peak:.0f} MiB"
            )
        return

    device = resolve_device(args.device)
    config = TrainConfig(
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        subset=args.subset,
        device=str(device),
    )
    data = config.load_data(device)
    config.subset = None  # the data is passed to train() already subset
    baselines: dict[str, Callable[[VAE], EpochFn]] = {
        "pytorch": lambda v: hand_written(v, args.lr, args.batch_size),
        "pyro-example": lambda v: pyro_example(v, args.lr, args.batch_size),
    }
    ways: dict[str, EpochFn] = {}
    models: dict[str, VAE] = {}
    for name, make in baselines.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        models[name] = config.build_vae().to(device)
        ways[name] = make(models[name])
    interleaved = Interleaved(ways, data, args.seed)
    out = Path(tempfile.mkdtemp(prefix="pyro-vae-benchmark-")) / "run"
    models["pyro-vae"] = train(
        config, out, data=data, progress=False, log=_quiet, callbacks=[interleaved]
    )
    report(args, interleaved.times, models, data, device)


def report(
    args: argparse.Namespace,
    times: dict[str, list[float]],
    models: dict[str, VAE],
    data: ImageData,
    device: torch.device,
) -> None:
    """Print the median epochs and ratios; with ``--write``, add the rows to the tables."""
    num_images = data.train.shape[0]
    median = {name: statistics.median(t) for name, t in times.items()}
    elbo = {name: validation_bound(models[name], data.val) for name in models}
    for name, seconds in median.items():
        after = f"  val ELBO after {args.epochs} epochs {elbo[name]:.2f}" if name in elbo else ""
        print(f"{name:<15} median epoch {seconds:.2f}s  {num_images / seconds:,.0f} img/s{after}")
    whole, steps = (ratio(times[way], times["pytorch"]) for way in PYRO_VAE_TIMES)
    vs_example = median["pyro-example"] / median["pyro-vae steps"]
    print(
        f"pyro-vae / pytorch time: whole epoch {whole[0]:.3f}x (per-epoch pairs: {whole[1]}), "
        f"steps {steps[0]:.3f}x (per-epoch pairs: {steps[1]});  "
        f"pyro-example / pyro-vae steps: {vs_example:.2f}x"
    )
    if not args.write:
        return
    command = f"`{' '.join(['python scripts/benchmark.py', *sys.argv[1:]])}`"
    start = f"| {today()} | {machine(device)} | {args.batch_size} | {args.epochs} | "
    ordered = ("pyro-vae steps", "pytorch", "pyro-example")
    append_row(
        TABLES / "training-speed.md",
        ROWS_MARKER,
        start
        + " | ".join(f"{num_images / median[n]:,.0f}" for n in ordered)
        + f" | {steps[0]:.3f} | {steps[1]} | {vs_example:.2f} | "
        + " / ".join(f"{elbo[n]:.1f}" for n in ("pyro-vae", "pytorch", "pyro-example"))
        + f" | {versions()} | {command} |",
    )
    append_row(
        TABLES / "whole-epoch.md",
        ROWS_MARKER,
        start
        + f"{median['pyro-vae']:.2f} | {median['pyro-vae steps']:.2f} | {median['pytorch']:.2f} | "
        + f"{whole[0]:.3f} | {whole[1]} | {steps[0]:.3f} | {versions()} | {command} |",
    )


def ratio(times: list[float], baseline: list[float]) -> tuple[float, str]:
    """The ratio of the median times, and the per-epoch ratios: median (range). Each
    epoch's ratio pairs epochs run back to back, which cancels slow drifts of the
    machine's speed (a shared VM's varies by ~10% over minutes)."""
    paired = sorted(a / b for a, b in zip(times, baseline, strict=True))
    spread = f"{statistics.median(paired):.3f} ({paired[0]:.3f}-{paired[-1]:.3f})"
    return statistics.median(times) / statistics.median(baseline), spread


if __name__ == "__main__":
    main()
