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

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import tasks.schema  # noqa: F401  (registers the task schema conf/config.yaml names)
from tasks.spec import TaskSpec


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns cfg.optimized_metric (the best validation value) for hyperparameter sweeps."""
    # Imported here so --help, --cfg and config errors answer without loading torch.
    import lightning as L

    from fastankh import load_tokenizer
    from tasks.backbone import load_backbone, tokenizer_source
    from tasks.data import TaskDataModule
    from tasks.data_sources import DataError
    from tasks.kinds import non_residue_token_ids
    from tasks.module import FineTuneModule
    from tasks.outputs import print_metrics, save_backbone, write_config, write_metrics
    from tasks.trainer import (
        best_checkpoint,
        build_trainer,
        finish_loggers,
        log_config,
        log_test_tables,
        print_next_step,
        quiet_console,
        resolve_ckpt_path,
        sweep_score,
    )

    quiet_console()  # each line once, no third-party adverts
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    write_config(cfg, out / "config.yaml")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, out)  # "last": newest last.ckpt of this or a sibling run
    task = TaskSpec.from_config(cfg.task)
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    data = TaskDataModule(task, tokenizer, seed=cfg.seed, **cfg.data)
    try:  # read and validate every split: bad data stops the run, in one line, before a model exists
        data.prepare_data()
        data.setup("fit")
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
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
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    score = sweep_score(trainer, cfg.optimized_metric)
    trainer.test(module, datamodule=data, ckpt_path=best_checkpoint(trainer), verbose=False)
    print_metrics(module.test_results)
    write_metrics(module.test_results, out / "test_metrics.json")
    log_test_tables(trainer, module.test_results)
    if task.kind == "masked_lm":
        save_backbone(module.merged_model().model, tokenizer, out / "backbone")
    finish_loggers(trainer)
    print_next_step(out, best_checkpoint(trainer), task.name, task.kind)
    return score


if __name__ == "__main__":
    main()
