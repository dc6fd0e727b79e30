"""The callbacks every training run gets (and the checkpoint callbacks conf/callbacks names):

- every training batch's RNG is seeded from (seed, epoch, batch, rank) (`EpochSeed`), so a run resumed from a
  checkpoint (epoch end or mid-epoch) trains exactly like an uninterrupted one;
- last.ckpt follows every epoch (`BestAndLastCheckpoint`) and, optionally, every N steps (`MidEpochCheckpoint`);
  a mid-epoch resume replays the rest of the epoch (`RestoreLoaderPosition`);
- a NaN/inf training loss stops the run before its backward pass, naming the step and the batch's record ids
  (`StopOnNonFiniteLoss`), so no checkpoint of the broken state is written.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fastankh.errors import NonFiniteLossError
from tasks.train.checkpoints import last_good_checkpoint


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
    in the checkpoint (tasks/data/loaders.py ResumableDataLoader), so a resume replays the rest of the epoch."""

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
    """Hands a mid-epoch checkpoint's training-loader position to the loader (tasks/data/loaders.py
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
    (batches carry `ids`, tasks/task/spec.py). Under DDP every rank stops at the same step."""

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
