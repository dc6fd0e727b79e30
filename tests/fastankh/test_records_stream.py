"""The streaming reader (fastankh/records.py: iter_table_chunks, iter_records): the same records, rows and
one-line errors as the whole-file read, in memory bounded by the chunk, with errors further in the file raised
when reading reaches them."""

from __future__ import annotations

import gzip
import random
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from fastankh.records import (
    ROW,
    RecordError,
    iter_records,
    iter_table_chunks,
    read_records,
    read_table,
)

CHUNK_ROWS = (1, 7, 65536)
DATA_FILES = sorted((Path(__file__).resolve().parents[2] / "data").glob("*.csv"))
FASTA_FIELDS = b">a x=1\nMKV\nKK\n>b\nGSH\n>c y=2 x=3\nTT\n>d\n\n>e y=\n;comment\nmk v\n"


def outcome(read, *args, **kwargs) -> tuple[str, object]:
    """("ok", read(*args, **kwargs)) or ("error", the RecordError's message)."""
    try:
        return "ok", read(*args, **kwargs)
    except RecordError as err:
        return "error", str(err)


@pytest.mark.parametrize("path", DATA_FILES, ids=[p.name for p in DATA_FILES])
def test_shipped_data_reads_the_same_in_any_chunks(path):
    whole = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    whole[ROW] = range(1, len(whole) + 1)
    pd.testing.assert_frame_equal(read_table(path), whole)  # read_table as before: cells, dtypes, ROW
    records = read_records(path)
    assert len(records) == len(whole)
    for k in CHUNK_ROWS if len(records) < 3000 else CHUNK_ROWS[1:]:  # one-row chunks of 16k rows take a minute
        assert list(iter_records(path, chunk_rows=k)) == records, k
    pd.testing.assert_frame_equal(pd.concat(iter_table_chunks(path, chunk_rows=7), ignore_index=True), whole)


def test_fasta_header_fields_met_in_later_chunks_are_columns_of_the_whole_table(tmp_path):
    path = tmp_path / "fields.fasta"
    path.write_bytes(FASTA_FIELDS)
    table = read_table(path)
    assert list(table.columns) == ["x", "id", "sequence", "y", ROW]
    assert table["x"].isna().tolist() == [False, True, False, True, True] and table["x"][2] == "3"
    assert table["sequence"].tolist() == ["MKVKK", "GSH", "TT", "", "mk v"]  # raw lines; records clean them
    for k in CHUNK_ROWS:
        chunks = pd.concat(iter_table_chunks(path, chunk_rows=k), ignore_index=True)
        pd.testing.assert_frame_equal(chunks[table.columns], table)
    assert [(r.id, r.sequence, r.row) for r in iter_records(path, chunk_rows=2)][-1] == ("e", "MKV", 5)


def test_read_table_joins_chunks_whose_fasta_fields_differ(tmp_path):
    path = tmp_path / "many.fasta"
    path.write_text("".join(f">a{i}\nMKV\n" for i in range(65536)) + ">last z=1\nGSH\n")  # two chunks
    table = read_table(path)
    assert list(table.columns) == ["id", "sequence", "z", ROW]
    assert table["z"].isna().sum() == 65536 and table["z"].iloc[-1] == "1"
    assert table[ROW].tolist() == list(range(1, 65538))


def random_sequences(n: int, seed: int = 0) -> list[str]:
    """n random sequences of 20 to 50 residues, cut from one random string (fast to make)."""
    rng = random.Random(seed)
    residues = "".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=50 * n))
    return [residues[50 * i : 50 * i + rng.randint(20, 50)] for i in range(n)]


def write_proteome(path: Path, n: int) -> Path:
    """n short random sequences as `path` (FASTA, CSV, gzipped CSV or Parquet by its suffix)."""
    sequences = random_sequences(n)
    ids = [f"P{i}" for i in range(n)]
    if path.suffix == ".parquet":  # row groups of 1024: pyarrow holds one row group at a time
        pd.DataFrame({"id": ids, "sequence": sequences}).to_parquet(path, row_group_size=1024)
    elif path.suffix == ".fasta":
        path.write_text("".join(f">{i} label=x\n{s[:30]}\n{s[30:]}\n" for i, s in zip(ids, sequences)))
    else:
        text = "id,sequence,label\n" + "".join(f"{i},{s},x\n" for i, s in zip(ids, sequences))
        path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def peak_bytes(path: Path) -> tuple[int, int]:
    """(records read, peak Python memory while iterating over them, in bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        count = sum(1 for _ in iter_records(path, chunk_rows=512))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".fasta", ".csv", ".csv.gz", ".parquet"])
def test_memory_is_bounded_by_the_chunk_not_the_file(suffix, tmp_path):
    small = write_proteome(tmp_path / f"small{suffix}", 5_000)
    large = write_proteome(tmp_path / f"large{suffix}", 50_000)
    sum(1 for _ in iter_records(small, chunk_rows=512))  # imports and caches, outside the measurement
    (n_small, small_peak), (n_large, large_peak) = peak_bytes(small), peak_bytes(large)
    assert (n_small, n_large) == (5_000, 50_000)
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def wide_rows(path: Path, n: int, bad_row: int, bad: bytes) -> Path:
    """A CSV of n rows of 300 residues (many parser buffers long), data row `bad_row` replaced by `bad`."""
    good = b"," + b"MKTAYIAKQR" * 30 + b"\n"
    with open(path, "wb") as f:
        f.write(b"id,sequence\n")
        f.writelines(bad if row == bad_row else b"r%d%s" % (row, good) for row in range(1, n + 1))
    return path


@pytest.mark.parametrize(
    "bad, problem",
    [
        (b"x,MKV,extra,more\n", "line 15002: 4 fields, the header has 2"),
        (b'x,"MKV\n', "line 15002: a quoted field is never closed (unbalanced '\"')"),
        (b"x,MK\xffV\n", "line 15002: not UTF-8 text (byte 0xff at column 5)"),
    ],
    ids=["wider-row", "open-quote", "not-utf8"],
)
def test_an_error_mid_file_is_raised_when_reached_with_its_line(bad, problem, tmp_path):
    path = wide_rows(tmp_path / "wide.csv", 20_000, 15_001, bad)
    rows: list[int] = []
    with pytest.raises(RecordError) as err:
        for chunk in iter_table_chunks(path, chunk_rows=4096):
            rows += chunk[ROW].tolist()
    assert rows == list(range(1, 12_289))  # three chunks, numbered across them, came before the error
    assert str(err.value).startswith(f"{path}: {problem}"), str(err.value)


def test_errors_in_the_header_come_before_any_chunk(tmp_path):
    body = "".join(f"r{i},MKV\n" for i in range(100))
    for name, header, problem in [
        ("repeated.csv", "id,id", "line 1: column 'id' appears more than once in the header"),
        ("wide.csv", ",".join(f"c{i}" for i in range(10_001)), "line 1: 10001 columns (more than 10000)"),
    ]:
        (tmp_path / name).write_text(f"{header}\n{body}")
        with pytest.raises(RecordError) as err:
            next(iter_table_chunks(tmp_path / name, chunk_rows=1))
        assert str(err.value).startswith(f"{tmp_path / name}: {problem}"), str(err.value)


def test_a_missing_sequence_column_comes_before_the_first_record(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,seq\na,MKV\nb,GSH,extra,more\n")  # the wider row is never reached
    with pytest.raises(RecordError, match=r"no column 'sequence' \(sequence_column\); columns are: id, seq$"):
        next(iter_records(path, chunk_rows=1))
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,seq\n")
    with pytest.raises(RecordError, match="no column 'sequence'"):
        next(iter_records(header_only))
