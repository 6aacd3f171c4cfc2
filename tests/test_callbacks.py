"""Training callbacks: a user's own, their saved state across a resume, and the TensorBoard
logger, read back from its event files."""

import pytest
from conftest import write_tiny_image_file
from test_reliability import quiet_train
from test_training import tiny_config

from pyro_vae import ConfigError, read_metrics
from pyro_vae.cli import main
from pyro_vae.runs import load_checkpoint
from pyro_vae.training.callbacks import Callback
from pyro_vae.training.loggers import TensorBoardLogger


class EpochRecorder(Callback):
    """What a user might write: keep every epoch's metrics, count the steps."""

    def __init__(self):
        self.rows, self.steps, self.calls = [], [], []

    def on_train_start(self, trainer):
        self.calls.append("start")

    def on_step_end(self, trainer, step):
        self.steps.append(step)

    def on_epoch_end(self, trainer, row):
        self.rows.append(dict(row))

    def on_train_end(self, trainer):
        self.calls.append("end")


class EpochCounter(Callback):
    """A callback with state: how many epochs it has seen, kept across a resume."""

    state_key = "epoch_counter"

    def __init__(self):
        self.seen = 0

    def on_epoch_end(self, trainer, row):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, row):
        trainer.should_stop = True


def test_a_user_callback_sees_every_step_and_every_epoch_row(tmp_path, tiny_data):
    recorder = EpochRecorder()
    quiet_train(tiny_config(epochs=3), tmp_path / "run", data=tiny_data, callbacks=[recorder])
    assert recorder.rows == read_metrics(tmp_path / "run")
    assert recorder.steps == list(range(1, 3 * 8 + 1))  # 512 images, batches of 64
    assert recorder.calls == ["start", "end"]


def test_a_callback_state_is_checkpointed_and_restored_on_resume(tmp_path, tiny_data):
    first = EpochCounter()
    quiet_train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, callbacks=[first])
    assert load_checkpoint(tmp_path / "run")["epoch_counter"] == {"seen": 2}
    resumed = EpochCounter()
    quiet_train(
        tiny_config(epochs=4), tmp_path / "run", resume=True, data=tiny_data, callbacks=[resumed]
    )
    assert resumed.seen == 4


def test_a_callback_stops_training_after_its_epoch(tmp_path, tiny_data):
    quiet_train(
        tiny_config(epochs=5), tmp_path / "run", data=tiny_data, callbacks=[StopAfterFirstEpoch()]
    )
    assert [row["epoch"] for row in read_metrics(tmp_path / "run")] == [1]


def test_a_callback_state_key_may_not_replace_a_checkpoint_entry(tmp_path, tiny_data):
    class Clash(EpochCounter):
        state_key = "model"

    with pytest.raises(ConfigError, match=r"state_key \['model'\] is a checkpoint entry"):
        quiet_train(tiny_config(), tmp_path / "run", data=tiny_data, callbacks=[Clash()])


def _event_file(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_tensorboard_logger_writes_each_epoch_scalars_and_images(tmp_path):
    write_tiny_image_file(tmp_path / "tiny.npz")
    run = tmp_path / "run"
    main(
        f"train --dataset {tmp_path / 'tiny.npz'} --epochs 3 --latent-dim 2 --hidden-dim 16 "
        f"--batch-size 64 --device cpu --no-progress --logger tensorboard --out {run}".split()
    )
    events = _event_file(run / "tensorboard")
    metrics = read_metrics(run)
    for key, tag in (
        ("train_loss", "loss/train"),
        ("val_elbo", "elbo/validation"),
        ("beta", "beta"),
        ("lr", "lr"),
    ):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in metrics])
    kl = [e.value for e in events.Scalars("kl/validation")]
    assert len(kl) == 3 and all(value > 0 for value in kl)
    reconstructions = events.Images("reconstructions")
    assert [e.step for e in reconstructions] == [1, 2, 3]
    assert reconstructions[0].height > reconstructions[0].width / 8  # two rows of 8 images
    assert len(events.Images("samples")) == 3


def test_tensorboard_logger_drops_the_events_after_the_resumed_checkpoint(tmp_path, tiny_data):
    log_dir = tmp_path / "tb"
    quiet_train(
        tiny_config(epochs=2),
        tmp_path / "run",
        data=tiny_data,
        callbacks=[TensorBoardLogger(log_dir)],
    )
    quiet_train(
        tiny_config(epochs=3),
        tmp_path / "run",
        resume=True,
        data=tiny_data,
        callbacks=[TensorBoardLogger(log_dir)],
    )
    logged = _event_file(log_dir).Scalars("elbo/validation")
    assert [e.step for e in logged] == [1, 2, 3]
    assert [e.value for e in logged] == pytest.approx(
        [row["val_elbo"] for row in read_metrics(tmp_path / "run")]
    )
