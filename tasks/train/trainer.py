"""The Lightning Trainer of a training run, from the Hydra `trainer`, `callbacks` and `logger` groups, with
atomic checkpoint writes (tasks/train/checkpoints.py), per-batch seeding and the non-finite loss stop
(tasks/train/callbacks.py) and the run's loggers (tasks/train/loggers.py).
"""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from fastankh.errors import UserError
from tasks.train.callbacks import EpochSeed, RestoreLoaderPosition, StopOnNonFiniteLoss
from tasks.train.checkpoints import AtomicCheckpointIO
from tasks.train.loggers import build_loggers


def _instantiate_all(group: DictConfig | None) -> list:
    """Every `_target_` entry of a group (entries set to null are skipped)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def build_trainer(cfg: DictConfig, ckpt_path: str | None = None) -> L.Trainer:
    """Trainer from cfg.trainer with the callbacks and loggers of cfg.callbacks / cfg.logger, atomic
    checkpoint writes, per-batch seeding and the non-finite loss stop; `ckpt_path` is the checkpoint the run
    resumes from, if any."""
    precision = str(cfg.trainer.get("precision"))
    if precision.startswith("16") or precision in ("fp16", "half"):
        # Lightning would silently turn it into bf16-mixed on CPU and run it on GPU, where T5 overflows.
        raise UserError(
            f"model.precision={precision}: T5 models such as ANKH overflow in fp16 (NaN losses); "
            "use model.precision=bf16-mixed (or 32-true)"
        )
    callbacks = _instantiate_all(cfg.get("callbacks")) + [
        EpochSeed(cfg.seed),
        RestoreLoaderPosition(),
        StopOnNonFiniteLoss(),
    ]
    loggers = build_loggers(cfg, ckpt_path)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def sweep_score(trainer: L.Trainer, metric: str | None) -> float | None:
    """The value a hyperparameter sweep optimises: the best checkpoint's score if it monitors `metric`."""
    if metric is None:
        return None
    callback = trainer.checkpoint_callback
    if callback is not None and callback.monitor == metric and callback.best_model_score is not None:
        return float(callback.best_model_score)
    value = trainer.callback_metrics.get(metric)
    return None if value is None else float(value)
