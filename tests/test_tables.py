"""Tables: reading, column kinds, coding, the mixed likelihood with missing cells, and the
commands on a table's run (train, evaluate, impute, sample, plot)."""

import json
import math

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import table_rows, tiny_schema
from torch import nn

from pyro_vae import (
    VAE,
    CheckpointError,
    ConfigError,
    DatasetUnavailableError,
    TrainConfig,
    train,
)
from pyro_vae.cli import main
from pyro_vae.components.likelihoods import MixedLikelihood
from pyro_vae.data.tables import (
    Column,
    TableSchema,
    infer_schema,
    load_table,
    read_table,
    split_rows,
)
from pyro_vae.inference.estimators import estimate_log_likelihood
from pyro_vae.inference.prediction import posterior_predictive_mean


def mixed_frame(num: int = 300, seed: int = 0, missing: float = 0.1) -> pd.DataFrame:
    """A table whose columns depend on one hidden factor: continuous, binary text,
    categorical text, counts and an identifier, with missing cells."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=num)
    frame = pd.DataFrame(
        {
            "age": (40 + 10 * factor + rng.normal(0, 2, num)).round(1),
            "income": 3 * factor + rng.normal(0, 1, num),
            "smoker": np.where(factor + rng.normal(0, 0.5, num) > 0, "yes", "no"),
            "colour": np.array(["red", "green", "blue"])[np.digitize(factor, [-0.5, 0.5])],
            "visits": rng.poisson(np.exp(1 + 0.5 * factor)),
            "id": [f"row{i}" for i in range(num)],
        }
    )
    for name in ("age", "colour", "visits"):
        frame.loc[rng.random(num) < missing, name] = np.nan
    return frame


def test_kinds_are_inferred_and_can_be_overridden():
    frame = mixed_frame()
    schema = infer_schema(frame, np.arange(200), {"id": "ignore", "visits": "continuous"})
    kinds = {column.name: column.kind for column in schema.columns}
    assert kinds == {
        "age": "continuous",
        "income": "continuous",
        "smoker": "binary",
        "colour": "categorical",
        "visits": "continuous",
    }
    assert infer_schema(frame.drop(columns="id"), np.arange(200)).columns[4].kind == "count"
    age = schema.columns[0]  # standardized with the training rows alone
    assert age.mean == pytest.approx(frame["age"].iloc[:200].mean())
    assert age.std == pytest.approx(frame["age"].iloc[:200].std(ddof=0))
    assert schema.columns[3].values == ("blue", "green", "red")
    assert schema.data_dim == 1 + 1 + 1 + 3 + 1


def test_rows_round_trip_through_their_coding_and_the_schema_through_json():
    frame = mixed_frame().drop(columns="id")
    schema = infer_schema(frame, np.arange(200))
    vectors = schema.encode(frame)
    assert vectors.dtype == np.float32 and vectors.shape == (300, schema.data_dim)
    missing_colour = frame["colour"].isna().to_numpy()
    assert np.isnan(vectors[missing_colour, 3:6]).all()
    assert (vectors[~missing_colour, 3:6].sum(1) == 1).all()
    decoded = schema.decode(torch.from_numpy(vectors))
    for name in ("smoker", "colour"):
        assert decoded[name].tolist() == frame[name].where(frame[name].notna(), None).tolist()
    np.testing.assert_allclose(decoded["age"], frame["age"], rtol=1e-5)
    assert decoded["visits"].tolist() == frame["visits"].astype("Int64").tolist()
    again = TableSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema


@pytest.mark.parametrize(
    ("text", "kinds", "message"),
    [
        ("a,b\n1.5,2\n3.5,4,5\n", None, "not a readable table .*same number"),
        ("a,b\n" + "".join(f"{i}.5,x\n" for i in range(12)), None, "column 'b' is constant"),
        ("a,b\n" + "".join(f"{i}.5,\n" for i in range(12)), None, "column 'b' has no values"),
        ("a,b\n1.5,2\n2.5,3\n3.5,4\n", {"c": "count"}, "no column 'c'"),
        ("a,b\n1.5,2\n2.5,3\n3.5,4\n", {"a": "number"}, "kind 'number'; choose one of"),
    ],
)
def test_a_bad_table_gets_one_line_naming_the_column(tmp_path, text, kinds, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises((ConfigError, DatasetUnavailableError), match=message) as error:
        load_table(path, columns=kinds)
    assert "\n" not in str(error.value)


def test_text_with_too_many_values_and_text_in_a_numeric_column_are_named(tmp_path):
    frame = pd.DataFrame({"x": np.arange(120.0) / 7, "name": [f"n{i}" for i in range(120)]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="column 'name' holds text with 120 distinct"):
        load_table(tmp_path / "t.csv")
    data = load_table(tmp_path / "t.csv", columns={"name": "ignore"})
    frame["x"] = frame["x"].astype(object)
    frame.loc[3, "x"] = "oops"
    frame.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ConfigError, match="column 'x' is numeric but holds the text 'oops'"):
        load_table(tmp_path / "other.csv", schema=data.schema)


def test_a_category_not_seen_in_training_is_named(tmp_path):
    frame = mixed_frame().drop(columns="id")
    frame.to_csv(tmp_path / "t.csv", index=False)
    schema = load_table(tmp_path / "t.csv").schema
    frame.loc[5, "colour"] = "purple"
    frame.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(ConfigError, match="column 'colour' has the value 'purple'"):
        load_table(tmp_path / "new.csv", schema=schema)


def test_csv_parquet_npz_and_h5ad_read_the_same_rows(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(3, size=(60, 5)).astype(np.float32)
    frame = pd.DataFrame(counts, columns=[f"g{i}" for i in range(5)])
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    anndata.AnnData(X=counts, var=pd.DataFrame(index=frame.columns)).write_h5ad(tmp_path / "t.h5ad")
    read = [read_table(tmp_path / f"t.{suffix}")[0] for suffix in ("csv", "parquet", "h5ad")]
    for other in read[1:]:
        np.testing.assert_array_equal(other.to_numpy(float), read[0].to_numpy(float))
    np.savez(
        tmp_path / "t.npz",
        train=counts[:48],
        test=counts[48:],
        columns=np.array(frame.columns, dtype=str),
    )
    data = load_table(tmp_path / "t.npz")
    assert data.test.shape == (12, 5)  # the file's own test rows
    torch.testing.assert_close(data.test, torch.from_numpy(counts[48:]))
    assert [column.kind for column in data.schema.columns] == ["count"] * 5


def test_rows_are_split_once_with_a_fixed_seed():
    rows = split_rows(100)
    assert [len(rows[s]) for s in ("train", "val", "test")] == [67, 13, 20]
    assert sorted(np.concatenate(list(rows.values()))) == list(range(100))
    assert all((split_rows(100)[s] == rows[s]).all() for s in rows)
    given = split_rows(100, num_test=30)
    assert (given["test"] == np.arange(70, 100)).all()


def _likelihood_and_params(seed: int = 0) -> tuple[MixedLikelihood, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    likelihood = MixedLikelihood(tiny_schema(8))
    params = torch.randn(5, 8, generator=generator)
    return likelihood, params, table_rows(likelihood.table, 5, generator)


def test_a_missing_cell_is_left_out_of_the_log_likelihood():
    """log p(x_obs | z) = log p(x | z) - log p(x_c | z) for a hidden cell c: the missing
    cell is marginalized out exactly (the columns are independent given z)."""
    likelihood, params, rows = _likelihood_and_params()
    full = likelihood(params).log_prob(rows)
    for column, start in zip(likelihood.table.columns, likelihood.table.offsets, strict=True):
        hidden = rows.clone()
        hidden[:, start : start + column.width] = float("nan")
        alone = torch.full_like(rows, float("nan"))
        alone[:, start : start + column.width] = rows[:, start : start + column.width]
        torch.testing.assert_close(
            likelihood(params).log_prob(hidden), full - likelihood(params).log_prob(alone)
        )
    nothing = likelihood(params).log_prob(torch.full_like(rows, float("nan")))
    assert (nothing == 0).all()


def test_missing_cells_give_finite_gradients():
    likelihood, params, _ = _likelihood_and_params()
    rows = table_rows(likelihood.table, 5, torch.Generator().manual_seed(1), missing=0.4)
    params.requires_grad_(True)
    likelihood(params).log_prob(rows).sum().backward()
    assert torch.isfinite(params.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in likelihood.parameters())


def test_the_category_probabilities_of_a_column_sum_to_one():
    likelihood, params, _ = _likelihood_and_params()
    total = 0
    for category in range(3):
        row = torch.full((5, 8), float("nan"))
        row[:, :3] = torch.nn.functional.one_hot(torch.tensor(category), 3)
        total = total + likelihood(params).log_prob(row).exp()
    torch.testing.assert_close(total, torch.ones(5))


def test_rows_outside_the_table_are_rejected_with_the_fix():
    likelihood, _, rows = _likelihood_and_params()
    likelihood.validate(rows)
    for bad in (rows[:, :5], rows.index_fill(1, torch.tensor([3]), 0.5)):
        with pytest.raises(ConfigError, match="not rows of the table .* schema="):
            likelihood.validate(bad)


class _Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias


class _Prior(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(*x.shape[:-1], 2), torch.ones(*x.shape[:-1], 2)


def test_the_posterior_predictive_mean_is_the_gaussian_conditional_mean():
    """Linear-Gaussian rows x = W z + b + e: E[x_m | x_o] = b_m + S_mo S_oo^-1 (x_o - b_o),
    S = W W^T + s^2 I; reached by importance sampling from a guide that ignores x (the
    prior), so only the importance weights condition on the observed cells."""
    torch.manual_seed(0)
    schema = TableSchema(tuple(Column(f"x{i}", "continuous") for i in range(4)))
    weight, bias = torch.randn(4, 2), torch.randn(4)
    vae = VAE(
        4, 2, encoder=_Prior(), decoder=_Linear(weight, bias), likelihood="mixed", table=schema
    )
    with torch.no_grad():
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(0.5 - 1e-3)))  # s = 0.5
    rows = torch.randn(3, 4)
    rows[:, 1] = float("nan")
    rows[2, 3] = float("nan")
    predicted = posterior_predictive_mean(vae.model, vae.guide, rows, num_particles=200_000)
    cov = weight @ weight.T + 0.25 * torch.eye(4)
    for row, guess in zip(rows, predicted, strict=True):
        o, m = ~torch.isnan(row), torch.isnan(row)
        solved = torch.linalg.solve(cov[o][:, o], row[o] - bias[o])
        torch.testing.assert_close(guess[m], bias[m] + cov[m][:, o] @ solved, atol=0.03, rtol=0)
        # an observed cell's E[W z + b | x_o]: the row without its noise
        signal = (weight @ weight.T)[o][:, o]
        torch.testing.assert_close(guess[o], bias[o] + signal @ solved, atol=0.03, rtol=0)


def test_the_log_likelihood_of_incomplete_rows_is_the_gaussian_marginal():
    """With cells missing, the importance-weighted estimate is log N(x_o; b_o, S_oo) of the
    observed cells alone, for linear-Gaussian rows."""
    torch.manual_seed(0)
    schema = TableSchema(tuple(Column(f"x{i}", "continuous") for i in range(4)))
    weight, bias = torch.randn(4, 2), torch.randn(4)
    decoder = _Linear(weight, bias)
    vae = VAE(4, 2, encoder=_Prior(), decoder=decoder, likelihood="mixed", table=schema)
    rows = torch.randn(3, 4)
    rows[0, 1] = rows[1, :2] = rows[2, 3] = float("nan")
    estimates = estimate_log_likelihood(
        vae.model, vae.guide, rows, num_samples=50_000, max_batch=50_000, progress=False
    ).log_likelihood
    scale = float(torch.nn.functional.softplus(vae.likelihood.raw_scale[0].detach()) + 1e-3)
    cov = weight @ weight.T + scale**2 * torch.eye(4)
    for row, estimate in zip(rows, estimates, strict=True):
        o = ~torch.isnan(row)
        exact = torch.distributions.MultivariateNormal(bias[o], cov[o][:, o]).log_prob(row[o])
        assert float(estimate) == pytest.approx(float(exact), abs=0.02)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run trained from the command line on a table with every kind of column and
    missing cells."""
    root = tmp_path_factory.mktemp("table")
    mixed_frame(num=600).to_csv(root / "table.csv", index=False)
    (root / "kinds.json").write_text(json.dumps({"id": "ignore"}))
    command = ["train", "--dataset", str(root / "table.csv"), "--columns", str(root / "kinds.json")]
    command += ["--out", str(root / "run"), "--epochs", "40", "--batch-size", "64"]
    command += ["--latent-dim", "2", "--hidden-dim", "32", "--lr", "3e-3"]
    assert main(command) == 0
    return root


def test_a_table_trains_and_evaluates_a_finite_log_likelihood_per_row(table_run, capsys):
    config = json.loads((table_run / "run" / "config.json").read_text())
    assert config["likelihood"] == "mixed" and config["table"]["columns"][0]["name"] == "age"
    run = str(table_run / "run")
    assert main(["evaluate", "--run", run, "--num-samples", "200"]) == 0
    per_row = pd.read_csv(table_run / "run" / "eval_rows.csv")
    assert len(per_row) == 120 and np.isfinite(per_row["log_likelihood"]).all()
    test_rows = split_rows(600)["test"]
    assert per_row["row"].tolist() == test_rows.tolist()
    shifted = mixed_frame(num=600, seed=1)
    shifted["income"] += 6
    shifted.to_csv(table_run / "shifted.csv", index=False)
    command = ["evaluate", "--run", run, "--num-samples", "200"]
    assert main([*command, "--dataset", str(table_run / "shifted.csv")]) == 0
    assert float(capsys.readouterr().out.split("AUROC ")[1].split(":")[0]) > 0.9


def test_impute_fills_every_missing_cell_and_keeps_the_observed_ones(table_run):
    out = table_run / "completed.csv"
    assert main(["impute", "--run", str(table_run / "run"), "--data", str(table_run / "table.csv"),
                 "--out", str(out), "--num-samples", "200"]) == 0  # fmt: skip
    given, completed = pd.read_csv(table_run / "table.csv"), pd.read_csv(out)
    assert completed.notna().all().all() and list(completed.columns) == list(given.columns)
    observed = given.notna()
    pd.testing.assert_frame_equal(completed.where(observed), given.where(observed))
    assert set(completed["colour"]) <= {"red", "green", "blue"}
    assert (completed["visits"] == completed["visits"].round()).all()


def test_impute_beats_the_column_means_on_hidden_cells(table_run):
    """Cells hidden on purpose: the model's guesses, which use the row's other cells, beat
    the column mean (continuous) and the most frequent value (categorical)."""
    truth = mixed_frame(num=600, missing=0.0, seed=2).drop(columns="id")
    hidden = truth.copy()
    rng = np.random.default_rng(3)
    for name in ("income", "colour"):
        hidden.loc[rng.random(600) < 0.3, name] = np.nan
    hidden.to_csv(table_run / "hidden.csv", index=False)
    out = table_run / "guessed.csv"
    assert main(["impute", "--run", str(table_run / "run"), "--data", str(table_run / "hidden.csv"),
                 "--out", str(out), "--num-samples", "200"]) == 0  # fmt: skip
    guessed = pd.read_csv(out)
    income = hidden["income"].isna()
    rmse = np.sqrt(((guessed["income"] - truth["income"])[income] ** 2).mean())
    rmse_mean = np.sqrt(((hidden["income"].mean() - truth["income"])[income] ** 2).mean())
    assert rmse < 0.6 * rmse_mean
    colour = hidden["colour"].isna()
    accuracy = (guessed["colour"] == truth["colour"])[colour].mean()
    accuracy_mode = (hidden["colour"].mode()[0] == truth["colour"])[colour].mean()
    assert accuracy > accuracy_mode + 0.2


def test_sample_writes_rows_of_the_table_and_plot_its_figures(table_run):
    run = str(table_run / "run")
    assert main(["sample", "--run", run, "--out", str(table_run / "rows.csv"), "--num", "500"]) == 0
    rows = pd.read_csv(table_run / "rows.csv")
    assert list(rows.columns) == ["age", "income", "smoker", "colour", "visits"]
    assert len(rows) == 500 and rows.notna().all().all()
    real = mixed_frame(num=600)
    assert abs(rows["age"].mean() - real["age"].mean()) < 0.5 * real["age"].std()
    assert set(rows["smoker"]) == {"yes", "no"}
    assert main(["plot", "--run", run]) == 0
    written = sorted(path.name for path in (table_run / "run" / "figures").iterdir())
    assert written == ["columns.png", "latent.png", "marginals.png", "training.png"]


def test_a_label_column_colours_the_rows_and_conditions_a_cvae(tmp_path):
    mixed_frame(num=200).to_csv(tmp_path / "gaps.csv", index=False)
    with pytest.raises(ConfigError, match="label column 'colour' is missing .* in row 2"):
        load_table(tmp_path / "gaps.csv", label_column="colour", columns={"id": "ignore"})
    frame = mixed_frame(num=200, missing=0.0).drop(columns="id")
    frame.to_csv(tmp_path / "t.csv", index=False)
    run = str(tmp_path / "run")
    command = ["train", "--dataset", str(tmp_path / "t.csv"), "--label-column", "colour"]
    command += ["--model", "cvae", "--epochs", "2", "--latent-dim", "2", "--out", run]
    assert main(command) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_classes"] == 3  # blue, green, red
    assert "colour" not in [column["name"] for column in config["table"]["columns"]]
    rows = tmp_path / "rows.csv"
    assert main(["sample", "--run", run, "--out", str(rows), "--num", "7", "--label", "2"]) == 0
    assert pd.read_csv(rows)["colour"].tolist() == ["red"] * 7
    assert main(["encode", "--run", run, "--out", str(tmp_path / "z.npz")]) == 0
    codes = np.load(tmp_path / "z.npz")
    assert codes["rows"].tolist() == split_rows(200)["test"].tolist()
    assert main(["plot", "--run", run]) == 0
    written = sorted(path.name for path in (tmp_path / "run" / "figures").iterdir())
    assert written == ["columns.png", "latent.png", "marginals.png", "training.png"]


def test_resuming_on_a_changed_table_is_refused(table_run):
    path = table_run / "table.csv"
    kept = path.read_text()
    changed = mixed_frame(num=600)
    changed["age"] += 1  # other statistics: another standardization
    changed.to_csv(path, index=False)
    config = json.loads((table_run / "run" / "config.json").read_text())
    config = TrainConfig.from_dict({**config, "epochs": 41, "table": None})
    try:
        with pytest.raises(CheckpointError, match="table's columns, their kinds or statistics"):
            train(config, table_run / "run", resume=True, progress=False, log=lambda _: None)
    finally:
        path.write_text(kept)


def test_table_options_need_a_table_and_images_need_an_image_model(tmp_path):
    with pytest.raises(ConfigError, match="`columns` and `label_column` describe a table"):
        TrainConfig(label_column="kind")
    mixed_frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="need images"):
        TrainConfig(dataset=str(tmp_path / "t.csv"), arch="conv")
    with pytest.raises(ConfigError, match="models the rows of a table"):
        TrainConfig(likelihood="mixed").build_vae()
