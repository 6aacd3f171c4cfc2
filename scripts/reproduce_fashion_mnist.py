"""Reproduce the Fashion-MNIST test log-likelihoods of Exemplar VAE's Table 1.

Protocol (Norouzi et al. 2020, after Tomczak & Welling 2018): 50k train / 10k
validation, dynamic binarization, test set binarized once with a fixed seed, KL
warm-up, early stopping on the validation ELBO with patience, the best epoch's
model evaluated on all 10k test images by importance sampling with K=5000.

The ``-ar`` configurations go beyond the table: the same networks with the
``autoregressive-bernoulli`` likelihood, each pixel also given the pixels before
it (a MADE added to the decoder's logits); the ``-iwae`` configurations fine-tune the
best model of vamp-gated, hvae-conv and hvae-vamp-conv on the IWAE bound
(``--init-from``, ``--objective iwae``); ``hvae-vamp-gated-conv`` gates every
convolution and hidden layer of hvae-vamp-conv (``--arch gated-conv``);
``hvae-vamp-fullres-conv`` has the published ConvHVAE's gated convolutions (``--arch
gated-fullres-conv``).

Every step is resumable: a run directory with a checkpoint is continued with
``--resume``, a finished run (early-stopped or at ``--epochs``) is not trained
again, and an ``eval.json`` newer than the run's ``best.pt`` is kept. Kill it at
any time and start it again with the same arguments.

    python scripts/reproduce_fashion_mnist.py                      # every configuration
    python scripts/reproduce_fashion_mnist.py --only vae-mlp --threads 1
    python scripts/reproduce_fashion_mnist.py --report             # only rewrite the table

runs/ is not in git, and a run directory stays on the machine that trained it: the
report copies each run's record (config, metrics, test result and the machine: small
text files) to docs/runs/fashion-mnist/NAME/, and writes a configuration whose run
directory is missing from its record, or, without one either, keeps its row as written.

The table (with commands, epochs, seeds, wall times and the machine) replaces the
section between the markers in docs/results/tables/fashion-mnist.md, which the results
page includes; the learning curves go to docs/figures/fashion_mnist_curves.png.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from results import ROOT, TABLES, processor  # noqa: E402  (scripts/ is on sys.path)

from pyro_vae.analysis.compare import summarize_run  # noqa: E402
from pyro_vae.figures.plots import draw_validation_curves  # noqa: E402
from pyro_vae.runs import (  # noqa: E402
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    best_epoch,
    evaluation_path,
    examples_path,
    read_metrics,
)

TABLE = TABLES / "fashion-mnist.md"
CURVES = ROOT / "docs" / "figures" / "fashion_mnist_curves.png"
#: Each run's record, committed with the table (see the module's docstring).
RECORDS = ROOT / "docs" / "runs" / "fashion-mnist"
MACHINE_FILE = "machine.txt"
#: What a record keeps of a run (the per-image estimates: for paired comparisons).
RECORD_FILES = (CONFIG_FILE, METRICS_FILE, evaluation_path("").name, examples_path("").name)
BEGIN = "<!-- reproduce_fashion_mnist.py: table begin -->"
END = "<!-- reproduce_fashion_mnist.py: table end -->"

#: Options every configuration shares: the protocol.
PROTOCOL = [
    "--batch-size",
    "100",
    "--lr",
    "1e-3",
    "--lr-schedule",
    "plateau",
    "--lr-patience",
    "20",
    "--warmup-epochs",
    "20",
    "--patience",
    "50",
    "--epochs",
    "1000",
    "--seed",
    "0",
]
MLP = ["--hidden-dim", "300", "300", "--latent-dim", "40"]
#: The published MLPs' networks, two gated dense layers of 300 units.
GATED_NETWORKS = ["--arch", "gated", *MLP]
#: ... with the published 100-epoch KL warm-up (Tomczak & Welling 2018); the later option
#: overrides PROTOCOL's.
GATED = [*GATED_NETWORKS, "--warmup-epochs", "100"]
#: Convolutional networks with the MLPs' 300-300 heads ...
CONV_NETWORKS = ["--arch", "conv", *MLP]
#: ... with the published 100-epoch warm-up.
CONV = [*CONV_NETWORKS, "--warmup-epochs", "100"]
#: Beyond the published table's networks: every convolution and hidden layer gated, as the
#: gated MLPs are (they gained 1.5-2.0 nats over the ReLU ones here).
GATED_CONV = ["--arch", "gated-conv", *MLP, "--warmup-epochs", "100"]
#: The published ConvHVAE's convolutions (Tomczak & Welling 2018), gated, with a decoder
#: that refines a full-size map with four convolutions at full resolution.
FULLRES_CONV = ["--arch", "gated-fullres-conv", *MLP, "--warmup-epochs", "100"]
#: The two-level VAE clips gradients: its first run (no clipping) diverged at epoch 218 from
#: rare images whose batches had gradient norms of 460 to 1.1e6 per example (usual: 43-63).
HVAE = ["--model", "hvae", "--clip-grad-norm", "100"]
#: With the full-resolution networks the gradients are twice conv's (per-example norms
#: 232-360 against 115-223 after 60 steps; conv's later settle at 43-63): the threshold
#: scaled alike, so that it still stops the rare huge ones and not every step.
FULLRES_HVAE = ["--model", "hvae", "--clip-grad-norm", "200"]
#: Beyond the published table: each pixel also given the pixels before it (a MADE added to
#: the decoder). A short warm-up: with the 100-epoch one the model put ~80 nats in KL at low
#: beta and was 2 nats behind vae-gated at epoch 112.
AUTOREGRESSIVE = ["--likelihood", "autoregressive-bernoulli", "--warmup-epochs", "5"]
#: Fine-tuning on the importance-weighted bound (Burda et al. 2016) with K samples: a
#: trained run's best model, trained on further with ``--objective iwae``, which tightens
#: the bound the model is fitted to (no warm-up: there is no separate KL term).
IWAE = ["--objective", "iwae", "--particles", "10", "--warmup-epochs", "0", "--lr", "1e-4"]
#: name -> (the published test log-likelihood, None for configurations beyond the table;
#: options).
CONFIGURATIONS: dict[str, tuple[float | None, list[str]]] = {
    "vae-mlp": (-228.70, MLP),
    "vamp-mlp": (-227.35, [*MLP, "--prior", "vamp"]),
    "vae-gated": (-228.70, GATED),
    "vamp-gated": (-227.35, [*GATED, "--prior", "vamp"]),
    "hvae-gated": (-227.37, [*GATED, *HVAE]),
    "hvae-vamp-gated": (-226.72, [*GATED, *HVAE, "--prior", "vamp"]),
    "hvae-conv": (-225.38, [*CONV, *HVAE]),
    "hvae-vamp-conv": (-224.67, [*CONV, *HVAE, "--prior", "vamp"]),
    "vae-gated-ar": (None, [*GATED_NETWORKS, *AUTOREGRESSIVE]),
    "vamp-gated-ar": (None, [*GATED_NETWORKS, *AUTOREGRESSIVE, "--prior", "vamp"]),
    "vamp-gated-iwae": (None, [*GATED_NETWORKS, "--prior", "vamp", *IWAE]),
    "hvae-conv-iwae": (None, [*CONV_NETWORKS, *HVAE, *IWAE]),
    "hvae-vamp-conv-iwae": (None, [*CONV_NETWORKS, *HVAE, "--prior", "vamp", *IWAE]),
    "hvae-vamp-gated-conv": (None, [*GATED_CONV, *HVAE, "--prior", "vamp"]),
    "hvae-vamp-fullres-conv": (-224.67, [*FULLRES_CONV, *FULLRES_HVAE, "--prior", "vamp"]),
}
#: Fine-tuned configuration -> the configuration whose best model it starts from.
FINE_TUNED = {
    "vamp-gated-iwae": "vamp-gated",
    "hvae-conv-iwae": "hvae-conv",
    "hvae-vamp-conv-iwae": "hvae-vamp-conv",
}
NUM_SAMPLES = 5000
TEST_IMAGES = 10_000
#: The target: ahead of every published row.
TARGET = -224.5
#: Why a configuration has no run in the table: not started (seconds per epoch measured on
#: the 2-core CPU, docs/results/index.md; the protocol needs hundreds of epochs).
NOT_RUN = {
    "hvae-vamp-gated": "not started: ~38 s/epoch on this CPU (gated, one core)",
    "hvae-conv": "not started: ~70 s/epoch on this CPU (one core)",
    "vamp-gated-ar": "not started: ~37 s/epoch on this CPU (one core)",
    "hvae-vamp-gated-conv": "not started: for a GPU (its step costs 2.0 times hvae-vamp-conv's "
    "on a CPU core: 0.36 against 0.18 s at batch 100, scripts/benchmark_architectures.py)",
    "hvae-vamp-fullres-conv": "not started: for a GPU (its step costs 15 times hvae-vamp-conv's "
    "on a CPU core: 2.74 against 0.18 s at batch 100, scripts/benchmark_architectures.py)",
}


def _command(name: str, run_dir: Path) -> list[str]:
    start = ["--init-from", str(run_dir.parent / FINE_TUNED[name])] if name in FINE_TUNED else []
    return ["pyro-vae", "train", *PROTOCOL, *CONFIGURATIONS[name][1], *start, "--out", str(run_dir)]


def finished(run_dir: Path) -> bool:
    """Trained to the end: early-stopped, or all ``--epochs`` done."""
    return (run_dir / CHECKPOINT_FILE).exists() and summarize_run(run_dir).status != "unfinished"


def _run(argv: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$", " ".join(argv), flush=True)
    # Ctrl-C (or `timeout`) signals the whole process group: pyro-vae saves a checkpoint
    # and exits with 130/143. Wait for that: a KeyboardInterrupt here would make
    # subprocess.run kill it 0.25 s later, in the middle of the save. (A Python handler,
    # unlike SIG_IGN, is not inherited: pyro-vae still gets the signal.)
    waiting = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = subprocess.run([sys.executable, "-m", "pyro_vae", *argv[1:]], env=env).returncode
    finally:
        for signum, handler in waiting.items():
            signal.signal(signum, handler)
    if code in (130, 143):  # SIGINT/SIGTERM: pyro-vae saved a checkpoint
        raise SystemExit("stopped; run the same command again to continue")
    if code:
        raise SystemExit(f"`{' '.join(argv)}` failed with exit status {code} (see above)")


def train(name: str, run_dir: Path, threads: int) -> None:
    if finished(run_dir):
        return
    if name in FINE_TUNED and not (run_dir.parent / FINE_TUNED[name] / BEST_FILE).exists():
        raise SystemExit(f"{name} starts from the best model of {FINE_TUNED[name]}: train it first")
    resume = ["--resume"] if (run_dir / CHECKPOINT_FILE).exists() else []
    _run([*_command(name, run_dir), "--no-progress", *resume], threads)


def evaluate(run_dir: Path, threads: int) -> None:
    result, best = evaluation_path(run_dir), run_dir / BEST_FILE
    if result.exists() and result.stat().st_mtime > best.stat().st_mtime:
        return
    _run(
        [
            "pyro-vae",
            "evaluate",
            "--run",
            str(run_dir),
            "--num-samples",
            str(NUM_SAMPLES),
            "--checkpoint",
            "best",
            "--no-progress",
        ],
        threads,
    )


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {processor()}, {gpu}; torch {torch.__version__}"


def _shown(path: Path) -> Path:
    return path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def _evaluated_epoch(result: dict, result_file: Path, run_dir: Path, best: int) -> str:
    """Which epoch an estimate measured, where that is not the run's best epoch now
    (best.pt moves while a run goes on after its evaluation)."""
    if "epoch" not in result:  # written before eval.json recorded its checkpoint's epoch
        if not (run_dir / BEST_FILE).exists():  # a record: no checkpoint to compare with
            return ""
        stale = result_file.stat().st_mtime < (run_dir / BEST_FILE).stat().st_mtime
        return " (earlier best)" if stale else ""
    return "" if result["epoch"] == best else f" (epoch {result['epoch']})"


def _protocol_caveats(result: dict) -> str:
    """What an estimate left out of the protocol: an interim check on fewer test images
    (``evaluate --subset``) or with fewer importance samples."""
    caveats = []
    if result["num_examples"] < TEST_IMAGES:
        caveats.append(f"first {result['num_examples']} test images only")
    if result["num_samples"] != NUM_SAMPLES:
        caveats.append(f"K={result['num_samples']}")
    return f" ({', '.join(caveats)})" if caveats else ""


def _published(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _plot_results(axis: plt.Axes, compared: list[tuple[str, float | None, dict | None]]) -> None:
    """Test log-likelihood of each configuration: pyro-vae's estimate (± its standard
    error over test images) beside the published value, and the target."""
    published = [(row, value) for row, (_, value, _) in enumerate(compared) if value is not None]
    ours = [(row, result) for row, (_, _, result) in enumerate(compared) if result is not None]
    axis.plot(
        [value for _, value in published],
        [row for row, _ in published],
        "D",
        mfc="none",
        color="gray",
        label="published",
    )
    axis.errorbar(
        [result["test_log_likelihood"] for _, result in ours],
        [row for row, _ in ours],
        xerr=[result["log_likelihood_stderr"] for _, result in ours],
        fmt="o",
        capsize=3,
        label="pyro-vae (± standard error)",
    )
    axis.axvline(TARGET, color="C3", linestyle="--", label=f"target {TARGET}")
    axis.set_yticks(range(len(compared)), [name for name, _, _ in compared])
    axis.invert_yaxis()
    axis.set(
        xlabel="test log p(x), K=5000 (nats; higher is better)",
        title="Test log-likelihood against the published values",
    )
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize="small")
    axis.grid(alpha=0.3, axis="x")


def source(name: str, runs_dir: Path) -> Path | None:
    """Where the report reads a configuration from: its run directory, first copied to its
    record, or else its record; None if neither is here."""
    run_dir, record = runs_dir / name, RECORDS / name
    if (run_dir / CHECKPOINT_FILE).exists():
        record.mkdir(parents=True, exist_ok=True)
        for file in RECORD_FILES:
            if (run_dir / file).exists():
                shutil.copy2(run_dir / file, record / file)
        (record / MACHINE_FILE).write_text(machine() + "\n")
        return run_dir
    return record if (record / METRICS_FILE).exists() else None


def written_rows() -> dict[str, str]:
    """The table's rows as the results page has them, by configuration. Each says in its
    status where it ran; kept here, a run is no longer resumable."""
    text = TABLE.read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0] if BEGIN in text else ""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| "):
            cells = line.split(" | ")
            cells[5] = cells[5].replace(", resumable", "")
            rows[cells[0].removeprefix("| ")] = " | ".join(cells)
    return rows


def _written_result(row: str) -> dict | None:
    """The test log-likelihood and its standard error in a row as written, if it has them."""
    found = re.search(r"\| (-\d+\.\d+) ± (\d+\.\d+)", row)
    if not found:
        return None
    return {"test_log_likelihood": float(found[1]), "log_likelihood_stderr": float(found[2])}


def report(runs_dir: Path) -> None:
    """Rewrite the results page's table and the learning-curve figure from the run
    directories and records here, keeping the written rows of configurations with neither."""
    written = written_rows()
    sources = {name: source(name, runs_dir) for name in CONFIGURATIONS}  # copies each once
    lines = [
        BEGIN,
        "Each command below is the training "
        f"command, followed by `pyro-vae evaluate --run DIR --num-samples {NUM_SAMPLES} "
        "--checkpoint best`. Protocol options shared by all: `" + " ".join(PROTOCOL) + "`.",
        "",
        "| configuration | published | pyro-vae test log p(x) | best val ELBO | best epoch / "
        "trained | status | training time | evaluation time | options |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    figure, (axis, results) = plt.subplots(
        1, 2, figsize=(13, 5), width_ratios=(7, 6), layout="constrained"
    )
    compared: list[tuple[str, float | None, dict | None]] = []  # (name, published, eval.json)
    learning: dict[str, list[dict]] = {}  # metrics rows by configuration
    first_epochs: dict[str, int] = {}
    without_curves = []
    for name, (published, options) in CONFIGURATIONS.items():
        run_dir, row = sources[name], written.get(name, "")
        if run_dir is None and row and " | not run | " not in row:
            lines.append(row)
            compared.append((name, published, _written_result(row)))
            without_curves.append(name)
            continue
        if run_dir is None:
            reason = NOT_RUN.get(name, "")
            lines.append(
                f"| {name} | {_published(published)} | not run | | | {reason} | | | "
                f"`{' '.join(options)}` |"
            )
            compared.append((name, published, None))
            continue
        summary = summarize_run(run_dir, name)
        rows, best, result = summary.metrics, summary.best, summary.evaluation
        result_file = evaluation_path(run_dir)
        compared.append((name, published, result))
        estimate = (
            f"{result['test_log_likelihood']:.2f} ± {result['log_likelihood_stderr']:.2f}"
            f"{_evaluated_epoch(result, result_file, run_dir, best['epoch'])}"
            f"{_protocol_caveats(result)}"
            if result
            else "not evaluated"
        )
        from_record = run_dir.parent == RECORDS
        status = summary.status
        if status == "unfinished" and not from_record:
            status += ", resumable"
        evaluation = f"{result['seconds'] / 60:.1f} min" if result else ""
        validation = f"{best['val_elbo']:.2f}"
        if "val_iwae" in best:  # selected by the IWAE bound it trains on
            validation += f" (IWAE bound {best['val_iwae']:.2f})"
        # a fine-tuned run continues its source's best epoch: its curve starts there
        first = 0
        start = sources[FINE_TUNED[name]] if name in FINE_TUNED else None
        if start is not None:
            first = best_epoch(read_metrics(start))["epoch"]
            shown = _shown(runs_dir / FINE_TUNED[name])
            options = [*options, "--init-from", f"{shown} (epoch {first})"]
        if from_record:  # say where it ran
            trained_on = (run_dir / MACHINE_FILE).read_text().strip()
            status += f" (record; ran on {trained_on})"
        else:
            status += f" (ran on {machine()})"
        lines.append(
            f"| {name} | {_published(published)} | {estimate} | {validation} | "
            f"{best['epoch']} / {rows[-1]['epoch']} | {status} | {summary.hours:.2f} h | "
            f"{evaluation} | `{' '.join(options)}` |"
        )
        learning[name], first_epochs[name] = rows, first
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kept = ""
    if without_curves:
        kept = (
            " Rows kept as written before, with no run directory or record here (so no "
            f"curve in the figure): {', '.join(without_curves)}."
        )
    lines += [
        "",
        f"Table written {when}.{kept}",
        END,
    ]
    # the 30 nats below the best run's best epoch: where the runs are compared (a run
    # just started stays below until it gets there)
    draw_validation_curves(axis, learning, first_epochs, window=32)
    axis.set_title("Fashion-MNIST")
    _plot_results(results, compared)
    CURVES.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(CURVES, dpi=120, bbox_inches="tight")
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"table written to {TABLE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGURATIONS), default=None)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "fashion-mnist")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--report", action="store_true", help="only rewrite the table")
    parser.add_argument("--no-evaluate", action="store_true", help="train only")
    args = parser.parse_args()
    try:
        if not args.report:
            for name in args.only or CONFIGURATIONS:
                run_dir = args.runs_dir / name
                train(name, run_dir, args.threads)
                if not args.no_evaluate:
                    evaluate(run_dir, args.threads)
    except KeyboardInterrupt:
        raise SystemExit("stopped; run the same command again to continue") from None
    report(args.runs_dir)


if __name__ == "__main__":
    main()
