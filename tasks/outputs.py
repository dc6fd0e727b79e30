"""What a run leaves in its run directory: resolved config, test_metrics.json, the metrics table,
and (masked_lm) the adapted backbone. Every file is written atomically (temp file + os.replace)
and only by the rank-0 process.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path`: renamed over `path` (after fsync) when the block succeeds, removed
    when it fails, so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@rank_zero_only
def write_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """The fully resolved run config as YAML."""
    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


@rank_zero_only
def write_metrics(results: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> None:
    """test_metrics.json: split -> metric -> value."""
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")


def metrics_table(results: Mapping[str, Mapping[str, float]], title: str = "test metrics") -> Table:
    """Rich table, one row per split and one column per metric (loss last)."""
    names = sorted({m for values in results.values() for m in values}, key=lambda m: (m == "loss", m))
    table = Table(title=title)
    table.add_column("split")
    for name in names:
        table.add_column(name, justify="right")
    for split, values in results.items():
        table.add_row(split, *(f"{values[n]:.4f}" if n in values else "-" for n in names))
    return table


@rank_zero_only
def print_metrics(results: Mapping[str, Mapping[str, float]], title: str = "test metrics") -> None:
    Console().print(metrics_table(results, title))


@rank_zero_only
def save_backbone(backbone: nn.Module, tokenizer, directory: str | os.PathLike) -> None:
    """Save the backbone (LoRA merged in) and tokenizer as a checkpoint usable with model.path=DIR.

    Written to a temporary sibling directory first and renamed into place.
    """
    directory = Path(directory)
    if hasattr(backbone, "merge_and_unload"):  # peft: fold the adapters into the base weights
        backbone = copy.deepcopy(backbone).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
