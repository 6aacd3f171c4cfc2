"""Semi-supervised Fashion-MNIST: test error with few labels, M2 against two baselines.

    python scripts/benchmark_semisupervised.py --out DIR [--labels 100 1000 3000]
        [--seeds 0 1 2] [--epochs 10] [--write]

For each number of labels and seed, the same labelled training images (``--labels N``,
balanced over classes, chosen with the seed) are given to three methods; every test
error is on the 10,000 test images, binarized once as ``evaluate`` scores them:

* ``M2``: ``pyro-vae train --model semi-supervised --labels N --seed S --epochs E``
  (784-400-50 networks, Kingma et al.'s default classifier weight; an epoch is a pass
  over the unlabelled images and as many repeated labelled ones), the error of the most
  probable label under its q(y|x);
* ``labelled only``: the same classifier network (784-400-10 MLP) trained on the N
  labelled images alone, dynamically binarized, with cross-entropy (Adam 1e-3, 2,000
  steps of batches of up to 64);
* ``M1``: the default VAE trained on all 50,000 training images without labels
  (``--epochs E``, seed S), then scikit-learn's logistic regression on the posterior
  means of the N labelled images (Kingma et al.'s M1 used a transductive SVM).

Runs go under ``--out`` (reused when they hold ``--epochs`` epochs). ``--write`` adds a
row per label count (mean ± standard deviation over the seeds, and the time of one M2
run) to docs/results/tables/semi-supervised.md.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path

from pyro_vae import Run, TrainConfig, train
from pyro_vae.analysis.evaluation import label_accuracy
from pyro_vae.components.networks import mlp
from pyro_vae.data.images import draw_binary, keep_labels

MARKER = "<!-- scripts/benchmark_semisupervised.py appends rows above this line -->"


def trained(config: TrainConfig, out: Path) -> tuple[Run, float]:
    """The run in ``out``, trained as ``config`` says unless it already is; its seconds."""
    started = time.perf_counter()
    if not (out / "checkpoint.pt").is_file():
        train(config, out, progress=False, log=lambda line: None)
    return Run(out), time.perf_counter() - started


def m2_error(labels: int, seed: int, args, out: Path) -> tuple[float, float]:
    config = TrainConfig(
        model="semi-supervised", labels=labels, seed=seed, epochs=args.epochs, device="cpu"
    )
    run, seconds = trained(config, out / f"m2-{labels}-{seed}")
    images, test_labels = run.data.evaluation_images("test")
    return 1 - label_accuracy(run.model, images, test_labels), seconds


def labelled_only_error(labels: int, seed: int, data) -> float:
    """The classifier network trained on the labelled images alone."""
    torch.manual_seed(seed)
    kept = keep_labels(data, labels, seed).train_labels >= 0
    x, y = data.train[kept], data.train_labels[kept]
    classifier = mlp([x.shape[1], 400, 10])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(2000):
        batch = torch.randperm(len(y))[:64]
        loss = F.cross_entropy(classifier(draw_binary(x[batch])), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, test_labels = data.evaluation_images("test")
    with torch.no_grad():
        return float((classifier(images).argmax(-1) != test_labels).float().mean())


def m1_error(labels: int, seed: int, args, out: Path) -> float:
    from sklearn.linear_model import LogisticRegression  # an extra of the script only

    run, _ = trained(TrainConfig(seed=seed, epochs=args.epochs, device="cpu"), out / f"m1-{seed}")
    data, vae = run.data, run.model
    kept = keep_labels(data, labels, seed).train_labels >= 0
    with torch.no_grad():
        codes = vae.encode(data.train[kept])[0].numpy()
        images, test_labels = data.evaluation_images("test")
        test_codes = vae.encode(images)[0].numpy()
    fitted = LogisticRegression(max_iter=2000).fit(codes, data.train_labels[kept].numpy())
    return float((fitted.predict(test_codes) != test_labels.numpy()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="add the rows to the results table")
    args = parser.parse_args()
    command = " ".join(["python scripts/benchmark_semisupervised.py", *sys.argv[1:]])
    data = TrainConfig().load_data()
    for labels in args.labels:
        errors = {"M2": [], "labelled only": [], "M1": []}
        seconds = []
        for seed in args.seeds:
            error, spent = m2_error(labels, seed, args, args.out)
            errors["M2"].append(error)
            seconds.append(spent)
            errors["labelled only"].append(labelled_only_error(labels, seed, data))
            errors["M1"].append(m1_error(labels, seed, args, args.out))
            print(f"{labels} labels, seed {seed}: " + ", ".join(
                f"{name} {values[-1]:.2%}" for name, values in errors.items()))  # fmt: skip
        cells = " | ".join(
            f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}" for v in errors.values()
        )
        print(f"{labels} labels: {cells} (test error %, mean ± sd over {len(args.seeds)} seeds)")
        if args.write:
            row = (
                f"| {today()} | {machine()} | {labels} | {len(args.seeds)} | {args.epochs} | "
                f"{cells} | {np.median(seconds):.0f} | {versions()} | `{command}` |"
            )
            append_row(TABLES / "semi-supervised.md", MARKER, row)


if __name__ == "__main__":
    main()
