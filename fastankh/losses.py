"""Losses of the FastANKH models: one masked mean per problem type, in fp32.

This file travels to the Hub as remote code next to modeling_fastankh.py and modeling_tasks.py: it imports only
torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def counted_loss(logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Mean loss in fp32 over the positions where `counted` (bool, the shape of labels' leading dims) is True:
    MSE for "regression", BCE-with-logits for "multi_label_classification", else cross-entropy.

    No counted position (e.g. a batch of unlabelled residues) gives a zero that keeps the graph, not NaN.
    """
    if not counted.any():
        return logits.sum() * 0.0
    logits, labels = logits[counted].float(), labels[counted]
    if problem_type == "regression":
        return F.mse_loss(logits.reshape(labels.shape), labels.float())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels)


__all__ = ["counted_loss"]
