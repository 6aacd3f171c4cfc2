"""Benchmarks of the conditional VAEs on Fashion-MNIST (docs/results/index.md).

1. Label CVAEs (prior N(0, I), and learned p(z|y) with --conditional-prior) vs the VAE
   of the same networks: importance-weighted log p(x|y) and log p(x) on the first
   ``--test-subset`` test images, and their paired differences.
2. Class-conditional samples: a small MLP classifier trained here on the real
   (grey-level) Fashion-MNIST training split labels ``--class-samples`` samples drawn
   with each label; accuracy per class and averaged over classes, for both CVAEs.
3. Completion (structured-output CVAE) with 1, 2 and 3 observed quadrants: negative
   conditional log-likelihood of the missing quadrants, exact for the baseline and
   importance-sampled (recognition network, and prior network, as proposals) for the CVAE.
4. Figures: a grid of class-conditional samples and completion grids.

Runs are written under ``--out`` and reused when they already hold ``--epochs`` epochs,
so the script can be re-run to redo the evaluation only. Results go to
``OUT/results.json`` and are printed as Markdown tables.

    python scripts/benchmark_conditional.py --out /tmp/bench-conditional --epochs 20
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import TrainConfig, load_images, load_run, read_metrics, train
from pyro_vae.figures.samples import save_grid
from pyro_vae.inference.estimators import estimate_log_likelihood
from pyro_vae.models.vae import VAE

QUADRANTS = (1, 2, 3)
#: Label-conditional model runs: name -> options.
LABEL_MODELS = {
    "cvae": {"model": "cvae"},
    "cvae-prior": {"model": "cvae", "conditional_prior": True},
}


def trained(config: TrainConfig, run_dir: Path) -> VAE:
    """The run in ``run_dir`` if it has ``config.epochs`` epochs, else train it (resuming)."""
    done = len(read_metrics(run_dir))
    if done < config.epochs:
        train(config, run_dir, resume=done > 0, progress=False)
    return load_run(run_dir)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    """A 784-512-10 MLP with dropout, trained with Adam on grey-level images."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(images.shape[1], 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(images.shape[0]).split(128):
            loss = F.cross_entropy(net(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((net(images).argmax(dim=1) == labels).float().mean())


def iw(model: VAE, inputs: tuple[torch.Tensor, ...], guide, num_samples: int) -> dict:
    """Per-image IW estimates with ``guide`` as proposal, summarized."""
    estimates = estimate_log_likelihood(model.model, guide, *inputs, num_samples=num_samples)
    return {
        "log_likelihood": float(estimates.log_likelihood.mean()),
        "stderr": estimates.log_likelihood_stderr,
        "elbo": float(estimates.elbo.mean()),
        "seconds": estimates.seconds,
        "per_image": estimates.log_likelihood,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-conditional"))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the VAE and label CVAE")
    parser.add_argument("--completion-epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the IW estimates")
    parser.add_argument("--test-subset", type=int, default=500, help="first N test images")
    parser.add_argument("--class-samples", type=int, default=1000, help="samples per class")
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    n = args.test_subset

    # 1. log p(x|y) of the label CVAE vs log p(x) of the VAE, same networks and training.
    data = TrainConfig().load_data()
    configs = {"vae": {"model": "vae"}, **LABEL_MODELS}
    models = {
        name: trained(TrainConfig(**options, epochs=args.epochs), args.out / name)
        for name, options in configs.items()
    }
    estimates = {}
    for name, model in models.items():
        inputs = model.batch_inputs(data.test[:n], data.test_labels[:n])
        estimates[name] = iw(model, inputs, model.guide, args.num_samples)
        estimates[name]["val_elbo"] = read_metrics(args.out / name)[-1]["val_elbo"]
        print(f"{name}: {model.evaluates} = {estimates[name]['log_likelihood']:.2f}", flush=True)
    unconditional = estimates["vae"].pop("per_image")
    for name in LABEL_MODELS:
        gain = estimates[name].pop("per_image") - unconditional
        estimates[name]["gain"] = float(gain.mean())
        estimates[name]["gain_stderr"] = float(gain.std() / gain.numel() ** 0.5)
    results["likelihood"] = estimates

    # 2. Are samples drawn with label c recognisably of class c?
    started = time.perf_counter()
    grey = load_images("fashion-mnist", binarize=False)
    classifier = train_classifier(grey.train, grey.train_labels, args.classifier_epochs)
    results["classifier"] = {
        "test_accuracy_real_images": accuracy(classifier, grey.test, grey.test_labels),
        "seconds": time.perf_counter() - started,
    }
    for name in LABEL_MODELS:
        cvae = models[name]
        torch.manual_seed(0)
        labels = torch.arange(cvae.num_classes).repeat_interleave(args.class_samples)
        samples = torch.cat([cvae.sample(1, cvae.one_hot(part))[0] for part in labels.split(1000)])
        with torch.no_grad():
            correct = classifier(samples).argmax(dim=1) == labels
        per_class = correct.view(cvae.num_classes, -1).float().mean(dim=1)
        results["classifier"][name] = {
            "per_class": dict(zip(grey.class_names, per_class.tolist(), strict=True)),
            "mean": float(per_class.mean()),
        }
        torch.manual_seed(0)
        images, nrow = cvae.sample_grid(10 * cvae.num_classes, None, data)
        save_grid(images, data.image_shape, args.figures / f"{name}_samples.png", nrow)
    print(json.dumps(results["classifier"], indent=2), flush=True)

    # 3. Completion: baseline (exact) vs CVAE (importance sampling), 1-3 observed quadrants.
    results["completion"] = {}
    for quadrants in QUADRANTS:
        config = TrainConfig(
            model="completion", observed_quadrants=quadrants, epochs=args.completion_epochs
        )
        model = trained(config, args.out / f"completion-{quadrants}")
        inputs = model.batch_inputs(data.test[:n], data.test_labels[:n])
        all_inputs = model.batch_inputs(data.test, data.test_labels)
        baseline = model.baseline_log_likelihood(*inputs).cpu()
        row = {
            "baseline_nll": -float(baseline.mean()),
            "baseline_nll_all_test": -float(model.baseline_log_likelihood(*all_inputs).mean()),
        }
        for proposal, guide in (("recognition", model.guide), ("prior", model.prior_guide)):
            estimate = iw(model, inputs, guide, args.num_samples)
            gain = estimate.pop("per_image") - baseline
            row[f"cvae_nll_{proposal}"] = -estimate["log_likelihood"]
            row[f"cvae_{proposal}"] = {
                **estimate,
                "gain_over_baseline": float(gain.mean()),
                "gain_stderr": float(gain.std() / gain.numel() ** 0.5),
            }
        results["completion"][quadrants] = row
        print(quadrants, json.dumps(row), flush=True)
        torch.manual_seed(0)
        images, nrow = model.sample_grid(48, None, data)
        save_grid(images, data.image_shape, args.figures / f"completion_q{quadrants}.png", nrow)

    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, n)


def print_tables(results: dict, n: int) -> None:
    print(
        f"\n| run | IW estimate, first {n} test images | ELBO | "
        "minus vae's log p(x), paired | validation ELBO |\n|---|---|---|---|---|"
    )
    for name, e in results["likelihood"].items():
        gain = f"{e['gain']:.2f} ± {e['gain_stderr']:.2f}" if "gain" in e else ""
        print(
            f"| {name} | {e['log_likelihood']:.2f} ± {e['stderr']:.2f} | {e['elbo']:.2f} "
            f"| {gain} | {e['val_elbo']:.2f} |"
        )
    c = results["classifier"]
    print(f"\nclassifier test accuracy on real images {c['test_accuracy_real_images']:.4f}")
    names = next(iter(c[name]["per_class"] for name in LABEL_MODELS))
    print("| run | " + " | ".join(names) + " | mean |")
    print("|---" * (len(names) + 2) + "|")
    for name in LABEL_MODELS:
        values = [f"{v:.3f}" for v in c[name]["per_class"].values()]
        print(f"| {name} | " + " | ".join(values) + f" | {c[name]['mean']:.3f} |")
    print(
        "\n| observed quadrants | baseline NLL | CVAE NLL (recognition) | CVAE NLL (prior) "
        "| baseline NLL - CVAE NLL (recognition), paired |\n|---|---|---|---|---|"
    )
    for quadrants, row in results["completion"].items():
        gain = row["cvae_recognition"]
        print(
            f"| {quadrants} | {row['baseline_nll']:.2f} | {row['cvae_nll_recognition']:.2f} "
            f"| {row['cvae_nll_prior']:.2f} "
            f"| {gain['gain_over_baseline']:.2f} ± {gain['gain_stderr']:.2f} |"
        )


if __name__ == "__main__":
    main()
