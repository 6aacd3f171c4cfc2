"""``pyro-vae encode``: the posterior q(z|x) of every image of a split, as a .npz file."""

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, load_images, load_run
from pyro_vae.analysis.encoding import encode_run
from pyro_vae.cli import main

OPTIONS = [
    "--hidden-dim",
    "64",
    "--latent-dim",
    "4",
    "--batch-size",
    "20",
    "--epochs",
    "8",
    "--lr",
    "3e-3",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, learnable_fashion_dir):
    """A VAE trained on the fake data's 10 blocky prototypes."""
    run = tmp_path_factory.mktemp("encode") / "run"
    assert (
        main(["train", *OPTIONS, "--data-root", str(learnable_fashion_dir), "--out", str(run)]) == 0
    )
    return run


def test_codes_are_the_encoders_and_separate_the_classes(tmp_path, trained, learnable_fashion_dir):
    assert (
        main(
            [
                "encode",
                "--run",
                str(trained),
                "--split",
                "train",
                "--out",
                str(tmp_path / "train.npz"),
            ]
        )
        == 0
    )
    assert main(["encode", "--run", str(trained), "--out", str(tmp_path / "test.npz")]) == 0
    train, test = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    data = load_images("fashion-mnist", learnable_fashion_dir, download=False)
    assert train["loc"].shape == (100, 4) and test["loc"].shape == test["scale"].shape == (50, 4)
    assert (test["scale"] > 0).all() and test["labels"].tolist() == data.test_labels.tolist()
    assert tuple(test["class_names"]) == data.class_names
    loc, scale = load_run(trained).encode(data.test)  # the binary test images the run is scored on
    assert np.allclose(test["loc"], loc.numpy(), atol=1e-6)
    assert np.allclose(test["scale"], scale.numpy(), atol=1e-6)
    # a representation: test codes are nearest to their own class's mean training code
    means = np.stack([train["loc"][train["labels"] == c].mean(0) for c in range(10)])
    nearest = ((test["loc"][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == test["labels"]).mean() > 0.6  # chance: 0.1


def test_a_conditional_run_encodes_with_its_labels(tmp_path, learnable_fashion_dir):
    run = tmp_path / "cvae"
    assert (
        main(
            [
                "train",
                *OPTIONS,
                "--model",
                "cvae",
                "--epochs",
                "1",
                "--data-root",
                str(learnable_fashion_dir),
                "--out",
                str(run),
            ]
        )
        == 0
    )
    path = encode_run(run, tmp_path / "codes.npz", split="val", device="cpu")
    data = load_images("fashion-mnist", learnable_fashion_dir, download=False)
    codes = np.load(path)
    vae = load_run(run)
    loc, _ = vae.encode(*vae.batch_inputs(data.val, data.val_labels))
    assert np.allclose(codes["loc"], loc.numpy(), atol=1e-6)
    assert not torch.allclose(
        loc, vae.encode(*vae.batch_inputs(data.val, data.val_labels.roll(1)))[0]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": "dev"}, "unknown split 'dev'; choose one of: train, val, test"),
        ({"batch_size": 0}, "`batch_size` must be positive, got 0"),
        ({"path": "codes.csv"}, "cannot write latent codes as 'codes.csv'; use a .npz file name"),
    ],
)
def test_bad_arguments_are_named(tmp_path, trained, options, message):
    path = tmp_path / options.pop("path", "codes.npz")
    with pytest.raises(ConfigError, match=message):
        encode_run(trained, path, **options)
    assert not path.exists()
