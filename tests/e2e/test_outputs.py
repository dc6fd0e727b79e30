"""Atomic outputs (tasks/train/run_files.py): a crash in the middle of writing a metrics file, a config or the
masked_lm backbone folder leaves the previous one byte-identical, and nothing half-written next to it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import tasks.train.run_files
from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer
from tasks.train.run_files import save_backbone, write_config, write_metrics


class DiskFull(OSError):
    pass


def write_half_then_crash(path: Path, data: bytes) -> None:
    """What a crash mid-write leaves: the first half of the bytes on disk, then an error."""
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    raise DiskFull("no space left on device")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "write, old, new",
    [
        (write_metrics, {"test": {"q3": 0.5}}, {"test": {"q3": 0.75}}),
        (write_config, OmegaConf.create({"seed": 1}), OmegaConf.create({"seed": 2, "lr": 0.1})),
    ],
    ids=["metrics", "config"],
)
def test_a_crash_mid_write_keeps_the_previous_file(write, old, new, tmp_path, monkeypatch):
    path = tmp_path / "out" / "file"
    write(old, path)
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: write_half_then_crash(self, text.encode()))
    with pytest.raises(DiskFull):
        write(new, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["file"]  # the half-written temp file is gone
    monkeypatch.undo()
    write(new, path)
    assert path.read_bytes() != before
    if write is write_metrics:
        assert json.loads(path.read_text()) == new


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Temp files and folders are renamed into place, so they must not be created owner-only (mkstemp)."""
    write_metrics({"test": {"q3": 0.5}}, tmp_path / "test_metrics.json")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "test_metrics.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    with tasks.train.run_files.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "folder").stat().st_mode == (tmp_path / "plain").stat().st_mode


def tiny_backbone(seed: int) -> FastAnkhModel:
    torch.manual_seed(seed)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", d_model=32, d_kv=8, d_ff=64, num_layers=1))


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A backbone folder saved by save_backbone, and its bytes."""
    folder = tmp_path / "run" / "backbone"
    save_backbone(tiny_backbone(0), load_tokenizer("ankh_tiny"), folder)
    return folder, snapshot(folder)


def crash_in_weights(backbone: FastAnkhModel, scratch: Path, monkeypatch) -> None:
    """backbone.save_pretrained writes half of its weights file, then crashes."""
    type(backbone).save_pretrained(backbone, scratch)
    weights = (scratch / "model.safetensors").read_bytes()
    monkeypatch.setattr(
        backbone, "save_pretrained", lambda d, **k: write_half_then_crash(Path(d) / "model.safetensors", weights)
    )


def crash_in_tokenizer(tokenizer, monkeypatch) -> None:
    """The weights are complete, the tokenizer file is not."""
    monkeypatch.setattr(
        tokenizer, "save_pretrained", lambda d, **k: write_half_then_crash(Path(d) / "tokenizer.json", b"{}" * 64)
    )


def crash_in_swap(monkeypatch) -> None:
    """The rename of the finished folder into place fails (after the old one was moved aside)."""
    replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in Path(src).name:
            raise DiskFull("rename failed")
        replace(src, dst)

    monkeypatch.setattr(tasks.train.run_files.os, "replace", failing_replace)


@pytest.mark.parametrize("crash", ["weights", "tokenizer", "swap"])
def test_a_crash_while_saving_the_backbone_keeps_the_previous_folder(saved, crash, tmp_path, monkeypatch):
    folder, before = saved
    backbone, tokenizer = tiny_backbone(1), load_tokenizer("ankh_tiny")
    if crash == "weights":
        crash_in_weights(backbone, tmp_path / "scratch", monkeypatch)
    elif crash == "tokenizer":
        crash_in_tokenizer(tokenizer, monkeypatch)
    else:
        crash_in_swap(monkeypatch)
    with pytest.raises(DiskFull):
        save_backbone(backbone, tokenizer, folder)
    assert snapshot(folder) == before
    assert [p.name for p in folder.parent.iterdir()] == ["backbone"]  # no temp or set-aside folder left


def test_save_backbone_replaces_the_previous_folder(saved):
    folder, before = saved
    save_backbone(tiny_backbone(1), load_tokenizer("ankh_tiny"), folder)
    assert snapshot(folder) != before and [p.name for p in folder.parent.iterdir()] == ["backbone"]
    loaded = FastAnkhModel.from_pretrained(folder)
    torch.testing.assert_close(loaded.state_dict(), tiny_backbone(1).state_dict(), atol=0, rtol=0)
