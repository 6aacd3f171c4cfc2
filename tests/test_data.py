import json

import numpy as np
import pytest
import torch
from conftest import prototype_images

from pyro_vae import ConfigError, DatasetUnavailableError, load_images, read_config, read_metrics
from pyro_vae.cli import main
from pyro_vae.data import images as data_module


@pytest.fixture
def no_system_copy(monkeypatch):
    """Pretend the Debian copy is not installed."""
    spec = data_module.DATASETS["fashion-mnist"]
    monkeypatch.setitem(
        data_module.DATASETS,
        "fashion-mnist",
        data_module.DatasetSpec(spec.torchvision_class, (), spec.class_names, spec.install_hint),
    )


def test_loads_a_local_gzipped_copy_with_the_50k_10k_10k_protocol(tmp_path, fake_fashion_dir):
    data = load_images("fashion-mnist", data_root=fake_fashion_dir, download=False)
    # 10_100 training images: the last 10k are validation, 100 remain for training.
    assert data.train.shape == (100, 784) and data.val.shape == (10_000, 784)
    assert data.test.shape == (50, 784) and data.image_shape == (1, 28, 28)
    assert data.train.dtype == torch.float32 and 0 <= data.train.min() and data.train.max() <= 1
    # val/test binarized once, reproducibly; training images stay grey for dynamic binarization
    assert set(data.val.unique().tolist()) == {0.0, 1.0}
    again = load_images("fashion-mnist", data_root=fake_fashion_dir, download=False)
    assert torch.equal(data.test, again.test)
    assert len(data.train.unique()) > 2
    first, second = data.training_images(), data.training_images()
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert data.train_labels[:10].tolist() == list(range(10))


def test_a_binary_draw_follows_the_probabilities_and_torchs_rng_state():
    probabilities = torch.linspace(0, 1, 256).repeat(2_000, 1)  # 512,000 draws: two pieces
    torch.manual_seed(7)
    drawn = data_module.draw_binary(probabilities)
    torch.manual_seed(7)
    assert torch.equal(drawn, data_module.draw_binary(probabilities))  # exact resume needs it
    assert not torch.equal(drawn, data_module.draw_binary(probabilities))  # the RNG advanced
    assert drawn.shape == probabilities.shape and drawn.dtype == torch.float32
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert drawn[:, 0].sum() == 0 and drawn[:, -1].sum() == 2_000  # p = 0 and p = 1 exactly
    # each column's frequency within 4.5 standard errors of its probability
    frequency, p = drawn.mean(dim=0), probabilities[0]
    assert ((frequency - p).abs() <= 4.5 * (p * (1 - p) / 2_000).sqrt() + 1e-6).all()
    # columns are independent: neighbours at p = 1/2 agree half of the time
    middle = drawn[:, 127:129]
    assert abs((middle[:, 0] == middle[:, 1]).float().mean().item() - 0.5) < 0.04


def test_subset_and_grey_levels(fake_fashion_dir):
    data = load_images("fashion-mnist", fake_fashion_dir, binarize=False, subset=30, download=False)
    assert data.train.shape == (30, 784) and len(data.val.unique()) > 2
    assert torch.equal(data.training_images(), data.train)


def test_missing_dataset_says_how_to_get_it(tmp_path, no_system_copy):
    with pytest.raises(DatasetUnavailableError) as info:
        load_images("fashion-mnist", data_root=tmp_path / "empty", download=False)
    message = str(info.value)
    assert "fashion-mnist was not found" in message
    assert "apt-get install dataset-fashion-mnist" in message and "`data_root`" in message


def test_failed_download_is_reported_clearly(tmp_path, monkeypatch, no_system_copy):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network is unreachable")

    monkeypatch.setattr(data_module.datasets.FashionMNIST, "download", offline)
    expected = "the download failed .*network is unreachable"
    with pytest.raises(DatasetUnavailableError, match=expected):
        load_images("fashion-mnist", data_root=tmp_path / "empty")


def test_unknown_dataset_lists_the_known_ones():
    expected = "unknown dataset 'cifar'; choose one of: fashion-mnist, mnist"
    with pytest.raises(ValueError, match=expected):
        load_images("cifar")


# ------------------------------------------------------------- the user's own image files


def write_images(path, num_train: int = 60, num_test: int = 12, **arrays) -> str:
    """An image file of ``prototype_images`` as uint8 (N, 8, 8), with labels, plus
    ``arrays`` (replacing or adding; None removes one)."""
    images, labels = prototype_images(num_train + num_test)
    grey = (images * 255).round().to(torch.uint8).reshape(-1, 8, 8).numpy()
    stored = {
        "train": grey[:num_train],
        "test": grey[num_train:],
        "train_labels": labels[:num_train].numpy(),
        "test_labels": labels[num_train:].numpy(),
    }
    stored.update(arrays)
    np.savez(path, **{name: value for name, value in stored.items() if value is not None})
    return str(path)


def test_an_image_file_loads_with_a_sixth_held_out_for_validation(tmp_path):
    path = write_images(tmp_path / "mine.npz")
    data = load_images(path)
    assert data.train.shape == (50, 64) and data.val.shape == (10, 64)
    assert data.test.shape == (12, 64) and data.image_shape == (1, 8, 8)
    assert data.class_names == ("0", "1", "2", "3")  # the labels' numbers
    stored = np.load(path)
    assert torch.equal(data.train, torch.from_numpy(stored["train"][:50]).flatten(1) / 255)
    assert data.train_labels.tolist() == stored["train_labels"][:50].tolist()
    assert set(data.val.unique().tolist()) == {0.0, 1.0}  # binarized once, as for MNIST
    assert torch.equal(load_images(path).test, data.test)
    grey = load_images(path, binarize=False)
    assert torch.equal(grey.test, torch.from_numpy(stored["test"]).flatten(1) / 255)


def test_colour_floats_without_labels_and_with_class_names(tmp_path):
    generator = torch.Generator().manual_seed(0)
    colour = torch.rand(30, 3, 4, 5, generator=generator).numpy()
    path = write_images(
        tmp_path / "colour.npz",
        train=colour,
        test=colour[:6],
        train_labels=None,
        test_labels=None,
        class_names=np.array(["thing"]),
    )
    data = load_images(path, binarize=False)
    assert data.image_shape == (3, 4, 5) and data.train.shape == (25, 60)
    assert torch.equal(data.train, torch.from_numpy(colour[:25]).flatten(1))
    assert data.class_names == ("thing",) and data.train_labels.unique().tolist() == [0]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"test": None}, r"bad.npz: missing arrays \['test'\]\. An image file"),
        ({"labels": np.zeros(3)}, r"bad.npz: unknown arrays \['labels'\]\. An image file"),
        ({"train": np.zeros((60, 64), np.uint8)}, r"train has shape \(60, 64\), not \(N, H, W\)"),
        (
            {"train": np.zeros((60, 8, 8), np.int32)},
            "train holds int32 values, not uint8 or floats",
        ),
        ({"test": np.zeros((12, 8, 9), np.uint8)}, r"train images are torch.uint8 \(1, 8, 8\) but"),
        ({"train_labels": np.zeros(59, np.int64)}, "train_labels must be 60 integers 0 or more"),
        ({"test_labels": -np.ones(12, np.int64)}, "test_labels must be 12 integers 0 or more"),
        ({"class_names": np.array(["a", "b"])}, "class_names must be at least 4 strings"),
    ],
)
def test_a_bad_image_file_says_what_it_must_hold(tmp_path, arrays, message):
    path = write_images(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetUnavailableError, match=message + ".*write it with numpy.savez"):
        load_images(path)


def test_image_files_that_are_missing_damaged_too_small_or_out_of_range(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="nowhere.npz: no such file"):
        load_images(str(tmp_path / "nowhere.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DatasetUnavailableError, match="text.npz: not a readable .npz file"):
        load_images(str(tmp_path / "text.npz"))
    with pytest.raises(ConfigError, match="has 5 training images: too few .* at least 6"):
        load_images(write_images(tmp_path / "five.npz", num_train=5))
    floats = np.full((60, 8, 8), 2.0, np.float32)
    path = write_images(tmp_path / "wide.npz", train=floats, test=floats[:12])
    with pytest.raises(ConfigError, match=r"training images of .* range over \[2, 2\]; .*none"):
        load_images(path)
    assert load_images(path, binarize=False).train.max() == 2.0


def test_the_cli_trains_evaluates_and_plots_a_run_on_an_image_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the run keeps the file's absolute path
    write_images(tmp_path / "mine.npz", num_train=600, num_test=40)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mine.npz",
                "--hidden-dim",
                "32",
                "--latent-dim",
                "2",
                "--batch-size",
                "25",
                "--epochs",
                "3",
                "--lr",
                "3e-3",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert read_config(run).dataset == str(tmp_path / "mine.npz")
    rows = read_metrics(run)
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 1  # it learns the prototypes
    monkeypatch.chdir("/")
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--num-samples",
                "20",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((run / "eval.json").read_text())["num_examples"] == 40
    assert main(["plot", "--run", str(run), "--device", "cpu"]) == 0
    assert (run / "figures" / "reconstructions.png").is_file()
