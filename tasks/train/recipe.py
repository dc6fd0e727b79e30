"""One fine-tuning run from a composed config: what `python train.py` does, callable from Python.

    result = train(cfg)   # cfg: the composed conf/config.yaml (paths.output_dir set)
    result.test_results   # split -> metric -> value, as written to <run dir>/test_metrics.json

train.py is this function behind `@hydra.main` and tasks/cli.py; benchmark.py (tasks/accuracy/suite.py) calls it
once per task.
Everything heavy is imported inside, so `train.py --help` and config errors answer without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: str | None
    score: float | None  # cfg.optimized_metric's best validation value (sweeps), else None
    test_results: dict[str, dict[str, float]]  # split -> metric -> value


def train(cfg: DictConfig) -> TrainResult:
    """Read and validate the data (bad data: a DataError with one line per problem, before a model exists),
    fine-tune, test the best checkpoint on every test split, write the run directory's files.

    A problem the user can fix (bad data, a bad checkpoint, a non-finite loss, ...) is a `fastankh.errors` error;
    train.py prints it as one `error:` line (tasks/cli.py)."""
    import lightning as L

    from fastankh import load_tokenizer
    from fastankh.errors import NonFiniteLossError
    from tasks.data.datamodule import TaskDataModule
    from tasks.task.spec import TaskSpec
    from tasks.train.checkpoints import best_checkpoint, resolve_ckpt_path
    from tasks.train.console import drop_console_noise, print_next_step
    from tasks.train.loggers import finish_loggers, log_config, log_test_tables
    from tasks.train.model import load_backbone, tokenizer_source
    from tasks.train.module import FineTuneModule
    from tasks.train.run_files import print_metrics, save_backbone, write_config, write_metrics
    from tasks.train.task_model import non_residue_token_ids
    from tasks.train.trainer import build_trainer, sweep_score

    drop_console_noise()  # each line once, no third-party adverts
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    write_config(cfg, out / "config.yaml")
    # "last": the newest readable checkpoint of this or a sibling run; a bad explicit path: CheckpointError
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, out)
    task = TaskSpec.from_config(cfg.task)
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    data = TaskDataModule(task, tokenizer, seed=cfg.seed, **cfg.data)
    # read and validate every split: bad data stops the run (DataError), before a model exists
    data.prepare_data()
    data.setup("fit")
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "head", "finetune", "optim")}
    module = FineTuneModule(
        **groups,
        backbone=load_backbone(cfg.model, masked_lm=task.kind == "masked_lm"),
        non_residue_token_ids=non_residue_token_ids(tokenizer),
        label_mean=data.train_label_mean,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    trainer = build_trainer(cfg, ckpt_path)
    log_config(trainer, cfg)
    try:  # checkpoints hold tensors and plain values only: never unpickle code
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteLossError:  # the run stops at the broken step; its last good checkpoint stays
        finish_loggers(trainer)
        raise
    score = sweep_score(trainer, cfg.optimized_metric)
    best = best_checkpoint(trainer)
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)
    print_metrics(module.test_results)
    write_metrics(module.test_results, out / "test_metrics.json")
    log_test_tables(trainer, module.test_results)
    if task.kind == "masked_lm":
        save_backbone(module.merged_model().model, tokenizer, out / "backbone")
    finish_loggers(trainer)
    print_next_step(out, best, task.name, task.kind)
    return TrainResult(out, best, score, dict(module.test_results))
