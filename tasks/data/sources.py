"""Reading task data into tables, and carving validation/test splits out of a training table.

A source is a local file (CSV, TSV, Parquet, FASTA; optionally .gz; read by fastankh.records.read_table, the
reader predict and embed use too) or, when no such file exists and the task names a `hub_id`, a data file or
split of that Hugging Face dataset. Every table keeps the 1-based data-row number of each record in its
source (column `ROW`), so an error can point at the line to fix.

Hub datasets without the Hub: `datasets.load_dataset` reads a local folder exactly as it reads a repo id (data
files by name; splits inferred from file names such as `fluorescence_train.csv` / `_valid` / `_test`). With
FASTANKH_DATASETS_DIR set, a hub id whose folder `$FASTANKH_DATASETS_DIR/<hub_id>` exists (a copy laid out
like the Hub repo, e.g. from `hf download <hub_id> --repo-type dataset --local-dir ...`) is read from there;
`task.data.hub_id=<folder>` does the same for one task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fastankh.errors import DataError
from fastankh.records import ROW, RecordError, file_suffix, read_table
from tasks.task.spec import DataSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR_ENV = "FASTANKH_DATASETS_DIR"  # local copies of hub datasets: <dir>/<org>/<name>/
HUB_FILE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"}
# Values of `split_filter_column` and the split they send a row to.
SPLIT_VALUES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "dev": "val", "test": "test"}


@dataclass
class Table:
    """The records of one split: `source` names where they came from (in messages), `frame` holds them."""

    source: str
    frame: pd.DataFrame

    def subset(self, mask: np.ndarray) -> Table:
        return Table(self.source, self.frame[mask].reset_index(drop=True))


def split_name(source: str) -> str:
    """A test split's name: the file stem (`CB513.csv` -> `CB513`) or the hub split name."""
    name = Path(source).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem if file_suffix(name) else name


def local_path(source: str) -> Path | None:
    """The file a source names on disk (relative paths: cwd first, then the project root), or None."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        return PROJECT_ROOT / path
    return None


def _read_local(path: Path, spec: DataSpec) -> pd.DataFrame:
    try:
        return read_table(path, spec.id_column or "id", spec.sequence_column)
    except RecordError as err:
        raise DataError(str(err)) from None


def hub_location(hub_id: str) -> str:
    """What `datasets.load_dataset` is given for `hub_id`: its local copy `$FASTANKH_DATASETS_DIR/<hub_id>`
    when that folder exists, else the hub id itself (a local folder given as hub_id is read as it is)."""
    root = os.environ.get(DATASETS_DIR_ENV)
    if root:
        local = Path(root).expanduser() / hub_id
        if local.is_dir():
            return str(local)
    return hub_id


def _read_hub(hub_id: str, name: str) -> pd.DataFrame:
    """A hub dataset's data file (`training_hhblits.csv`) or split (`test`) as a DataFrame."""
    from datasets import load_dataset

    location = hub_location(hub_id)
    if file_suffix(name) in HUB_FILE_SUFFIXES:
        return load_dataset(location, data_files={"data": name}, split="data").to_pandas()
    return load_dataset(location, split=name).to_pandas()


def read_source(source: str, spec: DataSpec) -> Table:
    """Read one source: a local file if it exists (it overrides the hub), else `spec.hub_id`'s file/split."""
    path = local_path(source)
    if path is not None:
        return Table(source, _read_local(path, spec))  # read_table numbers the rows
    if not spec.hub_id:
        raise DataError(f"{source}: file not found (and task.data.hub_id is not set)")
    frame = _read_hub(spec.hub_id, source).reset_index(drop=True)
    frame[ROW] = np.arange(1, len(frame) + 1)
    return Table(f"{spec.hub_id}/{source}", frame)


def partition(table: Table, column: str) -> dict[str, Table]:
    """Split a table by the values of `column` (see SPLIT_VALUES) -> {"train"|"val"|"test": Table}."""
    if column not in table.frame.columns:
        raise DataError(f"{table.source}: missing column '{column}' (task.data.split_filter_column)")
    values = table.frame[column].astype(str).str.strip().str.lower()
    bad = ~values.isin(list(SPLIT_VALUES))
    if bad.any():
        lines = [
            f"{table.source}: row {row}: split value {value!r} in column '{column}' is not one of "
            f"{', '.join(SPLIT_VALUES)}"
            for row, value in zip(table.frame.loc[bad, ROW][:10], table.frame.loc[bad, column][:10])
        ]
        raise DataError("\n".join(lines))
    target = values.map(SPLIT_VALUES).to_numpy()
    return {name: table.subset(target == name) for name in ("train", "val", "test") if (target == name).any()}


def carve(table: Table, fraction: float, group_column: str | None, seed: int, stream: int) -> tuple[Table, Table]:
    """Move about `fraction` of the rows into a new split, keeping `group_column` groups whole.

    Groups (rows when `group_column` is None) are taken in a random order drawn from (seed, stream)
    until the share is reached; the result depends only on the seed and the table's contents.
    Returns (rest, carved).
    """
    frame = table.frame
    if group_column is None:
        keys = frame[ROW].astype(str).to_numpy()
    else:
        if group_column not in frame.columns:
            raise DataError(f"{table.source}: missing column '{group_column}' (task.data.split_column)")
        missing = frame[group_column].isna().to_numpy()
        if missing.any():
            row = frame[ROW].to_numpy()[missing][0]
            raise DataError(f"{table.source}: row {row}: missing value in split column '{group_column}'")
        keys = frame[group_column].astype(str).to_numpy()
    groups, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    if len(groups) < 2:
        raise DataError(f"{table.source}: cannot carve a split out of {len(groups)} group(s); give it as a file")
    order = np.random.default_rng([seed, stream]).permutation(len(groups))
    target = fraction * len(frame)
    # At least one group goes, at least one stays.
    taken = max(1, min(len(groups) - 1, int(np.searchsorted(np.cumsum(sizes[order]), target) + 1)))
    chosen = np.zeros(len(groups), dtype=bool)
    chosen[order[:taken]] = True
    mask = chosen[inverse]
    return table.subset(~mask), table.subset(mask)
