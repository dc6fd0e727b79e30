"""The file formats of an embeddings output, each a writer of one shard and a reader of its records.

- safetensors (default; a folder `<name>/` of `part-*.safetensors` shards): one tensor per record, keyed by the
  record id; the shard's metadata holds the ids in stored order and their sequence digests.
- Parquet (a folder `<name>.parquet/` of `part-*.parquet` shards): columns `id` and `embedding` (a fixed-size
  list of d floats, or per residue a list of them), loadable with `datasets.load_dataset("parquet",
  data_files="<name>.parquet/*.parquet")`; the same bookkeeping in the schema's metadata.
- HDF5 (`<name>.h5` / `.hdf5`, one file): one dataset per record id at the root, as ProtTrans and bio_embeddings
  write them (see hdf5.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

SHARD_PREFIX = "part-"


def shard_meta(ids: list[str], digests: list[int], run: str) -> dict[str, str]:
    """The bookkeeping a shard carries: the ids in stored order, their sequence digests and the run digest."""
    return {"fastankh": "embeddings-shard-v1", "run": run, "ids": json.dumps(ids), "digests": json.dumps(digests)}


def parse_meta(meta: dict[str, str] | None) -> tuple[list[str], list[int], str] | None:
    """(ids, sequence digests, run digest) of a shard's metadata; None when it is not a FastANKH shard."""
    if not meta or meta.get("fastankh") != "embeddings-shard-v1":
        return None
    return json.loads(meta["ids"]), json.loads(meta["digests"]), meta["run"]


class SafetensorsShards:
    name = "safetensors"
    suffix = ".safetensors"

    @staticmethod
    def write(path: Path, ids: list[str], tensors: list[torch.Tensor], meta: dict[str, str]) -> None:
        from safetensors.torch import save_file

        save_file({i: t.contiguous() for i, t in zip(ids, tensors)}, str(path), metadata=meta)

    @staticmethod
    def read_meta(path: Path) -> dict[str, str] | None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.metadata()

    @staticmethod
    def opener(path: Path) -> Any:
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        return lambda record_id: handle.get_tensor(record_id)


class ParquetShards:
    name = "parquet"
    suffix = ".parquet"
    _arrow_types = {torch.float32: "float32", torch.float16: "float16"}

    @classmethod
    def write(cls, path: Path, ids: list[str], tensors: list[torch.Tensor], meta: dict[str, str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dtype = tensors[0].dtype
        if dtype not in cls._arrow_types:
            raise UserError(f"{path.parent}: Parquet stores float32 or float16, not {dtype} (set dtype)")
        width = tensors[0].shape[-1]
        flat = pa.array(torch.cat([t.reshape(-1) for t in tensors]).numpy())
        rows = pa.FixedSizeListArray.from_arrays(flat, width)
        if tensors[0].dim() == 2:  # per residue: a list of rows per record
            offsets = np.concatenate([[0], np.cumsum([t.shape[0] for t in tensors])]).astype(np.int32)
            column = pa.ListArray.from_arrays(pa.array(offsets), rows)
        else:
            column = rows
        table = pa.table({"id": pa.array(ids, pa.string()), "embedding": column})
        table = table.replace_schema_metadata({k: v for k, v in meta.items()})
        pq.write_table(table, str(path))

    @staticmethod
    def read_meta(path: Path) -> dict[str, str] | None:
        import pyarrow.parquet as pq

        meta = pq.read_schema(str(path)).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items()}

    @staticmethod
    def opener(path: Path) -> Any:
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        rows = {record_id: i for i, record_id in enumerate(table.column("id").to_pylist())}
        column = table.column("embedding").combine_chunks()

        def get(record_id: str) -> torch.Tensor:
            value = column[rows[record_id]].values  # the record's floats (or its per-residue rows)
            if hasattr(value, "flatten"):  # per residue: a list of fixed-size lists
                width = value.type.list_size
                return torch.from_numpy(value.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).copy())
            return torch.from_numpy(value.to_numpy(zero_copy_only=False).copy())

        return get


SHARD_FORMATS = {f.name: f for f in (SafetensorsShards, ParquetShards)}


def format_of(path: str | Path) -> str:
    """The output format its name asks for: `.h5`/`.hdf5` HDF5, `.parquet` Parquet, anything else safetensors."""
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    return "parquet" if suffix == ".parquet" else "safetensors"


__all__ = [
    "SHARD_FORMATS",
    "SHARD_PREFIX",
    "ParquetShards",
    "SafetensorsShards",
    "format_of",
    "parse_meta",
    "shard_meta",
]
