"""Imputation of cells hidden on purpose in real tables: the VAE against column means.

    python scripts/table_imputation.py [--epochs 300] [--seeds 0 1 2] [--write]

Two of scikit-learn's bundled tables, with their class as a column of the table:

* ``wine``: 178 wines, 13 chemical measurements (integer ones inferred as counts) and the
  cultivar, a categorical column of 3 values;
* ``breast-cancer``: 569 tumours, 30 measurements and the diagnosis, a binary column.

Per seed, 20% of the cells are hidden at random (missing completely at random), the VAE
is trained on the incomplete table as a user would (``pyro-vae train --dataset
incomplete.csv``), and every hidden cell is filled in by ``impute`` (the posterior
predictive given the row's observed cells, K = 1,000). Reported over the hidden cells:
the RMSE of the numeric columns in each column's standard deviations (averaged over
columns), and the accuracy of the class column; against the column mean (most frequent
value) of the observed cells and scikit-learn's ``KNNImputer`` (5 neighbours on
standardized numeric columns; numbers only). ``--write`` adds a row per table and seed
to docs/results/tables/table-imputation.md.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from results import TABLES, append_row, machine, today, versions  # scripts/ is on sys.path

from pyro_vae import TrainConfig, train
from pyro_vae.analysis.tables import impute_rows
from pyro_vae.runs import Run

MARKER = "<!-- scripts/table_imputation.py appends rows above this line -->"
HIDDEN = 0.2


def real_tables() -> dict[str, tuple[pd.DataFrame, str]]:
    """Each table with the name of its class column."""
    from sklearn.datasets import load_breast_cancer, load_wine  # extras of the script only

    wine = load_wine(as_frame=True)
    wine_frame = wine.data.assign(cultivar=wine.target.map(lambda c: f"cultivar {c}"))
    cancer = load_breast_cancer(as_frame=True)
    diagnosis = cancer.target.map({0: "malignant", 1: "benign"})
    return {
        "wine": (wine_frame, "cultivar"),
        "breast-cancer": (cancer.data.assign(diagnosis=diagnosis), "diagnosis"),
    }


def hide_cells(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``frame`` with a share :data:`HIDDEN` of its cells set missing, no row left empty."""
    rng = np.random.default_rng(seed)
    hidden = rng.random(frame.shape) < HIDDEN
    hidden[hidden.all(axis=1), 0] = False
    return frame.mask(hidden)


def scores(truth: pd.DataFrame, guess: pd.DataFrame, hidden: pd.DataFrame, label: str):
    """Mean RMSE over numeric columns (in their standard deviations) and class accuracy."""
    numeric = [name for name in truth.columns if name != label]
    rmse = [
        np.sqrt(((guess[n] - truth[n])[hidden[n]] ** 2).mean()) / truth[n].std() for n in numeric
    ]
    accuracy = (guess[label] == truth[label])[hidden[label]].mean()
    return float(np.mean(rmse)), float(accuracy)


def baselines(incomplete: pd.DataFrame, label: str) -> dict[str, pd.DataFrame]:
    from sklearn.impute import KNNImputer

    numeric = incomplete.drop(columns=label)
    means = incomplete.fillna(numeric.mean()).fillna({label: incomplete[label].mode()[0]})
    scaled = (numeric - numeric.mean()) / numeric.std()
    knn = KNNImputer(n_neighbors=5).fit_transform(scaled) * numeric.std().to_numpy()
    knn = pd.DataFrame(knn + numeric.mean().to_numpy(), columns=numeric.columns)
    return {"mean / mode": means, "5-NN": knn.assign(**{label: means[label]})}


def vae_guess(incomplete: pd.DataFrame, seed: int, args, work: Path) -> pd.DataFrame:
    path = work / f"incomplete-{seed}.csv"
    incomplete.to_csv(path, index=False)
    config = TrainConfig(
        dataset=str(path),
        latent_dim=args.latent_dim,
        hidden_dims=(args.hidden_dim,),
        epochs=args.epochs,
        batch_size=32,
        seed=seed,
        device="cpu",
    )
    out = work / f"run-{path.stem}"
    train(config, out, progress=False, log=lambda line: None)
    run = Run(out)
    return impute_rows(run.model, pd.read_csv(path), run.config.table_schema, num_samples=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write", action="store_true", help="add the rows to the results table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyro-vae-impute-"))
    command = " ".join(["python scripts/table_imputation.py", *sys.argv[1:]])
    for name, (truth, label) in real_tables().items():
        for seed in args.seeds:
            incomplete = hide_cells(truth, seed)
            hidden = incomplete.isna()
            (work / name).mkdir(exist_ok=True)
            guesses = {"VAE": vae_guess(incomplete, seed, args, work / name)}
            guesses |= baselines(incomplete, label)
            results = {method: scores(truth, g, hidden, label) for method, g in guesses.items()}
            text = "; ".join(f"{m} RMSE {r:.3f} accuracy {a:.3f}" for m, (r, a) in results.items())
            print(f"{name} seed {seed}: {text}")
            if args.write:
                cells = " | ".join(f"{r:.3f}" for r, _ in results.values())
                row = (
                    f"| {today()} | {machine()} | {name} | {seed} | {args.epochs} | {cells} | "
                    f"{results['VAE'][1]:.3f} | {results['mean / mode'][1]:.3f} | {versions()} "
                    f"| `{command}` |"
                )
                append_row(TABLES / "table-imputation.md", MARKER, row)


if __name__ == "__main__":
    main()
