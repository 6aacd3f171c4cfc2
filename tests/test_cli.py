import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import __version__
from pyro_vae.cli import main
from pyro_vae.data import DATASETS

SYSTEM_COPY = DATASETS["fashion-mnist"].system_dirs[0]


def test_help_describes_every_train_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--dataset", "--data-root", "--binarize", "--model", "--arch", "hvae", "conv",
                   "gated", "--latent-dim", "--hidden-dim",
                   "--beta", "--warmup-epochs", "--epochs", "--batch-size", "--lr", "--seed",
                   "--device", "--subset", "--out", "--resume", "--patience", "--lr-schedule",
                   "--lr-decay", "--lr-patience", "--init-from"):  # fmt: skip
        assert option in text


def test_module_entry_point_and_version():
    result = subprocess.run([sys.executable, "-m", "pyro_vae", "--version"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == f"pyro-vae {__version__}"


def test_missing_dataset_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--dataset", "mnist", "--data-root",
         str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "no_proxy": "*",
                                             "http_proxy": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("pyro-vae: error: mnist was not found")


@pytest.mark.skipif(not SYSTEM_COPY.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_cli_trains_on_fashion_mnist_subset(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--subset", "2000", "--epochs", "2", "--out", str(out),
                 "--data-root", str(tmp_path / "data"), "--no-progress"])  # fmt: skip
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "checkpoint.pt", "metrics.jsonl"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert "epoch 2/2" in capsys.readouterr().out
