import pytest
import torch

from pyro_vae import DatasetUnavailableError, load_images
from pyro_vae import data as data_module


@pytest.fixture
def no_system_copy(monkeypatch):
    """Pretend the Debian copy is not installed."""
    spec = data_module.DATASETS["fashion-mnist"]
    monkeypatch.setitem(
        data_module.DATASETS, "fashion-mnist",
        data_module.DatasetSpec(spec.torchvision_class, (), spec.class_names, spec.install_hint),
    )  # fmt: skip


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


def test_subset_and_grey_levels(fake_fashion_dir):
    data = load_images("fashion-mnist", fake_fashion_dir, binarize=False, subset=30, download=False)
    assert data.train.shape == (30, 784) and len(data.val.unique()) > 2
    assert torch.equal(data.training_images(), data.train)


def test_missing_dataset_says_how_to_get_it(tmp_path, no_system_copy):
    with pytest.raises(DatasetUnavailableError) as info:
        load_images("fashion-mnist", data_root=tmp_path / "empty", download=False)
    message = str(info.value)
    assert "fashion-mnist was not found" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message


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
