"""Synthetic batches that follow the batch contract of tasks/spec.py, for tests that need no data module."""

from __future__ import annotations

import torch

from tasks.spec import IGNORE_INDEX, TaskSpec

RESIDUE_IDS = range(3, 23)  # the 20 standard residues in the ANKH v1 vocabulary


def make_task(kind: str, num_classes: int = 3, **fields) -> TaskSpec:
    labels = None if kind.endswith("regression") or kind == "masked_lm" else [f"c{i}" for i in range(num_classes)]
    return TaskSpec(name=f"synthetic_{kind}", kind=kind, data={}, labels=labels, **fields)


def make_batch(task: TaskSpec, lengths: list[int], seed: int = 0, num_classes: int = 3) -> dict:
    """One right-padded batch of random residues: no prefix, residues, </s>, padding."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths) + 1
    ids = torch.zeros(b, t, dtype=torch.long)
    residue_mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 23, (n,), generator=g)
        ids[i, n] = 1
        residue_mask[i, :n] = True
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "residue_mask": residue_mask, "ids": [f"s{i}" for i in range(b)]}
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
    elif kind == "masked_lm":
        chosen = residue_mask & (torch.rand(b, t, generator=g) < 0.3)
        chosen[:, 0] = True  # at least one masked token per sequence
        batch["labels"] = ids.masked_fill(~chosen, IGNORE_INDEX)
        batch["input_ids"] = ids.masked_fill(chosen, 28)  # <extra_id_0>
    return batch
