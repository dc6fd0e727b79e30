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

import tasks.task.schema  # noqa: F401  (registers the task schema conf/config.yaml names)
from tasks import cli
from tasks.train.recipe import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return cli.run_command(train, cfg, __doc__).score  # cfg.optimized_metric's best value, for sweeps


if __name__ == "__main__":
    main()
