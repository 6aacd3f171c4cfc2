"""Try bad inputs on the CLI and the Python API and print what each one answers.

Writes the Markdown table of docs/reliability.md: for the CLI the exit status and
the stderr line (run in-process through ``pyro_vae.cli.main``), for Python the
exception type and message. Needs Fashion-MNIST (found or downloaded as usual).
"[quick options]" stands for ``--subset 500 --hidden-dim 32 --latent-dim 4 --no-progress``;
commands shown without ``--out`` write to a fresh directory.

    python scripts/bad_inputs.py [--workdir /tmp/pyro-vae-bad-inputs]
"""

import argparse
import contextlib
import io
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyro_vae import VAE, TrainConfig, load_images, load_run, train  # noqa: E402
from pyro_vae.analysis.evaluation import evaluate_run  # noqa: E402
from pyro_vae.cli import main as cli_main  # noqa: E402
from pyro_vae.data.images import DATASETS  # noqa: E402
from pyro_vae.inference.estimators import estimate_log_likelihood  # noqa: E402

QUICK = ["--subset", "500", "--hidden-dim", "32", "--latent-dim", "4", "--no-progress"]


def run_cli(argv: list[str]) -> tuple[str, str]:
    """Exit status and stderr of ``pyro-vae argv`` (stdout is dropped)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return f"exit {code}", err.getvalue().strip()


def run_python(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except Exception as error:  # report whatever comes out, that is the point
        generic = (Exception, BaseException, object)
        kinds = [
            c.__name__
            for c in type(error).__mro__[1:]
            if c.__module__ == "builtins" and c not in generic
        ]
        return f"{type(error).__name__} ({', '.join(kinds)})", str(error)
    return "no error", ""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pyro-vae-bad-inputs"))
    w = p.parse_args().workdir
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    torch.set_num_threads(1)

    # Material for the cases: a finished run, a damaged copy of it, torn data, a file.
    assert run_cli(["train", *QUICK, "--epochs", "2", "--out", str(w / "run")])[0] == "exit 0"
    shutil.copytree(w / "run", w / "torn-run")
    checkpoint = w / "torn-run" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    torn_data = w / "torn-data"
    torn_data.mkdir()
    for gz in DATASETS["fashion-mnist"].system_dirs[0].glob("*-ubyte.gz"):  # the IDX files only
        shutil.copy(gz, torn_data)
    gz = torn_data / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100_000])
    (w / "a-file").write_text("not a directory")
    numpy.savez(w / "no-test.npz", train=numpy.zeros((60, 8, 8), numpy.uint8))
    small = numpy.zeros((60, 8, 8), numpy.uint8)
    numpy.savez(w / "8x8.npz", train=small, test=small[:10])
    (w / "empty").mkdir()

    cli_cases = [
        ["--prior", "cauchy"],
        ["--likelihood", "gamma"],
        ["--dataset", "cifar"],
        ["--epochs", "0"],
        ["--epochs", "ten"],
        ["--batch-size", "-5"],
        ["--latent-dim", "0"],
        ["--hidden-dim", "400", "0"],
        ["--particles", "0"],
        ["--beta", "-1"],
        ["--lr", "0"],
        ["--warmup-epochs", "-1"],
        ["--seed", "-1"],
        ["--subset", "0"],
        ["--checkpoint-every", "-1"],
        ["--on-nan", "ignore"],
        ["--objective", "iwae", "--beta", "2"],
        ["--bogus-option"],
        *([["--device", "cuda"]] if not torch.cuda.is_available() else []),
        ["--data-root", str(w / "a-file")],
        ["--data-root", str(torn_data)],
        ["--dataset", "mnist", "--data-root", str(w / "empty")],
        ["--subset", "60000"],
        [*QUICK, "--batch-size", "1000"],
        [*QUICK, "--out", str(w / "a-file")],
        ["--out", str(w / "run")],
        ["--resume", "--out", str(w / "empty")],
        [*QUICK, "--resume", "--latent-dim", "8", "--out", str(w / "run")],
        ["--resume", "--out", str(w / "torn-run")],
        [*QUICK, "--resume", "--epochs", "1", "--out", str(w / "run")],
        [*QUICK, "--init-from", str(w / "nowhere")],
        [*QUICK, "--init-from", str(w / "empty")],
        [*QUICK, "--latent-dim", "8", "--init-from", str(w / "run")],
        [*QUICK, "--init-from", str(w / "torn-run" / "checkpoint.pt")],
        ["--config", str(w / "nowhere.json")],
        ["--config", str(w / "a-file")],
        ["--config", str(w / "empty")],
        ["--dataset", str(w / "nowhere.npz")],
        ["--dataset", str(w / "no-test.npz")],
        ["--out", ""],
        [*QUICK, "--out", str(w / "a-file" / "run")],
        [*QUICK, "--latent-dim", "2000000000"],
        [*QUICK, "--prior", "mog", "--prior-components", "1000000000"],
        [*QUICK, "--particles", "100000000"],
    ]
    rows = ["| input | answer | message |", "|---|---|---|"]
    os.environ["http_proxy"] = os.environ["https_proxy"] = "http://127.0.0.1:9"  # no downloads
    for number, argv in enumerate(cli_cases):
        shown = " ".join(["train", *argv]).replace(" ".join(QUICK), "[quick options]")
        # each case its own directory, so that one that trains cannot answer for the next
        fresh = ["--out", str(w / f"new-{number}")]
        argv = ["train", *argv] if "--out" in argv else ["train", *argv, *fresh]
        status, message = run_cli(argv)
        rows.append(f"| `pyro-vae {cell(shown)}` | {status} | {cell(message)} |")

    data = load_images(subset=500)
    tiny = dict(hidden_dims=(32,), latent_dim=4, epochs=1, device="cpu")
    python_cases: list[tuple[str, Callable[[], object]]] = [
        ('TrainConfig(epochs="10")', lambda: TrainConfig(epochs="10")),
        ("TrainConfig(hidden_dims=400)", lambda: TrainConfig(hidden_dims=400)),
        ("TrainConfig(batch_size=True)", lambda: TrainConfig(batch_size=True)),
        ('TrainConfig(prior="cauchy")', lambda: TrainConfig(prior="cauchy")),
        ('TrainConfig(dataset="cifar")', lambda: TrainConfig(dataset="cifar")),
        ("TrainConfig(beta=-1)", lambda: TrainConfig(beta=-1)),
        ("ImageData with uint8 pixels", lambda: replace(data, train=(data.train * 255).byte())),
        (
            "ImageData with (N, 1, 28, 28) images",
            lambda: replace(data, train=data.train.reshape(-1, 1, 28, 28)),
        ),
        ("ImageData with image_shape (3, 32, 32)", lambda: replace(data, image_shape=(3, 32, 32))),
        (
            "ImageData with 10 labels for 500 images",
            lambda: replace(data, train_labels=data.train_labels[:10]),
        ),
        (
            "ImageData with a NaN pixel",
            lambda: replace(data, train=data.train.index_fill(0, torch.tensor([3]), float("nan"))),
        ),
        (
            "ImageData with an empty validation split",
            lambda: replace(data, val=data.val[:0], val_labels=data.val_labels[:0]),
        ),
        (
            "ImageData(binarize=True) with pixels in [0, 255]",
            lambda: replace(data, train=data.train * 255),
        ),
        (
            "train() on grey levels in [0, 255] with the Bernoulli likelihood",
            lambda: train(
                TrainConfig(**tiny),
                w / "py1",
                progress=False,
                data=replace(data, train=data.train * 255, binarize=False),
            ),
        ),
        (
            "train(config, out, data=a tensor)",
            lambda: train(TrainConfig(**tiny), w / "py2", data=data.train),
        ),
        (
            "train(TrainConfig(subset=100), out, data=...)",
            lambda: train(TrainConfig(**tiny, subset=100), w / "py3", data=data),
        ),
        ('train({"epochs": 1}, out)', lambda: train({"epochs": 1}, w / "py4")),
        ("load_run(a run with a truncated checkpoint)", lambda: load_run(w / "torn-run")),
        ('evaluate_run(run, split="dev")', lambda: evaluate_run(w / "run", split="dev")),
        (
            "evaluate_run(run of 28x28 images, dataset=a file of 8x8 images)",
            lambda: evaluate_run(w / "run", dataset=str(w / "8x8.npz"), progress=False),
        ),
    ]
    python_cases += [
        ("VAE(784, -3)", lambda: VAE(784, -3)),
        ("VAE(784, 50, hidden_dims=(0,))", lambda: VAE(784, 50, hidden_dims=(0,))),
        ('load_images(binarize="no")', lambda: load_images(binarize="no")),
        (
            "estimate_log_likelihood(model, guide, 0-255 pixels) under a Bernoulli",
            lambda: estimate_log_likelihood(
                *(lambda v: (v.model, v.guide))(VAE(784, 4, hidden_dims=(8,))),
                data.test[:2] * 255,
                num_samples=10,
            ),
        ),
    ]
    for label, call in python_cases:
        kind, message = run_python(call)
        rows.append(f"| `{cell(label)}` | {kind} | {cell(message)} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
