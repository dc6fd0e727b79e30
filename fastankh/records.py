"""Reading and validating protein records: one reader and one sequence rule for training, predict and embed.

Files: CSV (.csv), TSV (.tsv, .tab), Parquet (.parquet, .pq) and FASTA (.fasta, .fa, .faa, .fas), each
optionally gzipped (.gz). Table cells are read as text and only an empty cell is missing, so a sequence
"NA" (two residues) or a label "None" stays a string. FASTA records: id = first header word, `key=value`
header words become columns (`>P1 label=Nucleus`), sequence lines are joined.
Every table gets column ROW: the 1-based data row of each record (header not counted; FASTA: the record
number), so a problem is reported as `<file>: row <n> (id <id>): <problem>`.

`clean_sequence(raw)` is the sequence rule: all whitespace removed (inner too), uppercased, ONE terminal
'*' (stop codon) dropped; empty, or any character outside the 20 standard residues and X B O U Z
(e.g. 'J', digits, an inner '*'), is an error.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
ALLOWED_RESIDUES = frozenset(STANDARD_RESIDUES + "XBOUZ")
ROW = "__row__"
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
RECORD_SUFFIXES = (*TABLE_SEPARATORS, *PARQUET_SUFFIXES, *FASTA_SUFFIXES)


class RecordError(ValueError):
    """Bad input records or files; one line per problem, naming the file and the row or line."""


def file_suffix(name: str | os.PathLike) -> str:
    """Format suffix of a file name, looking through a trailing .gz: `a.csv.gz` -> `.csv`."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_missing(value: Any) -> bool:
    """An absent cell: None, NaN/NA or blank text. Lists and arrays (per-residue cells) are never missing."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if hasattr(value, "__len__"):
        return False
    import pandas as pd

    return bool(pd.isna(value))


def cell_text(value: Any) -> str:
    """A cell as text; integral floats (Parquet/hub dtypes) print as integers: 1.0 -> "1"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def clean_sequence(raw: Any) -> str:
    """The residues of a sequence cell (see the module docstring); ValueError(problem) when invalid."""
    sequence = "" if is_missing(raw) else "".join(str(raw).split()).upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    if not sequence:
        raise ValueError("empty sequence")
    bad = sorted(set(sequence) - ALLOWED_RESIDUES)
    if bad:
        letters = ", ".join(map(repr, bad))
        raise ValueError(f"unknown residue letter(s) {letters} (allowed: the 20 standard residues and X B O U Z)")
    return sequence


def where(source: str, row: int, record_id: str | None) -> str:
    """How a message names a record: `<file>: row <n> (id <id>)` (no id part when it has none)."""
    return f"{source}: row {row}" + (f" (id {record_id})" if record_id is not None else "")


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.lower().endswith(".gz") else open(path)


def read_fasta_rows(path: str | os.PathLike, id_column: str = "id", sequence_column: str = "sequence") -> list[dict]:
    """FASTA records as rows {id_column, sequence_column (raw joined lines), key=value header fields}."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith(">"):
                words = line[1:].split()
                if not words:
                    raise RecordError(f"{path}: line {line_no}: header '>' without a record id")
                row = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                row[id_column] = words[0]
                row[sequence_column] = ""
                rows.append(row)
            elif line and not line.startswith(";"):
                if not rows:
                    raise RecordError(f"{path}: line {line_no}: sequence data before the first '>' header")
                rows[-1][sequence_column] += line
    return rows


def read_table(path: str | os.PathLike, id_column: str | None = "id", sequence_column: str = "sequence"):
    """A local file (see the module docstring) as a pandas DataFrame of its cells, plus column ROW.

    `id_column` / `sequence_column` name the FASTA id and sequence columns (tables keep their own).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    suffix = file_suffix(path.name)
    if suffix in TABLE_SEPARATORS:
        try:
            frame = pd.read_csv(path, sep=TABLE_SEPARATORS[suffix], dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            raise RecordError(f"{path}: empty file (no header row)") from None
    elif suffix in PARQUET_SUFFIXES:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                frame = pd.read_parquet(f)
        else:
            frame = pd.read_parquet(path)
    elif suffix in FASTA_SUFFIXES:
        frame = pd.DataFrame(read_fasta_rows(path, id_column or "id", sequence_column))
    else:
        raise RecordError(
            f"{path}: unknown file type {suffix or '(none)'}; use one of {', '.join(RECORD_SUFFIXES)} (optionally .gz)"
        )
    frame = frame.reset_index(drop=True)
    frame[ROW] = list(range(1, len(frame) + 1))
    return frame


@dataclass
class Record:
    """One input record: `sequence` cleaned by clean_sequence ("" when `problem` says why it is invalid)."""

    id: str  # the id column's value, else "<file stem>:<row>"
    sequence: str
    row: int  # 1-based data row (FASTA: record number)
    where: str  # `<file>: row <n> (id <id>)`, how messages name it
    problem: str | None = None

    @property
    def error(self) -> str | None:
        """The one-line message of an invalid record, None when valid."""
        return None if self.problem is None else f"{self.where}: {self.problem}"


def records_of(frame, source: str, id_column: str | None = "id", sequence_column: str = "sequence") -> list[Record]:
    """Records of a table read by read_table; invalid sequences are kept with their `problem`."""
    if sequence_column not in frame.columns:
        columns = ", ".join(str(c) for c in frame.columns if c != ROW)
        raise RecordError(f"{source}: no column '{sequence_column}' (sequence_column); columns are: {columns}")
    has_ids = id_column is not None and id_column in frame.columns
    ids = frame[id_column].tolist() if has_ids else [None] * len(frame)
    stem = Path(source).name
    stem = stem[:-3] if stem.lower().endswith(".gz") else stem
    stem = Path(stem).stem if file_suffix(stem) else stem
    records = []
    for raw_id, raw, row in zip(ids, frame[sequence_column].tolist(), frame[ROW].tolist()):
        record_id = None if is_missing(raw_id) else cell_text(raw_id)
        location = where(source, row, record_id)
        try:
            sequence, problem = clean_sequence(raw), None
        except ValueError as err:
            sequence, problem = "", str(err)
        key = record_id if record_id is not None else f"{stem}:{row}"
        records.append(Record(key, sequence, row, location, problem))
    return records


def read_records(
    path: str | os.PathLike, id_column: str | None = "id", sequence_column: str = "sequence"
) -> list[Record]:
    """Records of a FASTA file or table, in file order; see Record for invalid ones."""
    return records_of(read_table(path, id_column, sequence_column), os.fspath(path), id_column, sequence_column)


def read_fasta(path: str | os.PathLike) -> dict[str, str]:
    """id -> cleaned sequence of a FASTA file. An invalid sequence or a repeated id is a RecordError."""
    out: dict[str, str] = {}
    for r in read_records(path):
        if r.problem is not None:
            raise RecordError(r.error)
        if r.id in out:
            raise RecordError(f"{r.where}: id {r.id!r} appears more than once")
        out[r.id] = r.sequence
    return out


__all__ = [
    "ALLOWED_RESIDUES",
    "FASTA_SUFFIXES",
    "RECORD_SUFFIXES",
    "ROW",
    "STANDARD_RESIDUES",
    "Record",
    "RecordError",
    "cell_text",
    "clean_sequence",
    "file_suffix",
    "is_missing",
    "read_fasta",
    "read_records",
    "read_table",
    "records_of",
    "where",
]
