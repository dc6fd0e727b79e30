"""Predict with an exported FastANKH task model on a FASTA or table of sequences.

    python predict.py model=ankh-ss3 input=proteins.fasta output=predictions.csv
    python predict.py model=my-org/ankh-ss3 input=proteins.csv output=predictions.parquet on_invalid=error

    python predict.py model=ankh-ss3 input=proteins.fasta output=predictions.csv devices=4      # 4 GPUs, ddp

Options: conf/cli/predict.yaml. Output columns: tasks/prediction.py. Runs on Lightning's predict loop
(tasks/inference.py): devices=N num_nodes=M accelerator=... strategy=... mean what they mean in conf/trainer;
a rerun after a crash predicts only what the shards in <output>.shards/ lack.
"""

from __future__ import annotations

import sys

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from tasks.data_sources import DataError
from tasks.inference import TRAINER_KEYS
from tasks.prediction import predict_file


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        skipped = predict_file(
            cfg.model,
            cfg.input,
            cfg.output,
            batch_size=cfg.batch_size,
            on_invalid=cfg.on_invalid,
            id_column=cfg.id_column,
            sequence_column=cfg.sequence_column,
            max_length=cfg.max_length,
            precision=cfg.precision,
            progress=cfg.progress,
            report=lambda line: print(f"skipping {line}", file=sys.stderr),
            contact_maps=cfg.contact_maps,
            save_every=cfg.save_every,
            **{key: cfg[key] for key in TRAINER_KEYS},
        )
    except DataError as err:  # bad input or a corrupt model: its lines name the file; no traceback
        raise SystemExit(f"error: {err}") from None
    if rank_zero_only.rank == 0:  # the only process unless devices/num_nodes > 1
        print(f"wrote {cfg.output}" + (f" ({len(skipped)} invalid record(s) skipped)" if skipped else ""))


if __name__ == "__main__":
    main()
