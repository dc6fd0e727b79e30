"""Lightning Trainer, callbacks and loggers from the Hydra `trainer`, `callbacks` and `logger` groups, and
what makes a run resumable and trackable:

- checkpoints are written to a temp file in their own folder and renamed into place (`AtomicCheckpointIO`);
- every training batch's RNG is seeded from (seed, epoch, batch, rank) (`EpochSeed`), so a run resumed from a
  checkpoint (epoch end or mid-epoch) trains exactly like an uninterrupted one;
- `ckpt_path=last` finds the newest readable checkpoint of this run directory or a sibling one, skipping
  truncated or corrupt files with a one-line warning (`checkpoint_problem`); an explicit bad path is a
  `CheckpointError` naming the newest readable one; checkpoints load with `weights_only=True`;
- a NaN/inf training loss stops the run before its backward pass, naming the step and the batch's record ids
  (`StopOnNonFiniteLoss`), so no checkpoint of the broken state is written;
- a wandb run keeps one id, stored in the run directory (`wandb_run_id`) and reused on resume; the resolved
  config and the test metrics table go to every logger that takes them.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import secrets
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from fastankh.atomic import atomic_path
from tasks.outputs import write_text_atomic

WANDB_ID_FILE = "wandb_run_id"
SHARDED_META = "meta.pt"  # the metadata file of a sharded (FSDP) checkpoint folder, as Lightning names it

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: one line naming the file, why, and what to use instead."""


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite training loss: one line naming the step and the record ids of the batch."""


# Third-party console lines that say nothing about this run (each matched by a piece of its text).
LIGHTNING_NOISE = (
    "litlogger",  # "Tip: ... try installing litlogger": an advert in every run
    "TPU available: False",
    "was configured so validation will run at the end of the training epoch",  # val_check_interval=1.0
    "to estimate number of stepping batches",
)
WARNING_NOISE = (  # (category, start of the message): known third-party warnings a user cannot act on
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # lightning's _pytree on torch >= 2.10
    (UserWarning, r"Metric `SpearmanCorrcoef` will save all targets and predictions"),  # torchmetrics, every run
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in LIGHTNING_NOISE)


def quiet_console() -> None:
    """Every console message once, without known third-party noise.

    The `lightning` package logger prints through its own handler and also propagates to the root logger,
    which Hydra's job logging has given a console (and train.log) handler: every Lightning line came twice.
    When the root prints to a terminal stream, the `lightning` handler goes (its lines keep reaching the root).
    Lightning's adverts and defaults-restating lines (LIGHTNING_NOISE) and WARNING_NOISE are filtered out by
    message, nothing else. Idempotent; call it after lightning is imported.
    """
    root = logging.getLogger()
    if any(type(h) is logging.StreamHandler for h in root.handlers):  # Hydra's console handler
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            if type(handler) is logging.StreamHandler:
                package.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for category, message in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


@rank_zero_only
def print_next_step(output_dir: str | os.PathLike, best: str | None, task_name: str, kind: str) -> None:
    """The run's last console line: where it is, its best checkpoint and the command that uses it."""
    if kind == "masked_lm":
        nxt = f"python train.py task=... model.path={Path(output_dir) / 'backbone'}"
    elif best:
        nxt = f"python export.py checkpoint={best} output_dir=exports/{task_name}"
    else:
        nxt = "no checkpoint was saved (callbacks.model_checkpoint is off), nothing to export"
    print(f"run: {output_dir} | best checkpoint: {best or 'none'} | next: {nxt}", flush=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file next to the checkpoint, fsync, then os.replace: a crash leaves the old
    checkpoint or the new one. (Lightning's default stages the file in the system temp folder and moves it;
    when that folder is on another filesystem than the run, the move is a copy over the good file.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: fsspec's upload is already all-or-nothing
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class EpochSeed(L.Callback):
    """Seeds torch, numpy and random from (seed, epoch, batch index, rank) before every training batch.

    Lightning does not checkpoint RNG states, and a resumed run starts from a different RNG history; seeding
    per batch makes dropout in batch b of epoch e the same in an uninterrupted run and in one resumed from any
    checkpoint, mid-epoch ones included (torch.manual_seed costs microseconds).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        key = [self.seed, trainer.current_epoch, batch_idx, trainer.global_rank]
        value = int(np.random.SeedSequence(key).generate_state(1)[0])
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


class BestAndLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt follows every epoch. Lightning 2.6 rewrites last.ckpt only at a step where
    it also saved a top-k file, so after an epoch that did not improve the monitor, last.ckpt would still be the
    last improving epoch and `ckpt_path=last` would silently redo the epochs since."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def _save_last_anyway(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class MidEpochCheckpoint(ModelCheckpoint):
    """last.ckpt every `every_n_train_steps` optimizer steps (0: never), for epochs too long to lose; nothing at
    epoch or training end (the task's ModelCheckpoint writes those). The training loader's place in the epoch is
    in the checkpoint (tasks/data_batching.py ResumableDataLoader), so a resume replays the rest of the epoch."""

    def __init__(self, dirpath: str | os.PathLike | None = None, every_n_train_steps: int = 0):
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=0,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,  # one last.ckpt, shared with the task's ModelCheckpoint (no last-v1.ckpt)
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass


class RestoreLoaderPosition(L.Callback):
    """Hands a mid-epoch checkpoint's training-loader position to the loader (tasks/data_batching.py
    ResumableDataLoader), so the resumed epoch skips the batches already trained on.

    Lightning passes it only if it builds the train loader after restoring the checkpoint; a learning-rate
    schedule asks `trainer.estimated_stepping_batches` in configure_optimizers, which builds the loader first,
    and the position would be dropped (the epoch would restart from its first batch). on_train_start runs after
    both; the loader's iterator is then made again, so worker processes plan from the restored position.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.fit_loop
        if not (loop.restarting and loop._combined_loader_states_to_load and loop._combined_loader is not None):
            return
        loop._load_combined_loader_states()
        if loop._data_fetcher is not None:
            iter(loop._data_fetcher)


class StopOnNonFiniteLoss(L.Callback):
    """Raises NonFiniteLossError at the first NaN/inf training loss, before its backward pass and optimizer step:
    the weights stay those of the previous step and no checkpoint of a broken state is written (the last good
    one stays). The message names the global step, the epoch and batch, and the record ids of the batch
    (batches carry `ids`, tasks/spec.py). Under DDP every rank stops at the same step."""

    MAX_IDS = 50

    def __init__(self):
        self._ids: list[str] | None = None
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._ids = list(batch["ids"]) if isinstance(batch, Mapping) and "ids" in batch else None
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        ids = self._ids or []
        shown = ", ".join(map(str, ids[: self.MAX_IDS])) + (
            f", ... ({len(ids) - self.MAX_IDS} more)" if len(ids) > self.MAX_IDS else ""
        )
        value = loss.detach().float().flatten()[0].item() if loss.numel() else float("nan")
        kept = last_good_checkpoint(trainer)
        raise NonFiniteLossError(
            f"non-finite training loss ({value}) at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {self._batch_idx}), records: {shown or 'unknown (this rank had a finite loss)'}; "
            + (f"the last good checkpoint is {kept}" if kept else "no checkpoint was written before it")
            + " (lower optim.lr or set trainer.gradient_clip_val, then resume with ckpt_path=last)"
        )


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint this run wrote (any ModelCheckpoint's last or best file), None if none."""
    paths = [
        Path(p)
        for cb in trainer.checkpoint_callbacks
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if p and Path(p).exists()
    ]
    return str(max(paths, key=os.path.getmtime)) if paths else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be resumed from (one line), or None when it is a readable checkpoint.

    Readable: every record of the checkpoint's zip archive matches its CRC (a truncated or corrupt file fails
    here, in one sequential read) and `torch.load(weights_only=True)` unpickles it (memory-mapped: the tensors
    are not read). A folder (sharded FSDP checkpoint) is readable when its meta.pt is. A file that only full
    unpickling can load is refused: unpickling runs code stored in the file.
    """
    path = Path(path)
    if path.is_dir():
        meta = path / SHARDED_META
        if not meta.is_file():
            return f"a folder without {SHARDED_META}: not a sharded checkpoint"
        problem = checkpoint_problem(meta)
        return None if problem is None else f"{SHARDED_META}: {problem}"
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        zipped = zipfile.is_zipfile(path)
        if zipped:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"corrupt: record {bad} fails its CRC check"
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "not an allowed global" in str(err):
            return (
                "it needs full unpickling (torch.load weights_only=False), which can run code stored in the file; "
                "only checkpoints of tensors and plain values are loaded"
            )
        return f"unreadable ({_first_line(err)})"
    except Exception as err:  # truncated zip, not a checkpoint at all, ...
        return f"unreadable, truncated or not a checkpoint ({_first_line(err)})"
    return None


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """A run directory's checkpoints in resume order: checkpoints/last.ckpt, then the others newest first."""
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.ckpt"
    others = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    return ([last] if last.exists() else []) + sorted(others, key=os.path.getmtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from.

    An explicit path must be a readable checkpoint (`checkpoint_problem`); a bad one is a CheckpointError
    naming the newest readable checkpoint of its run. "last": this run directory's checkpoints (last.ckpt, then
    the others newest first; see `run_checkpoints`), else those of its sibling runs (outputs/<task>/runs/*),
    newest run first; an unreadable file is skipped with a one-line warning.
    """
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        problem = checkpoint_problem(path)
        if problem is None:
            return str(ckpt_path)
        others = [p for p in run_checkpoints(path.resolve().parent.parent) if p.resolve() != path.resolve()]
        good = next((p for p in others if checkpoint_problem(p) is None), None)
        hint = (
            f"the newest readable checkpoint of its run is {good}"
            if good
            else "its run has no other readable checkpoint"
        )
        raise CheckpointError(f"ckpt_path={ckpt_path}: {problem}; {hint}")
    output_dir = Path(output_dir)
    own = run_checkpoints(output_dir)
    if own:
        candidates = own
    else:
        siblings = [run_checkpoints(d) for d in output_dir.parent.iterdir() if d.is_dir() and d != output_dir]
        siblings = sorted((c for c in siblings if c), key=lambda c: max(map(os.path.getmtime, c)), reverse=True)
        candidates = [p for run in siblings for p in run]
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir} or its sibling runs ({output_dir.parent}/*); "
            "pass ckpt_path=PATH/TO/last.ckpt"
        )
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        log.warning(f"ckpt_path=last: skipping {path}: {problem}")
    raise CheckpointError(
        f"ckpt_path=last: no readable checkpoint among {len(candidates)} in {output_dir.parent} "
        f"(newest: {candidates[0]}: {checkpoint_problem(candidates[0])})"
    )


def wandb_run_id(output_dir: str | os.PathLike, ckpt_path: str | None) -> str:
    """This run's wandb id: the resumed run's (stored in its run directory), this directory's, or a new one.

    Written to `<output_dir>/wandb_run_id` (rank 0) so that resuming this run continues the same wandb run.
    """
    own = Path(output_dir) / WANDB_ID_FILE
    sources = ([Path(ckpt_path).resolve().parent.parent / WANDB_ID_FILE] if ckpt_path else []) + [own]
    run_id = next((f.read_text().strip() for f in sources if f.is_file()), None) or secrets.token_hex(6)
    if rank_zero_only.rank == 0:
        write_text_atomic(own, run_id + "\n")
    return run_id


def _instantiate_all(group: DictConfig | None) -> list:
    """Every `_target_` entry of a group (entries set to null are skipped)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def build_loggers(cfg: DictConfig, ckpt_path: str | None = None) -> list:
    """Loggers of cfg.logger; a wandb logger without an explicit id gets this run's id (see wandb_run_id)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None or "_target_" not in node:
            continue
        if node["_target_"].endswith("WandbLogger") and node.get("id") is None:
            loggers.append(instantiate(node, id=wandb_run_id(cfg.paths.output_dir, ckpt_path)))
        else:
            loggers.append(instantiate(node))
    return loggers


def build_trainer(cfg: DictConfig, ckpt_path: str | None = None) -> L.Trainer:
    """Trainer from cfg.trainer with the callbacks and loggers of cfg.callbacks / cfg.logger, atomic
    checkpoint writes, per-batch seeding and the non-finite loss stop; `ckpt_path` is the checkpoint the run
    resumes from, if any."""
    precision = str(cfg.trainer.get("precision"))
    if precision.startswith("16") or precision in ("fp16", "half"):
        # Lightning would silently turn it into bf16-mixed on CPU and run it on GPU, where T5 overflows.
        raise SystemExit(
            f"error: model.precision={precision}: T5 models such as ANKH overflow in fp16 (NaN losses); "
            "use model.precision=bf16-mixed (or 32-true)"
        )
    callbacks = _instantiate_all(cfg.get("callbacks")) + [
        EpochSeed(cfg.seed),
        RestoreLoaderPosition(),
        StopOnNonFiniteLoss(),
    ]
    loggers = build_loggers(cfg, ckpt_path)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def log_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """The resolved run config as hyperparameters of every logger (wandb: the run config)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)


def log_test_tables(trainer: L.Trainer, results: Mapping[str, Mapping[str, float]]) -> None:
    """wandb: the test metrics as one table `test/metrics`, a row per split and a column per metric."""
    names = sorted({m for values in results.values() for m in values})
    rows = [[split, *(values.get(n) for n in names)] for split, values in results.items()]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and rows:
            logger.log_table(key="test/metrics", columns=["split", *names], data=rows)


def finish_loggers(trainer: L.Trainer) -> None:
    """Close the wandb run (summary and files written), so the next run in this process starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()  # no-op on ranks without a run


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint by the task's monitor; None (use the current weights) if none was saved."""
    callback = trainer.checkpoint_callback
    return (callback.best_model_path or None) if callback is not None else None


def sweep_score(trainer: L.Trainer, metric: str | None) -> float | None:
    """The value a hyperparameter sweep optimises: the best checkpoint's score if it monitors `metric`."""
    if metric is None:
        return None
    callback = trainer.checkpoint_callback
    if callback is not None and callback.monitor == metric and callback.best_model_score is not None:
        return float(callback.best_model_score)
    value = trainer.callback_metrics.get(metric)
    return None if value is None else float(value)
