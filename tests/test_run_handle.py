"""The Run handle: a run directory's configuration, model, data, metrics and evaluations."""

import pytest
import torch
from conftest import write_tiny_image_file
from test_reliability import quiet_train
from test_training import tiny_config

from pyro_vae import ConfigError, Run, load_run, read_config, read_metrics
from pyro_vae.analysis.evaluation import evaluate_run


@pytest.fixture
def run_dir(tmp_path):
    write_tiny_image_file(tmp_path / "tiny.npz")
    quiet_train(
        tiny_config(dataset=str(tmp_path / "tiny.npz"), epochs=3, patience=5), tmp_path / "run"
    )
    return tmp_path / "run"


def test_a_run_gives_its_config_model_data_metrics_and_evaluations(run_dir):
    run = Run(run_dir)
    assert run.config == read_config(run_dir)
    assert run.metrics == read_metrics(run_dir)
    assert run.checkpoint == "best"  # trained with early stopping
    assert run.model is run.model and not run.model.training  # loaded once, for evaluation
    assert run.state["epoch"] == max(run.metrics, key=lambda row: row["val_elbo"])["epoch"]
    assert run.data.image_shape == (1, 8, 8) and run.data.test.shape[0] == 128
    assert run.data is run.data
    reference = load_run(run_dir)
    for name, value in reference.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name

    assert run.evaluation() is None
    written = evaluate_run(
        run_dir, num_samples=10, subset=32, device="cpu", progress=False, log=lambda line: None
    )
    assert run.evaluation() == written
    assert Run(run_dir, checkpoint="last").state["epoch"] == 3


def test_a_run_refuses_an_unknown_checkpoint_name(run_dir):
    with pytest.raises(ConfigError, match="unknown checkpoint 'first'; choose one of: last, best"):
        Run(run_dir, checkpoint="first")
