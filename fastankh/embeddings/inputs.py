"""The records to embed, streamed: input sources, the sequence and length rules, the duplicate policy, windows.

Sources: a file path (FASTA, CSV/TSV or Parquet, optionally gzipped: fastankh.records, the reader training and
predict use), a dict id -> sequence, a list of sequences (each keyed by itself), or any iterable of sequences or
(id, sequence) pairs. Files, lists and dicts are read twice: once to check every record before any compute (a
bad record is one line naming it), once to embed; a one-shot iterator is checked as it is embedded.

Duplicate policy (the same for embed_dataset and embed.py): a record whose id was already met with the same
sequence is the same record and is embedded and stored once (where it first appears); the same id with another
sequence is an error naming the later record.

Records are cut, in input order, into windows of `window` records; each window is length-sorted into batches
and its results are restored to input order, so memory follows the window, not the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, RecordError, UserError
from ..records import RECORD_SUFFIXES, Record, clean_sequence, file_suffix, iter_records
from .seen import MISSING, SeenRecords, digests

Source = str | os.PathLike | Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]]
CHUNK = 4096  # records checked against the seen ids at once (vectorised digests)


def is_reiterable(source: Source) -> bool:
    """Whether `source` can be read twice (a file, a list, a dict), so it can be checked before any compute."""
    return isinstance(source, (str, os.PathLike, Mapping, Sequence))


def raw_records(source: Source, id_column: str = "id", sequence_column: str = "sequence") -> Iterator[Record]:
    """The records of `source` in order, cleaned by fastankh.records.clean_sequence; an invalid one keeps its
    `problem` (see checked_records)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            if file_suffix(path) in RECORD_SUFFIXES:
                raise InputNotFoundError(f"{path}: file not found")
            raise UserError(
                "sequences must be a list of sequences, a dict id -> sequence, an iterable of (id, sequence) "
                f"pairs or a file path (FASTA or table); {path[:50]!r} is not an existing file"
            )
        yield from iter_records(path, id_column, sequence_column)
        return
    items = source.items() if isinstance(source, Mapping) else source
    for i, item in enumerate(items):
        if isinstance(source, Mapping) or isinstance(item, tuple):
            key, raw = item
            key, where = str(key), f"record {key!r}"
        else:
            key, raw, where = item, item, f"sequence #{i}"
        if not isinstance(raw, str):
            raise TypeError(f"{where}: expected a string sequence, got {type(raw).__name__}")
        try:
            sequence, problem = clean_sequence(raw), None
        except ValueError as err:
            sequence, problem = "", str(err)
        yield Record(key, sequence, i + 1, where, problem)


def checked_records(
    records: Iterable[Record],
    max_length: int,
    truncate: bool = False,
    done: SeenRecords | None = None,
    output: str = "the output",
    length_option: str = "max_len",
    length_hint: str = "raise max_len or pass truncate=True",
) -> Iterator[Record]:
    """The valid records still to embed, in order: each cut to `max_length` residues when `truncate` (else a
    longer one is an error), repeats dropped (see the module docstring), those in `done` (id digest -> sequence
    digest of records already in `output`) skipped. Raises RecordError on the first invalid record."""
    seen = SeenRecords()
    chunk: list[Record] = []

    def flush() -> Iterator[Record]:
        ids, seqs = digests(r.id for r in chunk), digests(r.sequence for r in chunk)
        earlier = seen.lookup(ids)
        stored = done.lookup(ids) if done is not None else np.zeros(len(ids), dtype=np.uint64)
        first: dict[int, int] = {}  # id digest -> sequence digest, within the chunk
        keep = []
        for r, i, s, e, d in zip(chunk, ids.tolist(), seqs.tolist(), earlier.tolist(), stored.tolist()):
            before = e if e != MISSING else first.get(i, 0)
            if before:
                if before != s:
                    raise RecordError(f"{r.where}: id {r.id!r} appears twice with different sequences")
                continue
            first[i] = s
            if d and d != s:
                raise RecordError(
                    f"{r.where}: {output} holds id {r.id!r} with another sequence; write to another output"
                )
            keep.append((r, i, s, not d))
        new = [(i, s) for _, i, s, _ in keep]
        seen.add(np.array([i for i, _ in new], dtype=np.uint64), np.array([s for _, s in new], dtype=np.uint64))
        return (r for r, _, _, todo in keep if todo)

    for r in records:
        if r.problem is not None:
            raise RecordError(r.error)
        if len(r.sequence) > max_length:
            if not truncate:
                raise RecordError(
                    f"{r.where}: {len(r.sequence)} residues > {length_option}={max_length} ({length_hint})"
                )
            r = replace(r, sequence=r.sequence[:max_length])
        chunk.append(r)
        if len(chunk) == CHUNK:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


def windows(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Consecutive lists of `size` records (the last may be shorter)."""
    window: list[Record] = []
    for r in records:
        window.append(r)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def count(records: Iterable[Any]) -> int:
    return sum(1 for _ in records)


__all__ = ["Source", "checked_records", "count", "is_reiterable", "raw_records", "windows"]
