"""One sharded, resumable job harness for embed.py and predict.py on Lightning's predict loop.

A job streams its input in windows (lists of records). With W processes (`devices` x `num_nodes`, strategy
ddp) every process reads the same input and rank r takes windows r, r + W, r + 2W, ...: each window runs on
exactly one rank, whole, as it would on one process, so the results are the same. One Lightning "batch" is one
window; the job's `step` cuts it into length-sorted batches for the model. After each window the job writes the
results to its own store (each rank its own shards, written once, atomically); an interrupted process keeps
its finished windows (`flush`). Once every rank is done (barrier), rank 0 calls the job's `finish` (an index, a
join), which never holds all results in memory. Resume and the refusal of changed settings are the job's
(its store's run fingerprint). Ranks on several nodes need a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, IterableDataset

from fastankh.errors import DataError
from fastankh.precision import resolve_precision

# conf/cli/embed.yaml and predict.yaml: the keys that mean what they mean in conf/trainer.
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy")


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
            # one window is one batch of the predict loop: there are no sampler indices to infer
            warnings.filterwarnings("ignore", message=r".*infer the batch indices.*")
            warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def build_predict_trainer(
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
            trainer = L.Trainer(
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
    launched = os.environ.get("WORLD_SIZE")  # set by torchrun / SLURM launchers for every process they start
    if launched is not None and int(launched) != trainer.world_size:
        raise DataError(
            f"accelerator={accelerator} devices={devices} num_nodes={num_nodes}: {trainer.world_size} process(es), "
            f"but the launcher started {launched}; set devices and num_nodes to its processes per node and nodes"
        )
    return trainer


def compute_dtype(precision: str, trainer: L.Trainer) -> torch.dtype:
    """The dtype `precision` (auto | 32 | bf16) computes in on this trainer's device; a bad value is a DataError."""
    try:
        return resolve_precision(precision, trainer.strategy.root_device)
    except ValueError as err:
        raise DataError(str(err)) from None


class Job(Protocol):
    """What the harness runs: see the module docstring."""

    def setup(self, rank: int, world_size: int, token: str) -> None:
        """Open this rank's store (`token`: rank 0's, the same on every rank, names this run's shards)."""

    def windows(self) -> Iterable[list[Any]]:
        """This rank's windows, in order."""

    def step(self, model: torch.nn.Module, window: list[Any]) -> list[Any]:
        """The results of one window, computed with `model` on its device."""

    def write(self, window: list[Any], results: list[Any]) -> None: ...

    def flush(self) -> None:
        """Keep what is finished (called when the process stops on an exception)."""

    def finish(self) -> Any:
        """Rank 0, after every rank flushed: close the output; its return value is the run's."""


class JobWindows(IterableDataset):
    """The windows of a job on this rank (read when the predict loop starts)."""

    def __init__(self, job: Job):
        self.job = job

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.job.windows())


class JobRunner(L.LightningModule):
    """Runs `job.step` on every window of this rank with `model`, in `dtype` (cast on its device at the start)."""

    def __init__(self, model: torch.nn.Module, job: Job, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.job, self.compute_dtype = model, job, dtype

    def predict_dataloader(self) -> DataLoader:
        token = self.trainer.strategy.broadcast(f"{time.time_ns():020d}", src=0)
        self.job.setup(self.trainer.global_rank, self.trainer.world_size, token)
        return DataLoader(JobWindows(self.job), batch_size=None, collate_fn=lambda window: window)

    def on_predict_start(self) -> None:
        self.model.to(self.compute_dtype)

    def predict_step(self, window: list[Any], batch_idx: int) -> list[Any]:
        return self.job.step(self.model, window)


class JobWriter(BasePredictionWriter):
    """Hands each window's results to the job's store; on an exception, keeps what is finished."""

    def __init__(self, job: Job):
        super().__init__(write_interval="batch")
        self.job = job

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.job.write(batch, prediction)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            self.job.flush()
        except Exception:  # the original exception is the one to report
            pass


def run_job(trainer: L.Trainer, job: Job, model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """Run `job` on the trainer's processes; rank 0 returns `job.finish()`, the other ranks None."""
    trainer.callbacks.append(JobWriter(job))
    with quiet_lightning():
        trainer.predict(JobRunner(model, job, dtype), return_predictions=False)
    job.flush()
    trainer.strategy.barrier("job written")  # every rank's last shard is on disk
    return job.finish() if trainer.is_global_zero else None


__all__ = [
    "TRAINER_KEYS",
    "Job",
    "build_predict_trainer",
    "check_model_files",
    "compute_dtype",
    "loading_error",
    "quiet_lightning",
    "run_job",
]
