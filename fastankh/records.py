"""Reading and validating protein records: one reader and one sequence rule for training, predict and embed.

Files: CSV (.csv), TSV (.tsv, .tab), Parquet (.parquet, .pq) and FASTA (.fasta, .fa, .faa, .fas), each
optionally gzipped (.gz). Table cells are read as text and only an empty cell is missing, so a sequence
"NA" (two residues) or a label "None" stays a string. FASTA records: id = first header word, `key=value`
header words become columns (`>P1 label=Nucleus`), sequence lines are joined.
Every table gets column ROW: the 1-based data row of each record (header not counted; FASTA: the record
number), so a problem is reported as `<file>: row <n> (id <id>): <problem>`.

A file that cannot be read (not UTF-8, binary, a broken gzip or Parquet file, a CSV with an unclosed quote or
a row with more fields than the header, no header, no records) is a RecordError: one line naming the file and,
where there is one, the line. Problems of single records (a bad sequence) stay with the record (`problem`).

Files are read in chunks (iter_table_chunks, iter_records), so a proteome of 10^8 sequences is read in bounded
memory; read_table and read_records are the same chunks joined, for callers that need the whole file.

`clean_sequence(raw)` is the sequence rule: all whitespace removed (inner too), uppercased, ONE terminal
'*' (stop codon) dropped; empty, or any character outside the 20 standard residues and X B O U Z
(e.g. 'J', digits, an inner '*'), is an error.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import itertools
import os
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecordError

if TYPE_CHECKING:
    import pandas as pd

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
ALLOWED_RESIDUES = frozenset(STANDARD_RESIDUES + "XBOUZ")
ROW = "__row__"
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
RECORD_SUFFIXES = (*TABLE_SEPARATORS, *PARQUET_SUFFIXES, *FASTA_SUFFIXES)


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
    if isinstance(raw, bytes):  # a Parquet binary column
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("sequence cell holds non-text bytes") from None
    elif not (raw is None or isinstance(raw, (str, int, float)) or is_missing(raw)):
        raise ValueError(f"sequence cell holds a {type(raw).__name__}, not text")
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


def one_line(text: str) -> str:
    """`text` with line breaks escaped, so that a message built from cells stays one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def column_list(columns, limit: int = 20) -> str:
    """A table's column names for a message: one line, the first `limit` (each cut to 40 characters)."""
    names = [str(c) for c in columns if c != ROW]
    shown = [one_line(n if len(n) <= 40 else n[:37] + "...") for n in names[:limit]]
    return ", ".join(shown) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def where(source: str, row: int, record_id: str | None) -> str:
    """How a message names a record: `<file>: row <n> (id <id>)` (no id part when it has none)."""
    return f"{source}: row {row}" + (f" (id {one_line(record_id)})" if record_id is not None else "")


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if _gzipped(path) else open(path, encoding="utf-8")


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8 text: `line <n>: not UTF-8 text (byte 0x.. at column <c>)`."""
    opener = gzip.open if _gzipped(path) else open
    with opener(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return (
                    f"line {line_no}: not UTF-8 text (byte 0x{line[err.start]:02x} at column {err.start + 1}); "
                    "binary, or another encoding: save it as UTF-8 text"
                )
    return "not UTF-8 text"


def _csv_problem(path: Path, err: Exception, separator: str) -> str:
    """pandas' tokenizer message as `line <n>: <problem>` (lines of the file, 1-based)."""
    message = str(err)
    if m := re.search(r"EOF inside string starting at row (\d+)", message):
        return f"line {int(m.group(1)) + 1}: a quoted field is never closed (unbalanced '\"')"
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message):
        return f"line {m.group(2)}: {m.group(3)} fields, the header has {m.group(1)}"
    return f"malformed table ({message.strip().splitlines()[-1] if message.strip() else type(err).__name__})"


def _long_row(path: Path, separator: str) -> str:
    """The first row with more fields than the header, as `line <n>: <k> fields, the header has <h>`."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=separator)
        try:
            width = len(next(reader, []))
            for row in reader:
                if len(row) > width:
                    return f"line {reader.line_num}: {len(row)} fields, the header has {width}"
        except csv.Error:
            pass
    return "a row has more fields than the header"


MAX_COLUMNS = 10_000  # a header wider than this is no table of records (pandas takes seconds per 10k columns)


def _header_problem(path: Path, separator: str) -> str | None:
    """What is wrong with a table's header line: too many columns, or a name given twice (pandas would rename
    it, in time quadratic in the columns). None when fine."""
    with _open_text(path) as f:
        try:
            header = next(csv.reader(f, delimiter=separator), [])
        except csv.Error:  # e.g. a field over the csv module's size limit: pandas reads it
            return None
    if len(header) > MAX_COLUMNS:
        return f"line 1: {len(header)} columns (more than {MAX_COLUMNS}): not a header of a table of records"
    seen: set[str] = set()
    for name in (h.strip() for h in header):
        if name in seen and name:
            shown = one_line(name if len(name) <= 40 else name[:37] + "...")
            return f"line 1: column {shown!r} appears more than once in the header"
        seen.add(name)
    return None


def _csv_chunks(path: Path, separator: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A CSV/TSV file in frames of `chunk_rows` rows. pandas' tokenizer numbers lines across chunks, so its
    messages name the line in the file whichever chunk meets it."""
    import pandas as pd

    problem = _header_problem(path, separator)
    if problem is not None:
        raise RecordError(f"{path}: {problem}")
    try:
        # index_col=False: a row with extra fields must not turn the first column into an index (shifted cells)
        with pd.read_csv(
            path,
            sep=separator,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            index_col=False,
            encoding="utf-8",
            chunksize=chunk_rows,
        ) as reader:
            while (chunk := _next_csv_chunk(reader, path, separator)) is not None:
                yield chunk
    except pd.errors.EmptyDataError:
        raise RecordError(f"{path}: empty file (no header row)") from None
    except pd.errors.ParserError as err:
        raise RecordError(f"{path}: {_csv_problem(path, err, separator)}") from None


def _next_csv_chunk(reader, path: Path, separator: str) -> pd.DataFrame | None:
    """The reader's next frame (None at the end). pandas only warns, and drops cells, when the first data row
    is wider than the header: that is an error here."""
    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        chunk = next(reader, None)
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        raise RecordError(f"{path}: {_long_row(path, separator)}")
    return chunk


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet file in frames of `chunk_rows` rows (pyarrow decodes one row group at a time); a file without
    rows gives one empty frame, so that its columns can still be checked."""
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(gzip.open(path, "rb")) if _gzipped(path) else path
        try:
            parquet = pq.ParquetFile(source)
            for batch in parquet.iter_batches(batch_size=chunk_rows, use_pandas_metadata=True):
                yield batch.to_pandas()
            if parquet.metadata.num_rows == 0:
                yield parquet.schema_arrow.empty_table().to_pandas()
        except (OSError, EOFError, zlib.error):
            raise
        except Exception as err:  # pyarrow: not Parquet, truncated, empty, unsupported types
            detail = re.sub(r"^Could not open Parquet input source '[^']*': ", "", str(err).strip().splitlines()[0])
            raise RecordError(f"{path}: not a readable Parquet file ({detail})") from None


def _fasta_rows(path: Path, id_column: str, sequence_column: str) -> Iterator[dict[str, str]]:
    """FASTA records one at a time, as rows {id_column, sequence_column (raw joined lines), key=value header
    fields}; a record is yielded when the next header (or the end) closes it."""
    row: dict[str, str] | None = None
    lines: list[str] = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip().lstrip("\ufeff") if line_no == 1 else line.strip()
            if line.startswith(">"):
                words = line[1:].split()
                if not words:
                    raise RecordError(f"{path}: line {line_no}: header '>' without a record id")
                if row is not None:
                    row[sequence_column] = "".join(lines)
                    yield row
                row = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                row[id_column] = words[0]
                row[sequence_column] = ""  # its place among the columns; filled when the record ends
                lines = []
            elif line and not line.startswith(";"):
                if row is None:
                    raise RecordError(f"{path}: line {line_no}: sequence data before the first '>' header")
                lines.append(line)
    if row is not None:
        row[sequence_column] = "".join(lines)
        yield row


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def _fasta_chunks(path: Path, id_column: str, sequence_column: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A FASTA file in frames of `chunk_rows` records; a header field missing from a record is a missing cell."""
    import pandas as pd

    empty = True
    for rows in _batches(_fasta_rows(path, id_column, sequence_column), chunk_rows):
        empty = False
        yield pd.DataFrame(rows)
    if empty:
        raise RecordError(f"{path}: empty file (no FASTA records)")


def _checked_suffix(path: Path) -> str:
    """The format suffix of a record file; a RecordError when it is no file or of no known format."""
    if path.is_dir():
        raise RecordError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    suffix = file_suffix(path.name)
    if suffix not in RECORD_SUFFIXES:
        raise RecordError(
            f"{path}: unknown file type {suffix or '(none)'}; use one of {', '.join(RECORD_SUFFIXES)} (optionally .gz)"
        )
    return suffix


def _format_chunks(path: Path, id_column: str, sequence_column: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The frames of a file by its format, before numbering."""
    suffix = _checked_suffix(path)
    if suffix in TABLE_SEPARATORS:
        return _csv_chunks(path, TABLE_SEPARATORS[suffix], chunk_rows)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_chunks(path, chunk_rows)
    return _fasta_chunks(path, id_column, sequence_column, chunk_rows)


def iter_table_chunks(
    path: str | os.PathLike,
    id_column: str | None = "id",
    sequence_column: str = "sequence",
    chunk_rows: int = 65536,
) -> Iterator[pd.DataFrame]:
    """A local file (see the module docstring) as pandas DataFrames of at most `chunk_rows` rows each, with
    column ROW numbered across chunks; memory stays bounded by the chunk, not the file.

    `id_column` / `sequence_column` name the FASTA id and sequence columns (tables keep their own).
    A table without data rows gives one empty frame with its columns. Problems with the file itself (missing,
    unknown type) and with a table's header (empty, too wide, a repeated column) are raised before the first
    chunk; problems further in (bad bytes, broken gzip or Parquet data, an unclosed quote, a row wider than the
    header, a bad FASTA line) are raised when reading reaches them, after the chunks before them were yielded.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    first_row = 1
    try:
        for chunk in _format_chunks(path, id_column or "id", sequence_column, chunk_rows):
            chunk = chunk.reset_index(drop=True)
            chunk[ROW] = range(first_row, first_row + len(chunk))
            first_row += len(chunk)
            yield chunk
    except UnicodeDecodeError:
        raise RecordError(f"{path}: {_not_utf8(path)}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise RecordError(f"{path}: not a readable gzip file ({err or type(err).__name__})") from None
    except OSError as err:
        raise RecordError(f"{path}: cannot read it ({err.strerror or err})") from None


def read_table(path: str | os.PathLike, id_column: str | None = "id", sequence_column: str = "sequence"):
    """A local file as one pandas DataFrame of its cells, plus column ROW (last): the chunks of iter_table_chunks."""
    import pandas as pd

    frame = pd.concat(iter_table_chunks(path, id_column, sequence_column), ignore_index=True)
    frame[ROW] = frame.pop(ROW)  # after the FASTA header fields that first appear in a later chunk
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
        columns = column_list(frame.columns)
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


def iter_records(
    path: str | os.PathLike,
    id_column: str | None = "id",
    sequence_column: str = "sequence",
    chunk_rows: int = 65536,
) -> Iterator[Record]:
    """Records of a FASTA file or table, in file order, read `chunk_rows` at a time (see iter_table_chunks for
    when a bad file is reported); a missing sequence column is reported before the first record."""
    source = os.fspath(path)
    for chunk in iter_table_chunks(path, id_column, sequence_column, chunk_rows):
        yield from records_of(chunk, source, id_column, sequence_column)


def read_records(
    path: str | os.PathLike, id_column: str | None = "id", sequence_column: str = "sequence"
) -> list[Record]:
    """Records of a FASTA file or table, in file order; see Record for invalid ones."""
    return list(iter_records(path, id_column, sequence_column))


def read_fasta(path: str | os.PathLike) -> dict[str, str]:
    """id -> cleaned sequence of a FASTA file. An invalid sequence or a repeated id is a RecordError."""
    out: dict[str, str] = {}
    for r in iter_records(path):
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
    "column_list",
    "file_suffix",
    "is_missing",
    "iter_records",
    "iter_table_chunks",
    "one_line",
    "read_fasta",
    "read_records",
    "read_table",
    "records_of",
    "where",
]
