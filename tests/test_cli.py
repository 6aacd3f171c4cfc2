import argparse
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pyro_vae import TrainConfig, __version__, read_config
from pyro_vae.cli import as_flags, build_parser, main
from pyro_vae.config.fields import is_option
from pyro_vae.data.images import DATASETS

SYSTEM_COPY = DATASETS["fashion-mnist"].system_dirs[0]


def train_parser() -> argparse.ArgumentParser:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def test_help_describes_every_train_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--dataset",
        "--data-root",
        "--binarize",
        "--model",
        "--arch",
        "hvae",
        "conv",
        "gated",
        "--latent-dim",
        "--hidden-dim",
        "--beta",
        "--warmup-epochs",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--subset",
        "--out",
        "--resume",
        "--patience",
        "--lr-schedule",
        "--lr-decay",
        "--lr-patience",
        "--init-from",
    ):
        assert option in text


def test_module_entry_point_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"pyro-vae {__version__}"


def test_missing_dataset_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "--dataset",
            "mnist",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "no_proxy": "*", "http_proxy": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("pyro-vae: error: mnist was not found")


@pytest.mark.skipif(not SYSTEM_COPY.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_cli_trains_on_fashion_mnist_subset(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--subset",
            "2000",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--data-root",
            str(tmp_path / "data"),
            "--no-progress",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "checkpoint.pt", "metrics.jsonl"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert "epoch 2/2" in capsys.readouterr().out


def test_train_config_takes_a_runs_options_or_a_files_and_the_command_line_wins(
    tmp_path, shared_fashion_dir
):
    source, again, partial = tmp_path / "source", tmp_path / "again", tmp_path / "partial"
    assert (
        main(
            [
                "train",
                "--data-root",
                str(shared_fashion_dir),
                "--hidden-dim",
                "16",
                "--latent-dim",
                "2",
                "--prior",
                "mog",
                "--prior-components",
                "3",
                "--batch-size",
                "10",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(source),
            ]
        )
        == 0
    )
    # a run directory: another run like it, with one option changed
    assert main(["train", "--config", str(source), "--seed", "1", "--out", str(again)]) == 0
    assert read_config(again).differences(read_config(source)) == {"seed": (1, 0)}
    # a file with some of the options, the rest defaults, the command line on top
    options = tmp_path / "options.json"
    options.write_text(
        json.dumps(
            {"hidden_dims": [16], "latent_dim": 3, "prior": "mog", "batch_size": 10, "epochs": 1}
        )
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(options),
                "--latent-dim",
                "4",
                "--data-root",
                str(shared_fashion_dir),
                "--no-progress",
                "--out",
                str(partial),
            ]
        )
        == 0
    )
    config = read_config(partial)
    assert (
        config.hidden_dims,
        config.latent_dim,
        config.prior,
        config.batch_size,
        config.epochs,
        config.lr,
    ) == ((16,), 4, "mog", 10, 1, TrainConfig().lr)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"latent": 3}', r"does not hold valid train options: unknown config keys \['latent'\]"),
        ('{"latent_dim": 0}', "does not hold valid train options: .*latent-dim must be"),
        ("[1, 2]", "does not hold valid train options: a config must be a dict, got list"),
        ('{"latent_dim": ', r"options.json is not valid JSON \(Expecting value: .*\); fix it"),
        (None, r"cannot read .*missing.json \(No such file or directory\); pass a JSON file"),
    ],
)
def test_a_bad_options_file_is_named_before_anything_is_written(tmp_path, capsys, text, message):
    options = tmp_path / ("options.json" if text is not None else "missing.json")
    if text is not None:
        options.write_text(text)
    assert main(["train", "--config", str(options), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()


def test_every_config_option_is_a_train_flag_with_its_declared_help():
    actions = {action.dest: action for action in train_parser()._actions}
    for declared in fields(TrainConfig):
        if not is_option(declared) or declared.metadata["options_of"] is not None:
            continue
        action = actions[declared.name]
        first_words = declared.metadata["help"].split("`")[0][:20]
        assert first_words in action.help, declared.name
        assert "`" not in action.help, declared.name  # parameters became flags
    assert actions["cuda_graph"].option_strings == ["--no-cuda-graph"]
    assert actions["hidden_dims"].option_strings == ["--hidden-dim"]
    assert {"prior_components", "likelihood_scale"} <= set(actions)
    assert set(actions).isdisjoint({"image_shape", "num_classes"})  # facts of the data


@pytest.mark.parametrize(
    ("python", "command_line"),
    [
        ("`latent_dim` must be positive", "--latent-dim must be positive"),
        ("pass `resume=True` or `epochs=3`", "pass --resume or --epochs 3"),
        ("use `objective='elbo'`", "use --objective elbo"),
        ("as with `hidden_dims=(300, 300)`", "as with --hidden-dim 300 300"),
        ("turn off `cuda_graph=False`", "turn off --no-cuda-graph"),
        ("takes no `prior_options[layers]`", "takes no --prior-layers"),
        ("`likelihood_options[squeeze]=EPS` then", "--likelihood-squeeze EPS then"),
        ("no such flag: `max_batch`", "no such flag: max_batch"),
        ("code such as `pyro-vae plot` stays", "code such as `pyro-vae plot` stays"),
    ],
)
def test_library_messages_are_written_with_the_flags_of_the_command(python, command_line):
    assert as_flags(python, train_parser()) == command_line
