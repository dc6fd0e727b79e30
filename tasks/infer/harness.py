"""Distributed, resumable inference for embed.py and predict.py on Lightning's predict loop.

The work is planned once, as one process would run it: the records still to do are cut into length-sorted
batches by fastankh.batching.length_batches (the caller passes the plan), and with W processes
(`devices` x `num_nodes`, strategy ddp) rank r runs batches r, r + W, r + 2W, ... Lightning's
DistributedSampler is off (it would pad the last share with repeated records): every batch runs on exactly one
rank, none is dropped, and a batch holds the same records as on one process, so the results are the same.

`ShardWriter` saves each rank's results every `save_every` batches as a new file in the shard folder
`<output>.shards/` (temp file + rename: a crash never leaves half a shard). Once every rank is done (barrier),
rank 0 merges the shards into the output, atomically, and removes the folder. A rerun after a crash reads
the shards and plans only the records they lack. The folder's meta.json holds the options that change the
results; shards written with other options are refused. Ranks on several nodes need a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, Sampler

from fastankh.atomic import atomic_path
from fastankh.precision import resolve_precision
from tasks.errors import DataError

SHARDS_SUFFIX = ".shards"
META_FILE = "meta.json"
SHARD_PREFIX = "part-"
# conf/cli/embed.yaml and predict.yaml: the keys that mean what they mean in conf/trainer.
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy")


def shard_dir(output: str | os.PathLike) -> Path:
    """The shard folder of an output file: `<output>.shards` beside it."""
    output = Path(output)
    return output.with_name(output.name + SHARDS_SUFFIX)


def shard_files(folder: Path, suffix: str) -> list[Path]:
    """The finished shards in `folder` (temp files of an interrupted write are hidden and not matched)."""
    return sorted(folder.glob(f"{SHARD_PREFIX}*{suffix}")) if folder.is_dir() else []


def check_shard_options(folder: Path, options: dict[str, Any]) -> None:
    """Refuse a shard folder whose meta.json records other options than `options` (ShardWriter writes it)."""
    meta = folder / META_FILE
    if not meta.is_file():
        return
    options = json.loads(json.dumps(options))  # as they read back
    try:
        saved = json.loads(meta.read_text())
    except ValueError:
        saved = {}
    differ = [k for k in sorted(set(saved) | set(options)) if saved.get(k) != options.get(k)]
    if differ:
        was = ", ".join(f"{k}={saved.get(k)}" for k in differ)
        now = ", ".join(f"{k}={options.get(k)}" for k in differ)
        raise DataError(
            f"{folder}: shards of an earlier run with {was}; this run has {now}. "
            "Rerun with the same options to resume, or delete the folder"
        )


def check_model_files(name: str | os.PathLike) -> None:
    """A local model folder's JSON files parse and its safetensors files open; else a DataError naming the
    file (`<path>: <what is wrong>`). Hub ids and presets are left to their loaders."""
    folder = Path(name)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({err})") from None


def loading_error(name: str | os.PathLike, err: BaseException) -> DataError:
    """One line for a model that check_model_files passed but that still fails to load."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(f"{name}: cannot load the model ({type(err).__name__}: {first})")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (devices found, distributed setup) and its few-workers hint, hidden for a run."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*custom batch sampler `PlannedBatches`.*")  # it is
            warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def build_trainer(
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """A predict-only Trainer: no logger, no checkpoints, no sampler replacement (the plan is ours), a
    progress bar on rank 0 when `progress`. Several devices or nodes run strategy ddp (`auto`)."""
    try:
        with quiet_lightning():
            return L.Trainer(
                accelerator=accelerator,
                devices=devices,
                num_nodes=num_nodes,
                strategy=strategy,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=progress,
                use_distributed_sampler=False,
                callbacks=list(callbacks),
            )
    except (MisconfigurationException, ValueError, RuntimeError) as err:  # e.g. devices=2 on a 1-GPU machine
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"accelerator={accelerator} devices={devices} num_nodes={num_nodes}: {first}") from None


def compute_dtype(precision: str, trainer: L.Trainer) -> torch.dtype:
    """The dtype `precision` (auto | 32 | bf16) computes in on this trainer's device; a bad value is a DataError."""
    try:
        return resolve_precision(precision, trainer.strategy.root_device)
    except ValueError as err:
        raise DataError(str(err)) from None


class PlannedBatches(Sampler[list[int]]):
    """A fixed list of batches (lists of item indices), in order."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchRunner(L.LightningModule):
    """`step(model, items)` over this rank's share of planned batches (lists of indices into `items`).

    The plan is rank 0's (broadcast), so every rank runs a disjoint part of one plan. The model computes in
    `dtype` (cast on its device at the start)."""

    def __init__(
        self,
        model: torch.nn.Module,
        items: Sequence[Any],
        batches: list[list[int]],
        step: Callable[[torch.nn.Module, list[Any]], list[Any]],
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.model = model
        self.items, self.batches, self.step, self.compute_dtype = items, batches, step, dtype

    def predict_dataloader(self) -> DataLoader:
        plan = self.trainer.strategy.broadcast(self.batches, src=0)
        share = plan[self.trainer.global_rank :: self.trainer.world_size]
        # Lightning refuses a rank without batches (fewer batches than ranks): that rank runs one empty batch.
        return DataLoader(self.items, batch_sampler=PlannedBatches(share or [[]]), collate_fn=list)

    def on_predict_start(self) -> None:
        self.model.to(self.compute_dtype)

    def predict_step(self, batch: list[Any], batch_idx: int) -> list[Any]:
        return self.step(self.model, batch) if batch else []


class ShardWriter(BasePredictionWriter):
    """Each rank's results, `save_every` batches at a time, as new shard files `part-r<rank>-<token>-<n>`.

    `save(results, path)` writes one shard (a list of step results) to `path`; it is renamed into place only
    once complete. `options` (the settings that change results) go to the folder's meta.json."""

    def __init__(
        self,
        folder: Path,
        suffix: str,
        save: Callable[[list[Any], Path], None],
        options: dict[str, Any],
        save_every: int = 100,
    ):
        super().__init__(write_interval="batch")
        self.folder, self.suffix, self.save, self.options = folder, suffix, save, options
        self.save_every = max(1, int(save_every))
        self.token = secrets.token_hex(4)  # a rerun never writes over a shard of an earlier run
        self.buffer: list[Any] = []
        self.pending = self.written = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_shard_options(self.folder, self.options)
        if not (self.folder / META_FILE).is_file():
            with atomic_path(self.folder / META_FILE) as tmp:  # every rank may write it: same content, atomic
                tmp.write_text(json.dumps(self.options, indent=1, sort_keys=True) + "\n")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.buffer.extend(prediction)
        self.pending += 1
        if self.pending >= self.save_every:
            self.flush(trainer)

    def flush(self, trainer: L.Trainer) -> None:
        if self.buffer:
            name = f"{SHARD_PREFIX}r{trainer.global_rank:05d}-{self.token}-{self.written:06d}{self.suffix}"
            with atomic_path(self.folder / name) as tmp:
                self.save(self.buffer, tmp)
            self.written += 1
        self.buffer, self.pending = [], 0

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Ctrl-C or an error: the finished batches still in the buffer are kept for the rerun."""
        try:
            self.flush(trainer)
        except Exception:  # the original exception is the one to report
            pass


def run(
    trainer: L.Trainer,
    writer: ShardWriter,
    merge: Callable[[], Any],
    load_model: Callable[[], torch.nn.Module],
    items: Sequence[Any],
    batches: list[list[int]],
    step: Callable[[torch.nn.Module, list[Any]], list[Any]],
    dtype: torch.dtype,
) -> Any:
    """Run the plan on the trainer's processes (each writing its shards with `writer`), then on rank 0
    return `merge()` (None on the other ranks, which are done once their shards are written).

    One process with nothing left to do merges at once, without loading the model."""
    if trainer.world_size == 1 and not batches:
        return merge()
    if writer not in trainer.callbacks:
        trainer.callbacks.append(writer)
    runner = BatchRunner(load_model(), items, batches, step, dtype)
    with quiet_lightning():
        trainer.predict(runner, return_predictions=False)
    # wait until every rank has written its last shard
    trainer.strategy.barrier("shards written")
    return merge() if trainer.is_global_zero else None


__all__ = [
    "TRAINER_KEYS",
    "BatchRunner",
    "PlannedBatches",
    "ShardWriter",
    "build_trainer",
    "check_model_files",
    "check_shard_options",
    "compute_dtype",
    "loading_error",
    "quiet_lightning",
    "run",
    "shard_dir",
    "shard_files",
]
