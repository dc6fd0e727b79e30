"""Hydra configs: every task x model x finetune composes and resolves, heads fit every task, strict keys,
and the documented `--cfg job` view of a large LoRA run."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import tasks.task.schema  # noqa: F401  (registers the task schema, as train.py does)
from fastankh.heads import PAIR_HEADS, RESIDUE_HEADS, SEQUENCE_HEADS, build_head
from tasks.task.kinds import TASK_KINDS
from tasks.task.spec import TaskSpec
from tasks.train.task_model import head_choice

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_config_dir():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield


def resolved(*overrides: str):
    """Composed and fully resolved config (the run directory stands in for Hydra's runtime value)."""
    cfg = compose("config", overrides=[*overrides, "paths.output_dir=/tmp/run"])
    OmegaConf.resolve(cfg)
    return cfg


def test_the_groups_users_are_promised_exist():
    assert {"ankh_base", "ankh_large", "ankh2_large", "ankh3_large", "ankh3_xl", "ankh_tiny"} <= set(options("model"))
    assert set(options("finetune")) == {"frozen", "full", "lora", "partial"}
    assert {"cpu", "gpu", "ddp", "fsdp"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard"} <= set(options("logger"))
    assert "quickstart" in options("experiment") and "optuna" in options("hparams_search")


def test_every_task_model_finetune_combination_composes():
    """Every pair of choices composes together (task x model, task x mode, model x mode): the groups
    interact only pairwise (the model sets precision, the task sets the monitor), at half the cost."""
    tasks, models, modes = options("task"), options("model"), options("finetune")
    assert len(tasks) >= 12
    pairs = [
        *itertools.product(tasks, models, modes[:1]),
        *itertools.product(tasks, models[:1], modes[1:]),
        *itertools.product(tasks[:1], models[1:], modes[1:]),
    ]
    for task, model, mode in pairs:
        cfg = resolved(f"task={task}", f"model={model}", f"finetune={mode}")
        spec = TaskSpec.from_config(cfg.task)
        assert cfg.finetune.mode == mode and cfg.model.preset == model
        assert cfg.trainer.precision == cfg.model.precision
        assert cfg.callbacks.model_checkpoint.monitor == spec.monitor
        assert spec.monitor.startswith("val/")


def padded_batch(lengths: list[int], d_model: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (B, T, D), residue_mask (B, T)) of right-padded rows: residue tokens, then </s> and padding."""
    width = max(lengths) + 1
    hidden = torch.randn(len(lengths), width, d_model, generator=torch.Generator().manual_seed(0))
    residue_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return hidden, residue_mask


def test_every_head_builds_for_every_task_level_or_names_the_mismatch():
    heads = {head: OmegaConf.to_container(resolved(f"head={head}").head) for head in options("head")}
    hidden, residue_mask = padded_batch([9, 4, 6])
    names = {"residue": RESIDUE_HEADS, "sequence": SEQUENCE_HEADS, "pair": PAIR_HEADS}
    for task in options("task"):
        spec = TaskSpec.from_config(resolved(f"task={task}").task)
        level = TASK_KINDS[spec.kind].level
        if level == "token":  # masked_lm: the model's own vocabulary head
            continue
        for head, head_cfg in heads.items():
            head_cfg = {**head_cfg, "num_heads": 2} if "num_heads" in head_cfg else head_cfg
            name, head_options = head_choice(spec, head_cfg)  # the name and options the task model's config gets
            if name in names[level]:
                built = build_head(level, name, 16, spec.num_outputs, **head_options).eval()
                with torch.no_grad():
                    out = built(hidden, residue_mask)
                    alone = built(hidden[1:2, :5], residue_mask[1:2, :5])  # row 1 unpadded: 4 residues + </s>
                # one output per label (regression: a single value, which the module squeezes); pairs: a map
                width = hidden.shape[1]
                per_row = {"residue": (width, spec.num_outputs), "sequence": (spec.num_outputs,), "pair": (width,) * 2}
                assert out.shape == (3, *per_row[level]), (task, head, out.shape)
                # padding must not leak into a row's residues, residue pairs or its pooled value
                residues = {"residue": (slice(4),), "sequence": (), "pair": (slice(4), slice(4))}[level]
                padded, unpadded = out[1][residues], alone[0][residues]
                torch.testing.assert_close(padded, unpadded, atol=1e-6, rtol=0, msg=f"{task} {head}")
            else:
                with pytest.raises(ValueError, match=f"unknown {level} head '{head}'"):
                    build_head(level, name, 16, spec.num_outputs, **head_options)


def test_quickstart_optuna_and_strategies_compose():
    quick = resolved("experiment=quickstart")
    assert quick.task.name == "ss3_local" and quick.model.preset == "ankh_tiny" and quick.trainer.accelerator == "cpu"
    assert quick.trainer.max_time == "00:00:03:00"
    search = compose("config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert search.finetune.mode == "lora" and search.optimized_metric == search.task.monitor
    assert set(search.hydra.sweeper.params) == {"optim.lr", "finetune.r"}
    fsdp = instantiate(resolved("trainer=fsdp").trainer.strategy)
    from fastankh.modeling_fastankh import FastAnkhBlock

    assert FastAnkhBlock in fsdp.kwargs["auto_wrap_policy"]._module_classes
    wandb = instantiate(resolved("logger=wandb", "logger.wandb.offline=true").logger.wandb)
    assert wandb._offline and wandb._wandb_init["name"] == "ss3_local-ankh_tiny-full"


def test_a_wrong_key_is_an_error():
    for override in ("trainer.max_epoch=3", "finetune.rank=8", "head.drop=0.1"):
        with pytest.raises(ConfigCompositionException, match="Could not override"):
            compose("config", overrides=[override])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_cfg_job_for_a_large_lora_run_and_a_one_line_error_for_a_bad_key():
    shown = run_cli("task=secondary_structure", "model=ankh3_large", "finetune=lora", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.model.precision == cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.attn_backend == "auto"
    assert list(cfg.finetune.target_modules) == ["q", "k", "v", "o"]
    bad = run_cli("trainer.max_epoch=3")
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[0] == "Could not override 'trainer.max_epoch'."
    assert "Traceback" not in bad.stderr


def test_every_ankh_paper_recipe_composes_for_every_model_preset():
    """conf/experiment/ankh_paper/<task>.yaml: the paper's setup (frozen backbone, ConvBERT head, lr 1e-3,
    batch 1 x 16, 5 epochs, fp32, seed 7) on the task's hub data, for any model= (recipe and model interact
    only through precision, so every recipe with one model and every model with one recipe); benchmark.py's
    table names only recipes, tasks and metrics that exist."""
    recipes = sorted(p.stem for p in (CONF / "experiment" / "ankh_paper").glob("*.yaml") if p.stem != "frozen_convbert")
    paper_tasks = {
        "ss3",
        "ss8",
        "contact",
        "localization",
        "solubility",
        "fluorescence",
        "remote_homology",
        "thermostability",
        "gb1",
    }
    assert paper_tasks <= set(recipes)
    models = options("model")
    specs = {}
    for recipe, model in [*((r, models[0]) for r in recipes), *((recipes[0], m) for m in models[1:])]:
        cfg = resolved(f"experiment=ankh_paper/{recipe}", f"model={model}")
        spec = specs[f"ankh_paper/{recipe}"] = TaskSpec.from_config(cfg.task)
        assert cfg.model.preset == model and spec.data.hub_id, (recipe, model)
        assert (cfg.finetune.mode, cfg.head.name, cfg.head.kernel_size, cfg.head.dropout) == (
            "frozen",
            "convbert",
            7,
            0.2,
        )
        assert (cfg.optim.head_lr, cfg.optim.warmup_steps, cfg.data.batch_size) == (1e-3, 1000, 1)
        assert (cfg.trainer.accumulate_grad_batches, cfg.trainer.max_epochs, cfg.trainer.precision) == (
            16,
            5,
            "32-true",
        )
        assert cfg.seed == 7 and cfg.callbacks.model_checkpoint.monitor == spec.monitor
    from tasks.accuracy.suite import load_paper

    suites, entries = load_paper()
    assert set(suites["paper"]) == paper_tasks
    for entry in entries.values():
        spec = TaskSpec.from_config(resolved(f"task={entry.task}").task) if entry.task else specs[entry.recipe]
        assert set(entry.metrics) <= set(spec.metrics), entry.name
        assert entry.recipe == "ankh_paper/frozen_convbert" or entry.recipe in specs


def test_cli_cfg_job_resolves_a_paper_recipe():
    shown = run_cli("experiment=ankh_paper/remote_homology", "model=ankh3_xl", "--cfg", "job", "--resolve")
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.task.data.hub_id == "proteinea/remote_homology" and cfg.task.labels[-1] == "1194"
    assert cfg.model.preset == "ankh3_xl" and cfg.trainer.precision == "32-true"
