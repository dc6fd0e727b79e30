"""Where a run's outputs go: a folder of shards (safetensors or Parquet), an HDF5 file, or a dict in memory.

Every store takes whole windows (`add`), knows which records it already holds (`done`: id digest -> sequence
digest, for resume) and is closed by `finish` (rank 0, once every process has flushed).

A shard folder holds `run.json` (the run fingerprint, written first), shards `part-<run>-r<rank>-<n>` written
once each, atomically (temp file, then rename), when the buffered windows reach `shard_bytes` and at the end, and
`index.tsv` (one line `<id>\t<shard file>` per record, in stored order: shard by shard in name order, which is
run by run, and within one process input order), written by rank 0 when the run is complete. A killed run
leaves only whole shards; the rerun skips their records and never rewrites them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError
from ..records import Record
from .fingerprint import check_fingerprint, fingerprint_digest
from .formats import SHARD_FORMATS, SHARD_PREFIX, format_of, parse_meta, shard_meta
from .seen import SeenRecords, digest64

RUN_FILE = "run.json"
INDEX_FILE = "index.tsv"
DEFAULT_SHARD_BYTES = 256 * 2**20


def escape_id(record_id: str) -> str:
    """An id as one field of index.tsv (and one HDF5 name): backslash, tab, newline and '/' escaped."""
    return record_id.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("/", "\\s")


def unescape_id(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append({"\\": "\\", "t": "\t", "n": "\n", "s": "/", "d": "."}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def shard_paths(folder: Path, suffix: str) -> list[Path]:
    """The finished shards of a folder in name order (temp files of an interrupted write are hidden)."""
    return sorted(folder.glob(f"{SHARD_PREFIX}*{suffix}")) if folder.is_dir() else []


def read_run_file(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder / RUN_FILE}: unreadable ({err})") from None


def packed(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors copied into one buffer, as non-overlapping views of it (safetensors and Parquet write those).

    A shard buffers up to `shard_bytes` of outputs until it is written: as one allocation per window instead of
    thousands of small ones scattered among the freed activations, they do not pin the allocator's heap pages,
    so fastankh.embeddings.heap can return those (with the per-window trim, pooled 10^5 sequences: peak resident
    size 3.56 GB -> 1.53 GB).
    """
    if not tensors:
        return []
    block = torch.cat([t.reshape(-1) for t in tensors])
    return [part.view(t.shape) for part, t in zip(block.split([t.numel() for t in tensors]), tensors)]


class MemoryStore:
    """Results kept in a dict, for small inputs (no save_path)."""

    def __init__(self) -> None:
        self.results: dict[str, torch.Tensor] = {}

    def done(self) -> SeenRecords:
        return SeenRecords()

    def add(self, records: Sequence[Record], tensors: Sequence[torch.Tensor]) -> None:
        self.results.update((r.id, t) for r, t in zip(records, tensors))

    def flush(self) -> None:
        pass

    def finish(self) -> dict[str, torch.Tensor]:
        return self.results


class ShardFolder:
    """A folder of shards in one of fastankh.embeddings.formats' shard formats (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: dict[str, Any],
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        rank: int = 0,
        run_token: str | None = None,
    ):
        self.path = Path(path)
        self.format = SHARD_FORMATS[format_of(self.path)]
        self.run = fingerprint_digest(fingerprint)
        self.shard_bytes, self.rank = shard_bytes, rank
        self.token = run_token or f"{time.time_ns():020d}"  # sorts runs in time order; never reused
        self.written = 0
        self.buffer: list[tuple[Record, torch.Tensor]] = []
        self.buffered_bytes = 0
        if self.path.is_file():
            raise UserError(
                f"{self.path}: not a FastANKH embeddings output (a file; this output is a folder of shards); "
                "refusing to overwrite it"
            )
        if (self.path / RUN_FILE).is_file():
            saved = read_run_file(self.path)
            check_fingerprint(saved.get("fingerprint", {}), fingerprint, str(self.path))
        elif self.path.is_dir() and any(not p.name.startswith(".") for p in self.path.iterdir()):
            raise UserError(f"{self.path}: a folder without {RUN_FILE}, not a FastANKH embeddings output")
        else:  # every process may write it (hidden temp files of another's write are ignored): same content, atomic
            with atomic_path(self.path / RUN_FILE) as tmp:
                run = {"format": self.format.name, "fingerprint": fingerprint}
                tmp.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")

    def shards(self) -> list[Path]:
        return shard_paths(self.path, self.format.suffix)

    def done(self) -> SeenRecords:
        """The records already in finished shards (a shard of another run's settings is refused)."""
        seen = SeenRecords()
        for path in self.shards():
            try:
                parsed = parse_meta(self.format.read_meta(path))
            except Exception as err:  # a truncated or foreign file: one line naming it
                raise UserError(
                    f"{path}: unreadable shard ({type(err).__name__}: {err}); delete it to recompute its records"
                ) from None
            if parsed is None or parsed[2] != self.run:
                raise UserError(f"{path}: a shard of another run (other settings or not FastANKH's); delete it")
            ids, seqs, _ = parsed
            fresh = np.array([digest64(i) for i in ids], dtype=np.uint64)
            seen.add(fresh, np.array(seqs, dtype=np.uint64))
        return seen

    def add(self, records: Sequence[Record], tensors: Sequence[torch.Tensor]) -> None:
        self.buffer.extend(zip(records, packed(tensors)))
        self.buffered_bytes += sum(t.numel() * t.element_size() for t in tensors)
        if self.buffered_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered windows as one new shard, atomically."""
        if not self.buffer:
            return
        name = f"{SHARD_PREFIX}{self.token}-r{self.rank:05d}-{self.written:06d}{self.format.suffix}"
        ids = [r.id for r, _ in self.buffer]
        meta = shard_meta(ids, [digest64(r.sequence) for r, _ in self.buffer], self.run)
        with atomic_path(self.path / name) as tmp:
            self.format.write(tmp, ids, [t for _, t in self.buffer], meta)
        self.written += 1
        self.buffer, self.buffered_bytes = [], 0

    def finish(self) -> Path:
        """Write index.tsv from every shard (rank 0, after all processes flushed) and drop temp files that killed
        runs left behind."""
        self.flush()
        with atomic_path(self.path / INDEX_FILE) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for path in self.shards():
                ids, _, _ = parse_meta(self.format.read_meta(path))
                out.writelines(f"{escape_id(i)}\t{path.name}\n" for i in ids)
        for stale in self.path.glob(f".{SHARD_PREFIX}*.tmp"):
            stale.unlink(missing_ok=True)
        return self.path


def open_store(
    path: str | os.PathLike | None,
    fingerprint: dict[str, Any] | None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    rank: int = 0,
    world_size: int = 1,
    run_token: str | None = None,
):
    """The store for an output path (its suffix picks the format, fastankh.embeddings.formats.format_of), or a
    MemoryStore for None."""
    if path is None:
        return MemoryStore()
    if format_of(path) == "hdf5":
        from .hdf5 import Hdf5Store

        if world_size > 1:
            raise UserError(f"{path}: an HDF5 file has one writer; with several processes write a folder of shards")
        return Hdf5Store(path, fingerprint)
    return ShardFolder(path, fingerprint, shard_bytes, rank, run_token)


__all__ = [
    "DEFAULT_SHARD_BYTES",
    "INDEX_FILE",
    "RUN_FILE",
    "MemoryStore",
    "ShardFolder",
    "escape_id",
    "open_store",
    "read_run_file",
    "shard_paths",
    "unescape_id",
]
