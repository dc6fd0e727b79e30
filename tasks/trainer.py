"""Lightning Trainer, callbacks and loggers from the Hydra `trainer`, `callbacks` and `logger` groups."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig


def _instantiate_all(group: DictConfig | None) -> list:
    """Every `_target_` entry of a group (entries set to null are skipped)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Trainer from cfg.trainer with the callbacks and loggers of cfg.callbacks / cfg.logger."""
    loggers = _instantiate_all(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")), logger=loggers or False)


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
