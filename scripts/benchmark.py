"""Training speed: pyro-vae vs a hand-written PyTorch VAE vs the Pyro-example way.

    python scripts/benchmark.py --batch-size 256 --epochs 5 [--device cuda] [--write]

One process, one network (784-400-50 MLP), one seed, the same dynamically
binarized Fashion-MNIST training images; the three ways run interleaved, one
epoch each in turn (in an order rotated every epoch), and the median epoch time of
each is reported, with the per-epoch ratios of back-to-back epochs:

1. ``pyro-vae``: the training step `pyro-vae train` runs (`pyro_vae.training.loop`);
2. ``pytorch``: the textbook hand-written VAE: closed-form Gaussian KL,
   ``binary_cross_entropy_with_logits``, ``torch.optim.Adam``, device tensors;
3. ``pyro-example``: ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO())`` fed by
   a ``torch.utils.data.DataLoader``, as in Pyro's VAE example.

After the epochs each model's validation ELBO (same estimator, same seed) is
printed, to show that the speed costs no quality. With ``--write`` a row is
added to the results page's table (docs/results/tables/training-speed.md).
"""

import argparse
import dataclasses
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import VAE, ImageData, TrainConfig, load_run, read_metrics, train
from pyro_vae.config import resolve_device
from pyro_vae.training.loop import validation_bound

TABLE = TABLES / "training-speed.md"
ROWS_MARKER = "<!-- scripts/benchmark.py appends rows above this line -->"

#: Runs one epoch; returns its own timing, or None to be timed from outside.
EpochFn = Callable[[torch.Tensor], float | None]


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
    """The textbook PyTorch VAE step on the same encoder/decoder modules."""
    optimizer = textbook_optimizer(vae, lr)

    def epoch(images: torch.Tensor) -> None:
        order = torch.randperm(images.shape[0], device=images.device)
        for first in range(0, images.shape[0], batch_size):
            loss = textbook_loss(vae, images[order[first : first + batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def pyro_example(vae: VAE, lr: float, batch_size: int) -> EpochFn:
    """SVI with pyro.optim.Adam over a DataLoader, as Pyro's VAE example trains."""
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())

    def epoch(images: torch.Tensor) -> None:
        loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True)
        for (x,) in loader:
            svi.step(x)

    return epoch


def pyro_vae_way(config: TrainConfig, data: ImageData, out: Path) -> EpochFn:
    """`pyro_vae.train`, the function behind `pyro-vae train`, one more epoch per call
    (resuming its own run); the time is its ``train_seconds``: the training steps only,
    without the validation ELBO and the checkpoint that every epoch also does."""
    epochs_done = 0

    def epoch(images: torch.Tensor) -> float:
        nonlocal epochs_done
        epochs_done += 1
        run_config = dataclasses.replace(config, epochs=epochs_done)
        train(run_config, out, resume=epochs_done > 1, data=data, progress=False, log=_quiet)
        return read_metrics(out)[-1]["train_seconds"]

    return epoch


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
    parser.add_argument("--write", action="store_true", help=f"append a row to {TABLE.name}")
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
        lr=args.lr,
        seed=args.seed,
        subset=args.subset,
        device=str(device),
    )
    data = config.load_data(device)
    config.subset = None  # the data is passed to train() already subset
    out = Path(tempfile.mkdtemp(prefix="pyro-vae-benchmark-")) / "run"
    baselines: dict[str, Callable[[VAE], EpochFn]] = {
        "pytorch": lambda v: hand_written(v, args.lr, args.batch_size),
        "pyro-example": lambda v: pyro_example(v, args.lr, args.batch_size),
    }
    ways: dict[str, EpochFn] = {"pyro-vae": pyro_vae_way(config, data, out)}
    models: dict[str, VAE] = {}
    for name, make in baselines.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        models[name] = config.build_vae().to(device)
        ways[name] = make(models[name])

    times: dict[str, list[float]] = {name: [] for name in ways}
    pyro.set_rng_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        images = data.training_images()
        names = list(ways)  # rotated each epoch, so no way always follows the same other one
        for name in names[epoch % len(names) :] + names[: epoch % len(names)]:
            run_epoch = ways[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            own_timing = run_epoch(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(own_timing or time.perf_counter() - started)
        print(f"epoch {epoch}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    models["pyro-vae"] = load_run(out, device)

    num_images = data.train.shape[0]
    median = {name: statistics.median(t) for name, t in times.items()}
    elbo = {name: validation_bound(models[name], data.val) for name in ways}
    for name in ways:
        print(
            f"{name:<13} median epoch {median[name]:.2f}s  {num_images / median[name]:,.0f} img/s"
            f"  val ELBO after {args.epochs} epochs {elbo[name]:.2f}"
        )
    vs_torch = median["pyro-vae"] / median["pytorch"]
    vs_example = median["pyro-example"] / median["pyro-vae"]
    # Each epoch's ratio pairs epochs run back to back, which cancels slow drifts of the
    # machine's speed (a shared VM's varies by ~10% over minutes).
    paired = sorted(a / b for a, b in zip(times["pyro-vae"], times["pytorch"], strict=True))
    spread = f"{statistics.median(paired):.3f} ({paired[0]:.3f}-{paired[-1]:.3f})"
    print(
        f"pyro-vae / pytorch time: {vs_torch:.3f}x (per-epoch pairs: {spread});  "
        f"pyro-example / pyro-vae time: {vs_example:.2f}x"
    )

    if args.write:
        command = " ".join(["python scripts/benchmark.py", *sys.argv[1:]])
        row = (
            f"| {today()} | {machine(device)} | {args.batch_size} | {args.epochs} | "
            + " | ".join(f"{num_images / median[n]:,.0f}" for n in ways)
            + f" | {vs_torch:.3f} | {spread} | {vs_example:.2f} | "
            + " / ".join(f"{elbo[n]:.1f}" for n in ways)
            + f" | {versions()} | `{command}` |"
        )
        append_row(TABLE, ROWS_MARKER, row)


if __name__ == "__main__":
    main()
