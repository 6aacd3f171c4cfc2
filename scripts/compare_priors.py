"""Compare priors on Fashion-MNIST: same network, epochs, seed and likelihood; IW log-likelihood.

    python scripts/compare_priors.py --out runs/compare-priors                       # all priors
    python scripts/compare_priors.py --out runs/cp --priors normal vamp --epochs 5  # a few

Each prior is trained with `pyro_vae.train` into OUT/<prior> (a finished run is
reused, so an interrupted comparison continues where it stopped), then the test
images are scored with `estimate_log_likelihood`, with the same importance-sample
seed for every prior. Prints a Markdown table: per-prior training time, ELBO,
importance-weighted log p(x), and its paired difference to the first prior listed
(same test images, so the standard error of the difference is much smaller than
that of each mean).
"""

import argparse
import math
import os
import platform
from pathlib import Path

import torch

from pyro_vae import PRIORS, TrainConfig, load_run, read_metrics, train
from pyro_vae.inference.estimators import estimate_log_likelihood


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs, one per prior")
    p.add_argument("--priors", nargs="+", choices=list(PRIORS), default=list(PRIORS))
    p.add_argument("--likelihood", default="bernoulli")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=None, help="first N training images (checks)")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images only")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    rows, baseline = [], None
    for prior in args.priors:
        run = out / prior
        config = TrainConfig(
            prior=prior,
            likelihood=args.likelihood,
            epochs=args.epochs,
            seed=args.seed,
            subset=args.subset,
            device="cpu",
        )
        done = len(read_metrics(run))
        if done < args.epochs:
            train(
                config,
                run,
                resume=done > 0,
                progress=False,
                log=lambda line, p=prior: print(f"[{p}] {line}", flush=True),
            )
        metrics = read_metrics(run)
        vae = load_run(run)
        test = config.load_data().test[: args.test_subset]
        estimates = estimate_log_likelihood(
            vae.model, vae.guide, test, num_samples=args.num_samples, seed=0
        )
        log_lik = estimates.log_likelihood
        baseline = log_lik if baseline is None else baseline
        diff = log_lik - baseline
        diff_se = float(diff.std() / math.sqrt(diff.numel())) if diff.any() else 0.0
        row = {
            "prior": prior,
            "prior parameters": sum(p.numel() for p in vae.prior.parameters()),
            "train s": sum(r["seconds"] for r in metrics),
            "val ELBO": metrics[-1]["val_elbo"],
            "test ELBO": float(estimates.elbo.mean()),
            "test log p(x)": float(log_lik.mean()),
            "se": estimates.log_likelihood_stderr,
            "diff": float(diff.mean()),
            "diff se": diff_se,
            "KL": float(estimates.kl.mean()),
            "active units": estimates.active_units,
            "eval s": estimates.seconds,
        }
        rows.append(row)
        print(f"[{prior}] " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(
        f"\n{args.epochs} epochs per prior, seed {args.seed}, {args.likelihood} likelihood; "
        f"{len(baseline)} test images, K={args.num_samples}; {machine}\n"
    )
    first = args.priors[0]
    print(
        f"| prior | prior params | train s | val ELBO | test ELBO | test log p(x) (IW) "
        f"| vs {first} (paired) | KL | active units | eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prior']} | {r['prior parameters']:,} | {r['train s']:.0f} "
            f"| {r['val ELBO']:.2f} | {r['test ELBO']:.2f} "
            f"| {r['test log p(x)']:.2f} ± {r['se']:.2f} | {r['diff']:+.2f} ± {r['diff se']:.2f} "
            f"| {r['KL']:.2f} | {r['active units']} | {r['eval s']:.0f} |"
        )


if __name__ == "__main__":
    main()
