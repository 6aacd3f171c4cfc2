"""Poisson, negative binomial and ZINB likelihoods on counts: held-out log-likelihoods.

    python scripts/compare_count_likelihoods.py [--epochs 60] [--write]

Two count datasets, each written as a ``.npz`` image file of float counts and trained
with ``pyro-vae``'s library API (``binarize="none"``), once per likelihood, same network
and seed:

* ``simulated``: 30 counts per row from a 2-D latent variable, over-dispersed and with
  extra zeros by construction: :math:`\\mu = \\exp(W z + b)`, counts from a negative
  binomial with inverse dispersion 2, then 30% of them set to 0 (2,400 training rows,
  600 test rows, seed 0). The ZINB is the true family, the Poisson the wrong one;
* ``digits``: scikit-learn's 8x8 handwritten digits, 64 counts 0-16 per image (each
  the number of pixels set in a 4x4 block of a 32x32 bitmap), 1,497 training and 300
  test images.

Each model's test log p(x) is the importance-weighted estimate (K = 1,000) with its
standard error over rows, and the paired difference of each likelihood to the Poisson
with the standard error of the per-row differences. ``--write`` adds the rows to
docs/results/tables/count-likelihoods.md.
"""

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path

from pyro_vae import TrainConfig, train
from pyro_vae.analysis.evaluation import evaluate_run
from pyro_vae.runs import read_evaluation, read_examples

LIKELIHOODS = ("poisson", "negative-binomial", "zinb")
MARKER = "<!-- scripts/compare_count_likelihoods.py appends rows above this line -->"


def simulated_counts(seed: int = 0, rows: int = 3_000, dim: int = 30) -> np.ndarray:
    """Rows of ZINB counts whose means depend on a 2-D latent variable."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, 2))
    weights, bias = rng.normal(0, 0.8, (2, dim)), rng.normal(1.0, 0.5, dim)
    mean, theta = np.exp(z @ weights + bias), 2.0
    counts = rng.negative_binomial(theta, theta / (theta + mean))
    counts[rng.random(counts.shape) < 0.3] = 0
    return counts.reshape(rows, 1, dim).astype(np.float32)


def digit_counts() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # an extra of the script only

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target


def write_npz(path: Path, counts: np.ndarray, labels: np.ndarray | None, test: int) -> Path:
    labels = np.zeros(len(counts), np.int64) if labels is None else labels
    np.savez(
        path,
        train=counts[:-test],
        test=counts[-test:],
        train_labels=labels[:-test],
        test_labels=labels[-test:],
    )
    return path


def compare(name: str, npz: Path, args: argparse.Namespace, work: Path) -> list[str]:
    """Train and evaluate one run per likelihood on ``npz``; the table rows."""
    scores = {}
    for likelihood in LIKELIHOODS:
        config = TrainConfig(
            dataset=str(npz),
            binarize="none",
            likelihood=likelihood,
            latent_dim=args.latent_dim,
            hidden_dims=(args.hidden_dim,),
            epochs=args.epochs,
            batch_size=64,
            lr=3e-3,
            seed=args.seed,
            device="cpu",
        )
        out = work / f"{name}-{likelihood}"
        train(config, out, progress=False, log=lambda line: None)
        evaluate_run(out, num_samples=args.num_samples, progress=False, log=lambda line: None)
        summary = read_evaluation(out)
        scores[likelihood] = read_examples(out, summary)
    command = " ".join(["python scripts/compare_count_likelihoods.py", *sys.argv[1:]])
    rows = []
    for likelihood, ll in scores.items():
        difference = ll - scores["poisson"]
        paired = (
            f"{difference.mean():+.2f} ± {difference.std() / math.sqrt(ll.size):.2f}"
            if likelihood != "poisson"
            else "0"
        )
        line = (
            f"{name:<10} {likelihood:<18} test log p(x) {ll.mean():8.2f} ± "
            f"{ll.std() / math.sqrt(ll.size):.2f}  vs Poisson {paired}"
        )
        print(line)
        rows.append(
            f"| {today()} | {machine()} | {name} | {likelihood} | {args.epochs} | "
            f"{ll.mean():.2f} ± {ll.std() / math.sqrt(ll.size):.2f} | {paired} | "
            f"{versions()} | `{command}` |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="add the rows to the results table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyro-vae-counts-"))
    rows = compare(
        "simulated", write_npz(work / "sim.npz", simulated_counts(), None, 600), args, work
    )
    images, labels = digit_counts()
    rows += compare("digits", write_npz(work / "digits.npz", images, labels, 300), args, work)
    if args.write:
        for row in rows:
            append_row(TABLES / "count-likelihoods.md", MARKER, row)


if __name__ == "__main__":
    main()
