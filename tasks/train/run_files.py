"""What a run leaves in its run directory: resolved config, test_metrics.json, the metrics table,
and (masked_lm) the adapted backbone. Every file is written atomically (temp file + os.replace), every
folder under a temp name and swapped into place (`atomic_dir`), and only by the rank-0 process.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
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

from fastankh.atomic import atomic_path


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`. An existing `target` is renamed aside first (put back if
    the move fails) and removed only once the new folder is in place, so the old one is never lost."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.old-"))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside `path` (`<name>.tmp-*`): put in place of `path` by `replace_dir` when the block
    succeeds, removed when it fails, so a crash while writing leaves the previous folder as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()  # the umask's permissions (mkdtemp: owner only, which the renamed folder would keep)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    """Rich table, one row per metric (loss last) and one column per split: metric names are never cut, however
    many a task reports (contacts report six)."""
    names = sorted({m for values in results.values() for m in values}, key=lambda m: (m == "loss", m))
    table = Table(title=title)
    table.add_column("metric")
    for split in results:
        table.add_column(split, justify="right")
    for name in names:
        table.add_row(name, *(f"{values[name]:.4f}" if name in values else "-" for values in results.values()))
    return table


@rank_zero_only
def print_metrics(results: Mapping[str, Mapping[str, float]], title: str = "test metrics") -> None:
    Console().print(metrics_table(results, title))


@rank_zero_only
def save_backbone(backbone: nn.Module, tokenizer, directory: str | os.PathLike) -> None:
    """Save the backbone (LoRA merged in) and tokenizer as a checkpoint usable with model.path=DIR; an
    existing DIR stays intact until the new one is complete (`atomic_dir`)."""
    if hasattr(backbone, "merge_and_unload"):  # peft: fold the adapters into the base weights
        backbone = copy.deepcopy(backbone).merge_and_unload()
    with atomic_dir(directory) as tmp:
        backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
