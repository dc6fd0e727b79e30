"""Resuming train.py: an interrupted + resumed run ends exactly like an uninterrupted one, continues the same
(offline) wandb run, and checkpoints are written atomically."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import tasks.train.checkpoints
from fastankh.errors import CheckpointError
from tasks.train.checkpoints import AtomicCheckpointIO, resolve_ckpt_path
from tasks.train.trainer import build_trainer
from tests.helpers import short_rows, train_run, val_rows

# Dropout in the head makes the run depend on the RNG, which a resume must reproduce too.
TWO_EPOCHS = ["trainer.max_epochs=2", "head.dropout=0.3", "task=ss3_local"]
WANDB = ["logger=[csv,wandb]", "logger.wandb.offline=true"]


def wandb_records(run_dir: Path, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Logged config / history / summary items of an offline wandb run, read from its run-<id>.wandb file.

    The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, 7-byte record headers: crc32,
    length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) of protobuf `Record`s; offline runs write nothing else.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data, pos, chunks = path.read_bytes(), 7, []
    assert data[:4] == b":W&B"
    out: dict[str, list[dict[str, Any]]] = {"config": [], "history": [], "summary": []}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # no room for a record header: the block's tail is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record.FromString(b"".join(chunks))
            chunks = []
            field = record.WhichOneof("record_type")
            items = {"config": "update", "history": "item", "summary": "update"}.get(field)
            if items is not None:
                entries = getattr(getattr(record, field), items)
                out[field].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in entries})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    short_rows("secondary_structure.csv", 16).to_csv(root / "ss.csv", index=False)
    data = [f"task.data.train={root / 'ss.csv'}"]
    straight = train_run(root / "reference" / "straight", TWO_EPOCHS + data)
    stop = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1"]
    interrupted = train_run(root / "runs" / "interrupted", TWO_EPOCHS + data + WANDB + stop)
    # A new run directory next to the interrupted one: ckpt_path=last finds its checkpoints/last.ckpt.
    resumed = train_run(root / "runs" / "resumed", TWO_EPOCHS + data + WANDB + ["ckpt_path=last"])
    return {"straight": straight, "interrupted": interrupted, "resumed": resumed}


def test_resumed_run_ends_like_the_uninterrupted_one(runs):
    assert list(val_rows(runs["interrupted"]).index) == [0]  # the interruption happened after epoch 0
    assert list(val_rows(runs["resumed"]).index) == [1]  # the resumed run trained epoch 1 only
    resumed, straight = val_rows(runs["resumed"]).loc[1], val_rows(runs["straight"]).loc[1]
    pd.testing.assert_series_equal(resumed, straight, check_exact=True)
    metrics = {name: json.loads((runs[name] / "test_metrics.json").read_text()) for name in ("straight", "resumed")}
    assert metrics["resumed"] == metrics["straight"]


def test_resumed_run_continues_the_wandb_run(runs):
    run_id = (runs["interrupted"] / "wandb_run_id").read_text().strip()
    assert (runs["resumed"] / "wandb_run_id").read_text().strip() == run_id
    first, resumed = wandb_records(runs["interrupted"], run_id), wandb_records(runs["resumed"], run_id)
    config = {k: v for update in resumed["config"] for k, v in update.items()}
    assert config["task"]["name"] == "ss3_local" and config["model"]["preset"] == "ankh_tiny"  # resolved config
    assert config["params/trainable"] > 0
    epochs = {row["epoch"]: row for rows in (first, resumed) for row in rows["history"] if "val/q3" in row}
    csv = {**val_rows(runs["interrupted"])["val/q3"].to_dict(), **val_rows(runs["resumed"])["val/q3"].to_dict()}
    assert {e: row["val/q3"] for e, row in epochs.items()} == pytest.approx(csv) and set(csv) == {0, 1}
    metrics = json.loads((runs["resumed"] / "test_metrics.json").read_text())
    (test_row,) = [row for row in resumed["history"] if "test/test/q3" in row]
    assert test_row["test/test/q3"] == pytest.approx(metrics["test"]["q3"])
    (table,) = [row for row in resumed["history"] if "test/metrics/_type" in row]
    assert table["test/metrics/_type"] == "table-file" and table["test/metrics/nrows"] == 1


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path):
    (tmp_path / "runs" / "new").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="ckpt_path=last"):
        resolve_ckpt_path("last", tmp_path / "runs" / "new")
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path / "runs" / "new")


def test_checkpoints_are_replaced_atomically_in_their_own_folder(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    moves = []
    replace = os.replace
    monkeypatch.setattr(
        tasks.train.checkpoints.os, "replace", lambda src, dst: (moves.append((src, dst)), replace(src, dst))
    )
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path)["step"] == 2 and Path(moves[0][0]).parent == path.parent

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("crash while writing")

    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="crash while writing"):
        io.save_checkpoint({"step": 3, "bad": Unpicklable()}, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    save = torch.save

    def half_then_crash(obj, f):  # the process dies with half of the new checkpoint on disk
        save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[: Path(f).stat().st_size // 2])
        raise OSError("killed mid-write")

    monkeypatch.setattr(tasks.train.checkpoints.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="killed mid-write"):
        io.save_checkpoint({"step": 4, "weights": torch.zeros(1000)}, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_build_trainer_uses_atomic_checkpoints(runs):
    from hydra import compose, initialize_config_dir

    from tests.helpers import REPO

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=csv", f"paths.output_dir={runs['straight']}"])
    assert isinstance(build_trainer(cfg).strategy.checkpoint_io, AtomicCheckpointIO)
