"""Tables: rows of continuous, binary, categorical and count columns as device tensors.

A table is read from a ``.csv`` or ``.parquet`` file (pandas), an AnnData ``.h5ad`` file
(counts from the layer ``counts`` if there is one, else ``X``; every gene a count column)
or a ``.npz`` file of 2-D arrays ``train`` and ``test`` (optional ``columns``, the column
names). Each row becomes one vector of :attr:`TableSchema.data_dim` values:

- **continuous** columns standardized, :math:`(x - m) / s`, with the mean and standard
  deviation of the training rows;
- **binary** columns as 0 or 1 (the two values in sorted order);
- **categorical** columns one-hot, one value per category;
- **count** columns as the counts themselves;

and a missing cell (empty, NaN) as NaN in every value of its column, which the
:class:`~pyro_vae.components.likelihoods.tables.MixedLikelihood` leaves out of
:math:`\\log p(x|z)`. Kinds are inferred from the values (:func:`infer_kind`) and may be
set per column (``columns={"age": "continuous", "id": "ignore"}``). The
:class:`TableSchema` holds everything needed to encode more rows the same way and to
decode vectors back into rows; a run keeps it in its configuration.

Rows are split once with a fixed seed, the same on every machine: the last
:data:`TEST_FRACTION` of a random order are the test rows, the last sixth of the rest the
validation rows (a ``.npz`` file gives its own test rows).
"""

import json
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pyro_vae.core.errors import ConfigError, DatasetUnavailableError
from pyro_vae.data.images import ImageData

#: The kinds of column, in the order their values sit in a row's vector.
KINDS = ("continuous", "binary", "categorical", "count")
#: The kind that leaves a column out (identifiers, free text).
IGNORE = "ignore"
#: ``--dataset`` names a table when it ends so (or is a ``.npz`` of 2-D arrays).
TABLE_FILE_SUFFIXES = (".csv", ".parquet", ".h5ad")
#: A text column with more distinct values than this is not taken as categorical.
MAX_CATEGORIES = 50
#: The share of rows held out for testing, and the seed of the order they are drawn in.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Column:
    """One column of a table: its ``kind`` (one of :data:`KINDS`), its ``values`` in code
    order (binary and categorical), and the ``mean`` and ``std`` of its training rows
    (continuous ones are standardized with them; counts scale their likelihood's mean)."""

    name: str
    kind: str
    values: tuple = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        """How many values of a row's vector the column takes."""
        return len(self.values) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class TableSchema:
    """The columns of a table and how they are coded (see the module doc); ``label`` names
    the column whose values are the rows' labels (not modelled), ``label_values`` them."""

    columns: tuple[Column, ...]
    label: str | None = None
    label_values: tuple = ()
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        widths = [column.width for column in self.columns]
        object.__setattr__(self, "offsets", tuple(np.cumsum([0, *widths])[:-1].tolist()))

    @property
    def data_dim(self) -> int:
        return sum(column.width for column in self.columns)

    def indices(self, kind: str) -> list[int]:
        """The positions in a row's vector of the columns of ``kind`` (one per column, the
        first of its one-hot group for a categorical one)."""
        return [o for o, c in zip(self.offsets, self.columns, strict=True) if c.kind == kind]

    def of_kind(self, kind: str) -> list[Column]:
        return [column for column in self.columns if column.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [asdict(column) for column in self.columns],
            "label": self.label,
            "label_values": list(self.label_values),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TableSchema":
        columns = tuple(
            Column(**{**column, "values": tuple(column["values"])}) for column in values["columns"]
        )
        return cls(columns, values["label"], tuple(values["label_values"]))

    def encode(self, frame: pd.DataFrame, what: str = "the table") -> np.ndarray:
        """The rows of ``frame`` as float32 vectors ``(N, data_dim)``, NaN where missing;
        :class:`ConfigError` for a missing column, a value of an unknown category or a
        count that is not a non-negative integer, naming the column."""
        absent = [column.name for column in self.columns if column.name not in frame.columns]
        if absent:
            raise ConfigError(
                f"{what} has no column {absent[0]!r}, which the model was trained on; give a "
                "table with the training table's columns"
            )
        parts = [_encode_column(column, frame[column.name], what) for column in self.columns]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def labels(self, frame: pd.DataFrame, what: str = "the table") -> np.ndarray:
        """The label codes of the rows (all 0 without a label column)."""
        if self.label is None:
            return np.zeros(len(frame), dtype=np.int64)
        if self.label not in frame.columns:
            raise ConfigError(f"{what} has no label column {self.label!r}")
        keys = frame[self.label].map(_key, na_action="ignore")
        codes = keys.map({value: i for i, value in enumerate(self.label_values)})
        if codes.isna().any():
            row = int(np.flatnonzero(codes.isna().to_numpy())[0])
            raise ConfigError(
                f"{what}: the label column {self.label!r} is missing or has an unknown value "
                f"in row {row}; give every row one of its labels"
            )
        return codes.to_numpy(dtype=np.int64)

    def decode(self, vectors: np.ndarray | torch.Tensor) -> pd.DataFrame:
        """Rows from vectors ``(N, data_dim)``: continuous values unstandardized; a binary
        value is the second value where above 0.5; a category the largest of its group;
        counts rounded. Means (probabilities) decode to their most likely values."""
        vectors = np.asarray(torch.as_tensor(vectors).detach().cpu(), dtype=np.float64)
        return pd.DataFrame(
            {
                column.name: _decode_column(column, vectors[:, start : start + column.width])
                for column, start in zip(self.columns, self.offsets, strict=True)
            }
        )


def _key(value: Any) -> Any:
    """A cell's value as a JSON-able key: whole numbers as int, other numbers as float,
    anything else as its text (so 1, 1.0 and "1" from different files match where they
    should)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | float | np.number):
        number = float(value)
        return int(number) if number.is_integer() else number
    return str(value)


def _encode_column(column: Column, cells: pd.Series, what: str) -> np.ndarray:
    missing = cells.isna().to_numpy()
    if column.kind in ("binary", "categorical"):
        codes = cells.map(_key, na_action="ignore").map(
            {value: i for i, value in enumerate(column.values)}
        )
        unknown = codes.isna().to_numpy() & ~missing
        if unknown.any():
            value = cells.to_numpy()[np.flatnonzero(unknown)[0]]
            raise ConfigError(
                f"{what}: column {column.name!r} has the value {value!r}, not among the "
                f"values the model was trained on ({', '.join(map(str, column.values))}); "
                "map it to one of them or leave the cell empty"
            )
        codes = codes.to_numpy(dtype=np.float64)
        if column.kind == "binary":
            return codes[:, None]
        one_hot = np.zeros((len(cells), column.width))
        one_hot[~missing, codes[~missing].astype(np.int64)] = 1
        one_hot[missing] = np.nan
        return one_hot
    numbers = _numbers(column.name, cells, what)
    if column.kind == "count":
        given = numbers[~missing]
        if (given < 0).any() or (given != np.round(given)).any():
            raise ConfigError(
                f"{what}: column {column.name!r} holds counts, but has values that are not "
                "non-negative integers; fix them or declare its kind continuous"
            )
        return numbers[:, None]
    return ((numbers - column.mean) / column.std)[:, None]


def _numbers(name: str, cells: pd.Series, what: str) -> np.ndarray:
    numbers = pd.to_numeric(cells, errors="coerce")
    text = numbers.isna() & cells.notna()
    if text.any():
        value = cells[text].iloc[0]
        raise ConfigError(
            f"{what}: column {name!r} is numeric but holds the text {value!r}; fix the cell, "
            "leave it empty, or declare the column categorical"
        )
    return numbers.to_numpy(dtype=np.float64)


def _decode_column(column: Column, values: np.ndarray) -> pd.Series:
    missing = np.isnan(values).any(axis=1)
    if column.kind == "continuous":
        return pd.Series(values[:, 0] * column.std + column.mean)
    if column.kind == "count":
        return pd.Series(np.round(values[:, 0])).astype("Int64")
    if column.kind == "binary":
        codes = (values[:, 0] > 0.5).astype(np.int64)
    else:
        codes = np.nan_to_num(values).argmax(axis=1)
    decoded = np.asarray(column.values, dtype=object)[codes]
    decoded[missing] = None
    return pd.Series(decoded)


def infer_kind(name: str, cells: pd.Series) -> str:
    """A column's kind from its values: two distinct values, binary; text (or booleans)
    with at most :data:`MAX_CATEGORIES` values, categorical; non-negative whole numbers
    that include 0, count (counts of events start at 0; measurements recorded as whole
    numbers, such as an age or a concentration in mg/l, usually do not); other numbers,
    continuous. A constant or empty column, or text with more values, is a
    :class:`ConfigError` naming it."""
    given = cells.dropna()
    distinct = given.nunique()
    if distinct == 0:
        raise ConfigError(f"column {name!r} has no values; drop it or declare it `ignore`")
    if distinct == 1:
        raise ConfigError(
            f"column {name!r} is constant ({given.iloc[0]!r}); drop it or declare it `ignore`"
        )
    if distinct == 2:
        return "binary"
    if not pd.api.types.is_numeric_dtype(given) or pd.api.types.is_bool_dtype(given):
        if distinct > MAX_CATEGORIES:
            raise ConfigError(
                f"column {name!r} holds text with {distinct} distinct values: neither numbers "
                f"nor categories (at most {MAX_CATEGORIES}); declare it `ignore`, or "
                "`categorical` to keep it"
            )
        return "categorical"
    numbers = given.to_numpy(dtype=np.float64)
    if (numbers >= 0).all() and (numbers == np.round(numbers)).all() and (numbers == 0).any():
        return "count"
    return "continuous"


def _column(name: str, kind: str, cells: pd.Series, training: pd.Series) -> Column:
    if kind in ("binary", "categorical"):
        values = tuple(sorted(set(cells.dropna().map(_key)), key=lambda v: (str(type(v)), v)))
        if kind == "binary" and len(values) != 2:
            raise ConfigError(
                f"column {name!r} is declared binary but has {len(values)} distinct values; "
                "declare it categorical"
            )
        return Column(name, kind, values)
    numbers = _numbers(name, training, "the training rows")
    mean, std = np.nanmean(numbers), np.nanstd(numbers)
    if not np.isfinite(std) or std == 0:
        raise ConfigError(
            f"column {name!r} is constant (or missing) in the training rows; drop it or "
            "declare it `ignore`"
        )
    return Column(name, kind, mean=float(mean), std=float(std))


def read_kinds(columns: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """Column kinds given by the user: a mapping, or a JSON file of one
    (``{"age": "continuous", "id": "ignore"}``), checked."""
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        try:
            columns = json.loads(Path(columns).read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"`columns` {columns}: not a readable JSON file ({error}); write an object "
                'such as {"age": "continuous", "id": "ignore"}'
            ) from error
    if not isinstance(columns, Mapping):
        raise ConfigError('`columns` must map column names to kinds, e.g. {"age": "count"}')
    kinds = (*KINDS, IGNORE)
    for name, kind in columns.items():
        if kind not in kinds:
            raise ConfigError(
                f"`columns` gives column {name!r} the kind {kind!r}; choose one of: "
                f"{', '.join(kinds)}"
            )
    return dict(columns)


def infer_schema(
    frame: pd.DataFrame,
    training_rows: np.ndarray,
    kinds: Mapping[str, str] | None = None,
    label: str | None = None,
) -> TableSchema:
    """The :class:`TableSchema` of ``frame``: kinds inferred, or as ``kinds`` says; values
    of categories from all rows; standardization from ``training_rows`` alone."""
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(frame.columns)) + (
        [label] if label is not None and label not in frame.columns else []
    )
    if unknown:
        raise ConfigError(
            f"the table has no column {unknown[0]!r}; its columns are: "
            f"{', '.join(map(str, frame.columns))}"
        )
    columns = []
    for name in frame.columns:
        if name == label or kinds.get(name) == IGNORE:
            continue
        cells = frame[name]
        kind = kinds.get(name) or infer_kind(str(name), cells)
        columns.append(_column(str(name), kind, cells, cells.iloc[training_rows]))
    if not columns:
        raise ConfigError("the table has no columns left to model; keep at least one")
    label_values = ()
    if label is not None:
        label_values = tuple(sorted(set(frame[label].dropna().map(_key)), key=str))
    return TableSchema(tuple(columns), label, label_values)


def is_table_file(name: str) -> bool:
    """Whether a dataset name is a table file (a ``.npz`` one holds 2-D arrays)."""
    if name.endswith(TABLE_FILE_SUFFIXES):
        return True
    return name.endswith(".npz") and _npz_array_ndim(Path(name).expanduser(), "train") == 2


def _npz_array_ndim(path: Path, array: str) -> int | None:
    """The number of dimensions of one array of a ``.npz`` file, from its header alone."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{array}.npy") as stored:
            major, _ = np.lib.format.read_magic(stored)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape = read_header(stored)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return len(shape)


def read_table(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows of a table file, and its own test rows where it has them (``.npz``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetUnavailableError(f"{path}: no such table file")
    try:
        if path.suffix == ".npz":
            return _read_npz_table(path)
        if path.suffix == ".parquet":
            return _optional("pyarrow", "parquet").read_table(path).to_pandas(), None
        if path.suffix == ".h5ad":
            return _read_h5ad(path), None
        return pd.read_csv(path, skipinitialspace=True), None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        problem = str(error).strip().splitlines()[-1]
        raise DatasetUnavailableError(
            f"{path}: not a readable table ({problem}); give one header line and the same "
            "number of comma-separated cells in every row"
        ) from error


def _optional(module: str, what: str) -> Any:
    try:
        if module == "pyarrow":
            import pyarrow.parquet as parquet

            return parquet
        return __import__(module)
    except ImportError as error:
        raise DatasetUnavailableError(
            f"reading {what} files needs the package {module}: pip install 'pyro-vae[tables]'"
        ) from error


def _read_npz_table(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetUnavailableError(
            f"{path}: not a readable .npz file of numbers and strings ({error})"
        ) from error
    for split in ("train", "test"):
        if arrays.get(split) is None or arrays[split].ndim != 2:
            raise DatasetUnavailableError(
                f"{path}: a table file holds 2-D arrays train and test (rows x columns) and "
                "optionally columns (their names); write it with numpy.savez"
            )
    width = arrays["train"].shape[1]
    names = [str(name) for name in arrays.get("columns", np.arange(width))]
    if len(names) != width or arrays["test"].shape[1] != width:
        raise DatasetUnavailableError(
            f"{path}: train has {width} columns, test {arrays['test'].shape[1]} and columns "
            f"names {len(names)}; give them all the same number"
        )
    return pd.DataFrame(arrays["train"], columns=names), pd.DataFrame(arrays["test"], columns=names)


def _read_h5ad(path: Path) -> pd.DataFrame:
    anndata = _optional("anndata", ".h5ad")
    adata = anndata.read_h5ad(path)
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    frame = pd.DataFrame(counts, columns=[str(name) for name in adata.var_names])
    obs = adata.obs.reset_index(drop=True)
    frame = pd.concat([frame, obs.drop(columns=frame.columns, errors="ignore")], axis=1)
    frame.attrs["count_columns"] = [str(name) for name in adata.var_names]
    return frame


def split_rows(num_rows: int, num_test: int | None = None) -> dict[str, np.ndarray]:
    """Row numbers of the train, validation and test rows of a table of ``num_rows`` (see
    the module doc); ``num_test``: the last rows are the test rows, as a file gave them."""
    given = num_test is not None
    num_test = num_test if given else max(1, round(num_rows * TEST_FRACTION))
    rest = num_rows - num_test
    num_val = max(1, rest // 6)
    if rest - num_val < 1:
        raise ConfigError(
            f"the table has {num_rows} rows: too few to split into training, validation and "
            "test rows; give at least 3"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(rest if given else num_rows)
    test = np.arange(rest, num_rows) if given else order[rest:]
    return {"train": order[: rest - num_val], "val": order[rest - num_val : rest], "test": test}


@dataclass
class TableData(ImageData):
    """A table's train/validation/test rows as :class:`~pyro_vae.data.images.ImageData`
    of shape ``(data_dim,)`` (missing cells NaN), with the :class:`TableSchema` that
    coded them and each split's row numbers in the file (``rows``)."""

    schema: TableSchema = None  # type: ignore[assignment]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def check_values(self, split: str, images: torch.Tensor) -> None:
        if torch.isinf(images).any():
            raise ConfigError(f"the {split} rows contain infinite values; clean them")


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def load_table(
    path: str | Path,
    *,
    schema: TableSchema | Mapping[str, Any] | None = None,
    columns: str | Path | Mapping[str, str] | None = None,
    label_column: str | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
) -> TableData:
    """A table file as :class:`TableData`, coded by ``schema`` (that of a trained run) or
    by one inferred from it (``columns``: kinds given per column, see :func:`read_kinds`;
    ``label_column``: the column of labels). ``subset`` keeps the first training rows."""
    frame, test_frame = read_table(path)
    num_test = None if test_frame is None else len(test_frame)
    if test_frame is not None:
        frame = pd.concat([frame, test_frame], ignore_index=True)
    rows = split_rows(len(frame), num_test)
    if subset is not None:
        if not 0 < subset <= len(rows["train"]):
            raise ConfigError(f"`subset` must be between 1 and {len(rows['train'])}, got {subset}")
        rows["train"] = rows["train"][:subset]
    if schema is None:
        counts = dict.fromkeys(frame.attrs.get("count_columns", ()), "count")  # .h5ad genes
        kinds = counts | read_kinds(columns)
        schema = infer_schema(frame, rows["train"], kinds, label_column)
    elif isinstance(schema, Mapping):
        schema = TableSchema.from_dict(schema)
    vectors, labels = schema.encode(frame, str(path)), schema.labels(frame, str(path))
    splits = {
        name: (_tensor(vectors[index]), _tensor(labels[index])) for name, index in rows.items()
    }
    data = TableData(
        *(tensor for split in ("train", "val", "test") for tensor in splits[split]),
        image_shape=(schema.data_dim,),
        class_names=tuple(map(str, schema.label_values)) or ("all",),
        binarize=False,
        schema=schema,
        rows=rows,
    )
    return data.to(device)


def table_frame(data: TableData, split: str, vectors: torch.Tensor | None = None) -> pd.DataFrame:
    """Rows of ``split`` as a table (``vectors`` in their place, e.g. reconstructions), with
    their row numbers in the file as the index."""
    values = getattr(data, split) if vectors is None else vectors
    frame = data.schema.decode(values)
    frame.index = pd.Index(data.rows[split], name="row")
    return frame


__all__ = [
    "KINDS",
    "Column",
    "TableData",
    "TableSchema",
    "infer_kind",
    "infer_schema",
    "is_table_file",
    "load_table",
    "read_kinds",
    "read_table",
    "split_rows",
    "table_frame",
]
