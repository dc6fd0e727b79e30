"""What a task is: its kind, data source, columns, labels, metrics and selection metric.

A `TaskSpec` is built from the Hydra `task` config group (conf/task/*.yaml), one-to-one.

Batch contract between the data module (tasks/data/datamodule.py) and the model (tasks/train/module.py):
  input_ids      (B, T) long    token ids, right padded with 0; T = prefix + residues + </s>
  attention_mask (B, T) long    1 for real tokens
  residue_mask   (B, T) bool    True at residue tokens (not [NLU], </s> or padding)
  labels         residue kinds: (B, T) long class ids (-100 = ignore) or float values (0 where ignored:
                 for regression only label_mask says which residues count)
                 residue_pair_classification: (B, T, T) int8 contact map in token coordinates, symmetric:
                 1 contact, 0 none, -100 where a pair cannot count (a residue without coordinates, a
                 non-residue token, padding); int8 keeps a batch's maps at B*T*T bytes. The model counts
                 only pairs i < j with j - i >= 6 (fastankh.modeling_tasks.counted_pairs)
                 sequence_classification: (B,) long; sequence_regression: (B,) float;
                 sequence_multilabel: (B, C) float 0/1
                 masked_lm: (B, T) long original ids at the chosen tokens, -100 elsewhere
                 (input_ids then hold the corrupted sequence)
  label_mask     residue, pair kinds and masked_lm: (B, T) bool, True where a residue's label counts (residue,
                 unmasked; pair kind: the residue's pairs count)
  ids            list[str] record ids, for predictions
The task model (tasks/task/kinds.py names its class) takes input_ids, attention_mask, residue_mask, labels and
label_mask as they are and computes the loss itself (`loss` of its class in fastankh/modeling_tasks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from fastankh.errors import UserError
from tasks.task.kinds import TASK_KINDS

KINDS = tuple(TASK_KINDS)

# `${class_ids:N}` -> ["0", ..., "N-1"]: labels of tasks whose classes are integer ids (remote homology's 1195
# folds), resolvable wherever a task YAML is read (Hydra, or OmegaConf.load + TaskSpec.from_config).
if not OmegaConf.has_resolver("class_ids"):
    OmegaConf.register_new_resolver("class_ids", lambda n: [str(i) for i in range(int(n))])
IGNORE_INDEX = -100


@dataclass
class DataSpec:
    """Where a task's data comes from and which columns hold what."""

    hub_id: str | None = None  # e.g. proteinea/secondary_structure_prediction; None for local files
    train: str | None = None  # local file path (wins over hub_id when it exists), or file/split name in hub_id
    val: str | None = None  # None: carve val_fraction out of train, by split_column groups
    test: list[str] = field(default_factory=list)  # each split is named after its file stem
    sequence_column: str = "sequence"
    label_column: str = "label"
    id_column: str | None = "id"  # a file without this column gets ids "<file>:<row>"
    mask_column: str | None = None  # residue tasks: per-residue mask string, see mask_value
    mask_value: str | None = None  # residues whose mask value equals this are ignored (labels unchecked)
    split_column: str | None = None  # e.g. cluster40: whole groups go to one split
    # e.g. "split": one train file holding its own partition; rows valued train / valid|val|validation|dev /
    # test go to train / val (unless `val` is given) / an extra test split named "test"
    split_filter_column: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.0  # > 0: also carve a test split "test" out of train groups
    # residue kinds: per-residue values separated by this (None: whitespace if the cell has any, else one
    # character per residue; the mask column follows the same rule); sequence_multilabel: default ","
    label_separator: str | None = None
    max_length: int = 1024  # residues; longer sequences are an error (or truncated, see truncate)
    truncate: bool = False
    # residue and pair kinds: training crops longer chains to a random window of this many residues (pair
    # memory grows as L^2; drawn per (seed, epoch, sample)); evaluation always runs whole chains
    crop_length: int | None = None
    mlm_probability: float = 0.15  # masked_lm: share of residue tokens chosen for prediction


@dataclass
class TaskSpec:
    name: str
    kind: str
    data: DataSpec
    # class alphabet (classification kinds); None for regression; residue_pair_classification: [contact]
    labels: list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    monitor: str = "val/loss"  # metric that selects the best checkpoint
    monitor_mode: str = "min"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"task {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.data, dict):
            self.data = DataSpec(**self.data)
        if self.pair_level:
            self.labels = self.labels or ["contact"]
            if len(self.labels) != 1:
                raise UserError(
                    f"task {self.name}: kind {self.kind} has one class (a contact), got labels {self.labels}"
                )
        if self.kind.endswith(("classification", "multilabel")) and not self.labels:
            raise UserError(f"task {self.name}: kind {self.kind} needs a `labels` list")
        crop = self.data.crop_length
        if crop is not None and (crop < 1 or not (self.residue_level or self.pair_level)):
            raise UserError(
                f"task {self.name}: task.data.crop_length={crop} needs a positive length and a residue or pair kind"
            )

    @property
    def residue_level(self) -> bool:
        return TASK_KINDS[self.kind].level == "residue"

    @property
    def pair_level(self) -> bool:
        return TASK_KINDS[self.kind].level == "pair"

    @property
    def regression(self) -> bool:
        return TASK_KINDS[self.kind].problem_type == "regression"

    @property
    def num_outputs(self) -> int:
        return 1 if self.regression else len(self.labels)

    @classmethod
    def from_config(cls, cfg: Any) -> TaskSpec:
        """From the Hydra `task` node (DictConfig or dict); unknown keys are an error."""
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        raw = {k: v for k, v in raw.items() if k not in ("masked_lm",)}
        data = raw.pop("data", {}) or {}
        known = set(DataSpec.__dataclass_fields__)
        bad = sorted(set(data) - known)
        if bad:
            raise UserError(f"task.data: unknown key(s) {bad}; known: {sorted(known)}")
        bad = sorted(set(raw) - set(cls.__dataclass_fields__))
        if bad:
            raise UserError(f"task: unknown key(s) {bad}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(data=DataSpec(**data), **raw)
