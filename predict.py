"""Predict with an exported FastANKH task model on a FASTA or table of sequences.

    python predict.py model=ankh-ss3 input=proteins.fasta output=predictions.csv
    python predict.py model=my-org/ankh-ss3 input=proteins.csv output=predictions.parquet on_invalid=error

Options: conf/cli/predict.yaml. Output columns: tasks/prediction.py.
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig

from tasks.data_sources import DataError
from tasks.prediction import predict_file


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="predict")
def main(cfg: DictConfig) -> None:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
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
            device=device,
            precision=cfg.precision,
            progress=cfg.progress,
            report=lambda line: print(f"skipping {line}", file=sys.stderr),
            contact_maps=cfg.contact_maps,
        )
    except DataError as err:  # bad input: its lines name the file and record; no traceback
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {cfg.output}" + (f" ({len(skipped)} invalid record(s) skipped)" if skipped else ""))


if __name__ == "__main__":
    main()
