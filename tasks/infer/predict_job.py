"""`predict.py`'s work: an exported task model over a file of records, streamed, on the job harness
(tasks/infer/harness.py). Output columns: tasks/infer/prediction.py.

The input is read twice and never held: once to check every record before the model loads (invalid records are
reported, or stop the run with on_invalid=error), once to predict. Valid records are cut, in input order, into
windows of `window` records; rank r of W predicts windows r, r + W, ... and writes each as one shard
`<output>.shards/w<index>.parquet` (plus `w<index>.npz` contact maps), once, atomically. Rank 0 then joins the
shards in window order into the output (CSV or Parquet; contact maps into one .npz), streaming one shard at a
time, and removes the folder. A rerun after a crash predicts only the windows without a shard; the folder's
run.json (the export's weights digest and the settings that change the results) refuses shards of another
model or settings, and each shard's digest of its records refuses a changed input.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from fastankh.atomic import atomic_path
from fastankh.batching import length_batches
from fastankh.embeddings.fingerprint import check_fingerprint, model_digest
from fastankh.embeddings.heap import release_free_memory
from fastankh.embeddings.inputs import windows
from fastankh.embeddings.seen import SeenRecords, digests
from fastankh.errors import DataError
from fastankh.precision import resolve_precision
from fastankh.records import Record, iter_records
from tasks.infer import harness
from tasks.infer.prediction import load_task_model, predict_batch

OUTPUT_SUFFIXES = (".csv", ".parquet")
MAPS_SUFFIX = ".npz"
ON_INVALID = ("skip", "error")
RUN_FILE = "run.json"
CHUNK = 4096


def checked(records: Iterable[Record], max_length: int | None = None) -> Iterator[tuple[Record, str | None]]:
    """Each record with its problem line (None when valid): an invalid sequence, a repeated id (outputs are keyed
    by id: the later records are the problem) or more than `max_length` residues. Streams: the repeated-id check
    keeps 16 bytes per record (fastankh.embeddings.seen)."""
    first_row = SeenRecords()  # id digest -> the row it was first met at

    def flush(chunk: list[Record]) -> Iterator[tuple[Record, str | None]]:
        ids = digests(r.id for r in chunk)
        earlier = first_row.lookup(ids).tolist()
        rows_here: dict[int, int] = {}
        new_ids, new_rows = [], []
        for r, i, before in zip(chunk, ids.tolist(), earlier):
            if r.problem is not None:
                yield r, r.error
                continue
            row = before or rows_here.get(i)
            if row:
                yield r, f"{r.where}: id {r.id!r} appears more than once (first at row {row})"
            elif max_length is not None and len(r.sequence) > max_length:
                yield r, f"{r.where}: {len(r.sequence)} residues > max_length={max_length} (raise max_length)"
            else:
                rows_here[i] = r.row
                new_ids.append(i)
                new_rows.append(r.row)
                yield r, None
        first_row.add(np.array(new_ids, dtype=np.uint64), np.array(new_rows, dtype=np.uint64))

    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) == CHUNK:
            yield from flush(chunk)
            chunk = []
    yield from flush(chunk)


def check_records(records: Iterable[Record], max_length: int | None = None) -> tuple[list[int], list[str]]:
    """(indices of valid records, one problem line per invalid record: `<file>: row <n> (id <id>): <problem>`)."""
    valid, problems = [], []
    for i, (_, problem) in enumerate(checked(records, max_length)):
        (valid if problem is None else problems).append(i if problem is None else problem)
    return valid, problems


def window_digest(window: list[Record]) -> str:
    return hashlib.sha256("\n".join(f"{r.id}\t{r.sequence}" for r in window).encode()).hexdigest()[:16]


def shard_dir(output: str | Path) -> Path:
    """The shard folder of an output file: `<output>.shards` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


class PredictJob:
    """Predict windows of valid records into shards, then join them (see the module docstring)."""

    def __init__(self, cfg: Any, tokenizer: Any, kind: str, fingerprint: dict[str, Any]):
        self.cfg, self.tokenizer, self.kind, self.fingerprint = cfg, tokenizer, kind, fingerprint
        self.folder = shard_dir(cfg.output)
        self.with_maps = cfg.contact_maps is not None

    def setup(self, rank: int, world_size: int, token: str) -> None:
        self.rank, self.world_size = rank, world_size
        run = self.folder / RUN_FILE
        if run.is_file():
            saved = json.loads(run.read_text())
            check_fingerprint(saved, self.fingerprint, str(self.folder))
        else:  # every rank may write it: the same content, atomically
            with atomic_path(run) as tmp:
                tmp.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True) + "\n")

    def all_windows(self) -> Iterator[list[Record]]:
        cfg = self.cfg
        valid = (
            r
            for r, problem in checked(iter_records(cfg.input, cfg.id_column, cfg.sequence_column), cfg.max_length)
            if problem is None
        )
        return windows(valid, cfg.window)

    def shard(self, index: int) -> Path:
        return self.folder / f"w{index:09d}.parquet"

    def windows(self) -> Iterator[tuple[int, list[Record]]]:
        for index, window in enumerate(self.all_windows()):
            if index % self.world_size != self.rank:
                continue
            path = self.shard(index)
            if path.is_file():
                import pyarrow.parquet as pq

                if (pq.read_schema(path).metadata or {}).get(b"digest", b"").decode() == window_digest(window):
                    continue  # written by an earlier run
                raise DataError(
                    f"{path}: written for other records than window {index} of the input, which changed since; "
                    f"delete {self.folder} to start over"
                )
            yield index, window

    def step(self, model: torch.nn.Module, item: tuple[int, list[Record]]) -> tuple[list[dict], dict[str, np.ndarray]]:
        _, window = item
        rows: list[dict | None] = [None] * len(window)
        maps: dict[str, np.ndarray] | None = {} if self.with_maps else None
        for batch in length_batches([len(r.sequence) for r in window], self.cfg.batch_size):
            for i, row in zip(batch, predict_batch(model, self.tokenizer, self.kind, [window[i] for i in batch], maps)):
                rows[i] = row
        return rows, maps or {}

    def write(self, item: tuple[int, list[Record]], result: tuple[list[dict], dict[str, np.ndarray]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        index, window = item
        rows, maps = result
        if maps:  # first: a window counts as done only once its table exists
            with atomic_path(self.folder / f"w{index:09d}{MAPS_SUFFIX}") as tmp, open(tmp, "wb") as f:
                np.savez(f, **{f"m{j}": maps[r.id] for j, r in enumerate(window)})
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        table = table.replace_schema_metadata({"digest": window_digest(window)})
        with atomic_path(self.shard(index)) as tmp:
            pq.write_table(table, tmp)
        release_free_memory()  # see fastankh.embeddings.heap

    def flush(self) -> None:
        pass  # each window is written as soon as it is predicted

    def finish(self) -> None:
        """Join the shards in window order into the output (and the contact maps), then remove the folder."""
        import pyarrow.parquet as pq

        shards = sorted(self.folder.glob("w*.parquet"))
        expected = sum(1 for _ in self.all_windows())
        if len(shards) != expected:
            raise DataError(f"{self.folder}: {expected - len(shards)} window(s) missing after the run; rerun")
        output = Path(self.cfg.output)
        with atomic_path(output) as tmp:
            if output.suffix.lower() == ".parquet":
                writer = None
                for path in shards:
                    table = pq.read_table(path).replace_schema_metadata(None)
                    writer = writer or pq.ParquetWriter(str(tmp), table.schema)
                    writer.write_table(table)
                if writer is not None:
                    writer.close()
            else:
                with open(tmp, "w", newline="") as f:
                    for n, path in enumerate(shards):
                        pq.read_table(path).to_pandas().to_csv(f, index=False, header=n == 0)
        if self.with_maps:
            self.join_maps(shards, Path(self.cfg.contact_maps))
        shutil.rmtree(self.folder, ignore_errors=True)

    def join_maps(self, shards: list[Path], path: Path) -> None:
        """Every shard's contact maps into one .npz keyed by record id, one array at a time."""
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as out:
            for shard in shards:
                ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
                with np.load(shard.with_suffix(MAPS_SUFFIX)) as maps:
                    for j, record_id in enumerate(ids):
                        with out.open(f"{record_id}.npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, maps[f"m{j}"], allow_pickle=False)


def predict_file(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    batch_size: int = 16,
    on_invalid: str = "skip",
    id_column: str = "id",
    sequence_column: str = "sequence",
    max_length: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    contact_maps: str | Path | None = None,
    window: int = 1024,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> list[str]:
    """Predict every valid record of `input` into `output` (the keys of conf/cli/predict.yaml); returns the
    problem lines of skipped records. Bad input raises DataError before the model loads (on_invalid=error: one
    line per invalid record); on_invalid=skip passes each line to `report` (rank 0) and predicts the rest.
    `contact_maps` (residue_pair_classification models): also write each record's (L, L) contact probability
    map to this .npz, keyed by record id. `precision`: the dtype the model computes in (auto | 32 | bf16)."""
    cfg = SimpleNamespace(**{k: v for k, v in locals().items() if k != "report"})
    if cfg.on_invalid not in ON_INVALID:
        raise DataError(f"on_invalid must be one of {ON_INVALID}, got {cfg.on_invalid!r}")
    if cfg.batch_size < 1 or cfg.window < 1:
        raise DataError("batch_size and window must be >= 1")
    try:  # a bad precision (e.g. fp16) stops before any work
        resolve_precision(cfg.precision, "cpu")
    except ValueError as err:
        raise DataError(str(err)) from None
    if Path(cfg.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{cfg.output}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if cfg.contact_maps is not None and Path(cfg.contact_maps).suffix.lower() != MAPS_SUFFIX:
        raise DataError(f"{cfg.contact_maps}: contact_maps must end in {MAPS_SUFFIX}")
    problems, valid = [], 0
    for _, problem in checked(iter_records(cfg.input, cfg.id_column, cfg.sequence_column), cfg.max_length):
        if problem is None:
            valid += 1
        else:
            problems.append(problem)
    if problems and cfg.on_invalid == "error":
        raise DataError("\n".join(problems))
    trainer = harness.build_predict_trainer(*(getattr(cfg, k) for k in harness.TRAINER_KEYS), progress=cfg.progress)
    if report is not None and trainer.is_global_zero:
        for line in problems:
            report(line)
    if not valid:
        raise DataError(f"{cfg.input}: no valid records to predict")
    compute = harness.compute_dtype(cfg.precision, trainer)
    model, tokenizer, kind = load_task_model(cfg.model, "cpu", "32")  # cast to `compute` on its device
    if cfg.contact_maps is not None and kind != "residue_pair_classification":
        raise DataError(f"contact_maps needs a residue_pair_classification model; {cfg.model} is {kind}")
    fingerprint = {
        "model": model_digest(model), "precision": str(compute).removeprefix("torch."),
        "contact_maps": cfg.contact_maps is not None, "max_length": cfg.max_length, "window": cfg.window,
    }  # fmt: skip
    harness.run_job(trainer, PredictJob(cfg, tokenizer, kind, fingerprint), model, compute)
    return problems


def predict(cfg: DictConfig) -> list[str]:
    """predict.py's body on conf/cli/predict.yaml's `cfg`: skipped records are reported on stderr (rank 0) and
    rank 0 prints what it wrote. Returns the problem lines of skipped records."""
    options = {k: cfg[k] for k in cfg if k in inspect.signature(predict_file).parameters}
    skipped = predict_file(**options, report=lambda line: print(f"skipping {line}", file=sys.stderr))
    if rank_zero_only.rank == 0:  # the only process unless devices/num_nodes > 1
        print(f"wrote {cfg.output}" + (f" ({len(skipped)} invalid record(s) skipped)" if skipped else ""))
    return skipped


__all__ = ["PredictJob", "check_records", "checked", "predict", "predict_file", "shard_dir"]
