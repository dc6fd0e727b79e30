"""The task's head, built from the Hydra `head` config group and the task kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fastankh.heads import build_head
from tasks.spec import TaskSpec

# head=auto: the Ankh/Schmirler baselines, a linear probe per residue and a mean-pooled MLP per sequence.
AUTO_HEAD = {"residue": "linear", "sequence": "mean"}


class LMHead(nn.Module):
    """The masked-LM vocabulary projection of `FastAnkhForMaskedLM`, as a head: (B, T, D) -> (B, T, V)."""

    def __init__(self, lm_head: nn.Linear):
        super().__init__()
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def head_spec(task: TaskSpec, head_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`build_head` arguments (kind_level, name, num_outputs and options) for this task and config."""
    options = {k: v for k, v in dict(head_cfg).items() if k != "name" and v is not None}
    level = "residue" if task.residue_level else "sequence"
    name = head_cfg["name"]
    if name == "auto":
        name = AUTO_HEAD[level]
    return {"kind_level": level, "name": name, "num_outputs": task.num_outputs, **options}


def build_task_head(
    task: TaskSpec, head_cfg: Mapping[str, Any], d_model: int, label_mean: float | None = None
) -> nn.Module:
    """Head for a supervised task; a regression head's output bias starts at the training-label mean."""
    spec = head_spec(task, head_cfg)
    head = build_head(spec.pop("kind_level"), spec.pop("name"), d_model, spec.pop("num_outputs"), **spec)
    if task.regression and label_mean is not None:
        # As in the Ankh regression head: predictions start at the mean, so early MSE is the variance.
        nn.init.constant_(head.out.bias, float(label_mean))
    return head
