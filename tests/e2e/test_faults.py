"""Faults: unreadable checkpoints, a non-finite loss, mid-epoch checkpoints that resume exactly, and
a process killed while writing a checkpoint, an export or an embeddings file."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from fastankh.errors import CheckpointError
from tasks.train.checkpoints import checkpoint_problem, resolve_ckpt_path
from tests.helpers import REPO, short_rows, train_run, val_rows

# 9 training chains in batches of 2: 5 optimizer steps per epoch; dropout makes the run depend on the RNG.
BASE = ["task=ss3_local", "trainer.max_epochs=2", "data.batch_size=2", "head.dropout=0.3", "logger=csv"]
EVERY_2_STEPS = ["callbacks.mid_epoch_checkpoint.every_n_train_steps=2"]
TRAINED: dict[str, list[list[str]]] = {}  # run name -> the record ids of every training batch, in order


class Crash(RuntimeError):
    pass


class CrashAtStep(L.Callback):
    """Stands in for a kill: the run dies before training the batch of optimizer step `step` (mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"killed at step {self.step}")


class RecordBatches(L.Callback):
    def __init__(self, name: str):
        self.name = name
        TRAINED[self.name] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        TRAINED[self.name].append(list(batch["ids"]))


class PoisonAtStep(L.Callback):
    """Makes the head's weights NaN before the batch of step `step`; notes that batch's ids and last.ckpt's hash."""

    seen: dict = {}

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            PoisonAtStep.seen = {"ids": list(batch["ids"]), "last": hashlib.sha256(last.read_bytes()).hexdigest()}
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def callback(key: str, target: str, **kwargs) -> list[str]:
    return [f"+callbacks.{key}._target_=tests.e2e.test_faults.{target}"] + [
        f"+callbacks.{key}.{k}={v}" for k, v in kwargs.items()
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("faults")
    short_rows("secondary_structure.csv", 16).to_csv(root / "ss.csv", index=False)
    return root, [f"task.data.train={root / 'ss.csv'}"]


@pytest.fixture(scope="module")
def mid_epoch(data) -> dict[str, Path]:
    """A straight 2-epoch run; the same run killed in the middle of epoch 1 (step 6 of 10, last.ckpt written at
    step 6 by callbacks.mid_epoch_checkpoint); and its resume with ckpt_path=last from a sibling run folder."""
    root, source = data
    straight = train_run(
        root / "straight" / "a", BASE + source + EVERY_2_STEPS + callback("rec", "RecordBatches", name="straight")
    )
    with pytest.raises(Crash):
        train_run(
            root / "runs" / "killed",
            BASE
            + source
            + EVERY_2_STEPS
            + callback("crash", "CrashAtStep", step=6)
            + callback("rec", "RecordBatches", name="killed"),
        )
    resumed = train_run(
        root / "runs" / "resumed",
        BASE + source + EVERY_2_STEPS + ["ckpt_path=last"] + callback("rec", "RecordBatches", name="resumed"),
    )
    return {"straight": straight, "killed": root / "runs" / "killed", "resumed": resumed}


def test_mid_epoch_checkpoint_resumes_the_rest_of_the_epoch_exactly(mid_epoch):
    straight, killed, resumed = TRAINED["straight"], TRAINED["killed"], TRAINED["resumed"]
    assert len(straight) == 10 and len(killed) == 6  # 5 batches per epoch; killed before step 6's batch
    assert killed == straight[:6] and resumed == straight[6:]  # the resumed run trains exactly the rest
    saved = torch.load(mid_epoch["killed"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 1}
    ]
    assert list(val_rows(mid_epoch["resumed"]).index) == [1]
    pd.testing.assert_series_equal(val_rows(mid_epoch["resumed"]).loc[1], val_rows(mid_epoch["straight"]).loc[1])
    final = [torch.load(mid_epoch[k] / "checkpoints" / "last.ckpt", weights_only=True) for k in ("straight", "resumed")]
    torch.testing.assert_close(final[0]["state_dict"], final[1]["state_dict"], rtol=0, atol=0)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    return dst


def test_ckpt_path_last_skips_an_unreadable_checkpoint_with_one_warning(mid_epoch, tmp_path, caplog):
    run = copy_run(mid_epoch["straight"], tmp_path / "runs" / "old")
    last, (best,) = run / "checkpoints" / "last.ckpt", [p for p in (run / "checkpoints").glob("epoch*.ckpt")]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    assert checkpoint_problem(last).startswith("unreadable, truncated or not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="tasks.train.checkpoints"):
        assert resolve_ckpt_path("last", tmp_path / "runs" / "new") == str(best)
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and f"skipping {last}" in record.getMessage()

    # An explicit bad path: one line naming the file and the newest readable checkpoint of its run.
    with pytest.raises(CheckpointError) as err:
        resolve_ckpt_path(str(last), tmp_path / "runs" / "new")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"ckpt_path={last}: unreadable") and str(err.value).endswith(f"is {best}")


@pytest.mark.parametrize("damage", ["flipped", "empty", "pickle", "garbage"])
def test_damaged_checkpoints_are_refused_with_the_reason(mid_epoch, tmp_path, damage):
    path = tmp_path / "x.ckpt"
    data = (mid_epoch["straight"] / "checkpoints" / "last.ckpt").read_bytes()
    if damage == "flipped":  # one byte inside the tensor data: the zip CRC check catches it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":  # loading it would need full unpickling (code from the file)
        torch.save({"state_dict": {}, "thing": Crash("x")}, path)
    else:
        path.write_bytes(os.urandom(4096))
    expected = {
        "flipped": "corrupt: record",
        "empty": "empty file",
        "pickle": "it needs full unpickling",
        "garbage": "unreadable",
    }
    assert checkpoint_problem(path).startswith(expected[damage])
    shutil.copy(mid_epoch["straight"] / "checkpoints" / "last.ckpt", tmp_path / "good.ckpt")
    assert checkpoint_problem(tmp_path / "good.ckpt") is None


def test_train_with_a_bad_explicit_checkpoint_ends_in_one_error_line(mid_epoch, data, tmp_path):
    run = copy_run(mid_epoch["straight"], tmp_path / "runs" / "old")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(SystemExit) as err:
        train_run(tmp_path / "runs" / "new", BASE + data[1] + [f"ckpt_path={last}"])
    message = str(err.value)
    assert message.startswith(f"error: ckpt_path={last}: unreadable") and "\n" not in message
    assert "epoch001.ckpt" in message or "epoch000.ckpt" in message


def test_a_non_finite_loss_stops_with_the_step_and_the_batch_ids(data, tmp_path):
    root, source = data
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as err:  # epoch 0 = steps 0..4; step 5 is batch 0 of epoch 1
        train_run(out, BASE + source + callback("poison", "PoisonAtStep", step=5))
    message, seen = str(err.value), PoisonAtStep.seen
    assert message.startswith("error: non-finite training loss (nan) at step 5 (epoch 1, batch 0), records: ")
    assert ", ".join(seen["ids"]) in message and "\n" not in message
    last = out / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in message
    assert hashlib.sha256(last.read_bytes()).hexdigest() == seen["last"]  # not overwritten by the broken state
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


CHILD = """
import sys, threading, time
from pathlib import Path
import torch
from safetensors.torch import save_file
import json
from fastankh.embeddings import formats
from fastankh.embeddings.stores import ShardFolder
from fastankh.records import Record
import tasks.train.checkpoints as tr
from tasks.train.run_files import atomic_dir

root = Path(sys.argv[1])
started = threading.Barrier(4, timeout=120)

def slow(real):  # writes the first half of what `real` writes, says so, then hangs until killed
    def write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
        started.wait()
        time.sleep(600)
    return write

def checkpoint():
    tr.torch.save = slow(torch.save)
    tr.AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(50_000)}}, root / "last.ckpt")

def export():
    with atomic_dir(root / "export") as tmp:
        (tmp / "config.json").write_text("{}")
        slow(save_file)({"w": torch.ones(50_000)}, tmp / "model.safetensors")

def embeddings():  # a second shard of an existing embeddings output
    real = formats.SafetensorsShards.write
    formats.SafetensorsShards.write = lambda path, ids, tensors, meta: slow(
        lambda obj, target: real(target, ids, tensors, meta)
    )(None, path)
    fingerprint = json.loads((root / "emb.safetensors" / "run.json").read_text())["fingerprint"]
    store = ShardFolder(root / "emb.safetensors", fingerprint)
    store.add([Record("b", "MKV", 2, "b")], [torch.ones(50_000)])
    store.flush()

for job in (checkpoint, export, embeddings):
    threading.Thread(target=job, daemon=True).start()
started.wait()
print("writing", flush=True)
time.sleep(600)
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_process_killed_mid_write_leaves_the_previous_files(tmp_path):
    """A child process writes a checkpoint, an export folder and an embeddings file through the project's atomic
    writers, each stopped half-way; kill -9 then leaves the previous good files byte-identical and loadable."""
    from safetensors.torch import load_file, save_file

    from tasks.train.checkpoints import AtomicCheckpointIO
    from tasks.train.run_files import atomic_dir

    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "last.ckpt")
    with atomic_dir(tmp_path / "export") as tmp:
        (tmp / "config.json").write_text('{"old": 1}')
        save_file({"w": torch.zeros(3)}, tmp / "model.safetensors")
    from fastankh import FastAnkhConfig, FastAnkhModel, open_embeddings

    tiny = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).eval()
    saved = tiny.embed_dataset({"a": "MKT"}, save_path=tmp_path / "emb.safetensors", progress=False)["a"]
    before = snapshot(tmp_path)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)], stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    try:
        assert child.stdout.readline().strip() == b"writing"  # all three writes are half-way
        partial = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
        assert len(partial) == 3, partial  # the half-written temp files (and temp export folder) exist
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    after = {k: v for k, v in snapshot(tmp_path).items() if ".tmp" not in k}
    assert after == before
    assert checkpoint_problem(tmp_path / "last.ckpt") is None
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["w"], torch.zeros(3))
    assert torch.equal(load_file(tmp_path / "export" / "model.safetensors")["w"], torch.zeros(3))
    assert list(open_embeddings(tmp_path / "emb.safetensors")) == ["a"]
    assert torch.equal(open_embeddings(tmp_path / "emb.safetensors")["a"], saved)
