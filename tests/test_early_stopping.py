"""Early stopping, the best-epoch checkpoint and learning-rate schedules."""

import pytest
import torch
from test_training import params, tiny_config

from pyro_vae import CheckpointError, ConfigError, TrainConfig, load_run, read_metrics, train
from pyro_vae.cli import main
from pyro_vae.runs import best_epoch, epochs_without_improvement
from pyro_vae.training.loop import validation_bound

# lr 0.05 makes the validation ELBO of the tiny model stall and fluctuate within ~20 epochs.
STALLING = dict(lr=0.05, epochs=40)


def rows_of(*val_elbos: float) -> list[dict]:
    return [{"epoch": i + 1, "val_elbo": v} for i, v in enumerate(val_elbos)]


def test_epochs_without_improvement_counts_from_the_first_best():
    assert epochs_without_improvement([]) == 0
    assert epochs_without_improvement(rows_of(-9, -8, -7)) == 0
    assert epochs_without_improvement(rows_of(-9, -7, -8, -7)) == 2  # a tie is no improvement
    assert best_epoch(rows_of(-9, -7, -8, -7))["epoch"] == 2


def test_runs_trained_on_the_iwae_bound_are_judged_by_it():
    rows = [
        {"epoch": 1, "val_elbo": -8.0, "val_iwae": -7.5},
        {"epoch": 2, "val_elbo": -8.2, "val_iwae": -7.2},
    ]
    assert best_epoch(rows)["epoch"] == 2
    assert (
        epochs_without_improvement([*rows, {"epoch": 3, "val_elbo": -7.9, "val_iwae": -7.3}]) == 1
    )


def test_training_stops_early_and_keeps_the_best_epoch(tmp_path, tiny_data):
    out = tmp_path / "run"
    train(tiny_config(patience=3, **STALLING), out, data=tiny_data, progress=False)
    rows = read_metrics(out)
    best = best_epoch(rows)
    assert rows[-1]["epoch"] < STALLING["epochs"]  # it did stop early
    assert rows[-1]["epoch"] - best["epoch"] == 3
    assert all(row["val_elbo"] <= best["val_elbo"] for row in rows)
    # best.pt holds that epoch's model: its validation ELBO (same seed) is the logged one
    best_model, last_model = load_run(out), load_run(out, checkpoint="last")
    assert validation_bound(best_model, tiny_data.val) == pytest.approx(best["val_elbo"], abs=1e-6)
    assert validation_bound(last_model, tiny_data.val) == pytest.approx(
        rows[-1]["val_elbo"], abs=1e-6
    )
    # resuming an early-stopped run with more epochs trains nothing more
    messages = []
    train(
        tiny_config(patience=3, **{**STALLING, "epochs": 60}),
        out,
        data=tiny_data,
        resume=True,
        progress=False,
        log=messages.append,
    )
    assert read_metrics(out) == rows
    assert any("early stopping" in m and f"epoch {best['epoch']}" in m for m in messages)


def test_without_patience_training_runs_all_epochs_and_still_keeps_best(tmp_path, tiny_data):
    out = tmp_path / "run"
    train(tiny_config(**STALLING), out, data=tiny_data, progress=False)
    rows = read_metrics(out)
    assert len(rows) == STALLING["epochs"]
    best = best_epoch(rows)
    assert best["epoch"] < STALLING["epochs"]  # the stall happened, so best != last
    model = load_run(out, checkpoint="best")
    assert validation_bound(model, tiny_data.val) == pytest.approx(best["val_elbo"], abs=1e-6)
    assert load_run(out) is not None  # default without patience: the last epoch
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            params(load_run(out)).values(),
            params(load_run(out, checkpoint="last")).values(),
            strict=True,
        )
    )


def test_plateau_schedule_decays_the_lr_when_the_validation_bound_stalls(tmp_path, tiny_data):
    out = tmp_path / "run"
    config = tiny_config(lr_schedule="plateau", lr_decay=0.5, lr_patience=1, **STALLING)
    train(config, out, data=tiny_data, progress=False)
    rows = read_metrics(out)
    lr, best, waited = config.lr, float("-inf"), 0
    for row in rows:  # ReduceLROnPlateau's rule, replayed from the logged ELBOs
        assert row["lr"] == pytest.approx(lr)
        if row["val_elbo"] > best:
            best, waited = row["val_elbo"], 0
        else:
            waited += 1
        if waited > config.lr_patience:
            lr, waited = lr * config.lr_decay, 0
    assert rows[-1]["lr"] < config.lr  # it did decay


def test_resume_restores_the_schedule_exactly(tmp_path, tiny_data):
    config = dict(lr_schedule="plateau", lr_patience=0, lr=0.05)
    straight = train(
        tiny_config(epochs=30, **config), tmp_path / "a", data=tiny_data, progress=False
    )
    train(tiny_config(epochs=15, **config), tmp_path / "b", data=tiny_data, progress=False)
    resumed = train(
        tiny_config(epochs=30, **config),
        tmp_path / "b",
        data=tiny_data,
        resume=True,
        progress=False,
    )
    lrs = [[row["lr"] for row in read_metrics(tmp_path / run)] for run in ("a", "b")]
    assert lrs[0] == lrs[1] and min(lrs[0]) < config["lr"]
    for name, value in params(straight).items():
        assert torch.equal(params(resumed)[name], value), name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patience": -1}, "`patience` must be 0 or more"),
        ({"lr_patience": -2}, "`lr_patience` must be 0 or more"),
        ({"lr_decay": 1.0}, "`lr_decay` must be between 0 and 1"),
        ({"lr_schedule": "cosine"}, "unknown `lr_schedule` 'cosine'; choose one of: constant"),
    ],
)
def test_invalid_schedule_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_missing_best_checkpoint_and_unknown_choice_are_clear_errors(tmp_path, tiny_data):
    out = tmp_path / "run"
    train(tiny_config(epochs=1), out, data=tiny_data, progress=False)
    (out / "best.pt").unlink()  # as in a run made before best.pt existed
    with pytest.raises(CheckpointError, match=r"no best.pt .*\(`checkpoint='last'`\)"):
        load_run(out, checkpoint="best")
    with pytest.raises(ConfigError, match="unknown checkpoint 'first'"):
        load_run(out, checkpoint="first")
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(out),
                "--checkpoint",
                "best",
                "--num-samples",
                "2",
                "--no-progress",
            ]
        )
        == 2
    )
