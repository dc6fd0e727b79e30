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
import shutil
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from transformers import AutoConfig

from fastankh import load_tokenizer
from fastankh.atomic import atomic_path
from fastankh.batching import length_batches
from fastankh.modeling_tasks import MIN_CONTACT_SEPARATION
from fastankh.precision import resolve_precision
from fastankh.records import Record, RecordError, read_records
from fastankh.tokenization import prefix_length
from tasks.errors import DataError
from tasks.infer import harness
from tasks.task.kinds import TASK_KINDS, kind_of_model

OUTPUT_SUFFIXES = (".csv", ".parquet")
MAPS_SUFFIX = ".npz"
SHARD_SUFFIX = ".npz"  # predict.py's shards (tasks/infer/harness.py): rows as JSON + contact maps
ON_INVALID = ("skip", "error")


def read_input_records(
    path: str | os.PathLike, id_column: str = "id", sequence_column: str = "sequence"
) -> list[Record]:
    """Records of a FASTA file or a .csv/.tsv/.parquet table (optionally .gz), read by fastankh.records.

    A table without `id_column` gets ids "<file stem>:<row>" (1-based data rows). Invalid records are
    kept, with their `problem` (see check_records); an unreadable file is a DataError.
    """
    try:
        return read_records(path, id_column, sequence_column)
    except RecordError as err:  # missing file or column, unknown type, malformed FASTA: one line
        raise DataError(str(err)) from None


def check_records(records: Sequence[Record], source: str, max_length: int | None = None) -> tuple[list[int], list[str]]:
    """(indices of valid records, one problem line per invalid record: `<file>: row <n> (id <id>): <problem>`).

    A repeated id is a problem of its later records: outputs (the table's id column, contact maps) are keyed by id.
    `source` is unused (each record names its file); kept for callers that pass it."""
    valid, problems = [], []
    first: dict[str, Record] = {}
    for i, r in enumerate(records):
        if r.problem is not None:
            problems.append(r.error)
        elif r.id in first:
            problems.append(f"{r.where}: id {r.id!r} appears more than once (first at row {first[r.id].row})")
        elif max_length is not None and len(r.sequence) > max_length:
            problems.append(f"{r.where}: {len(r.sequence)} residues > max_length={max_length} (raise max_length)")
        else:
            valid.append(i)
            first[r.id] = r
    return valid, problems


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


def batch_plan(records: Sequence[Record], batch_size: int) -> list[list[int]]:
    """Indices of `records` in batches, longest first (fastankh.batching.length_batches, as training and
    embed_dataset: least padding)."""
    return length_batches([len(r.sequence) for r in records], batch_size)


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


def write_table(rows: list[dict], path: str | os.PathLike) -> None:
    """Rows to .csv or .parquet, atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{path}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    frame = pd.DataFrame(rows)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False) if path.suffix.lower() == ".parquet" else frame.to_csv(tmp, index=False)


def write_maps(maps: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Contact maps to a compressed .npz (one array per record id), atomically."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix
        np.savez_compressed(f, **maps)


def predict_file(
    model: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int = 16,
    on_invalid: str = "skip",
    id_column: str = "id",
    sequence_column: str = "sequence",
    max_length: int | None = None,
    accelerator: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    contact_maps: str | os.PathLike | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    save_every: int = 100,
) -> list[str]:
    """Predict every valid record of `input` into `output`; returns the problem lines of skipped records.

    Runs on Lightning's predict loop over `devices` x `num_nodes` processes (`accelerator`, `strategy`: as
    in conf/trainer; tasks/infer/harness.py): each rank predicts its share of the length-sorted batches and saves
    its rows every `save_every` batches as shards in `<output>.shards/`; rank 0 writes the table in input
    order and removes the shards. A rerun after a crash predicts only the records the shards lack.

    `contact_maps` (residue_pair_classification models): also write each record's (L, L) contact probability
    map to this .npz, keyed by record id.

    `precision`: the dtype the model computes in (see load_task_model); `auto` is bf16 on hardware with native
    bf16 matmuls. Bad input raises DataError before the model is loaded (on_invalid="error": one line per invalid
    record); on_invalid="skip" passes each line to `report` (rank 0) before any prediction and predicts the rest.
    """
    if on_invalid not in ON_INVALID:
        raise DataError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    try:  # a bad precision (e.g. fp16) stops before any work
        resolve_precision(precision, "cpu")
    except ValueError as err:
        raise DataError(str(err)) from None
    if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{output}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if contact_maps is not None and Path(contact_maps).suffix.lower() != MAPS_SUFFIX:
        raise DataError(f"{contact_maps}: contact_maps must end in {MAPS_SUFFIX}")
    records = read_input_records(input, id_column, sequence_column)
    valid, problems = check_records(records, os.fspath(input), max_length)
    if problems and on_invalid == "error":
        raise DataError("\n".join(problems))
    trainer = harness.build_trainer(accelerator, devices, num_nodes, strategy, progress=progress)
    if report is not None and trainer.is_global_zero:
        for line in problems:
            report(line)
    if not valid:
        raise DataError(f"{input}: no valid records to predict")
    todo_records = [records[i] for i in valid]
    if contact_maps is not None:
        twice = sorted(k for k, count in Counter(r.id for r in todo_records).items() if count > 1)
        if twice:
            raise DataError(f"{input}: contact_maps are keyed by record id; id(s) used twice: {', '.join(twice)}")
    compute = harness.compute_dtype(precision, trainer)
    task_model, tokenizer, kind = load_task_model(model, "cpu", "32")  # cast to `compute` on its device
    if contact_maps is not None and kind != "residue_pair_classification":
        raise DataError(f"contact_maps needs a residue_pair_classification model; {model} is {kind}")
    with_maps = contact_maps is not None
    shards = harness.shard_dir(output)
    options = {"model": os.fspath(model), "compute": str(compute).removeprefix("torch."), "contact_maps": with_maps}
    harness.check_shard_options(shards, options)
    shard_files = harness.shard_files(shards, SHARD_SUFFIX)
    done = {i for path in shard_files for i, _, _ in _read_shard(path, todo_records, with_maps=False)}
    todo = [i for i in range(len(todo_records)) if i not in done]
    batches = [[todo[j] for j in chunk] for chunk in batch_plan([todo_records[i] for i in todo], batch_size)]

    def step(model: torch.nn.Module, batch: list[int]) -> list[tuple[int, dict, np.ndarray | None]]:
        maps: dict[str, np.ndarray] | None = {} if with_maps else None
        rows = predict_batch(model, tokenizer, kind, [todo_records[i] for i in batch], maps)
        return [(i, row, maps[row["id"]] if maps is not None else None) for i, row in zip(batch, rows)]

    def merge() -> list[str]:
        rows: dict[int, dict] = {}
        maps: dict[str, np.ndarray] = {}
        for path in harness.shard_files(shards, SHARD_SUFFIX):
            for i, row, probability_map in _read_shard(path, todo_records, with_maps):
                rows[i] = row
                if probability_map is not None:
                    maps[row["id"]] = probability_map
        missing = [todo_records[i].id for i in range(len(todo_records)) if i not in rows]
        if missing:
            raise DataError(f"{shards}: {len(missing)} record(s) missing after the run (e.g. {missing[0]!r}); rerun")
        write_table([rows[i] for i in range(len(todo_records))], output)
        if with_maps:
            write_maps(maps, contact_maps)
        shutil.rmtree(shards, ignore_errors=True)
        return problems

    writer = harness.ShardWriter(shards, SHARD_SUFFIX, _write_shard, options, save_every)
    result = harness.run(trainer, writer, merge, lambda: task_model, range(len(todo_records)), batches, step, compute)
    return problems if result is None else result


def _write_shard(results: list[tuple[int, dict, np.ndarray | None]], path: Path) -> None:
    """One shard of predict.py: the rows (JSON, with their index among the valid records) and contact maps."""
    rows = [{"index": i, "row": row} for i, row, _ in results]
    arrays = {"rows": np.frombuffer(json.dumps(rows).encode(), dtype=np.uint8)}
    arrays.update({f"map_{j}": m for j, (_, _, m) in enumerate(results) if m is not None})
    with open(path, "wb") as f:  # a file object: numpy adds no suffix
        np.savez(f, **arrays)


def _read_shard(
    path: Path, records: Sequence[Record], with_maps: bool = True
) -> list[tuple[int, dict, np.ndarray | None]]:
    """(index, row, contact map or None) of a shard's rows that still match the input (same index, id and
    sequence); an unreadable shard counts as absent (its records are predicted again)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            rows = json.loads(f["rows"].tobytes().decode())
            maps = {name: f[name] for name in f.files if with_maps and name.startswith("map_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return []
    out = []
    for j, entry in enumerate(rows):
        i, row = entry["index"], entry["row"]
        if i < len(records) and records[i].id == row["id"] and records[i].sequence == row["sequence"]:
            out.append((i, row, maps.get(f"map_{j}")))
    return out


__all__ = [
    "Record",
    "read_input_records",
    "check_records",
    "load_task_model",
    "predict_batch",
    "predict",
    "predict_file",
    "ranked_contacts",
    "task_kind",
    "write_maps",
    "write_table",
]


def predict(cfg: DictConfig) -> list[str]:
    """predict.py's body: predict_file on conf/cli/predict.yaml's `cfg`; skipped records are reported on
    stderr (rank 0) and rank 0 prints what it wrote. Returns the problem lines of skipped records."""
    skipped = predict_file(
        cfg.model,
        cfg.input,
        cfg.output,
        batch_size=cfg.batch_size,
        on_invalid=cfg.on_invalid,
        id_column=cfg.id_column,
        sequence_column=cfg.sequence_column,
        max_length=cfg.max_length,
        precision=cfg.precision,
        progress=cfg.progress,
        report=lambda line: print(f"skipping {line}", file=sys.stderr),
        contact_maps=cfg.contact_maps,
        save_every=cfg.save_every,
        **{key: cfg[key] for key in harness.TRAINER_KEYS},
    )
    if rank_zero_only.rank == 0:  # the only process unless devices/num_nodes > 1
        print(f"wrote {cfg.output}" + (f" ({len(skipped)} invalid record(s) skipped)" if skipped else ""))
    return skipped
