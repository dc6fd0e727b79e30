"""Predict with an exported FastANKH task model on a FASTA or table of sequences.

    python predict.py model=ankh-ss3 input=proteins.fasta output=predictions.csv
    python predict.py model=my-org/ankh-ss3 input=proteins.csv output=predictions.parquet on_invalid=error

    python predict.py model=ankh-ss3 input=proteins.fasta output=predictions.csv devices=4      # 4 GPUs, ddp

Options: conf/cli/predict.yaml. Output columns: tasks/infer/prediction.py. Runs on Lightning's predict loop
(tasks/infer/harness.py): devices=N num_nodes=M accelerator=... strategy=... mean what they mean in conf/trainer;
a rerun after a crash predicts only what the shards in <output>.shards/ lack.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tasks import cli
from tasks.infer.predict_job import predict


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="predict")
def main(cfg: DictConfig) -> object:
    return cli.run_command(predict, cfg, __doc__)


if __name__ == "__main__":
    main()
