"""The run record an export reads: a training run's module (from its Lightning checkpoint), its resolved
config.yaml and test_metrics.json. Export (tasks/hub/export_folder.py) and the model card
(tasks/hub/model_card.py) both take it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerBase

from fastankh import FastAnkhConfig, load_tokenizer
from fastankh.errors import CheckpointError, UserError
from tasks.task.spec import TaskSpec
from tasks.train.checkpoints import checkpoint_problem
from tasks.train.model import tokenizer_source
from tasks.train.module import FineTuneModule


@dataclass
class Run:
    """What an export reads: the trained module, the run's resolved config and test metrics (if found)."""

    module: FineTuneModule
    checkpoint: Path
    config: dict[str, Any] | None  # the run's config.yaml, resolved
    test_metrics: dict[str, dict[str, float]] | None  # split -> metric -> value

    @property
    def task(self) -> TaskSpec:
        return self.module.task

    @property
    def lora(self) -> bool:
        return self.module.lora


def load_run(checkpoint: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Run:
    """The module of a Lightning checkpoint plus its run's config.yaml / test_metrics.json.

    run_dir defaults to the checkpoint's grandparent (train.py writes RUN/checkpoints/*.ckpt).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint file not found")
    problem = checkpoint_problem(checkpoint)  # truncated, corrupt, or needing full unpickling (code)
    if problem is not None:
        raise CheckpointError(f"{checkpoint}: {problem}")
    run_dir = Path(run_dir) if run_dir is not None else checkpoint.resolve().parent.parent
    config_file, metrics_file = run_dir / "config.yaml", run_dir / "test_metrics.json"
    config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True) if config_file.is_file() else None
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    # a lean checkpoint (frozen base) is completed from the base it names, if that is unchanged
    module = FineTuneModule.load_checkpoint_file(checkpoint, map_location="cpu").eval()
    if module.task.kind == "masked_lm":
        raise UserError(
            f"{checkpoint}: task kind masked_lm has no classification head to export; train.py saved the "
            "adapted encoder in the run's backbone/ directory (use it with model.path=...)"
        )
    return Run(module, checkpoint, config, metrics)


def run_tokenizer(run: Run) -> PreTrainedTokenizerBase:
    """The tokenizer the run trained with (from its config.yaml; else the one the encoder config implies)."""
    if run.config is not None:
        return load_tokenizer(tokenizer_source(run.config["model"]))
    return load_tokenizer(FastAnkhConfig.from_dict(run.module.hparams.model_config))


__all__ = ["Run", "load_run", "run_tokenizer"]
