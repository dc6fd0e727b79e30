"""Synthetic batches that follow the batch contract of tasks/spec.py, for tests that need no data module."""

from __future__ import annotations

import dataclasses

import lightning as L
import torch

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from tasks.module import FineTuneModule
from tasks.spec import IGNORE_INDEX, TaskSpec

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
    trainer.fit(module, loader, val)
    return trainer
