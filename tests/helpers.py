"""The tests' shared helpers (the one helpers module; fixtures live in conftest.py):

- synthetic batches that follow the batch contract of tasks/task/spec.py, for tests that need no data module;
- end-to-end runs of the scripts in this process (`run_cli`, `train_run`) and readers of their run directories;
- `BLOCK_FASTANKH`, the preamble that makes fastankh and tasks unimportable in a subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel, load_tokenizer
from tasks.data.datamodule import TaskDataModule
from tasks.task.spec import IGNORE_INDEX, TaskSpec
from tasks.train.model import tokenizer_source
from tasks.train.module import FineTuneModule

# The backbone of make_module: ankh_tiny (vocab 144, 64 relative-position buckets) at these widths.
TINY = dict(d_model=32, d_kv=8, d_ff=64, num_heads=4)


def make_task(kind: str, num_classes: int = 3, **fields) -> TaskSpec:
    no_classes = kind.endswith("regression") or kind in ("masked_lm", "residue_pair_classification")
    labels = None if no_classes else [f"c{i}" for i in range(num_classes)]
    return TaskSpec(name=f"synthetic_{kind}", kind=kind, data={}, labels=labels, **fields)


def make_batch(task: TaskSpec, lengths: list[int], seed: int = 0, num_classes: int = 3) -> dict:
    """One right-padded batch of random residues: no prefix, residues, </s>, padding."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths) + 1
    ids = torch.zeros(b, t, dtype=torch.long)
    residue_mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 23, (n,), generator=g)  # ids 3..22: the 20 standard residues (ANKH v1)
        ids[i, n] = 1
        residue_mask[i, :n] = True
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "residue_mask": residue_mask,
        "ids": [f"s{i}" for i in range(b)],
    }
    kind = task.kind
    if kind == "residue_classification":
        labels = torch.randint(0, num_classes, (b, t), generator=g)
        batch["labels"] = labels.masked_fill(~residue_mask, IGNORE_INDEX)
        batch["label_mask"] = residue_mask.clone()
    elif kind == "residue_regression":
        batch["labels"] = torch.rand(b, t, generator=g) * residue_mask
        batch["label_mask"] = residue_mask.clone()
    elif kind == "sequence_classification":
        batch["labels"] = torch.randint(0, num_classes, (b,), generator=g)
    elif kind == "sequence_multilabel":
        batch["labels"] = torch.randint(0, 2, (b, num_classes), generator=g).float()
    elif kind == "sequence_regression":
        batch["labels"] = torch.randn(b, generator=g)
    elif kind == "residue_pair_classification":  # a symmetric random contact map, -100 off residue pairs
        upper = (torch.rand(b, t, t, generator=g) < 0.2).triu(1)
        pairs = residue_mask[:, :, None] & residue_mask[:, None, :]
        batch["labels"] = (upper | upper.transpose(1, 2)).to(torch.int8).masked_fill(~pairs, IGNORE_INDEX)
        batch["label_mask"] = residue_mask.clone()
    elif kind == "masked_lm":
        chosen = residue_mask & (torch.rand(b, t, generator=g) < 0.3)
        chosen[:, 0] = True  # at least one masked token per sequence
        batch["labels"] = ids.masked_fill(~chosen, IGNORE_INDEX)
        batch["input_ids"] = ids.masked_fill(chosen, 28)  # <extra_id_0>
    return batch


OPTIM = dict(
    lr=1e-3,
    head_lr=1e-3,
    weight_decay=0.01,
    betas=[0.9, 0.999],
    scheduler="constant",
    warmup_ratio=0.0,
    warmup_steps=None,
)
FINETUNE = {
    "frozen": {"mode": "frozen", "cache_embeddings": False},
    "full": {"mode": "full"},
    "lora": {"mode": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "k", "v", "o"]},
    "partial": {"mode": "partial", "trainable_layers": 1},
}


def make_module(kind: str, mode: str = "full", num_layers: int = 2, head: dict | None = None, **kwargs):
    """FineTuneModule on a random tiny ANKH backbone (d_model 32) for a synthetic task of `kind`."""
    torch.manual_seed(0)
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=num_layers, **TINY)
    backbone = (FastAnkhForMaskedLM if kind == "masked_lm" else FastAnkhModel)(config)
    finetune = kwargs.pop("finetune", FINETUNE[mode])
    optim = {**OPTIM, **kwargs.pop("optim", {})}
    return FineTuneModule(
        task=dataclasses.asdict(make_task(kind)),
        head=head or {"name": "auto", "dropout": 0.0},
        finetune=finetune,
        optim=optim,
        backbone=backbone,
        **kwargs,
    )


def fit(module, batches: list[dict], steps: int, val_batches: list[dict] | None = None, **trainer_kwargs):
    """Train `module` for `steps` optimizer steps on a fixed list of batches (Lightning, CPU, no logger)."""
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    val = torch.utils.data.DataLoader(val_batches, batch_size=None) if val_batches else None
    with warnings.catch_warnings():
        if val is None:  # no validation asked for: Lightning's note that it skips the module's validation_step
            warnings.filterwarnings("ignore", "You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, loader, val)
    return trainer


# ------------------------------------------------------------------ end-to-end runs of the scripts
BLOCK_FASTANKH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastankh", "tasks"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
for name in ("fastankh", "tasks"):  # the script below must not reach them, or it proves nothing
    try:
        __import__(name)
        raise SystemExit(name + " should not be importable here")
    except ImportError:
        pass
"""


RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def metrics_of(out: Path) -> dict:
    return json.loads((out / "test_metrics.json").read_text())


def run_data(out: Path) -> TaskDataModule:
    """The data module of a finished run, rebuilt from its saved config.yaml."""
    cfg = OmegaConf.load(out / "config.yaml")
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    data = TaskDataModule(TaskSpec.from_config(cfg.task), tokenizer, seed=cfg.seed, **cfg.data)
    data.setup()
    return data


def write_sequences(path: Path, count: int, label, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = ["id,sequence,label"]
    for i in range(count):
        rows.append(f"p{i},{''.join(rng.choice(RESIDUES) for _ in range(rng.randint(8, 30)))},{label(rng)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def single_process(out: Path, checkpoint: Path, stage: str) -> dict[str, float]:
    """val/* of trainer.validate or the test split's metrics of trainer.test, one process, same data."""
    module = FineTuneModule.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    if stage == "validate":
        return {k: float(v) for k, v in trainer.validate(module, datamodule=run_data(out), verbose=False)[0].items()}
    trainer.test(module, datamodule=run_data(out), verbose=False)
    return module.test_results["test"]


def val_rows(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return frame[frame["val/loss"].notna()].dropna(axis=1, how="all").set_index("epoch")


REPO = Path(__file__).resolve().parents[1]


# One encoder block of width 32, a few batches: seconds per run (train.py end to end, sweeps).
TINY_TRAIN = [
    "model.config.num_layers=1",
    "model.config.d_model=32",
    "model.config.d_kv=8",
    "model.config.d_ff=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "~callbacks.progress_bar",
    "data.batch_size=4",
]

# One encoder block, one epoch, a dozen short chains: seconds per run.
TINY_RUN = [
    "model.config.num_layers=1",
    "trainer.max_epochs=1",
    "data.batch_size=4",
    "~callbacks.progress_bar",
    "+trainer.enable_model_summary=false",
    "task.data.val_fraction=0.25",
    "task.data.test_fraction=0.25",
]


def run_cli(script: str, overrides: list[str], config_name: str | None = None) -> Any:
    """`python <script>.py <overrides>` in this process: compose its Hydra config and call its main."""
    module = importlib.import_module(script)
    conf = REPO / "conf" if script == "train" else REPO / "conf" / "cli"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose(config_name or script, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return module.main.__wrapped__(cfg)


def train_run(run_dir: Path, overrides: list[str]) -> Path:
    """A tiny train.py run writing into run_dir; returns run_dir."""
    run_cli("train", TINY_RUN + overrides + [f"paths.output_dir={run_dir}"], config_name="config")
    return run_dir


def short_rows(source: str, n: int, max_len: int = 90) -> pd.DataFrame:
    frame = pd.read_csv(REPO / "data" / source)
    return frame[frame["sequence"].str.len() <= max_len].head(n)


def best_checkpoint(run_dir: Path) -> Path:
    (path,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return path


class StopAfterEpochs(L.Callback):
    """Stands in for a crash: the run stops after `epochs` epochs, its last.ckpt written at the epoch's end."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class RecordLosses(L.Callback):
    """Writes each rank's logged train/loss per training batch to <run>/losses/rank<r>.json, with the world size,
    the node count and what `describe` adds (add it with `+callbacks.record._target_=tests.helpers.RecordLosses`
    or a subclass). train/loss is the rank's own (not reduced over processes)."""

    def describe(self, trainer: L.Trainer) -> dict:
        return {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record = {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes, **self.describe(trainer)}
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(trainer.default_root_dir) / "losses"
        out.mkdir(exist_ok=True)
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({**self.record, "losses": self.losses}))


def rank_records(run_dir: Path) -> dict[int, dict]:
    """RecordLosses' records of a run: global rank -> record."""
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted((run_dir / "losses").glob("rank*.json"))}


def step_losses(run_dir: Path, steps: int, accumulate: int = 1) -> list[float]:
    """The loss of each optimizer step of a RecordLosses run: the mean over its ranks and accumulated batches."""
    ranks = rank_records(run_dir)
    return [
        sum(r["losses"][accumulate * step + i] for r in ranks.values() for i in range(accumulate))
        / (len(ranks) * accumulate)
        for step in range(steps)
    ]
