"""Fine-tune an ANKH model on a task and test it on every test split.

    python train.py experiment=quickstart
    python train.py task=secondary_structure model=ankh3_large finetune=lora trainer=gpu logger=wandb
    python train.py -m finetune=frozen,lora          # a sweep; hparams_search=optuna for Optuna
    python train.py task=ss3_local ckpt_path=last    # resume the newest run of the task (same overrides)

Writes into the Hydra run directory: config.yaml (resolved), checkpoints/, test_metrics.json
(split -> metric -> value), logger files, and for task=masked_lm the adapted backbone in backbone/
(use it with model.path=...).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import tasks.schema  # noqa: F401  (registers the task schema conf/config.yaml names)
from tasks.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns cfg.optimized_metric (the best validation value) for hyperparameter sweeps."""
    return train(cfg).score  # tasks/training.py; benchmark.py runs the same function per task


if __name__ == "__main__":
    main()
