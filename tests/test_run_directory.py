"""What the file system and other processes can do to a run directory: a second writer,
a full disk, a read-only directory, a file or folder in the way. Each gets one line
(exit status 2 on the command line) and leaves what was written before intact."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_tiny_image_file

from pyro_vae import OutputError, RunInUseError, TrainConfig, train
from pyro_vae.cli import main
from pyro_vae.core.files import atomic_write, check_writable
from pyro_vae.runs import CHECKPOINT_FILE, locked_run, read_metrics

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
IS_ROOT = os.geteuid() == 0


def tiny_options(data: Path, epochs: int) -> list[str]:
    return [
        "--dataset",
        str(data),
        "--hidden-dim",
        "16",
        "--latent-dim",
        "2",
        "--batch-size",
        "64",
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
        "--no-progress",
    ]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    write_tiny_image_file(path)
    return path


def run_cli(arguments: list[str], capsys) -> tuple[int, str]:
    status = main(arguments)
    return status, capsys.readouterr().err


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (needs root; the tests using it skip otherwise)."""
    path.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    return filler


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only: a read-only bind mount as root (root ignores permissions),
    else its permission bits."""
    if IS_ROOT:
        try:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            remount = ["mount", "-o", "remount,ro,bind", str(path)]
            subprocess.run(remount, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("a read-only bind mount needs root")
        try:
            yield
        finally:
            subprocess.run(["umount", str(path)], check=False)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)


def start_training(options: list[str], out: Path) -> subprocess.Popen:
    """``pyro-vae train`` in a process of its own, returned once it holds ``out`` (its first
    checkpoint is written)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", *options, "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (out / CHECKPOINT_FILE).exists():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.005)
    return process


def test_a_second_writer_is_refused_naming_the_first_which_finishes_alone(
    tmp_path, image_file, capsys
):
    out = tmp_path / "run"
    options = tiny_options(image_file, epochs=30)
    first = start_training(options, out)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the lock
    try:
        for second in (
            ["train", *options, "--out", str(out), "--resume"],
            ["evaluate", "--run", str(out), "--num-samples", "2", "--device", "cpu"],
        ):
            status, err = run_cli(second, capsys)
            assert status == 2
            assert err.count("\n") == 1
            assert f"{out} is in use by process {first.pid} (training" in err
            assert "wait until it ends or stop it" in err
        # readers work while it trains
        assert main(["sample", "--run", str(out), "--out", str(tmp_path / "s.png")]) == 0
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert [row["epoch"] for row in read_metrics(out)] == list(range(1, 31))


def test_the_lock_of_a_killed_process_never_blocks_a_resume(tmp_path, image_file):
    out = tmp_path / "run"
    options = tiny_options(image_file, epochs=50)
    process = start_training(options, out)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert main(["train", *tiny_options(image_file, epochs=2), "--out", str(out), "--resume"]) == 0


def test_the_python_api_is_refused_too_and_says_which_process_holds_the_run(tmp_path, tiny_data):
    out = tmp_path / "run"
    with locked_run(out, "evaluation", create=True):
        with pytest.raises(RunInUseError, match=rf"process {os.getpid()} \(evaluation"):
            train(TrainConfig(hidden_dims=(8,), latent_dim=2), out, data=tiny_data, progress=False)
    assert not (out / CHECKPOINT_FILE).exists()


def test_a_folder_in_the_way_is_one_line_and_is_not_replaced(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(OutputError, match=r"out.png: a folder is in the way; remove it"):
        atomic_write(tmp_path / "out.png", lambda file: file.write(b"new"))
    assert (tmp_path / "out.png").is_dir() and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_path_under_a_file_is_one_line_and_the_file_is_kept(tmp_path):
    (tmp_path / "file").write_text("kept")
    with pytest.raises(OutputError, match="part of the path is a file, not a folder"):
        check_writable(tmp_path / "file" / "figures")
    assert (tmp_path / "file").read_text() == "kept"


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_goes_on_once_space_is_free(
    tmp_path, image_file, capsys
):
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "run"
        assert main(["train", *tiny_options(image_file, epochs=1), "--out", str(out)]) == 0
        checkpoint = (out / CHECKPOINT_FILE).read_bytes()
        filler = fill(disk)
        resume = ["train", *tiny_options(image_file, epochs=3), "--out", str(out), "--resume"]
        status, err = run_cli(resume, capsys)
        assert status == 2 and err.count("\n") == 1
        assert "no space left on the device" in err
        assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint
        for command in (
            ["evaluate", "--run", str(out), "--num-samples", "2", "--device", "cpu"],
            ["plot", "--run", str(out)],
            ["sample", "--run", str(out), "--out", str(disk / "samples.png")],
            ["encode", "--run", str(out), "--out", str(disk / "codes.npz")],
        ):
            status, err = run_cli(command, capsys)
            assert status == 2 and err.count("\n") == 1, command
            assert "no space left on the device" in err, command
        assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint
        assert not list(disk.rglob(".*.tmp"))  # no temporary file left behind
        filler.unlink()
        assert main(resume) == 0
        assert [row["epoch"] for row in read_metrics(out)] == [1, 2, 3]


def test_a_read_only_run_directory_is_one_line_for_every_command(tmp_path, image_file, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny_options(image_file, epochs=1), "--out", str(out)]) == 0
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    with read_only(out):
        for command in (
            ["train", *tiny_options(image_file, epochs=2), "--out", str(out), "--resume"],
            ["evaluate", "--run", str(out), "--num-samples", "2", "--device", "cpu"],
            ["plot", "--run", str(out)],
            ["sample", "--run", str(out), "--out", str(out / "samples.png")],
            ["encode", "--run", str(out), "--out", str(out / "codes.npz")],
        ):
            status, err = run_cli(command, capsys)
            assert status == 2 and err.count("\n") == 1, command
            assert "read-only" in err or "permission denied" in err, command
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files


def test_an_unwritable_figure_destination_is_refused_before_the_evaluation(
    tmp_path, image_file, capsys
):
    out = tmp_path / "run"
    assert main(["train", *tiny_options(image_file, epochs=1), "--out", str(out)]) == 0
    (tmp_path / "file").write_text("x")
    figure = tmp_path / "file" / "eval.png"
    status, err = run_cli(["evaluate", "--run", str(out), "--figure", str(figure)], capsys)
    assert status == 2 and "part of the path is a file" in err
    assert not (out / "eval.json").exists()  # refused before the work, not after


def test_an_empty_output_path_is_refused(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="`out` is empty"):
        train(TrainConfig(), "", data=tiny_data)
    status, err = run_cli(["train", "--out", ""], capsys)
    assert status == 2 and "--out is empty" in err
    assert list(tmp_path.iterdir()) == []


def test_check_writable_makes_the_folder_and_leaves_nothing_in_it(tmp_path):
    folder = check_writable(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []
