"""Checkpoint files of a training run: written atomically, checked before use, found for `ckpt_path=last`.

- checkpoints are written to a temp file in their own folder and renamed into place (`AtomicCheckpointIO`);
- `ckpt_path=last` finds the newest readable checkpoint of this run directory or a sibling one, skipping
  truncated or corrupt files with a one-line warning (`checkpoint_problem`); an explicit bad path is a
  `CheckpointError` naming the newest readable one; checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fastankh.atomic import atomic_path
from fastankh.errors import CheckpointError

log = logging.getLogger(__name__)


SHARDED_META = "meta.pt"  # the metadata file of a sharded (FSDP) checkpoint folder, as Lightning names it


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file next to the checkpoint, fsync, then os.replace: a crash leaves the old
    checkpoint or the new one. (Lightning's default stages the file in the system temp folder and moves it;
    when that folder is on another filesystem than the run, the move is a copy over the good file.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: fsspec's upload is already all-or-nothing
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint this run wrote (any ModelCheckpoint's last or best file), None if none."""
    paths = [
        Path(p)
        for cb in trainer.checkpoint_callbacks
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if p and Path(p).exists()
    ]
    return str(max(paths, key=os.path.getmtime)) if paths else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be resumed from (one line), or None when it is a readable checkpoint.

    Readable: every record of the checkpoint's zip archive matches its CRC (a truncated or corrupt file fails
    here, in one sequential read) and `torch.load(weights_only=True)` unpickles it (memory-mapped: the tensors
    are not read). A folder (sharded FSDP checkpoint) is readable when its meta.pt is. A file that only full
    unpickling can load is refused: unpickling runs code stored in the file.
    """
    path = Path(path)
    if path.is_dir():
        meta = path / SHARDED_META
        if not meta.is_file():
            return f"a folder without {SHARDED_META}: not a sharded checkpoint"
        problem = checkpoint_problem(meta)
        return None if problem is None else f"{SHARDED_META}: {problem}"
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        zipped = zipfile.is_zipfile(path)
        if zipped:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"corrupt: record {bad} fails its CRC check"
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "not an allowed global" in str(err):
            return (
                "it needs full unpickling (torch.load weights_only=False), which can run code stored in the file; "
                "only checkpoints of tensors and plain values are loaded"
            )
        return f"unreadable ({_first_line(err)})"
    except Exception as err:  # truncated zip, not a checkpoint at all, ...
        return f"unreadable, truncated or not a checkpoint ({_first_line(err)})"
    return None


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """A run directory's checkpoints in resume order: checkpoints/last.ckpt, then the others newest first."""
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.ckpt"
    others = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    return ([last] if last.exists() else []) + sorted(others, key=os.path.getmtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from.

    An explicit path must be a readable checkpoint (`checkpoint_problem`); a bad one is a CheckpointError
    naming the newest readable checkpoint of its run. "last": this run directory's checkpoints (last.ckpt, then
    the others newest first; see `run_checkpoints`), else those of its sibling runs (outputs/<task>/runs/*),
    newest run first; an unreadable file is skipped with a one-line warning.
    """
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise CheckpointError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        problem = checkpoint_problem(path)
        if problem is None:
            return str(ckpt_path)
        others = [p for p in run_checkpoints(path.resolve().parent.parent) if p.resolve() != path.resolve()]
        good = next((p for p in others if checkpoint_problem(p) is None), None)
        hint = (
            f"the newest readable checkpoint of its run is {good}"
            if good
            else "its run has no other readable checkpoint"
        )
        raise CheckpointError(f"ckpt_path={ckpt_path}: {problem}; {hint}")
    output_dir = Path(output_dir)
    own = run_checkpoints(output_dir)
    if own:
        candidates = own
    else:
        siblings = [run_checkpoints(d) for d in output_dir.parent.iterdir() if d.is_dir() and d != output_dir]
        siblings = sorted((c for c in siblings if c), key=lambda c: max(map(os.path.getmtime, c)), reverse=True)
        candidates = [p for run in siblings for p in run]
    if not candidates:
        raise CheckpointError(
            f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir} or its sibling runs ({output_dir.parent}/*); "
            "pass ckpt_path=PATH/TO/last.ckpt"
        )
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        log.warning(f"ckpt_path=last: skipping {path}: {problem}")
    raise CheckpointError(
        f"ckpt_path=last: no readable checkpoint among {len(candidates)} in {output_dir.parent} "
        f"(newest: {candidates[0]}: {checkpoint_problem(candidates[0])})"
    )


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint by the task's monitor; None (use the current weights) if none was saved."""
    callback = trainer.checkpoint_callback
    return (callback.best_model_path or None) if callback is not None else None
