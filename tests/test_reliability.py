"""Nothing trained is lost to a crash, a signal, a NaN or a damaged checkpoint."""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_data

from pyro_vae import (
    CheckpointError,
    ConfigError,
    ImageData,
    NumericalError,
    TrainConfig,
    load_run,
    read_metrics,
    train,
)
from pyro_vae.cli import main
from pyro_vae.core.errors import TrainingInterrupted
from pyro_vae.runs import (
    CHECKPOINT_FILE,
    CHECKPOINT_KEYS,
    LOCK_FILE,
    load_checkpoint,
    save_checkpoint,
)
from pyro_vae.runs import nonfinite_entries as runs_nonfinite
from pyro_vae.training import callbacks as callbacks_module

REPO = Path(__file__).parents[1]


def tiny_config(**overrides) -> TrainConfig:
    """512 images in batches of 64: 8 steps per epoch."""
    options = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, lr=3e-3, epochs=2, device="cpu")
    options.update(overrides)
    return TrainConfig(**options)


def quiet_train(config, out, **kwargs):
    return train(config, out, progress=False, log=lambda line: None, **kwargs)


def assert_same_run(a: Path, b: Path) -> None:
    """Identical final parameters and identical metrics (except wall-clock seconds)."""
    params_a, params_b = load_run(a).state_dict(), load_run(b).state_dict()
    assert params_a.keys() == params_b.keys()
    for name, value in params_a.items():
        assert torch.equal(value, params_b[name]), name
    timings = ("seconds", "train_seconds")
    strip = [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(a)]
    assert strip == [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(b)]


# ---------------------------------------------------------------- numerical faults


def test_gradient_clipping_keeps_an_outlier_batch_from_stalling_training(
    tmp_path, tiny_data, faulty_objective
):
    """One batch with a 1e6 times larger loss (a rare image far off the data, as in the
    diverged HVAE run) fills Adam's second moments, which then shrink every later step:
    training stalls. Clipped to a norm above the usual ones (5 per example here; they
    never reach it), the outlier is an ordinary step and the run matches a clean one."""

    def val_elbos(name, clip, outlier):
        faulty_objective(lambda call, loss: loss * 1e6 if call == outlier else None)
        quiet_train(tiny_config(epochs=4, clip_grad_norm=clip), tmp_path / name, data=tiny_data)
        return [row["val_elbo"] for row in read_metrics(tmp_path / name)]

    clean = val_elbos("clean", None, None)
    assert val_elbos("clean-clipped", 5.0, None) == clean  # a clip that never fires: no change
    assert [row["clipped_steps"] for row in read_metrics(tmp_path / "clean-clipped")] == [0] * 4
    stalled = val_elbos("outlier", None, 4)
    assert stalled[-1] < clean[-1] - 2  # 4 epochs gain ~4 nats; after the outlier, almost none
    clipped = val_elbos("outlier-clipped", 5.0, 4)
    assert clipped[-1] == pytest.approx(clean[-1], abs=0.2)
    assert [row["clipped_steps"] for row in read_metrics(tmp_path / "outlier-clipped")] == [
        1,
        0,
        0,
        0,
    ]


def test_nan_in_a_batch_is_caught_and_the_last_good_checkpoint_survives(
    tmp_path, tiny_data, monkeypatch
):
    quiet_train(tiny_config(epochs=1), tmp_path / "one_epoch", data=tiny_data)
    quiet_train(tiny_config(epochs=2), tmp_path / "straight", data=tiny_data)

    draw, calls = ImageData.training_batch, [0]

    def poisoned(self, index):
        calls[0] += 1  # the ninth batch is the first of epoch 2
        batch = draw(self, index)
        rows = torch.arange(0, batch.shape[0], 7)
        return batch.index_fill(0, rows, float("nan")) if calls[0] == 9 else batch

    monkeypatch.setattr(ImageData, "training_batch", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NumericalError) as fault:
        quiet_train(tiny_config(epochs=2, on_nan="rollback"), out, data=tiny_data)
    message = str(fault.value)
    assert message.startswith(
        "non-finite loss at epoch 2, step 1 of 8: the training batch holds NaN"
    )
    assert f"the last good checkpoint (after epoch 1) is unchanged in {out / CHECKPOINT_FILE}" in (
        message
    )
    checkpoint = load_checkpoint(out)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 0)
    for name, value in load_run(tmp_path / "one_epoch").state_dict().items():
        assert torch.equal(checkpoint["model"][name], value), name

    monkeypatch.undo()  # the data is fixed: the good checkpoint continues as if nothing happened
    quiet_train(tiny_config(epochs=2), out, data=tiny_data, resume=True)
    assert_same_run(out, tmp_path / "straight")


def test_non_finite_loss_or_gradient_stops_at_the_step_it_happens(
    tmp_path, tiny_data, faulty_objective
):
    faulty_objective(lambda call, loss: loss * float("nan") if call == 11 else None)
    out = tmp_path / "loss"
    with pytest.raises(NumericalError) as fault:
        quiet_train(tiny_config(checkpoint_every=2), out, data=tiny_data)
    assert str(fault.value).startswith("non-finite loss (loss nan) at epoch 2, step 3 of 8; ")
    assert "(at epoch 2, step 2 of 8) is unchanged" in str(fault.value)
    assert "lower `lr` (now 0.003), or with `on_nan='rollback'`" in str(fault.value)
    assert (load_checkpoint(out)["epoch"], load_checkpoint(out)["step"]) == (1, 2)


@pytest.mark.parametrize(
    ("poisoned", "step", "checkpoint_every"),
    [
        (range(11, 17), 3, 0),  # every step from epoch 2, step 3 on
        ([11], 3, 0),  # one step: the next loss is NaN, the parameters name the step
        ([16], 8, 0),  # the epoch's last step: caught before the validation and checkpoint
        ([12], 4, 2),  # a step with a checkpoint after it: caught before writing it
    ],
)
def test_a_non_finite_gradient_with_a_finite_loss_is_named_with_its_step(
    tmp_path, tiny_data, faulty_objective, poisoned, step, checkpoint_every
):
    def poison_gradient(call, loss):
        if call in poisoned:
            loss.register_hook(lambda grad: grad * float("inf"))

    faulty_objective(poison_gradient)
    out = tmp_path / "gradient"
    with pytest.raises(
        NumericalError, match=rf"^non-finite gradient \(loss [\d.]+\) at epoch 2, step {step} "
    ):
        quiet_train(tiny_config(checkpoint_every=checkpoint_every), out, data=tiny_data)
    saved = load_checkpoint(out)
    assert (saved["epoch"], saved["step"]) == ((1, 2) if checkpoint_every else (1, 0))
    assert torch.isfinite(torch.cat([p.flatten() for p in load_run(out).parameters()])).all()


def test_rollback_restores_the_checkpoint_and_halves_the_learning_rate(
    tmp_path, tiny_data, faulty_objective, monkeypatch
):
    faulty_objective(lambda call, loss: loss * float("nan") if call == 11 else None)
    lines = []
    config = tiny_config(epochs=3, on_nan="rollback")
    train(config, tmp_path / "run", data=tiny_data, progress=False, log=lines.append)
    assert lines[2] == (  # after the run's summary and epoch 1
        "non-finite loss (loss nan) at epoch 2, step 3 of 8: rolled back to the checkpoint "
        "after epoch 1 and halved the learning rate to 0.0015"
    )
    metrics = read_metrics(tmp_path / "run")
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    assert [row["lr"] for row in metrics] == [0.003, 0.0015, 0.0015]
    assert load_checkpoint(tmp_path / "run")["optimizer"]["param_groups"][0]["lr"] == 0.0015
    assert metrics[2]["train_loss"] < metrics[0]["train_loss"]

    monkeypatch.setattr(callbacks_module, "MAX_ROLLBACKS", 2)
    faulty_objective(lambda call, loss: loss * float("nan") if call >= 11 else None)
    with pytest.raises(
        NumericalError,
        match=r"at epoch 2, step 1 of 8; gave up after 2 rollbacks that halved the learning "
        r"rate from 0.003 to 0.00075\. Check the data, then try a much smaller `lr`",
    ):
        quiet_train(config, tmp_path / "hopeless", data=tiny_data)
    assert load_checkpoint(tmp_path / "hopeless")["epoch"] == 1


def test_rollbacks_compound_each_halving_the_rate_it_rolled_back_with(
    tmp_path, tiny_data, faulty_objective
):
    faulty_objective(lambda call, loss: loss * float("nan") if call in (11, 12, 13) else None)
    lines = []
    config = tiny_config(epochs=3, on_nan="rollback")
    train(config, tmp_path / "run", data=tiny_data, progress=False, log=lines.append)
    halved = [line.rpartition(" ")[2] for line in lines if "rolled back" in line]
    assert halved == ["0.0015", "0.00075", "0.000375"]
    assert [row["lr"] for row in read_metrics(tmp_path / "run")] == [0.003, 0.000375, 0.000375]


def test_non_finite_optimizer_state_is_caught_before_it_is_saved_and_rolled_back(
    tmp_path, tiny_data
):
    lines = []
    config = tiny_config(lr=1e6, epochs=2, on_nan="rollback")  # overflows Adam's moments
    train(config, tmp_path / "run", data=tiny_data, progress=False, log=lines.append)
    faults = [line for line in lines if "rolled back" in line]
    assert faults and faults[0].startswith("non-finite optimizer state (exp_avg_sq of ")
    assert "from a step since the last checkpoint" in faults[0]
    assert "halved the learning rate to 5e+05" in faults[0]
    assert not runs_nonfinite(load_checkpoint(tmp_path / "run"))


def test_a_non_finite_state_is_never_written_over_a_good_checkpoint(tmp_path):
    good = {"model": {"w": torch.ones(3)}, "loss_sum": torch.tensor(2.0)}
    save_checkpoint(tmp_path, good)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    bad = {"model": {"w": torch.tensor([1.0, float("nan"), 1.0])}, "loss_sum": torch.tensor(2.0)}
    with pytest.raises(NumericalError, match=r"non-finite values in model\.w; the previous"):
        save_checkpoint(tmp_path, bad)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert list(tmp_path.iterdir()) == [tmp_path / CHECKPOINT_FILE]


# ------------------------------------------------- interruptions and exact resume


@pytest.mark.parametrize(
    ("stop_at", "signum", "position"),
    [(5, signal.SIGINT, (0, 5)), (16, signal.SIGTERM, (1, 8)), (20, signal.SIGINT, (2, 4))],
)
def test_signal_saves_mid_epoch_and_resume_is_exact(
    tmp_path, tiny_data, faulty_objective, stop_at, signum, position
):
    config = tiny_config(epochs=3, warmup_epochs=2, checkpoint_every=3)
    quiet_train(config, tmp_path / "straight", data=tiny_data)

    handler = signal.getsignal(signum)
    faulty_objective(lambda call, loss: signal.raise_signal(signum) if call == stop_at else None)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        quiet_train(config, out, data=tiny_data)
    assert stopped.value.signum == signum
    name = signal.Signals(signum).name
    assert f"stopped by {name} at epoch {position[0] + 1}, step {position[1]} of 8" in str(
        stopped.value
    )
    assert "continue with the same arguments plus `resume=True`" in str(stopped.value)
    checkpoint = load_checkpoint(out)
    assert (checkpoint["epoch"], checkpoint["step"]) == position
    assert signal.getsignal(signum) is handler  # the handler is restored

    faulty_objective(lambda call, loss: None)
    quiet_train(config, out, data=tiny_data, resume=True)
    assert_same_run(out, tmp_path / "straight")


# clip 1.0 clips every step: a resume must restore the epoch's count of clipped steps
@pytest.mark.parametrize(("crash_at", "clip"), [(7, None), (13, None), (13, 1.0)])
def test_crash_resumes_exactly_from_the_last_periodic_checkpoint(
    tmp_path, tiny_data, faulty_objective, crash_at, clip
):
    config = tiny_config(epochs=3, checkpoint_every=3, clip_grad_norm=clip)
    quiet_train(config, tmp_path / "straight", data=tiny_data)

    class Crash(Exception):
        """What a bug in a callback or a dying device would raise."""

    def crash(call, loss):
        if call == crash_at:
            raise Crash

    faulty_objective(crash)
    out = tmp_path / "run"
    with pytest.raises(Crash):
        quiet_train(config, out, data=tiny_data)
    checkpoint = load_checkpoint(out)
    done_steps = checkpoint["epoch"] * 8 + checkpoint["step"]
    assert done_steps == (crash_at - 1) // 3 * 3  # the last multiple of 3 steps before the crash
    (out / "metrics.jsonl").write_text('{"epoch": 1, "train_lo')  # a torn metrics line
    with pytest.raises(CheckpointError, match="line 1 is not valid JSON .* `resume=True`"):
        read_metrics(out)
    (out / f".{CHECKPOINT_FILE}.999999.tmp").write_bytes(b"left by a killed writer")

    faulty_objective(lambda call, loss: None)
    quiet_train(config, out, data=tiny_data, resume=True)
    assert_same_run(out, tmp_path / "straight")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    if clip:
        assert [row["clipped_steps"] for row in read_metrics(out)] == [8, 8, 8]


def test_resuming_a_finished_run_does_nothing_and_fewer_epochs_is_an_error(tmp_path, tiny_data):
    quiet_train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data)
    before = (tmp_path / "run" / CHECKPOINT_FILE).read_bytes()
    lines = []
    train(
        tiny_config(epochs=1),
        tmp_path / "run",
        data=tiny_data,
        resume=True,
        progress=False,
        log=lines.append,
    )
    assert lines[-1].endswith("has already trained all 1 epochs")
    assert (tmp_path / "run" / CHECKPOINT_FILE).read_bytes() == before
    quiet_train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, resume=True)
    with pytest.raises(ConfigError, match="has already trained 2 epochs; pass `epochs=3` or more"):
        quiet_train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data, resume=True)


# -------------------------------------------- damaged or mismatched checkpoints


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished one-epoch run on ``tiny_data`` (tests copy it before damaging it)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    quiet_train(tiny_config(epochs=1), out, data=make_tiny_data())
    return out


def _edit(change):
    def rewrite(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=False)
        change(checkpoint)
        torch.save(checkpoint, path)

    return rewrite


def _set(*keys_and_value):
    *keys, last, value = keys_and_value

    def change(checkpoint):
        target = checkpoint
        for key in keys:
            target = target[key]
        target[last] = value

    return _edit(change)


def run_files(run_dir: Path) -> dict[str, bytes]:
    """The contents of a run directory's files, but for the lock (which names its holder)."""
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.name != LOCK_FILE}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
            "is corrupted or not a pyro-vae checkpoint",
        ),
        (lambda p: p.write_bytes(b"\x00" * 100), "is corrupted or not a pyro-vae checkpoint"),
        (lambda p: p.write_bytes(b""), "is corrupted or not a pyro-vae checkpoint"),
        (lambda p: torch.save([1, 2], p), "holds a list, not a pyro-vae checkpoint"),
        (_edit(lambda c: c.pop("model")), r"is incomplete \(missing model\)"),
        (
            _edit(lambda c: c.update(step=3)),
            r"is incomplete \(missing epoch_rng, loss_sum, seconds\)",
        ),
        (_set("format", 1), "has checkpoint format 1, this pyro-vae reads format 2"),
        (
            _set("model", "decoder.net.0.weight", torch.zeros(3, 3)),
            r"the model state in .* does not fit the configured model \(.*size mismatch",
        ),
        (
            _edit(lambda c: c["model"].pop("encoder.net.0.bias")),
            r"the model state .* does not fit .*Missing key\(s\)",
        ),
        (
            _set("optimizer", "state", 0, "exp_avg", torch.zeros(2)),
            r"the optimizer state .* does not fit .*exp_avg of parameter 0 has shape \(2,\)",
        ),
        (
            _set("model", "encoder.net.0.bias", torch.full((32,), float("nan"))),
            "holds non-finite parameters",
        ),
        (_set("rng", "torch", torch.zeros(3)), "random number generator state is damaged"),
        (_set("epoch", -1), "holds an impossible position: epoch -1, step 0"),
        (
            _edit(
                lambda c: c.update(
                    step=99, epoch_rng=c["rng"], loss_sum=torch.tensor(1.0), seconds=0.0
                )
            ),
            "holds an impossible position: epoch 1, step 99",
        ),
        (
            _edit(
                lambda c: c.update(
                    step=3, epoch_rng={"torch": 1}, loss_sum=torch.tensor(1.0), seconds=0.0
                )
            ),
            "random number generator state is damaged",
        ),
        (_set("num_train", 100), "trained on 100 images per epoch, the data has 512"),
        (
            _set("config", "latent_dim", 7),
            "its configuration differs .*latent_dim: saved 7, requested 4",
        ),
        (
            _set("config", "image_shape", [1, 4, 16]),
            r"images of shape \(1, 4, 16\), the data has "
            r"\(1, 8, 8\)",
        ),
        (_set("config", "epochs", "many"), "holds an invalid configuration"),
    ],
)
def test_a_damaged_or_mismatched_checkpoint_is_a_clear_error_never_a_fresh_start(
    tmp_path, tiny_data, one_epoch_run, damage, message
):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    damage(out / CHECKPOINT_FILE)
    files = run_files(out)
    with pytest.raises(CheckpointError, match=message):
        quiet_train(tiny_config(epochs=2), out, data=tiny_data, resume=True)
    assert run_files(out) == files  # nothing touched


def test_load_run_and_the_cli_report_a_damaged_checkpoint(tmp_path, one_epoch_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    _set("model", "decoder.net.0.weight", torch.zeros(3, 3))(out / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        load_run(out)
    (out / CHECKPOINT_FILE).write_bytes(b"garbage")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is corrupted or not a pyro-vae checkpoint" in err[0]


# ------------------------------------------- real processes: SIGKILL and Ctrl-C

#: Long enough that interrupts a tenth of a second apart land while a run trains, also on a
#: fast machine (100 images in batches of 10: 10 steps an epoch).
CLI_EPOCHS, CLI_STEPS_PER_EPOCH = 20, 10
CLI_OPTIONS = [
    "--hidden-dim",
    "16",
    "--latent-dim",
    "2",
    "--batch-size",
    "10",
    "--epochs",
    str(CLI_EPOCHS),
    "--seed",
    "3",
    "--device",
    "cpu",
    "--no-progress",
]
#: One thread in every process, so that parameters compare bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory, shared_fashion_dir) -> tuple[Path, list[str]]:
    """An uninterrupted CLI run on the fake data (100 images: 10 steps per epoch)."""
    options = [*CLI_OPTIONS, "--data-root", str(shared_fashion_dir)]
    out = tmp_path_factory.mktemp("straight") / "run"
    with one_thread():
        assert main(["train", *options, "--out", str(out)]) == 0
    return out, options


#: ``python -m pyro_vae``, and the Fashion-MNIST script's runner of a pyro-vae command.
PYRO_VAE = ("-m", "pyro_vae")
SCRIPT_RUNNER = (
    "-c",
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from reproduce_fashion_mnist import _run; _run(sys.argv[2:], 1)",
    str(REPO / "scripts"),
    "pyro-vae",
)


def with_epochs(options: list[str], epochs: int) -> list[str]:
    at = options.index("--epochs")
    return [*options[:at], "--epochs", str(epochs), *options[at + 2 :]]


def start_training(
    options: list[str], out: Path, resume: bool, via: tuple[str, ...] = PYRO_VAE
) -> subprocess.Popen:
    """Start ``pyro-vae train`` (``via`` what runs it) in a process group of its own and
    return once it has written a checkpoint of its own."""
    started = time.time_ns()
    process = subprocess.Popen(
        [
            sys.executable,
            *via,
            "train",
            *options,
            "--out",
            str(out),
            *(["--resume"] if resume else []),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    checkpoint = out / CHECKPOINT_FILE
    while not (checkpoint.exists() and checkpoint.stat().st_mtime_ns >= started):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    return process


def resume_in_process(options: list[str], out: Path) -> None:
    with one_thread():
        assert main(["train", *options, "--out", str(out), "--resume"]) == 0


def test_kill_9_twice_then_ctrl_c_then_resume_matches_an_uninterrupted_run(
    tmp_path, straight_cli_run
):
    straight, options = straight_cli_run
    out, rng, positions = tmp_path / "run", random.Random(10), []

    def position() -> int:
        checkpoint = load_checkpoint(out)  # always loadable
        return checkpoint["epoch"] * CLI_STEPS_PER_EPOCH + checkpoint["step"]

    for kill in range(2):  # SIGKILL at random moments, with a checkpoint every step
        process = start_training([*options, "--checkpoint-every", "1"], out, resume=kill > 0)
        time.sleep(rng.uniform(0.0, 0.1))
        process.kill()
        assert process.wait() == -signal.SIGKILL  # killed while training, not after the end
        positions.append(position())

    # Ctrl-C, checkpointing only at epoch ends (--checkpoint-every may change on resume).
    process = start_training(options, out, resume=True)
    time.sleep(rng.uniform(0.0, 0.1))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    (line,) = stderr.splitlines()
    assert line.startswith("pyro-vae: stopped by SIGINT ")
    assert f"; the checkpoint is saved in {out / CHECKPOINT_FILE}; continue with the same " in line
    assert line.endswith(" plus --resume")
    positions.append(position())

    assert positions == sorted(positions) and len(set(positions)) == 3  # each run made progress
    assert positions[-1] < CLI_EPOCHS * CLI_STEPS_PER_EPOCH  # none ran to the end
    resume_in_process(options, out)
    assert_same_run(out, straight)


def slow_third_write(marker: Path) -> tuple[str, ...]:
    """What runs ``pyro-vae`` with its third checkpoint write held up: the file is written
    in full but not yet renamed into place when ``marker`` appears, naming the thread."""
    return (
        "-c",
        "import runpy, sys, threading, time\n"
        "import pyro_vae.runs.checkpoints as checkpoints\n"
        "marker, atomic_write, writes = sys.argv.pop(1), checkpoints.atomic_write, []\n"
        "def held_up(path, write):\n"
        "    writes.append(path)\n"
        "    def then_wait(file):\n"
        "        write(file)\n"
        "        if len(writes) == 3:\n"
        "            open(marker, 'w').write(threading.current_thread().name)\n"
        "            time.sleep(600)\n"
        "    atomic_write(path, then_wait)\n"
        "checkpoints.atomic_write = held_up\n"
        "runpy.run_module('pyro_vae', run_name='__main__')\n",
        str(marker),
    )


def test_kill_9_during_a_background_checkpoint_write_resumes_bit_identically(
    tmp_path, straight_cli_run
):
    straight, options = straight_cli_run
    out, marker = tmp_path / "run", tmp_path / "writing"
    every_step = [*options, "--checkpoint-every", "1"]
    process = start_training(every_step, out, resume=False, via=slow_third_write(marker))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    time.sleep(0.2)  # training goes on meanwhile
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert marker.read_text().startswith("pyro-vae-writer")  # not the training thread
    # the third checkpoint (after step 2) was written but never renamed into place
    assert [p.name for p in out.glob(f".{CHECKPOINT_FILE}.*.tmp")]
    checkpoint = load_checkpoint(out, keys=CHECKPOINT_KEYS)
    assert (checkpoint["epoch"], checkpoint["step"]) == (0, 1)
    resume_in_process(options, out)
    assert not list(out.glob("*.tmp"))
    assert_same_run(out, straight)


def test_the_fashion_mnist_script_lets_pyro_vae_save_when_interrupted(tmp_path, straight_cli_run):
    """Ctrl-C reaches the script and the pyro-vae it runs. The script waits for pyro-vae's
    checkpoint: subprocess.run, interrupted, kills its child after 0.25 s, mid-save."""
    _, options = straight_cli_run
    out = tmp_path / "run"
    process = start_training(with_epochs(options, 1000), out, resume=False, via=SCRIPT_RUNNER)
    os.kill(process.pid, signal.SIGINT)  # the script first...
    time.sleep(0.5)  # ...longer than subprocess.run's 0.25 s
    with contextlib.suppress(ProcessLookupError):  # gone already, with the child killed
        os.killpg(process.pid, signal.SIGINT)  # then both, as a terminal's Ctrl-C
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert "pyro-vae: stopped by SIGINT " in stderr  # the child saved its checkpoint...
    assert stderr.rstrip().endswith("stopped; run the same command again to continue")
    assert load_checkpoint(out)["epoch"] < 1000  # ...while training


def test_cli_resume_takes_the_saved_options_and_rejects_changed_ones(
    tmp_path, straight_cli_run, capsys
):
    straight, options = straight_cli_run
    out = tmp_path / "run"
    with one_thread():
        assert main(["train", *with_epochs(options, 3), "--out", str(out)]) == 0
        config = (out / "config.json").read_text()
        # An option the run was trained without may not be slipped in on resume...
        assert main(["train", "--resume", "--out", str(out), "--latent-dim", "3"]) == 2
        assert "latent_dim: saved 2, requested 3" in capsys.readouterr().err
        assert (out / "config.json").read_text() == config
        # ...and every option left out keeps its saved value: the run continues as trained.
        resumed = ["--resume", "--out", str(out), "--epochs", str(CLI_EPOCHS), "--no-progress"]
        assert main(["train", *resumed]) == 0
    assert_same_run(out, straight)


def test_temporary_checkpoints_of_a_killed_writer_do_not_count(tmp_path, tiny_data):
    quiet_train(tiny_config(epochs=1), tmp_path / "run", data=tiny_data)
    shutil.copy(tmp_path / "run" / CHECKPOINT_FILE, tmp_path / "run" / f".{CHECKPOINT_FILE}.1.tmp")
    (tmp_path / "run" / CHECKPOINT_FILE).unlink()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        quiet_train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, resume=True)


def test_a_trained_model_loads_from_a_checkpoint_with_only_its_weights(tmp_path, one_epoch_run):
    """load_run needs only ``model``: runs written before mid-epoch checkpoints still load."""
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    full = load_checkpoint(out)
    torch.save({"model": full["model"], "epoch": 1}, out / CHECKPOINT_FILE)
    for name, value in load_run(out).state_dict().items():
        assert torch.equal(value, full["model"][name]), name
    with pytest.raises(CheckpointError, match=r"incomplete \(missing format, optimizer, step, rng"):
        quiet_train(tiny_config(epochs=2), out, data=make_tiny_data(), resume=True)
