"""Bad input gets a message that says what to fix: ValueError/TypeError in Python,
one line on stderr with exit status 2 from the CLI."""

import gzip
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from pyro_vae import (
    VAE,
    ConfigError,
    ConfigTypeError,
    DatasetUnavailableError,
    ImageData,
    TrainConfig,
    load_images,
    train,
)
from pyro_vae.cli import main
from pyro_vae.data import images as data_module
from pyro_vae.inference.estimators import estimate_log_likelihood


def tiny_config(**overrides) -> TrainConfig:
    options = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, epochs=1, device="cpu")
    options.update(overrides)
    return TrainConfig(**options)


def cli(argv, capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``pyro-vae argv``, run in-process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


# (CLI options, the same as TrainConfig keyword arguments, Python's message, the CLI's)
CONFIG_ERRORS = [
    (
        ["--latent-dim", "0"],
        {"latent_dim": 0},
        "`latent_dim` must be positive, got 0",
        "--latent-dim must be positive, got 0",
    ),
    (
        ["--hidden-dim", "400", "0"],
        {"hidden_dims": (400, 0)},
        "`hidden_dims` widths must be positive, got [400, 0]",
        "--hidden-dim widths must be positive, got [400, 0]",
    ),
    (["--epochs", "0"], {"epochs": 0}, "`epochs` must be positive", "--epochs must be positive"),
    (
        ["--batch-size", "-5"],
        {"batch_size": -5},
        "`batch_size` must be positive, got -5",
        "--batch-size must be positive, got -5",
    ),
    (
        ["--particles", "0"],
        {"particles": 0},
        "`particles` must be positive, got 0",
        "--particles must be positive, got 0",
    ),
    (
        ["--beta", "-1"],
        {"beta": -1.0},
        "`beta` must be a positive number, got -1.0",
        "--beta must be a positive number, got -1.0",
    ),
    (
        ["--beta", "nan"],
        {"beta": float("nan")},
        "`beta` must be a positive number",
        "--beta must be a positive number",
    ),
    (
        ["--lr", "0"],
        {"lr": 0.0},
        "`lr` must be a positive number, got 0.0",
        "--lr must be a positive number, got 0.0",
    ),
    (
        ["--warmup-epochs", "-1"],
        {"warmup_epochs": -1},
        "`warmup_epochs` must be 0 or more",
        "--warmup-epochs must be 0 or more",
    ),
    (
        ["--seed", "-1"],
        {"seed": -1},
        "`seed` must be between 0 and 4294967295, got -1",
        "--seed must be between 0 and 4294967295, got -1",
    ),
    (
        ["--subset", "0"],
        {"subset": 0},
        "`subset` must be positive, got 0",
        "--subset must be positive, got 0",
    ),
    (
        ["--checkpoint-every", "-1"],
        {"checkpoint_every": -1},
        "`checkpoint_every` must be 0 or more, got -1",
        "--checkpoint-every must be 0 or more, got -1",
    ),
    (
        ["--objective", "iwae", "--beta", "2"],
        {"objective": "iwae", "beta": 2.0},
        "`objective='iwae'` has no separate KL term to scale; drop `beta` and "
        "`warmup_epochs` or use `objective='elbo'`",
        "--objective iwae has no separate KL term to scale; drop --beta and --warmup-epochs "
        "or use --objective elbo",
    ),
    (
        ["--prior", "normal", "--prior-components", "3"],
        {"prior_options": {"components": 3}},
        "the 'normal' prior takes no option 'components' (`prior_options[components]`)",
        "the 'normal' prior takes no option 'components' (--prior-components)",
    ),
]


@pytest.mark.parametrize(("argv", "options", "python", "command_line"), CONFIG_ERRORS)
def test_config_errors_name_python_parameters_in_python_and_flags_on_the_command_line(
    argv, options, python, command_line, capsys, tmp_path
):
    with pytest.raises(ValueError, match="^" + re.escape(python)):
        TrainConfig(**options)
    code, err = cli(["train", *argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"pyro-vae: error: {command_line}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"dataset": "cifar"},
            "unknown `dataset` 'cifar'; choose one of: fashion-mnist, mnist, or name a .npz file",
        ),
        ({"prior": "cauchy"}, "unknown `prior` 'cauchy'; choose one of: normal"),
        ({"likelihood": "gamma"}, "unknown `likelihood` 'gamma'; choose one of: bernoulli"),
        ({"on_nan": "ignore"}, "unknown `on_nan` 'ignore'; choose one of: stop, rollback"),
        ({"device": "tpu"}, "unknown `device` 'tpu'; choose one of: auto, cpu, cuda"),
    ],
)
def test_unknown_names_list_the_valid_ones(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prior", "cauchy"], "argument --prior: invalid choice: 'cauchy' (choose from"),
        (["--on-nan", "ignore"], "argument --on-nan: invalid choice: 'ignore' (choose from"),
        (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argument_errors_are_one_line_with_status_2(argv, message, capsys, tmp_path):
    code, err = cli(["train", *argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1 and message in err[0] and "--help" in err[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": "10"}, "`epochs` must be an integer, got '10' (str)"),
        ({"latent_dim": 2.5}, "`latent_dim` must be an integer, got 2.5 (float)"),
        ({"batch_size": True}, "`batch_size` must be an integer, got True (bool)"),
        ({"beta": "2"}, "`beta` must be a number, got '2' (str)"),
        ({"hidden_dims": 400}, "`hidden_dims` must be a sequence of integers such as (400,)"),
        ({"hidden_dims": (400, "8")}, "`hidden_dims` must be an integer, got '8' (str)"),
        ({"prior": None}, "`prior` must be a string, got None (NoneType)"),
    ],
)
def test_wrong_types_are_type_errors(options, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        TrainConfig(**options)


def test_reasonable_types_are_converted(tmp_path):
    config = TrainConfig(beta=2, hidden_dims=[64, 32], data_root=tmp_path, epochs=np.int64(3))
    assert config.beta == 2.0 and isinstance(config.beta, float) and type(config.epochs) is int
    assert config.hidden_dims == (64, 32) and config.data_root == str(tmp_path)


def bad_data(tiny_data: ImageData, **changes) -> ImageData:
    return replace(tiny_data, **changes)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda d: {"train": (d.train * 255).to(torch.uint8)},
            TypeError,
            r"train images are torch.uint8; convert them to floats in \[0, 1\]",
        ),
        (
            lambda d: {"train": d.train.reshape(-1, 1, 8, 8)},
            ValueError,
            r"train images have shape \(512, 1, 8, 8\), but image_shape \(1, 8, 8\) needs "
            r"\(N, 64\).*images.flatten\(1\)",
        ),
        (
            lambda d: {"image_shape": (1, 28, 28)},
            ValueError,
            r"train images have shape \(512, 64\), but image_shape \(1, 28, 28\) needs \(N, 784\)",
        ),
        (lambda d: {"val": d.val[:, :60]}, ValueError, r"val images have shape \(128, 60\)"),
        (
            lambda d: {"train_labels": d.train_labels[:10]},
            ValueError,
            "train has 512 images but labels of shape",
        ),
        (
            lambda d: {"train": d.train.index_fill(0, torch.tensor([3, 7]), float("nan"))},
            ValueError,
            "train images contain 128 NaN or infinite values; clean or impute them",
        ),
        (
            lambda d: {"test": d.test.index_fill(1, torch.tensor([0]), float("inf"))},
            ValueError,
            "test images contain 128 NaN or infinite values",
        ),
        (
            lambda d: {"val": d.val[:0], "val_labels": d.val_labels[:0]},
            ValueError,
            "val holds no images; training needs at least one",
        ),
        (
            lambda d: {"train": d.train * 2},
            ValueError,
            r"binarize=True draws Bernoulli\(pixel\) training images, which needs grey levels in "
            r"\[0, 1\], but train ranges over \[2.9.*e-06, 1.79998\]; rescale the data or set "
            "binarize=False",
        ),
        (
            lambda d: {"val": d.val.numpy()},
            TypeError,
            "ImageData.val must be a torch.Tensor, got ndarray",
        ),
    ],
)
def test_malformed_image_data_is_rejected(tiny_data, change, error, message):
    with pytest.raises(error, match=message):
        bad_data(tiny_data, **change(tiny_data))


def test_data_outside_the_likelihood_domain_is_rejected(tmp_path, tiny_data):
    grey = bad_data(tiny_data, train=tiny_data.train * 2, binarize=False)
    expected = (
        r"BernoulliLikelihood expects values in \[0, 1\], but the training images range "
        r"over \[2.9.*e-06, 1.79998\]; rescale the data"
    )
    with pytest.raises(ConfigError, match=expected):
        train(tiny_config(), tmp_path / "run", data=grey, progress=False)


def test_train_arguments_are_checked(tmp_path, tiny_data):
    with pytest.raises(TypeError, match="config must be a TrainConfig, got dict"):
        train({"epochs": 1}, tmp_path / "a", data=tiny_data)
    with pytest.raises(TypeError, match="data must be an ImageData .* got Tensor"):
        train(tiny_config(), tmp_path / "b", data=tiny_data.train)
    with pytest.raises(ConfigError, match="subset selects from a loaded dataset"):
        train(tiny_config(subset=100), tmp_path / "c", data=tiny_data)
    with pytest.raises(ConfigError, match="larger than the 512 training images; lower"):
        train(tiny_config(batch_size=1000), tmp_path / "d", data=tiny_data, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory; choose another `out`"):
        train(tiny_config(), tmp_path / "file", data=tiny_data)


def test_bad_data_paths_and_damaged_files(tmp_path, fake_fashion_dir, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="`data_root` .*file is a file, not a directory"):
        load_images("fashion-mnist", tmp_path / "file", download=False)
    with monkeypatch.context() as patch:  # permissions do not bind root, so pretend
        patch.setattr(data_module.os, "access", lambda path, mode: False)
        with pytest.raises(ConfigError, match="is not readable .*; fix its permissions"):
            load_images("fashion-mnist", fake_fashion_dir, download=False)

    torn = tmp_path / "torn"
    shutil.copytree(fake_fashion_dir, torn)
    gz = torn / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:5000])
    with pytest.raises(DatasetUnavailableError, match="files in .*torn are truncated or corrupted"):
        load_images("fashion-mnist", torn, download=False)
    assert not (torn / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()  # no torn copy

    raw = torn / "FashionMNIST" / "raw"
    with gzip.open(fake_fashion_dir / "train-images-idx3-ubyte.gz") as source:
        (raw / "train-images-idx3-ubyte").write_bytes(source.read()[:100_000])
    with pytest.raises(DatasetUnavailableError, match=f"files in {raw} are truncated .* delete"):
        load_images("fashion-mnist", torn, download=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subset", "5000"], "--subset must be between 1 and 100, got 5000"),
        (["--batch-size", "500"], "batch-size 500 is larger than the 100 training images"),
        (["--resume"], "--resume was given but .* holds no checkpoint; drop --resume to start"),
    ],
)
def test_cli_errors_that_need_the_data(argv, message, capsys, tmp_path, shared_fashion_dir):
    argv = ["train", "--data-root", str(shared_fashion_dir), "--out", str(tmp_path / "r"), *argv]
    code, err = cli(argv, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("pyro-vae: error: ")
    assert re.search(message, err[0])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: VAE(784, -3), "`latent_dim` must be positive, got -3"),
        (lambda: VAE(0, 3), "`data_dim` must be positive, got 0"),
        (
            lambda: VAE(784, 3, hidden_dims=(0,)),
            r"`hidden_dims` widths must be positive, got \[0\]",
        ),
    ],
)
def test_the_python_api_checks_what_the_options_check(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_load_images_takes_binarize_as_a_boolean_only():
    with pytest.raises(ConfigTypeError, match="`binarize` must be True or False, got 'no'"):
        load_images("fashion-mnist", binarize="no")


def test_the_estimator_refuses_data_outside_the_likelihoods_support():
    vae = VAE(16, 2, hidden_dims=(8,))
    grey = torch.rand(5, 16)
    estimate_log_likelihood(vae.model, vae.guide, grey, num_samples=4)  # grey: probabilities
    rng = torch.get_rng_state()
    with pytest.raises(
        ConfigError,
        match=r"observed values of site 'x' range over \[0, 255\], outside the support "
        r"\[0, 1\] of its IndependentBernoulli; scale the data into it",
    ):
        estimate_log_likelihood(vae.model, vae.guide, torch.tensor([[0.0] * 15 + [255.0]]))
    assert torch.equal(torch.get_rng_state(), rng)  # the check draws under its own seed


def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated(tiny_data, tmp_path):
    config = TrainConfig(latent_dim=2_000_000_000, hidden_dims=(8,))
    with pytest.raises(
        ConfigError, match=r"training needs about [\d,.]+ GiB .* lower `latent_dim`"
    ):
        train(config, tmp_path / "run", data=tiny_data, progress=False)


def test_running_out_of_memory_in_training_names_the_options_to_lower(
    tiny_data, tmp_path, faulty_objective
):
    def exhausted(call, loss):
        if call == 12:
            raise torch.OutOfMemoryError("CUDA out of memory")

    faulty_objective(exhausted)
    config = TrainConfig(hidden_dims=(8,), latent_dim=2, batch_size=64, epochs=3)
    with pytest.raises(
        ConfigError,
        match=r"ran out of memory training with `batch_size` 64 and `particles` 1; lower them "
        r"\(or the model's size\); the checkpoint after epoch 1 is kept",
    ):
        train(config, tmp_path / "run", data=tiny_data, progress=False)
