"""Predictions of an exported task model (see tasks/hub/export_folder.py) on a FASTA or table of sequences.

Output table, one row per valid input record, in input order:
  id, sequence, prediction, and for classification kinds one `prob_<label>` column per label.
- residue_classification: `prediction` = one label per residue, concatenated when every label is one
  character ("HHHEEC"), else space separated; `prob_<label>` = that label's probability per residue,
  space separated (4 decimals).
- residue_regression: `prediction` = one value per residue, space separated.
- sequence_classification: `prediction` = the label; `prob_<label>` = softmax probability.
- sequence_multilabel: `prediction` = labels with sigmoid >= 0.5, comma separated; `prob_<label>` = sigmoid.
- sequence_regression: `prediction` = the value.
- residue_pair_classification: `prediction` = the top L pairs (L = residues) with j - i >= 6, best first, as
  space-separated 0-based `i-j` (the training data's format); `prob_contact` = their contact probabilities,
  space separated, in the same order. `contact_maps=FILE.npz` also saves every protein's full (L, L)
  probability map (float32, keyed by record id).
Records are read and cleaned by fastankh.records (the reader and sequence rule of training and embed:
whitespace dropped, uppercased, one terminal '*' dropped). Invalid records (empty, letters outside the 20
standard residues and X B O U Z, longer than max_length) are reported as `<file>: row <n> (id <id>): <problem>`
before any model is loaded.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig

from fastankh import load_tokenizer
from fastankh.modeling_tasks import MIN_CONTACT_SEPARATION
from fastankh.precision import resolve_precision
from fastankh.records import Record
from fastankh.tokenization import prefix_length
from tasks.infer import harness
from tasks.task.kinds import TASK_KINDS, kind_of_model

OUTPUT_SUFFIXES = (".csv", ".parquet")
MAPS_SUFFIX = ".npz"
SHARD_SUFFIX = ".npz"  # predict.py's shards (tasks/infer/harness.py): rows as JSON + contact maps
ON_INVALID = ("skip", "error")


def task_kind(config: Any) -> str:
    """The task kind an exported config encodes (architecture + problem_type), read from tasks/task/kinds.py."""
    return kind_of_model((config.architectures or [""])[0], config.problem_type)


def _repo_file(name_or_path: str, filename: str) -> str | None:
    """`filename` inside a local folder or hub repo, None when the repo has no such file."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename)
    except EntryNotFoundError:
        return None


def load_task_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "32"):
    """(model, tokenizer, kind) of an export folder or hub id; adapter-only exports load with peft onto
    their base (`config.base_model_name_or_path`). The model is in eval mode on `device`, its weights in the
    dtype `precision` computes in there ("auto" | "32" | "bf16", fastankh/precision.py)."""
    name = os.fspath(name_or_path)
    harness.check_model_files(name)  # a corrupt config, weights or tokenizer file: one line naming it
    try:
        config = AutoConfig.from_pretrained(name)
        kind = task_kind(config)
        model_class = TASK_KINDS[kind].model_class  # what AutoModelFor*Classification gives for fastankh's config
        adapter = _repo_file(name, "adapter_config.json")
        if adapter is not None:
            from peft import PeftModel

            with open(adapter) as f:
                base = json.load(f)["base_model_name_or_path"]
            with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
                model = PeftModel.from_pretrained(model_class.from_pretrained(base, config=config), name)
        else:
            model = model_class.from_pretrained(name)
        tokenizer = load_tokenizer(name)
    except (OSError, ValueError, KeyError) as err:
        raise harness.loading_error(name, err) from None
    dtype = resolve_precision(precision, device)
    return model.to(device=device, dtype=dtype).eval(), tokenizer, kind


def _fmt(values: torch.Tensor) -> str:
    return " ".join(f"{v:.4f}" for v in values.tolist())


def ranked_contacts(probs: torch.Tensor) -> tuple[str, str]:
    """(pairs, probabilities) of the top L pairs of an (L, L) contact probability map, best first: pairs
    i < j with j - i >= MIN_CONTACT_SEPARATION as space-separated `i-j`, probabilities with 4 decimals."""
    n = probs.shape[0]
    i, j = torch.triu_indices(n, n, offset=MIN_CONTACT_SEPARATION)
    scores = probs[i, j]
    top = torch.argsort(scores, descending=True, stable=True)[:n]
    return " ".join(f"{a}-{b}" for a, b in zip(i[top].tolist(), j[top].tolist())), _fmt(scores[top])


def _rows(
    kind: str,
    labels: list[str],
    logits: torch.Tensor,
    records: list[Record],
    prefix: int,
    maps: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """Output rows of one batch; logits (B, T, C) for residue kinds, (B, C) for sequence kinds, (B, T, T)
    for the pair kind (whose probability maps go to `maps` by record id when given)."""
    rows, logits = [], logits.float().cpu()
    joiner = "" if all(len(label) == 1 for label in labels) else " "
    for r, out in zip(records, logits):
        row: dict[str, Any] = {"id": r.id, "sequence": r.sequence}
        if kind == "residue_pair_classification":
            n = len(r.sequence)
            probs = out[prefix : prefix + n, prefix : prefix + n].sigmoid()
            row["prediction"], row[f"prob_{labels[0]}"] = ranked_contacts(probs)
            if maps is not None:
                maps[r.id] = probs.numpy()
        elif kind == "residue_classification":
            probs = out[prefix : prefix + len(r.sequence)].softmax(-1)  # (n_residues, C)
            row["prediction"] = joiner.join(labels[i] for i in probs.argmax(-1).tolist())
            row.update({f"prob_{label}": _fmt(probs[:, c]) for c, label in enumerate(labels)})
        elif kind == "residue_regression":
            row["prediction"] = _fmt(out[prefix : prefix + len(r.sequence), 0])
        elif kind == "sequence_regression":
            row["prediction"] = out[0].item()
        else:
            multi = kind == "sequence_multilabel"
            probs = out.sigmoid() if multi else out.softmax(-1)
            chosen = [c for c in range(len(labels)) if probs[c] >= 0.5] if multi else [int(probs.argmax())]
            row["prediction"] = ",".join(labels[c] for c in chosen)
            row.update({f"prob_{label}": probs[c].item() for c, label in enumerate(labels)})
        rows.append(row)
    return rows


@torch.inference_mode()
def predict_batch(
    model, tokenizer, kind: str, records: Sequence[Record], maps: dict[str, np.ndarray] | None = None
) -> list[dict]:
    """Output rows of one batch of records (padded to its longest); the per-batch routine of
    predict.py's Lightning loop (tasks/infer/harness.py)."""
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    device = next(model.parameters()).device
    batch = tokenizer([r.sequence for r in records], padding=True, return_tensors="pt").to(device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return _rows(kind, labels, logits, list(records), prefix_length(tokenizer), maps)


__all__ = ["load_task_model", "predict_batch", "ranked_contacts", "task_kind"]
