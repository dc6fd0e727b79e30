"""Lightning Trainer, callbacks and loggers from the Hydra `trainer`, `callbacks` and `logger` groups, and
what makes a run resumable and trackable:

- checkpoints are written to a temp file in their own folder and renamed into place (`AtomicCheckpointIO`);
- every epoch's RNG is seeded from (seed, epoch, rank) (`EpochSeed`), so a run resumed from an epoch-end
  checkpoint trains exactly like an uninterrupted one;
- `ckpt_path=last` finds the newest checkpoints/last.ckpt of this run directory or a sibling one;
- a wandb run keeps one id, stored in the run directory (`wandb_run_id`) and reused on resume; the resolved
  config and the test metrics table go to every logger that takes them.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tasks.outputs import atomic_path, write_text_atomic

WANDB_ID_FILE = "wandb_run_id"

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
    """Seeds torch, numpy and random from (seed, epoch, rank) at the first training batch of every epoch.

    Lightning does not checkpoint RNG states, and the first epoch after a resume starts from a different
    RNG history; seeding per epoch makes dropout in epoch e the same in both cases.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            key = [self.seed, trainer.current_epoch, trainer.global_rank]
            value = int(np.random.SeedSequence(key).generate_state(1)[0])
            torch.manual_seed(value)
            np.random.seed(value)
            random.seed(value)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from: an explicit path, or for "last" this run directory's
    checkpoints/last.ckpt, else the newest one of its sibling runs (outputs/<task>/runs/*)."""
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(ckpt_path)
    output_dir = Path(output_dir)
    own = output_dir / "checkpoints" / "last.ckpt"
    siblings = sorted(output_dir.parent.glob("*/checkpoints/last.ckpt"), key=os.path.getmtime)
    candidates = [own] if own.is_file() else siblings
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir} or its sibling runs ({output_dir.parent}/*); "
            "pass ckpt_path=PATH/TO/last.ckpt"
        )
    return str(candidates[-1])


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
    checkpoint writes and per-epoch seeding; `ckpt_path` is the checkpoint the run resumes from, if any."""
    precision = str(cfg.trainer.get("precision"))
    if precision.startswith("16") or precision in ("fp16", "half"):
        # Lightning would silently turn it into bf16-mixed on CPU and run it on GPU, where T5 overflows.
        raise SystemExit(
            f"error: model.precision={precision}: T5 models such as ANKH overflow in fp16 (NaN losses); "
            "use model.precision=bf16-mixed (or 32-true)"
        )
    callbacks = _instantiate_all(cfg.get("callbacks")) + [EpochSeed(cfg.seed)]
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
