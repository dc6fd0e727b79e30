"""Run the Ankh paper's benchmark on one model and write a results table (ours, paper, difference).

    python benchmark.py model=ankh_large                                  # every paper task, Hub data, GPU
    python benchmark.py model=ankh3_large tasks=[ss3,fluorescence] overrides=[finetune.cache_embeddings=true]
    python benchmark.py model=ankh_tiny suite=local trainer=cpu          # the shipped data, offline

Each task trains with its recipe (conf/experiment/ankh_paper/) through the function train.py runs. Every
dataset is checked first: a missing one stops the run with one line per dataset, before anything is written.
Options: conf/cli/benchmark.yaml; tasks and paper numbers: tasks/accuracy/ankh_paper.yaml;
logic: tasks/accuracy/suite.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tasks import cli
from tasks.accuracy.suite import run_benchmark


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="benchmark")
def main(cfg: DictConfig) -> object:
    return cli.run_command(run_benchmark, cfg, __doc__)


if __name__ == "__main__":
    main()
