"""The one table of task kinds: for each kind, the model class it trains and exports, its problem_type,
its default head and its metrics. A table only: the task model is built from it in tasks/train/task_model.py.
Training (tasks/train/module.py), export (tasks/hub/export_folder.py), predict (tasks/infer/prediction.py),
metrics (tasks/task/metrics.py) and the task spec (tasks/task/spec.py) all read it.

It names model classes by string and imports nothing heavy, so `train.py --help` stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Kind:
    name: str
    model_class_name: str  # a class exported by fastankh
    problem_type: str | None  # config.problem_type of the model (None: masked_lm)
    level: (
        str  # "residue" | "sequence" | "pair" (residue pairs) | "token" (masked_lm: every token, the vocabulary head)
    )
    default_head: str | None  # head=auto; None: the model's own head (masked_lm's lm_head)
    metrics: tuple[str, ...]  # every metric the kind offers
    # reported when a task lists none; "accuracy" of residue_classification reads q3 / q8 by class count
    default_metrics: tuple[str, ...]

    @property
    def model_class(self) -> type[PreTrainedModel]:
        import fastankh

        return getattr(fastankh, self.model_class_name)

    @property
    def head_attribute(self) -> str:
        """Name of the model's head submodule (trained at head_lr, saved whole next to LoRA adapters)."""
        return "lm_head" if self.level == "token" else "head"


_REGRESSION_METRICS = ("spearman", "pearson", "r2", "rmse")
_CLASS_METRICS = ("accuracy", "mcc", "f1", "auroc")
# precision of the top L/5, L/2, L predicted pairs (L = residues) per separation range, per protein, averaged
_CONTACT_METRICS = tuple(f"{r}_p_at_{k}" for r in ("long", "medium", "short") for k in ("l5", "l2", "l"))
TASK_KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "residue_classification",
            "FastAnkhForTokenClassification",
            "single_label_classification",
            "residue",
            "linear",
            ("q3", "q8", "accuracy", "per_protein_accuracy", "mcc", "f1", "auroc"),
            ("accuracy", "per_protein_accuracy", "mcc", "f1"),
        ),
        Kind(
            "residue_regression",
            "FastAnkhForTokenClassification",
            "regression",
            "residue",
            "linear",
            _REGRESSION_METRICS,
            _REGRESSION_METRICS,
        ),
        Kind(
            "sequence_classification",
            "FastAnkhForSequenceClassification",
            "single_label_classification",
            "sequence",
            "mean",
            _CLASS_METRICS,
            _CLASS_METRICS,
        ),
        Kind(
            "sequence_multilabel",
            "FastAnkhForSequenceClassification",
            "multi_label_classification",
            "sequence",
            "mean",
            ("f1", "auroc"),
            ("f1", "auroc"),
        ),
        Kind(
            "sequence_regression",
            "FastAnkhForSequenceClassification",
            "regression",
            "sequence",
            "mean",
            _REGRESSION_METRICS,
            _REGRESSION_METRICS,
        ),
        # contact maps: labels are the contacting residue pairs of each sequence (tasks/data/encoding.py)
        Kind(
            "residue_pair_classification",
            "FastAnkhForContactPrediction",
            "contact_prediction",
            "pair",
            "mlp",
            _CONTACT_METRICS,
            _CONTACT_METRICS[:6],  # long and medium range, as the field reports contacts
        ),
        # BERT-style masking of the user's sequences; labels = original ids at masked tokens
        Kind(
            "masked_lm",
            "FastAnkhForMaskedLM",
            None,
            "token",
            None,
            ("masked_accuracy", "perplexity"),
            ("masked_accuracy", "perplexity"),
        ),
    )
}


def kind_of_model(architecture: str, problem_type: str | None) -> str:
    """The kind an exported config encodes (config.architectures[0], config.problem_type): the table, inverted."""
    found = [
        k.name for k in TASK_KINDS.values() if (k.model_class_name, k.problem_type) == (architecture, problem_type)
    ]
    if len(found) != 1:
        raise ValueError(f"no task kind has model {architecture!r} with problem_type {problem_type!r}")
    return found[0]


__all__ = ["Kind", "TASK_KINDS", "kind_of_model"]
