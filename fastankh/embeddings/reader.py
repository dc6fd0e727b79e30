"""`open_embeddings(path)`: one lazy, read-only reader for every output format.

The result is a Mapping record id -> tensor that loads a record when it is asked for: `len`, iteration (in
stored order), `in`, `.ids` and `.metadata` (the run fingerprint) read only the index, never the tensors.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .formats import SHARD_FORMATS, format_of, parse_meta
from .stores import INDEX_FILE, RUN_FILE, read_run_file, shard_paths, unescape_id

OPEN_SHARDS = 8  # shard readers kept open at once


class Embeddings(Mapping[str, torch.Tensor]):
    """Embeddings of a finished (or interrupted) run; see open_embeddings."""

    def __init__(self, path: Path, where: dict[str, Any], get, metadata: dict[str, Any]):
        self.path, self._where, self._get, self.metadata = path, where, get, metadata

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    def __getitem__(self, record_id: str) -> torch.Tensor:
        return self._get(self._where[record_id])

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"Embeddings({str(self.path)!r}, {len(self)} records)"


def _open_folder(path: Path) -> Embeddings:
    run = read_run_file(path)
    fmt = SHARD_FORMATS[run.get("format", format_of(path))]
    where: dict[str, tuple[str, str]] = {}
    index = path / INDEX_FILE
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            for line in f:
                escaped, shard = line.rstrip("\n").split("\t")
                record_id = unescape_id(escaped)
                where[record_id] = (shard, record_id)
    else:  # an interrupted run: what its finished shards hold
        for shard in shard_paths(path, fmt.suffix):
            for record_id in parse_meta(fmt.read_meta(shard))[0]:
                where[record_id] = (shard.name, record_id)
    readers: OrderedDict[str, Any] = OrderedDict()

    def get(key: tuple[str, str]) -> torch.Tensor:
        shard, record_id = key
        if shard not in readers:
            readers[shard] = fmt.opener(path / shard)
            if len(readers) > OPEN_SHARDS:
                readers.popitem(last=False)
        readers.move_to_end(shard)
        return readers[shard](record_id)

    return Embeddings(path, where, get, run.get("fingerprint", {}))


def _open_hdf5(path: Path) -> Embeddings:
    import h5py

    handle = h5py.File(path, "r")
    where = {unescape_id(name): name for name in handle}
    metadata = json.loads(handle.attrs.get("fastankh", "{}"))
    return Embeddings(path, where, lambda name: torch.from_numpy(handle[name][()]), metadata)


def open_embeddings(path: str | os.PathLike) -> Embeddings:
    """A read-only Mapping record id -> tensor over an output of embed_dataset / embed.py (a folder of
    safetensors or Parquet shards, or an HDF5 file); tensors load on access."""
    path = Path(path)
    if format_of(path) == "hdf5":
        if not path.is_file():
            partial = path.with_name(path.name + ".partial")
            raise UserError(
                f"{path}: not found" + (f" (an unfinished run left {partial.name})" if partial.exists() else "")
            )
        return _open_hdf5(path)
    if not (path / RUN_FILE).is_file():
        raise UserError(f"{path}: not a FastANKH embeddings output (no {RUN_FILE})")
    return _open_folder(path)


__all__ = ["Embeddings", "open_embeddings"]
