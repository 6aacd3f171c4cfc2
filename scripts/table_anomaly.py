"""Anomaly detection on a real table: a VAE of benign breast-tumour rows scores malignant ones.

    python scripts/table_anomaly.py [--epochs 300] [--seeds 0 1 2] [--write]

scikit-learn's Wisconsin breast-cancer table (569 rows, 30 continuous measurements of
cell nuclei; 357 benign, 212 malignant) is written as two CSV files, ``benign.csv`` and
``malignant.csv``. A VAE is trained on ``benign.csv`` alone (its training rows; a fifth of
the rows are held out as its test rows) with the same commands a user runs::

    pyro-vae train --dataset benign.csv --out RUN --epochs E ...
    pyro-vae evaluate --run RUN --num-samples 1000
    pyro-vae evaluate --run RUN --num-samples 1000 --dataset malignant.csv

and every malignant row is scored (all three of that file's splits). The anomaly score is
-log p(x); the AUROC is how often a malignant row scores lower log p(x) than a held-out
benign row. For reference, the same AUROC of the Mahalanobis distance to the benign
training rows (scikit-learn's Ledoit-Wolf covariance, standardized columns), a strong
baseline for a table of correlated measurements. ``--write`` adds a row per seed to
docs/results/tables/table-anomaly.md.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path

from pyro_vae import TrainConfig, train
from pyro_vae.analysis.evaluation import evaluate_run
from pyro_vae.data.tables import load_table
from pyro_vae.inference.estimators import auroc
from pyro_vae.runs import read_evaluation, read_examples

MARKER = "<!-- scripts/table_anomaly.py appends rows above this line -->"


def write_tables(work: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_breast_cancer  # an extra of the script only

    cancer = load_breast_cancer(as_frame=True)
    frame, malignant = cancer.data, cancer.target == 0  # scikit-learn's target 0: malignant
    paths = work / "benign.csv", work / "malignant.csv"
    frame[~malignant].to_csv(paths[0], index=False)
    frame[malignant].to_csv(paths[1], index=False)
    return paths


def vae_scores(benign: Path, malignant: Path, seed: int, args, work: Path) -> float:
    """The AUROC of one VAE trained on the benign rows."""
    config = TrainConfig(
        dataset=str(benign),
        latent_dim=args.latent_dim,
        hidden_dims=(args.hidden_dim,),
        epochs=args.epochs,
        batch_size=32,
        lr=1e-3,
        seed=seed,
        device="cpu",
    )
    out = work / f"run-{seed}"
    train(config, out, progress=False, log=lambda line: None)
    quiet = {"num_samples": args.num_samples, "progress": False, "log": lambda line: None}
    evaluate_run(out, **quiet)
    inliers = read_examples(out, read_evaluation(out))
    outliers = []
    for split in ("train", "val", "test"):
        evaluate_run(out, split=split, dataset=str(malignant), **quiet)
        summary = read_evaluation(out, split, str(malignant))
        outliers.append(read_examples(out, summary, split=split, dataset=str(malignant)))
    return auroc(inliers, np.concatenate(outliers))


def mahalanobis_auroc(benign: Path, malignant: Path) -> float:
    """The AUROC of minus the Mahalanobis distance, fitted on the same benign training rows."""
    from sklearn.covariance import LedoitWolf

    own, other = load_table(benign), load_table(malignant, schema=load_table(benign).schema)
    fitted = LedoitWolf().fit(own.train.numpy())
    inliers = -fitted.mahalanobis(own.test.numpy())
    outliers = -fitted.mahalanobis(np.concatenate([getattr(other, s).numpy() for s in
                                                   ("train", "val", "test")]))  # fmt: skip
    return auroc(inliers, outliers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write", action="store_true", help="add the rows to the results table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyro-vae-anomaly-"))
    benign, malignant = write_tables(work)
    baseline = mahalanobis_auroc(benign, malignant)
    print(f"Mahalanobis distance (Ledoit-Wolf): AUROC {baseline:.3f}")
    command = " ".join(["python scripts/table_anomaly.py", *sys.argv[1:]])
    rows = len(pd.read_csv(malignant))
    for seed in args.seeds:
        area = vae_scores(benign, malignant, seed, args, work)
        print(f"seed {seed}: VAE AUROC {area:.3f} ({rows} malignant rows)")
        if args.write:
            row = (
                f"| {today()} | {machine()} | {seed} | {args.epochs} | {area:.3f} | "
                f"{baseline:.3f} | {versions()} | `{command}` |"
            )
            append_row(TABLES / "table-anomaly.md", MARKER, row)


if __name__ == "__main__":
    main()
