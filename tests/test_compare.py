"""``pyro-vae compare``: runs side by side, from their directories alone."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyro_vae import CheckpointError, TrainConfig
from pyro_vae.analysis.compare import (
    comparison_table,
    differing_options,
    paired_difference,
    summarize_run,
    summarize_runs,
)
from pyro_vae.cli import main
from pyro_vae.figures.plots import comparison_figure
from pyro_vae.runs import save_config, write_metrics


def hand_made_run(path: Path, val_elbos: list[float], **options) -> Path:
    """A run directory with ``config.json`` and one metrics row per validation ELBO."""
    path.mkdir(parents=True)
    save_config(path, TrainConfig(**options))
    write_metrics(
        path,
        [
            {
                "epoch": epoch,
                "train_loss": -value,
                "val_elbo": value,
                "beta": 1.0,
                "lr": 1e-3,
                "seconds": 360.0,
            }
            for epoch, value in enumerate(val_elbos, start=1)
        ],
    )
    return path


@pytest.mark.parametrize(
    ("val_elbos", "options", "status"),
    [
        ([-300.0, -290.0, -280.0], {"epochs": 3}, "finished"),
        ([-300.0, -290.0, -295.0, -296.0], {"epochs": 10, "patience": 2}, "early-stopped"),
        ([-300.0, -290.0, -295.0], {"epochs": 10, "patience": 2}, "unfinished"),
        ([-300.0, -290.0, -295.0, -296.0], {"epochs": 10}, "unfinished"),  # no early stopping
        ([], {"epochs": 10}, "unfinished"),
    ],
)
def test_a_summary_tells_how_far_a_run_trained(tmp_path, val_elbos, options, status):
    summary = summarize_run(hand_made_run(tmp_path / "run", val_elbos, **options))
    assert summary.status == status
    assert summary.hours == pytest.approx(0.1 * len(val_elbos))
    assert summary.best == (
        max(summary.metrics, key=lambda r: r["val_elbo"]) if val_elbos else None
    )
    assert summary.name == str(tmp_path / "run") and summary.evaluation is None


def test_differing_options_leave_out_where_a_run_was_computed():
    configs = [
        TrainConfig(),
        TrainConfig(prior="vamp", device="cpu", data_root="/data"),
        TrainConfig(hidden_dims=(300, 300), cuda_graph=False),
    ]
    assert differing_options(configs) == ["hidden_dims", "prior"]
    assert differing_options(configs[:1]) == []


def test_the_table_names_what_differs_and_what_each_run_reached(tmp_path):
    first = hand_made_run(tmp_path / "a" / "run", [-300.0, -280.0], epochs=2)
    second = hand_made_run(
        tmp_path / "b" / "run", [-290.0], epochs=5, prior="vamp", hidden_dims=(300, 300)
    )
    (second / "eval.json").write_text(
        json.dumps(
            {
                "test_log_likelihood": -270.123,
                "log_likelihood_stderr": 0.456,
                "num_samples": 5000,
                "num_examples": 10000,
                "epoch": 1,
            }
        )
    )
    summaries = summarize_runs([first, second])
    assert [s.name for s in summaries] == [str(first), str(second)]  # same names: paths
    rows = comparison_table(summaries).splitlines()[2:]
    assert rows == [
        f"| {first} | hidden_dims=400, prior=normal, epochs=2 | 2 / 2 | finished | ELBO -280.00 "
        "| not evaluated | 12.0 min |",
        f"| {second} | hidden_dims=300 300, prior=vamp, epochs=5 | 1 / 1 | unfinished | ELBO "
        "-290.00 | -270.12 ± 0.46 (epoch 1, K=5000, 10000 images) | 6.0 min |",
    ]
    other = hand_made_run(tmp_path / "c" / "other", [-300.0])
    assert [s.name for s in summarize_runs([first, other])] == ["run", "other"]  # unique names


def test_the_table_shows_overfitting_where_the_training_images_were_evaluated(tmp_path):
    runs = [hand_made_run(tmp_path / name, [-290.0]) for name in ("fitted", "plain")]
    result = {
        "log_likelihood_stderr": 0.5,
        "num_samples": 10,
        "num_examples": 100,
        "checkpoint": "last",
        "epoch": 1,
    }
    for run in runs:
        (run / "eval.json").write_text(json.dumps(result | {"test_log_likelihood": -270.0}))
    (runs[0] / "eval_train.json").write_text(json.dumps(result | {"train_log_likelihood": -266.5}))
    fitted, plain = summarize_runs(runs)
    assert (fitted.overfitting, plain.overfitting) == (3.5, None)
    lines = comparison_table([fitted, plain]).splitlines()
    assert lines[0].endswith("| training time | train − test |")
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2].endswith(" | 3.50 |") and lines[3].endswith(" | |")
    (runs[0] / "eval_train.json").write_text('{"train_log_likelihood": ')
    with pytest.raises(CheckpointError, match="eval_train.json is not valid JSON"):
        summarize_run(runs[0])


def test_a_damaged_result_or_a_directory_that_is_no_run_is_named(tmp_path):
    run = hand_made_run(tmp_path / "run", [-300.0])
    (run / "eval.json").write_text('{"test_log_likelihood": -2')
    with pytest.raises(CheckpointError, match="eval.json is not valid JSON .*evaluate the run"):
        summarize_run(run)
    (run / "eval.json").write_text('{"test_log_likelihood": "high"}')  # JSON, not a result
    with pytest.raises(CheckpointError, match="eval.json is not an evaluation pyro-vae wrote"):
        summarize_run(run)
    with pytest.raises(CheckpointError, match="is .* a directory made by `pyro-vae train`"):
        summarize_run(tmp_path)


def test_the_cli_compares_trained_and_evaluated_runs(tmp_path, shared_fashion_dir, capsys):
    common = [
        "--data-root",
        str(shared_fashion_dir),
        "--hidden-dim",
        "16",
        "--latent-dim",
        "2",
        "--batch-size",
        "10",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    normal, mog, other = tmp_path / "normal", tmp_path / "mog", tmp_path / "other"
    assert main(["train", *common, "--out", str(normal)]) == 0
    assert main(["train", *common, "--prior", "mog", "--out", str(mog)]) == 0
    assert main(["train", *common, "--out", str(other)]) == 0
    for run in (normal, mog):
        assert (
            main(
                [
                    "evaluate",
                    "--run",
                    str(run),
                    "--num-samples",
                    "10",
                    "--subset",
                    "20",
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    capsys.readouterr()
    figure = tmp_path / "figures" / "compare.png"  # the folder is made
    assert main(["compare", str(other), str(normal), str(mog), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("| training time | vs normal (paired) |")  # the first evaluated
    assert out[2].startswith("| other | prior=normal | ") and "not evaluated" in out[2]
    assert out[3].startswith("| normal | prior=normal | ") and out[3].endswith(" | baseline |")
    assert out[4].startswith("| mog | prior=mog | ") and "(epoch 2, K=10, 20 images)" in out[4]
    assert out[-1] == f"figure written to {figure}"
    width, height = Image.open(figure).size
    assert width > 2 * height  # curves and test log-likelihoods side by side
    # the paired difference, from the per-image estimates that evaluate wrote
    first, second = (np.load(run / "eval_examples.npz")["log_likelihood"] for run in (normal, mog))
    assert first.shape == (20,)
    assert first.mean() == pytest.approx(
        json.loads((normal / "eval.json").read_text())["test_log_likelihood"], abs=1e-4
    )
    difference, error = paired_difference(summarize_run(normal), summarize_run(mog))
    assert difference == pytest.approx(float((second - first).mean()), abs=1e-5)
    assert out[4].endswith(f" | {difference:+.2f} ± {error:.2f} |")
    figure_axes = comparison_figure(summarize_runs([normal, mog])).axes
    assert [label.get_text() for label in figure_axes[1].get_yticklabels()] == [
        "normal",
        f"mog\n{difference:+.2f} ± {error:.2f} vs normal, paired",
    ]
    # each image's difficulty is shared: the pairing knows the difference better than the
    # two means' own standard errors do
    unpaired = math.hypot(first.std(ddof=1), second.std(ddof=1)) / math.sqrt(20)
    assert error < unpaired
    # estimates that no longer belong to eval.json are not used
    result = json.loads((mog / "eval.json").read_text())
    (mog / "eval.json").write_text(json.dumps(result | {"test_log_likelihood": 0.0}))
    assert summarize_run(mog).per_image is None
    assert main(["compare", str(normal), "--figure", str(tmp_path / "compare.txt")]) == 2
    assert "cannot write a figure as 'compare.txt'; use a .png file name" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert f"is {tmp_path} a directory made by `pyro-vae train`?" in capsys.readouterr().err


def test_the_evaluation_guide_shows_what_compare_prints_for_the_kept_records(capsys):
    repo = Path(__file__).parents[1]
    records = [
        repo / "docs" / "runs" / "fashion-mnist-first-1000" / name
        for name in ("hvae-conv", "hvae-vamp-conv")
    ]
    assert main(["compare", *map(str, records)]) == 0
    assert capsys.readouterr().out in (repo / "docs" / "guide" / "evaluation.md").read_text()
