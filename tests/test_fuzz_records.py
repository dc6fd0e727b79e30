"""Hostile input: generated malformed files through the one reader of train, predict and embed
(fastankh/records.py). A file that cannot be read ends in one line naming the file (and the line where there
is one), raised as RecordError (DataError on the train and predict paths), never another exception; a bad record
keeps its `problem`, named by file and row; predict (on_invalid=skip) still predicts the valid records."""

from __future__ import annotations

import csv
import gzip
import io
import random
from pathlib import Path

import pandas as pd
import pytest

from fastankh.records import RecordError, iter_records, iter_table_chunks, read_fasta, read_records, read_table
from tasks.data.encoding import encode
from tasks.data.sources import DataError, read_source
from tasks.infer import predict_job
from tasks.task.spec import TaskSpec

FORMATS = [".csv", ".tsv", ".fasta", ".fa", ".parquet", ".csv.gz", ".fasta.gz", ".parquet.gz"]
VALID = {
    ".csv": b"id,sequence\na,MKV\nb,GSH\n",
    ".tsv": b"id\tsequence\na\tMKV\nb\tGSH\n",
    ".fasta": b">a\nMKV\n>b\nGSH\n",
}


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def valid_bytes(suffix: str) -> bytes:
    base = suffix.removesuffix(".gz")
    data = parquet_bytes(pd.DataFrame({"id": ["a", "b"], "sequence": ["MKV", "GSH"]})) if base == ".parquet" else None
    data = data if data is not None else VALID[".fasta" if base == ".fa" else base]
    return gzip.compress(data) if suffix.endswith(".gz") else data


def garbage(seed: int, n: int = 3000) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


def file_cases() -> list[tuple[str, str, bytes, str]]:
    """(case id, file suffix, bytes, what the one-line message must say after `<file>: `)."""
    cases = []
    for suffix in FORMATS:
        for seed in range(3):
            expected = "not a readable gzip file" if suffix.endswith(".gz") else "not"  # not UTF-8 / not Parquet
            cases.append((f"garbage{seed}{suffix}", suffix, garbage(seed), expected))
        cases.append((f"empty{suffix}", suffix, b"", "empty file" if "parquet" not in suffix else "not a readable"))
        if suffix.endswith(".gz"):
            cases.append((f"truncated{suffix}", suffix, valid_bytes(suffix)[:-12], "not a readable gzip file"))
            if "parquet" not in suffix:
                cases.append((f"gzipped-garbage{suffix}", suffix, gzip.compress(garbage(7)), "line 1: not UTF-8"))
    cases += [
        ("truncated-parquet", ".parquet", valid_bytes(".parquet")[:-40], "not a readable Parquet file"),
        ("csv-named-parquet", ".parquet", VALID[".csv"], "not a readable Parquet file"),
        ("parquet-named-csv", ".csv", valid_bytes(".parquet"), "not UTF-8 text"),
        ("fasta-no-headers", ".fasta", b"MKV\nGSH\n", "line 1: sequence data before the first '>' header"),
        ("fasta-data-then-header", ".fa", b"\nMKV\n>a\nGSH\n", "line 2: sequence data before the first '>' header"),
        ("fasta-empty-header", ".fasta", b">a\nMKV\n>\nGSH\n", "line 3: header '>' without a record id"),
        ("fasta-only-comments", ".fasta", b";comment\n\n", "empty file (no FASTA records)"),
        ("csv-blank-lines", ".csv", b"\n\n\n", "empty file (no header row)"),
        ("csv-utf16", ".csv", "id,sequence\na,MKV\n".encode("utf-16"), "line 1: not UTF-8 text"),
        ("csv-latin1", ".csv", "id,sequence\na,MKV\nb,GS\xe9\n".encode("latin-1"), "line 3: not UTF-8 text"),
        ("tsv-latin1-header", ".tsv", "id\tsequence\xe9\na\tMKV\n".encode("latin-1"), "line 1: not UTF-8 text"),
        ("fasta-latin1", ".fasta", ">a caf\xe9\nMKV\n".encode("latin-1"), "line 1: not UTF-8 text"),
        ("fasta-latin1-seq", ".fa", ">a\nMKV\n>b\nGS\xe9\n".encode("latin-1"), "line 4: not UTF-8 text"),
        ("unknown-type", ".xlsx", VALID[".csv"], "unknown file type .xlsx"),
        ("no-suffix", "", VALID[".csv"], "unknown file type (none)"),
    ]
    for line in (2, 3, 4):  # an unbalanced quote on data line `line`
        rows = ["id,sequence", "a,MKV", "b,GSH", "c,TTT"]
        rows[line - 1] = rows[line - 1].replace(",", ',"', 1)
        cases.append((f"csv-open-quote-line{line}", ".csv", "\n".join(rows).encode() + b"\n", f"line {line}: a quoted"))
    for line in (2, 4):  # a row with more fields than the header
        rows = ["id,sequence", "a,MKV", "b,GSH", "c,TTT"]
        rows[line - 1] += ",extra,more"
        cases.append(
            (f"csv-extra-fields-line{line}", ".csv", "\n".join(rows).encode() + b"\n", f"line {line}: 4 fields")
        )
    for suffix in (".csv", ".tsv", ".csv.gz", ".parquet"):  # no sequence column (sequence_column=seq)
        cases.append((f"missing-column{suffix}", suffix, valid_bytes(suffix), "no column 'seq' (sequence_column)"))
    cases.append(("huge-header-line", ".csv", lambda: b"x," * 400_000 + b"\n", "line 1: 400001 columns"))
    cases.append(("repeated-x", ".csv", b"x," * 5000 + b"\n", "line 1: column 'x' appears more"))
    cases.append(
        (
            "wide-header",
            ".csv",
            lambda: ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n",
            "line 1: 100000 columns",
        )
    )
    cases.append(("repeated-column", ".tsv", b"id\tsequence\tid\na\tMKV\tb\n", "line 1: column 'id' appears more"))
    cases.append(
        ("huge-binary-line", ".csv", lambda: b"id,sequence\na," + garbage(3, 2_000_000) + b"\n", "line 2: not UTF-8")
    )
    return cases


FILE_CASES = file_cases()


def write(tmp_path: Path, name: str, suffix: str, data) -> Path:
    """The case's file; huge inputs are made here (a callable), not held in the test parameters."""
    path = tmp_path / f"{name.replace('.', '_')}{suffix}"
    path.write_bytes(data() if callable(data) else data)
    return path


def test_at_least_50_generated_malformed_inputs():
    assert len(FILE_CASES) + len(RECORD_CASES) + len(LABEL_CASES) >= 50


@pytest.mark.parametrize("name, suffix, data, expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_unreadable_files_end_in_one_line_naming_the_file(name, suffix, data, expected, tmp_path):
    path = write(tmp_path, name, suffix, data)
    column = "seq" if name.startswith("missing-column") else "sequence"
    with pytest.raises(RecordError) as err:  # exactly RecordError: never a parser's or pyarrow's traceback
        read_records(path, sequence_column=column)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 2000, message
    assert expected in message, message
    # The predict path streams with the same reader and says the same line; so does the train path, which
    # checks its columns after reading (its own one line for a missing column).
    with pytest.raises(RecordError) as err:
        list(predict_job.checked(iter_records(path, "id", column)))
    assert str(err.value) == message
    spec = TaskSpec(name="t", kind="masked_lm", data={"train": str(path), "sequence_column": column})
    with pytest.raises(DataError) as err:
        encode(read_source(str(path), spec.data), spec)
    assert str(err.value) == message or (
        name.startswith("missing-column") and "missing column(s) 'seq'" in str(err.value)
    )
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


RECORD_CASES = [  # one bad record among good ones: (case id, file suffix, bytes, bad row, problem)
    ("digit", ".csv", b"id,sequence\na,MKV\nb,MK1\n", 2, "unknown residue letter(s) '1'"),
    ("J", ".tsv", b"id\tsequence\na\tMKJ\nb\tGSH\n", 1, "unknown residue letter(s) 'J'"),
    ("inner-stop", ".fasta", b">a\nMK*V\n>b\nGSH\n", 1, "unknown residue letter(s) '*'"),
    ("empty-seq", ".fasta", b">a\n>b\nGSH\n", 1, "empty sequence"),
    ("blank-cell", ".csv", b"id,sequence\na,   \nb,GSH\n", 1, "empty sequence"),
    ("short-row", ".csv", b"id,sequence\na\nb,GSH\n", 1, "empty sequence"),
    ("nul-bytes", ".csv", b"id,sequence\na,MK\x00V\nb,GSH\n", 1, "unknown residue letter(s) '\\x00'"),
    ("stray-quote", ".csv", b'id,sequence\na,MK"V\nb,GSH\n', 1, "unknown residue letter(s) '\"'"),
    ("emoji", ".fasta", ">a\nMK\U0001f600V\n>b\nGSH\n".encode(), 1, "unknown residue letter(s)"),
    (
        "huge-bad-line",
        ".fasta",
        lambda: b">a\n" + b"MKV1" * 500_000 + b"\n>b\nGSH\n",
        1,
        "unknown residue letter(s) '1'",
    ),
    (
        "list-cell",
        ".parquet",
        parquet_bytes(pd.DataFrame({"sequence": [["M", "K"], ["G"]]})),
        (1, 2),
        "holds a ndarray",
    ),
    ("binary-cell", ".parquet", parquet_bytes(pd.DataFrame({"sequence": [b"\xff\xfe", b"GSH"]})), 1, "non-text bytes"),
    ("newline-id", ".csv", b'id,sequence\n"a\nb",MK1\nc,GSH\n', 1, "unknown residue letter(s) '1'"),
]


@pytest.mark.parametrize("name, suffix, data, row, problem", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_bad_records_carry_a_one_line_problem_naming_file_and_row(name, suffix, data, row, problem, tmp_path):
    path = write(tmp_path, name, suffix, data)
    records = read_records(path)
    bad = [r for r in records if r.problem is not None]
    rows = row if isinstance(row, tuple) else (row,)
    assert [r.row for r in bad] == list(rows) and problem in bad[0].problem
    assert bad[0].error.startswith(f"{path}: row {rows[0]}") and "\n" not in bad[0].error
    assert all(r.sequence for r in records if r.problem is None)


def test_duplicate_fasta_ids_are_refused_where_ids_key_the_output(tmp_path):
    path = write(tmp_path, "dup", ".fasta", b">a\nMKV\n>b\nGSH\n>a\nMKT\n")
    with pytest.raises(RecordError, match=rf"^{path}: row 3 \(id a\): id 'a' appears more than once$"):
        read_fasta(path)


LABEL_CASES = [  # residue labels (ss3) that do not fit: (case id, label cell, the problem named)
    ("short", "HH", "label length 2 != sequence length 3"),
    ("long", "HHEE", "label length 4 != sequence length 3"),
    ("unknown-class", "HXE", "label(s) 'X' in column 'label' not in task labels"),
    ("missing", "", "missing label"),
]


@pytest.mark.parametrize("name, label, problem", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_labels_of_the_wrong_length_are_one_line_per_row(name, label, problem, tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerows([["id", "sequence", "label"], ["ok", "MKV", "HEC"], ["bad", "MKV", label]])
    spec = TaskSpec(
        name="t",
        kind="residue_classification",
        labels=["H", "E", "C"],
        data={"train": str(path), "label_column": "label"},
    )
    with pytest.raises(DataError) as err:
        encode(read_source(str(path), spec.data), spec)
    (line,) = str(err.value).splitlines()
    assert line.startswith(f"{path}: row 2 (id bad): ") and problem in line, line


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from tasks.hub.export_folder import export_checkpoint
    from tests.helpers import best_checkpoint, short_rows, train_run

    root = tmp_path_factory.mktemp("fuzz_predict")
    short_rows("solubility.csv", 12).to_csv(root / "sol.csv", index=False)
    run = train_run(root / "run", ["task=solubility_local", f"task.data.train={root / 'sol.csv'}", "logger=csv"])
    return export_checkpoint(best_checkpoint(run), root / "export")


def test_predict_skips_the_bad_records_and_predicts_the_rest(exported, tmp_path):
    bad = [case for case in RECORD_CASES if case[1] == ".csv" and case[0] != "newline-id"]
    lines = ["id,sequence", "good1,MKTAYIAKQR"]
    for name, _, data, row, _ in bad:  # each case's bad row, under its own id
        cell = data.decode().splitlines()[row].split(",", 1)[1] if name != "short-row" else ""
        lines.append(f"{name},{cell}")
    lines += ["good2,GSHMSLFDFF", "bad-J,MKJ"]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    reported: list[str] = []
    skipped = predict_job.predict_file(
        exported, tmp_path / "in.csv", tmp_path / "out.csv", on_invalid="skip", progress=False, report=reported.append
    )
    assert skipped == reported and len(skipped) == len(bad) + 1
    assert all(line.startswith(f"{tmp_path / 'in.csv'}: row ") and "\n" not in line for line in skipped)
    assert pd.read_csv(tmp_path / "out.csv")["id"].tolist() == ["good1", "good2"]


# The streaming reader (fastankh.records.iter_records) on every input above: the same records and errors in any
# chunk size as the whole-file read.
STREAM_INPUTS = [(name, suffix, data) for name, suffix, data, *_ in FILE_CASES + RECORD_CASES] + [
    (f"valid{suffix}", suffix, valid_bytes(suffix)) for suffix in FORMATS
]


def outcome(read, *args, **kwargs) -> tuple[str, object]:
    """("ok", read(*args, **kwargs)) or ("error", the RecordError's message)."""
    try:
        return "ok", read(*args, **kwargs)
    except RecordError as err:
        return "error", str(err)


@pytest.mark.parametrize("name, suffix, data", STREAM_INPUTS, ids=[c[0] for c in STREAM_INPUTS])
def test_fuzz_inputs_read_the_same_in_any_chunks(name, suffix, data, tmp_path):
    path = write(tmp_path, name, suffix, data)
    column = "seq" if name.startswith("missing-column") else "sequence"
    expected = outcome(read_records, path, sequence_column=column)
    for k in (1, 7, 65536):
        assert outcome(lambda k: list(iter_records(path, sequence_column=column, chunk_rows=k)), k) == expected, k
    table = outcome(read_table, path, sequence_column=column)
    chunks = outcome(lambda: pd.concat(iter_table_chunks(path, sequence_column=column, chunk_rows=1)))
    if table[0] == "ok":
        pd.testing.assert_frame_equal(chunks[1].reset_index(drop=True), table[1])
    else:
        assert chunks == table == expected
