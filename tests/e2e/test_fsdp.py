"""trainer=fsdp on 2 CPU processes (tasks.train.fsdp.FSDPStrategy: Lightning's FSDPStrategy, gloo): full sharding,
every FastAnkhBlock its own FSDP unit with activation checkpointing, and the per-step training loss equal to
one process on the same data.

Well-defined comparison: the batch sampler forms the same batches of 2 whatever the world size and deals them
round-robin, so FSDP step k trains on batches 2k (rank 0) and 2k+1 (rank 1) and averages the two ranks'
gradients; one process with accumulate_grad_batches=2 trains step k on the same two batches and averages
their gradients too. The logged train/loss of step k is the mean of the two batch losses in both runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir

from tasks.hub.run import load_run
from tests import helpers
from tests.helpers import rank_records, step_losses
from train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
COMMON = [
    "task=ss3_local",
    "model.config.num_layers=2",
    "model.config.d_model=32",
    "model.config.d_kv=8",
    "model.config.d_ff=64",
    "head.dropout=0.0",
    "data.batch_size=2",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "~callbacks.progress_bar",
    "+callbacks.record._target_=tests.e2e.test_fsdp.RecordLosses",
]


class RecordLosses(helpers.RecordLosses):
    """tests.helpers.RecordLosses, plus how the model was wrapped."""

    def describe(self, trainer: L.Trainer) -> dict:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        from fastankh.modeling_fastankh import FastAnkhBlock

        modules = list(trainer.strategy.model.modules())
        return {
            "fsdp_units": sum(isinstance(m, FullyShardedDataParallel) for m in modules),
            "checkpointed_blocks": sum(
                isinstance(m, CheckpointWrapper) and isinstance(m._checkpoint_wrapped_module, FastAnkhBlock)
                for m in modules
            ),
            "sharded_blocks": sum(
                isinstance(m, FullyShardedDataParallel) and isinstance(m.module, (FastAnkhBlock, CheckpointWrapper))
                for m in modules
            ),
        }


def train_here(out: Path, *overrides: str) -> Path:
    """The one-process reference, in this process (no interpreter start-up)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*COMMON, *overrides, f"paths.output_dir={out}"])
    train_main(cfg)
    return out


def train(out: Path, *overrides: str) -> Path:
    cmd = [sys.executable, "train.py", *COMMON, *overrides, f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def fsdp_and_single(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    return {
        "fsdp": train(
            root / "fsdp",
            "trainer=fsdp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"trainer.limit_train_batches={STEPS}",
        ),
        "single": train_here(
            root / "single",
            "trainer=cpu",
            "trainer.accumulate_grad_batches=2",
            f"trainer.limit_train_batches={2 * STEPS}",
        ),
    }


def test_fsdp_shards_every_block_with_activation_checkpointing(fsdp_and_single):
    records = rank_records(fsdp_and_single["fsdp"])
    assert set(records) == {0, 1}
    for record in records.values():
        assert record["world_size"] == 2
        # 2 encoder blocks, each its own FSDP unit around a checkpointed block, plus the root unit
        assert record["sharded_blocks"] == 2 and record["checkpointed_blocks"] == 2 and record["fsdp_units"] == 3


def test_fsdp_loss_equals_one_process_on_the_same_batches(fsdp_and_single):
    fsdp = step_losses(fsdp_and_single["fsdp"], STEPS)
    single = step_losses(fsdp_and_single["single"], STEPS, accumulate=2)
    diffs = [abs(a - b) for a, b in zip(fsdp, single)]
    print(f"FSDP vs one process, per-step train/loss: {fsdp} vs {single}; max |diff| {max(diffs):.3g}")
    assert max(diffs) <= 1e-4, (fsdp, single)
    assert single[0] != single[2]  # the model trained: later losses differ


def test_fsdp_checkpoint_is_one_file_that_export_reads(fsdp_and_single):
    out = fsdp_and_single["fsdp"]
    assert json.loads((out / "test_metrics.json").read_text())["test"]["q3"] >= 0
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    run = load_run(last)
    assert len(run.module.encoder.encoder.layers) == 2
