"""Fine-tuning: ``init_from`` starts a run from another run's model."""

import json
import shutil

import pytest
import torch
from conftest import make_tiny_data
from test_training import tiny_config

from pyro_vae import CheckpointError, read_config, read_metrics, train
from pyro_vae.cli import main

#: A learning rate so small that one epoch leaves the model as it started.
STILL = 1e-12


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run trained 4 epochs on the tiny data (best.pt and checkpoint.pt)."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(tiny_config(epochs=4), out, data=make_tiny_data(), progress=False)
    return out


def best_val_elbo(run) -> float:
    return max(row["val_elbo"] for row in read_metrics(run))


def test_a_fine_tuned_run_starts_from_the_source_model(tmp_path, tiny_data, source):
    logs = []
    train(
        tiny_config(epochs=1, lr=STILL, init_from=str(source)),
        tmp_path / "tuned",
        data=tiny_data,
        progress=False,
        log=logs.append,
    )
    # the validation ELBO (fixed seed) of the unchanged model is the source's best epoch's
    assert read_metrics(tmp_path / "tuned")[0]["val_elbo"] == pytest.approx(
        best_val_elbo(source), abs=1e-3
    )
    fresh = tmp_path / "fresh"
    train(tiny_config(epochs=1, lr=STILL), fresh, data=tiny_data, progress=False)
    assert read_metrics(fresh)[0]["val_elbo"] < best_val_elbo(source) - 5
    assert logs[0] == f"initialized from {source / 'best.pt'} (epoch 4)"
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init_from"] == str(source)


def test_fine_tuning_with_the_iwae_objective_continues_training(tmp_path, tiny_data, source):
    out = tmp_path / "tuned"
    train(
        tiny_config(epochs=2, objective="iwae", particles=5, init_from=str(source)),
        out,
        data=tiny_data,
        progress=False,
    )
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2]  # epochs start anew
    assert rows[0]["val_elbo"] > best_val_elbo(source) - 2  # not a fresh start
    # the run is judged by the bound it trains on, which is above the ELBO
    assert all(row["val_iwae"] > row["val_elbo"] + 0.1 for row in rows)
    best = max(rows, key=lambda row: row["val_iwae"])
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == best["epoch"]
    # a resumed fine-tuned run continues from its own checkpoint, not from the source
    train(
        tiny_config(epochs=3, objective="iwae", particles=5, init_from=str(source)),
        out,
        data=tiny_data,
        resume=True,
        progress=False,
    )
    assert [row["epoch"] for row in read_metrics(out)] == [1, 2, 3]


def test_a_checkpoint_file_can_be_named(tmp_path, tiny_data, source):
    train(
        tiny_config(epochs=1, lr=STILL, init_from=str(source / "checkpoint.pt")),
        tmp_path / "tuned",
        data=tiny_data,
        progress=False,
    )
    last = read_metrics(source)[-1]["val_elbo"]
    assert read_metrics(tmp_path / "tuned")[0]["val_elbo"] == pytest.approx(last, abs=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latent_dim": 5}, "its model differs \\(latent_dim: 4 there, 5 here\\)"),
        (
            {"hidden_dims": (16,), "prior": "mog"},
            "hidden_dims: \\(32,\\) there, \\(16,\\) here; prior: 'normal' there, 'mog' here",
        ),
    ],
)
def test_a_different_model_is_refused_before_anything_is_written(
    tmp_path, tiny_data, source, overrides, message
):
    out = tmp_path / "tuned"
    with pytest.raises(CheckpointError, match=message):
        train(tiny_config(init_from=str(source), **overrides), out, data=tiny_data, progress=False)
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


def test_missing_sources_are_named_with_the_fix(tmp_path, tiny_data, source):
    with pytest.raises(CheckpointError, match="does not exist; pass a run directory"):
        train(
            tiny_config(init_from=str(tmp_path / "nowhere")),
            tmp_path / "a",
            data=tiny_data,
            progress=False,
        )
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(source / "checkpoint.pt", unfinished)
    with pytest.raises(CheckpointError, match="holds no best.pt .* such as .*checkpoint.pt"):
        train(
            tiny_config(init_from=str(unfinished)), tmp_path / "b", data=tiny_data, progress=False
        )


def test_the_cli_takes_the_model_options_left_out_from_the_source_run(
    tmp_path, shared_fashion_dir, capsys
):
    common = [
        "--data-root",
        str(shared_fashion_dir),
        "--batch-size",
        "10",
        "--device",
        "cpu",
        "--no-progress",
    ]
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    assert (
        main(
            [
                "train",
                *common,
                "--model",
                "hvae",
                "--arch",
                "gated",
                "--hidden-dim",
                "16",
                "--latent-dim",
                "3",
                "--prior",
                "mog",
                "--prior-components",
                "4",
                "--epochs",
                "2",
                "--out",
                str(source),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                *common,
                "--init-from",
                str(source),
                "--objective",
                "iwae",
                "--particles",
                "3",
                "--lr",
                str(STILL),
                "--epochs",
                "1",
                "--out",
                str(tuned),
            ]
        )
        == 0
    )
    assert f"initialized from {source / 'best.pt'} (epoch " in capsys.readouterr().out
    config = read_config(tuned)
    assert (
        config.model,
        config.arch,
        config.hidden_dims,
        config.latent_dim,
        config.prior,
        config.prior_options,
    ) == ("hvae", "gated", (16,), 3, "mog", {"components": 4})
    assert (config.objective, config.epochs) == ("iwae", 1)  # training options: this run's
    assert read_metrics(tuned)[0]["val_elbo"] == pytest.approx(best_val_elbo(source), abs=1e-3)
    # model options that are given must still be the source's
    assert (
        main(
            [
                "train",
                *common,
                "--init-from",
                str(source),
                "--latent-dim",
                "5",
                "--out",
                str(tmp_path / "other"),
            ]
        )
        == 2
    )
    assert "its model differs (latent_dim: 3 there, 5 here)" in capsys.readouterr().err
