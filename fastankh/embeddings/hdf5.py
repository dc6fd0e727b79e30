"""HDF5 output: one file, one dataset per record at the root, named by its record id, as ProtTrans and
bio_embeddings write them (`h5py.File(path)[record_id][()]` is the array). Ids are stored escaped (`/` as `\\s`,
backslash, tab and newline as `\\\\`, `\\t`, `\\n`) because `/` separates HDF5 groups; each dataset keeps the
original id in its attribute `id` and the digest of its sequence in `sequence_digest`. The run fingerprint is
the file attribute `fastankh`.

The file is written as `<name>.partial` and renamed to `<name>` when the run completes; a rerun appends to it
(records already there are skipped). HDF5 is not crash-safe: a process killed while writing can leave the
partial file unreadable, which a rerun reports; a folder of shards (the default format) survives any kill.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..records import Record
from .fingerprint import check_fingerprint
from .seen import SeenRecords, digest64
from .stores import escape_id


class Hdf5Store:
    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]):
        import h5py

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.exists() and not self.partial.exists():
            os.replace(self.path, self.partial)  # a finished output takes more records: appended, renamed back
        try:
            self.file = h5py.File(self.partial, "a", track_order=True)  # iteration in stored order
        except OSError as err:
            raise UserError(
                f"{self.partial}: unreadable HDF5 file ({str(err).splitlines()[0]}); an interrupted run can leave "
                "it so (try `h5clear -s`), or delete it to start over"
            ) from None
        saved = self.file.attrs.get("fastankh")
        if saved is None and len(self.file):
            self.file.close()
            raise UserError(f"{self.path}: an HDF5 file FastANKH did not write; refusing to add to it")
        if saved is not None:
            try:
                check_fingerprint(json.loads(saved), fingerprint, str(self.path))
            except UserError:
                self.file.close()
                raise
        else:
            self.file.attrs["fastankh"] = json.dumps(fingerprint, sort_keys=True)

    def done(self) -> SeenRecords:
        seen = SeenRecords()
        ids, seqs = [], []
        for name in self.file:
            attrs = self.file[name].attrs
            ids.append(digest64(str(attrs["id"])))
            seqs.append(int(attrs["sequence_digest"]))
        seen.add(np.array(ids, dtype=np.uint64), np.array(seqs, dtype=np.uint64))
        return seen

    def add(self, records: Sequence[Record], tensors: Sequence[torch.Tensor]) -> None:
        for r, t in zip(records, tensors):
            if t.dtype == torch.bfloat16:
                raise UserError(f"{self.path}: HDF5 stores float32 or float16, not bfloat16 (set dtype)")
            name = escape_id(r.id) if r.id not in (".", "..") else escape_id(r.id).replace(".", "\\d")
            data = self.file.create_dataset(name, data=t.numpy())
            data.attrs["id"] = r.id
            data.attrs["sequence_digest"] = np.uint64(digest64(r.sequence))
        self.file.flush()

    def flush(self) -> None:
        self.file.flush()

    def finish(self) -> Path:
        self.file.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


__all__ = ["Hdf5Store"]
