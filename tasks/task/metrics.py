"""Task metrics (torchmetrics), computed only where a label counts: padding, special tokens and
masked residues never enter a metric.

Stable names, by task kind (logged as val/<name> and test/<split>/<name>):
- residue_classification: q3 (3 classes) / q8 (8 classes) / accuracy = accuracy over all counted
  residues; per_protein_accuracy = mean over proteins of each protein's accuracy; mcc; f1 (macro;
  positive class for 2 classes); auroc (macro one-vs-rest; binary for 2 classes).
- sequence_classification: accuracy, mcc, f1, auroc (as above).
- sequence_multilabel: f1, auroc (macro over labels).
- residue_regression / sequence_regression: spearman, pearson, r2, rmse.
- masked_lm: masked_accuracy (over masked tokens), perplexity (exp of mean masked-token CE).
- residue_pair_classification: <range>_p_at_<k> = precision of the top L/5 (l5), L/2 (l2) or L (l) pairs of
  a protein ranked by predicted contact probability, among its counted pairs in the separation range (long
  |i-j| >= 24, medium 12-23, short 6-11; L = its residues; fewer candidates than that: all of them), then
  averaged over proteins that have candidates in the range, as CASP and the PLM papers report contacts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics.text import Perplexity

from fastankh.errors import UserError
from fastankh.modeling_tasks import counted_pairs
from tasks.task.kinds import TASK_KINDS

KIND_METRICS = {name: kind.metrics for name, kind in TASK_KINDS.items()}
ACCURACY_NAMES = {"q3": 3, "q8": 8}


def accuracy_name(num_classes: int) -> str:
    """The name residue accuracy goes by: q3, q8, else accuracy."""
    return {3: "q3", 8: "q8"}.get(num_classes, "accuracy")


def default_metrics(kind: str, num_classes: int | None = None) -> list[str]:
    """Metrics reported when a task lists none (tasks/task/kinds.py); residue accuracy goes by q3 / q8."""
    names = TASK_KINDS[kind].default_metrics
    return [accuracy_name(num_classes) if kind == "residue_classification" and n == "accuracy" else n for n in names]


class PerProteinAccuracy(Metric):
    """Mean over proteins of per-protein accuracy; proteins without counted residues are skipped."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("proteins", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        """preds, target: (B, T) class ids; mask: (B, T) bool, True where the label counts."""
        counted = mask.sum(dim=1)
        correct = ((preds == target) & mask).sum(dim=1)
        has = counted > 0
        self.total += (correct[has].double() / counted[has]).sum()
        self.proteins += has.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.proteins).float()


SEPARATION_RANGES = {"short": (6, 11), "medium": (12, 23), "long": (24, float("inf"))}  # |i - j|, inclusive
TOP_FRACTIONS = {"l5": 5, "l2": 2, "l": 1}  # top L / k pairs


class ContactPrecision(Metric):
    """Per-protein precision of the top-ranked pairs, averaged over proteins; one value per metric name
    (`<range>_p_at_<k>`, see the module docstring)."""

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.add_state("total", torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("proteins", torch.zeros(len(self.names), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, lengths: torch.Tensor) -> None:
        """logits, labels: (B, T, T) (1 = contact); counted: (B, T, T) bool, the pairs that count (i < j);
        lengths: (B,) residues per protein."""
        positions = torch.arange(logits.shape[-1], device=logits.device)
        separation = positions[None, :] - positions[:, None]
        for b in range(logits.shape[0]):
            ranked = {}  # range -> contact flags of its candidate pairs, best-scored first
            for m, name in enumerate(self.names):
                span, fraction = name.split("_p_at_")
                if span not in ranked:
                    low, high = SEPARATION_RANGES[span]
                    chosen = counted[b] & (separation >= low) & (separation <= high)
                    order = torch.argsort(logits[b][chosen].float(), descending=True, stable=True)
                    ranked[span] = (labels[b][chosen] == 1)[order]
                hits = ranked[span]
                if not len(hits):
                    continue
                top = max(1, int(lengths[b]) // TOP_FRACTIONS[fraction])
                self.total[m] += hits[:top].double().mean()
                self.proteins[m] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        values = (self.total / self.proteins.clamp(min=1)).float()
        return {name: values[m] for m, name in enumerate(self.names)}


class FlatPerplexity(Perplexity):
    """Perplexity of flat token logits (N, V) against ids (N,)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.unsqueeze(0), target.unsqueeze(0))


def _classification(name: str, num_classes: int) -> Metric:
    binary = num_classes == 2
    if name in ("accuracy", "q3", "q8", "masked_accuracy"):
        return tmc.BinaryAccuracy() if binary else tmc.MulticlassAccuracy(num_classes, average="micro")
    if name == "mcc":
        return tmc.BinaryMatthewsCorrCoef() if binary else tmc.MulticlassMatthewsCorrCoef(num_classes)
    if name == "f1":
        return tmc.BinaryF1Score() if binary else tmc.MulticlassF1Score(num_classes, average="macro")
    return tmc.BinaryAUROC() if binary else tmc.MulticlassAUROC(num_classes, average="macro")


def _spearman() -> Metric:
    with warnings.catch_warnings():
        # torchmetrics warns on every construction that the metric keeps all predictions: a rank correlation must
        warnings.filterwarnings("ignore", "Metric `SpearmanCorrcoef` will save all targets", UserWarning)
        return tmr.SpearmanCorrCoef()


def _metric(kind: str, name: str, num_classes: int | None) -> Metric:
    if kind.endswith("regression"):
        return {
            "spearman": _spearman,
            "pearson": tmr.PearsonCorrCoef,
            "r2": tmr.R2Score,
            "rmse": lambda: tmr.MeanSquaredError(squared=False),
        }[name]()
    if kind == "sequence_multilabel":
        return (tmc.MultilabelF1Score if name == "f1" else tmc.MultilabelAUROC)(num_classes, average="macro")
    if name == "perplexity":
        return FlatPerplexity()
    return _classification(name, num_classes)


class TaskMetrics(nn.Module):
    """All metrics of one task on one split; `update(logits, batch)` picks the counted positions itself.

    logits: residue kinds (B, T, C) (regression (B, T)); sequence kinds (B, C) (regression (B,)).
    """

    def __init__(self, kind: str, names: Sequence[str] = (), num_classes: int | None = None):
        super().__init__()
        if kind not in KIND_METRICS:
            raise ValueError(f"no metrics for task kind {kind!r}")
        names = list(names) or default_metrics(kind, num_classes)
        for name in names:
            if name not in KIND_METRICS[kind]:
                raise UserError(f"metric {name!r} is not defined for {kind}; choose from {KIND_METRICS[kind]}")
            if name in ACCURACY_NAMES and ACCURACY_NAMES[name] != num_classes:
                raise UserError(f"metric {name!r} needs {ACCURACY_NAMES[name]} classes, the task has {num_classes}")
        self.kind, self.num_classes = kind, num_classes
        self.per_protein = PerProteinAccuracy() if "per_protein_accuracy" in names else None
        # pair metrics rank each protein's pairs: one metric object over the whole map, no flat inputs
        self.contacts = ContactPrecision(names) if TASK_KINDS[kind].level == "pair" else None
        flat = [] if self.contacts is not None else [n for n in names if n != "per_protein_accuracy"]
        self.flat = MetricCollection({n: _metric(kind, n, num_classes) for n in flat})

    def _flat_inputs(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        if self.kind == "masked_lm":
            mask = labels != -100
            return logits[mask].float(), labels[mask]  # raw logits: perplexity applies its own softmax
        if self.kind.startswith("residue"):
            mask = batch["label_mask"]
            logits, labels = logits[mask], labels[mask]
        if self.kind.endswith("regression"):
            return logits.float(), labels.float()
        if self.kind == "sequence_multilabel":
            return torch.sigmoid(logits.float()), labels.long()
        probs = torch.softmax(logits.float(), dim=-1)
        return (probs[:, 1] if self.num_classes == 2 else probs), labels

    @torch.no_grad()
    def update(self, logits: torch.Tensor, batch: dict) -> None:
        if self.contacts is not None:
            labels, residues = batch["labels"], batch["residue_mask"]
            counted = counted_pairs(labels, batch["label_mask"], residues)
            self.contacts.update(logits.detach(), labels, counted, residues.sum(dim=1))
            return
        preds, target = self._flat_inputs(logits.detach(), batch)
        if preds.numel():
            self.flat.update(preds, target)
        if self.per_protein is not None:
            self.per_protein.update(logits.argmax(-1), batch["labels"], batch["label_mask"])

    def compute(self) -> dict[str, torch.Tensor]:
        if self.contacts is not None:
            return self.contacts.compute()
        out = dict(self.flat.compute())
        if self.per_protein is not None:
            out["per_protein_accuracy"] = self.per_protein.compute()
        return out

    def reset(self) -> None:
        if self.contacts is not None:
            self.contacts.reset()
        self.flat.reset()
        if self.per_protein is not None:
            self.per_protein.reset()
