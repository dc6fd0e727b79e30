"""`open_embeddings(path)`: one lazy, read-only reader for every output format.

The result is a Mapping record id -> tensor that loads a record when it is asked for: `len`, iteration (in
stored order), `in`, `.ids` and `.metadata` (the run fingerprint) read only the index, never the tensors.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .formats import SHARD_FORMATS, format_of, parse_meta
from .stores import INDEX_FILE, RUN_FILE, read_run_file, shard_paths, unescape_id

OPEN_SHARDS = 8  # shard readers kept open at once


class Embeddings(Mapping[str, torch.Tensor]):
    """Embeddings of a finished (or interrupted) run; see open_embeddings. The index (id -> where) is read on
    first use, so opening costs nothing until the mapping is used."""

    def __init__(
        self,
        path: Path,
        index: Callable[[], dict[str, Any]],
        get: Callable[[Any, str], torch.Tensor],
        metadata: dict[str, Any],
    ):
        self.path, self._index, self._get, self.metadata = path, index, get, metadata
        self._loaded: dict[str, Any] | None = None

    @property
    def _where(self) -> dict[str, Any]:
        if self._loaded is None:
            self._loaded = self._index()
        return self._loaded

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    def __getitem__(self, record_id: str) -> torch.Tensor:
        return self._get(self._where[record_id], record_id)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"Embeddings({str(self.path)!r})"


def _open_folder(path: Path) -> Embeddings:
    run = read_run_file(path)
    fmt = SHARD_FORMATS[run.get("format", format_of(path))]
    shards: list[str] = []

    def index() -> dict[str, int]:
        """record id -> its shard's number in `shards` (a small int: cheap for millions of records)."""
        where: dict[str, int] = {}
        number: dict[str, int] = {}
        if (path / INDEX_FILE).is_file():
            with open(path / INDEX_FILE, encoding="utf-8") as f:
                for line in f:
                    escaped, shard = line.rstrip("\n").split("\t")
                    if shard not in number:
                        number[shard] = len(shards)
                        shards.append(shard)
                    where[unescape_id(escaped)] = number[shard]
        else:  # an interrupted run: what its finished shards hold
            for shard in shard_paths(path, fmt.suffix):
                shards.append(shard.name)
                where.update(dict.fromkeys(parse_meta(fmt.read_meta(shard))[0], len(shards) - 1))
        return where

    readers: OrderedDict[int, Any] = OrderedDict()

    def get(shard: int, record_id: str) -> torch.Tensor:
        if shard not in readers:
            readers[shard] = fmt.opener(path / shards[shard])
            if len(readers) > OPEN_SHARDS:
                readers.popitem(last=False)
        readers.move_to_end(shard)
        return readers[shard](record_id)

    return Embeddings(path, index, get, run.get("fingerprint", {}))


def _open_hdf5(path: Path) -> Embeddings:
    import h5py

    handle = h5py.File(path, "r")
    metadata = json.loads(handle.attrs.get("fastankh", "{}"))

    def index() -> dict[str, str]:
        return {unescape_id(name): name for name in handle}

    return Embeddings(path, index, lambda name, _: torch.from_numpy(handle[name][()]), metadata)


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
