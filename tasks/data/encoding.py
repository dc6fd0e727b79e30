"""Validating task records and encoding their labels, before any training.

`encode(table, task)` checks every row and raises one `DataError` listing every problem, one line each:
`<file>: row <n> (id <id>): <problem>`. Rows are 1-based data rows (the header is not counted).
Encoded labels per kind (one entry per record):
  residue_classification  list[int]   class index per residue, IGNORE_INDEX where masked
  residue_regression      list[float] value per residue, 0.0 where masked
  residue_pair_classification list[list[int]] contacting pairs [i, j], 0-based, i < j, both residues counted
                          (the cell: space-separated `i-j` pairs; empty = no contact)
  (residue and pair kinds also get `label_mask`: list[bool], True where the residue's label counts)
  sequence_classification int; sequence_multilabel list[float] (multi-hot, len(labels));
  sequence_regression float; masked_lm: no labels (they are drawn when batching).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastankh.errors import DataError
from fastankh.records import cell_text as _text
from fastankh.records import clean_sequence, column_list, where
from fastankh.records import is_missing as _is_missing
from tasks.data.sources import ROW, Table, split_name
from tasks.task.spec import IGNORE_INDEX, TaskSpec

MAX_PROBLEM_LINES = 20


def _per_residue(value: Any, separator: str | None) -> list:
    """Split a per-residue cell: by `separator`, else by whitespace when present, else per character."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    text = str(value).strip()
    if separator is not None:
        return [t.strip() for t in text.split(separator)]
    return text.split() if any(c.isspace() for c in text) else list(text)


def _is_mask_value(mark: Any, value: str) -> bool:
    """Whether a mask cell holds task.data.mask_value: compared as numbers when both parse as floats (so
    "0", "0.0", "0.00" and 0.0 all match 0, as protbench reads the `disorder` column), else as text."""
    text = _text(mark)
    try:
        return float(text) == float(value)
    except ValueError:
        return text == value


def _show(items: list) -> str:
    return ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items)


class _Problems:
    def __init__(self, source: str):
        self.source, self.lines, self.count = source, [], 0

    def add(self, row: int, record_id: str | None, problem: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_PROBLEM_LINES:
            self.lines.append(f"{where(self.source, row, record_id)}: {problem}")

    def raise_if_any(self) -> None:
        if self.count:
            extra = self.count - len(self.lines)
            more = [f"{self.source}: ... and {extra} more problem(s)"] if extra else []
            raise DataError("\n".join(self.lines + more))


def _number(value: Any, say, not_a_number: str, nan: str) -> float | None:
    """float(value), or None after reporting `not_a_number` (no float) or `nan` (NaN)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        say(not_a_number)
        return None
    if math.isnan(x):
        say(nan)
        return None
    return x


def _required_columns(task: TaskSpec) -> dict[str, str]:
    d = task.data
    columns = {d.sequence_column: "sequence_column"}
    if task.kind != "masked_lm":
        columns[d.label_column] = "label_column"
    if (task.residue_level or task.pair_level) and d.mask_column:
        columns[d.mask_column] = "mask_column"
    return columns


def _residue_labels(task: TaskSpec, cell: Any, counts: list[bool], say) -> list | None:
    """Per-residue labels of one row (class index or float; the ignore value where `counts` is False),
    or None after reporting a problem. Masked residues are not checked: their labels are never used."""
    column = task.data.label_column
    values = _per_residue(cell, task.data.label_separator)
    if len(values) != len(counts):
        say(f"label length {len(values)} != sequence length {len(counts)} (column '{column}')")
        return None
    if task.regression:
        out = []
        for i, (v, counted) in enumerate(zip(values, counts)):
            if not counted:
                out.append(0.0)
                continue
            where = f"at residue {i + 1} of column '{column}'"
            x = _number(v, say, f"non-numeric value {v!r} {where}", f"NaN {where}")
            if x is None:
                return None
            out.append(x)
        return out
    index = {label: i for i, label in enumerate(task.labels)}
    texts = [_text(v) for v in values]
    unknown = sorted({t for t, counted in zip(texts, counts) if counted} - set(index))
    if unknown:
        say(f"label(s) {_show(unknown)} in column '{column}' not in task labels [{', '.join(task.labels)}]")
        return None
    return [index[t] if counted else IGNORE_INDEX for t, counted in zip(texts, counts)]


def _pair_labels(task: TaskSpec, cell: Any, counts: list[bool], say) -> list[list[int]] | None:
    """Contacting pairs of one row as sorted [i, j] (i < j) whose residues both count, or None after reporting
    a problem. Pairs are `i-j`, 0-based, in either order, separated by whitespace (or task.data.label_separator)."""
    column, n = task.data.label_column, len(counts)
    text = "" if _is_missing(cell) else str(cell)
    tokens = text.split(task.data.label_separator) if task.data.label_separator else text.split()
    pairs = set()
    for token in filter(None, (t.strip() for t in tokens)):
        parts = [p.strip() for p in token.split("-")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            say(f"malformed pair {token!r} in column '{column}' (expected i-j, two 0-based residue positions)")
            return None
        i, j = sorted(int(p) for p in parts)
        if i == j:
            say(f"pair {token!r} in column '{column}' pairs residue {i} with itself")
            return None
        if j >= n:
            say(f"pair {token!r} in column '{column}': position {j} is out of range for {n} residues (0-based)")
            return None
        if counts[i] and counts[j]:  # a pair with a masked residue never counts: dropped here
            pairs.add((i, j))
    return [list(p) for p in sorted(pairs)]


def _sequence_label(task: TaskSpec, cell: Any, say) -> Any:
    """One row's encoded sequence-level label, or None after reporting a problem."""
    column = task.data.label_column
    if task.kind == "sequence_regression":
        return _number(
            cell,
            say,
            f"label {cell!r} in column '{column}' is not a number",
            f"missing label (NaN) in column '{column}'",
        )
    index = {label: i for i, label in enumerate(task.labels)}
    if task.kind == "sequence_multilabel":
        names = [p.strip() for p in str(cell).split(task.data.label_separator or ",") if p.strip()]
    else:
        names = [_text(cell)]
    unknown = sorted(set(names) - set(index))
    if unknown:
        say(f"label(s) {_show(unknown)} in column '{column}' not in task labels [{', '.join(task.labels)}]")
        return None
    if task.kind == "sequence_multilabel":
        hot = [0.0] * len(index)
        for name in names:
            hot[index[name]] = 1.0
        return hot
    return index[names[0]]


def encode(table: Table, task: TaskSpec) -> dict[str, list]:
    """Validate every record of `table` and encode it -> columns `id`, `row`, `sequence` (+ `labels`,
    `label_mask`); raises DataError naming every bad row. Sequences are cleaned by
    fastankh.records.clean_sequence (whitespace dropped, uppercased, one terminal '*' dropped, letters
    outside the 20 standard residues and X B O U Z refused); with `task.data.truncate` longer ones (and
    their per-residue labels and pairs) are cut to `task.data.max_length`."""
    d, frame = task.data, table.frame
    problems = _Problems(table.source)
    per_residue = task.residue_level or task.pair_level  # labels and mask follow the residues
    if per_residue and d.mask_column and d.mask_value is None:
        raise DataError(f"task {task.name}: task.data.mask_column is set but task.data.mask_value is not")
    required = _required_columns(task)
    missing = [f"'{c}' (task.data.{key})" for c, key in required.items() if c not in frame.columns]
    if missing:
        present = column_list(frame.columns)  # one line, however many columns a malformed header has
        raise DataError(f"{table.source}: missing column(s) {', '.join(missing)}; columns are: {present}")

    # Plain lists: per-cell DataFrame access would dominate the time on large sets.
    cells = {c: frame[c].tolist() for c in required}
    has_ids = d.id_column is not None and d.id_column in frame.columns
    ids = frame[d.id_column].tolist() if has_ids else [None] * len(frame)
    stem = split_name(table.source)
    out: dict[str, list] = {"id": [], "row": [], "sequence": []}
    if task.kind != "masked_lm":
        out["labels"] = []
    if per_residue:
        out["label_mask"] = []
    for i, row in enumerate(frame[ROW].tolist()):
        record_id = None if _is_missing(ids[i]) else _text(ids[i])

        def say(problem: str) -> None:  # called within this iteration only
            problems.add(row, record_id, problem)  # noqa: B023

        try:  # the rule predict and embed apply too (fastankh.records)
            sequence = clean_sequence(cells[d.sequence_column][i])
        except ValueError as err:
            say(str(err))
            continue
        n = len(sequence)
        if n > d.max_length and not d.truncate:
            say(
                f"sequence length {n} > task.data.max_length {d.max_length} "
                "(set task.data.truncate=true or raise task.data.max_length)"
            )
            continue
        keep = min(n, d.max_length)

        if task.kind != "masked_lm":
            cell = cells[d.label_column][i]
            if _is_missing(cell) and not task.pair_level:  # pair kind: an empty cell is a chain without contacts
                say(f"missing label (column '{d.label_column}')")
                continue
            if per_residue:
                counts = [True] * n
                if d.mask_column:
                    mask_cell = cells[d.mask_column][i]
                    marks = [] if _is_missing(mask_cell) else _per_residue(mask_cell, None)
                    if len(marks) != n:
                        say(f"mask length {len(marks)} != sequence length {n} (column '{d.mask_column}')")
                        continue
                    counts = [not _is_mask_value(m, d.mask_value) for m in marks]
                encoder = _pair_labels if task.pair_level else _residue_labels
                labels = encoder(task, cell, counts, say)
                if labels is None:
                    continue
                out["labels"].append([p for p in labels if p[1] < keep] if task.pair_level else labels[:keep])
                out["label_mask"].append(counts[:keep])
            else:
                label = _sequence_label(task, cell, say)
                if label is None:
                    continue
                out["labels"].append(label)
        out["id"].append(record_id if record_id is not None else f"{stem}:{row}")
        out["row"].append(row)
        out["sequence"].append(sequence[:keep])
    problems.raise_if_any()
    if not out["id"]:
        raise DataError(f"{table.source}: no records")
    return out
