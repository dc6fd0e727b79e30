"""The run's loggers: built from the Hydra `logger` group, one wandb id per run (stored in the run directory
as `wandb_run_id` and reused on resume), the resolved config and the test metrics table sent to every logger
that takes them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tasks.train.run_files import write_text_atomic

WANDB_ID_FILE = "wandb_run_id"


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
