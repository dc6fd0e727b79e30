"""Two "nodes" on this machine: `torchrun --nnodes=2 --nproc-per-node=1` started twice on
localhost, node ranks 0 and 1, gloo on CPU. Lightning sees torchrun's environment (TorchElasticEnvironment)
and runs world size 2 with num_nodes=2 devices=1, as on two machines sharing a filesystem.

- embed.py: the two nodes write the one-process embeddings, each rank its own shards, rank 0 the index.
- train.py trainer=ddp: the per-step training loss equals one process on the same global batch (the batch
  sampler forms the same batches whatever the world size and deals them round-robin, so step k of the 2-rank
  run trains on batches 2k and 2k+1 and averages their gradients, as one process with
  accumulate_grad_batches=2 does)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer, open_embeddings
from tests.helpers import REPO, rank_records, run_cli, short_rows, step_losses

N_RECORDS = 16  # window=2: 8 windows, 4 per rank; shard_size=1: one shard per window
NODES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(script: str, args: list[str], cwd: Path, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes=2 --nproc-per-node=1 --node-rank=r ... <script> <args>` for r = 0, 1, started
    together (the rendezvous waits for both); every node's return code, stdout and stderr."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    procs = []
    for node in range(NODES):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc-per-node=1",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
            str(REPO / f"{script}.py"), *args,
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=-1, stderr=-1))
    done = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    for node, result in enumerate(done):
        assert result.returncode == 0, f"node {node}:\n{result.stderr[-4000:]}"
    return done


# ------------------------------------------------------------------ embed.py
@pytest.fixture(scope="module")
def embed_runs(tmp_path_factory) -> dict:
    """A tiny encoder over 16 real chains: embed.py as two torchrun nodes, and in one process (in this one)."""
    root = tmp_path_factory.mktemp("multinode_embed")
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(root / "encoder")
    load_tokenizer("ankh_tiny").save_pretrained(root / "encoder")
    frame = short_rows("secondary_structure.csv", N_RECORDS)
    (root / "in.fasta").write_text("".join(f">{i}\n{s}\n" for i, s in zip(frame["id"], frame["sequence"])))
    common = [
        f"model={root / 'encoder'}", f"input={root / 'in.fasta'}", "window=2", "shard_size=1", "batch_size=2",
        "precision=32", "progress=false", "accelerator=cpu", "devices=1",
    ]  # fmt: skip
    start = time.perf_counter()
    nodes = launch_nodes("embed", [*common, f"output={root / 'two'}", "num_nodes=2", "strategy=ddp"], cwd=root)
    print(f"embed.py, two torchrun nodes: {time.perf_counter() - start:.1f} s")
    run_cli("embed", [*common, f"output={root / 'one'}", "num_nodes=1"])
    return {"two": root / "two", "one": root / "one", "nodes": nodes}


def test_two_nodes_embed_like_one_process(embed_runs):
    two, one = open_embeddings(embed_runs["two"]), open_embeddings(embed_runs["one"])
    assert len(one) == N_RECORDS and sorted(two.ids) == sorted(one.ids)
    diff = max((two[k] - one[k]).abs().max().item() for k in one.ids)
    print(f"two nodes vs one process: max |diff| {diff:.3g}")
    assert diff <= 1e-6, diff
    # each rank wrote its own shards (4 windows of 2 records each, one shard per window), rank 0 the index
    shards = sorted(p.name for p in embed_runs["two"].glob("part-*"))
    ranks = [name.split("-")[2] for name in shards]
    assert ranks.count("r00000") == ranks.count("r00001") == N_RECORDS // 4 and len(ranks) == N_RECORDS // 2
    stdout = "".join(node.stdout for node in embed_runs["nodes"])
    assert stdout.count(f"wrote {N_RECORDS} embeddings") == 1, stdout  # rank 0 (node 0) only
    assert f"wrote {N_RECORDS} embeddings" in embed_runs["nodes"][0].stdout


# ------------------------------------------------------------------ train.py
STEPS = 3
TRAIN = [
    "task=ss3_local",
    "model.config.num_layers=1",
    "model.config.d_model=32",
    "model.config.d_kv=8",
    "model.config.d_ff=64",
    "head.dropout=0.0",
    "data.batch_size=2",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "~callbacks.model_checkpoint",
    "~callbacks.mid_epoch_checkpoint",
    "~callbacks.early_stopping",
    "+trainer.enable_checkpointing=false",
    "+callbacks.record._target_=tests.helpers.RecordLosses",
]


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory) -> dict:
    """train.py trainer=ddp as two torchrun nodes (batches of 2 per rank), and one process accumulating 2
    batches of 2 per step (in this one)."""
    root = tmp_path_factory.mktemp("multinode_train")
    two = root / "two"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    start = time.perf_counter()
    nodes = launch_nodes("train", [*TRAIN, *ddp, f"trainer.limit_train_batches={STEPS}", f"hydra.run.dir={two}"], root)
    print(f"train.py, two torchrun nodes: {time.perf_counter() - start:.1f} s")
    one = root / "one"
    single = ["trainer=cpu", "trainer.accumulate_grad_batches=2", f"trainer.limit_train_batches={2 * STEPS}"]
    run_cli("train", [*TRAIN, *single, f"paths.output_dir={one}"], config_name="config")
    return {"two": two, "one": one, "nodes": nodes}


def test_two_nodes_train_like_one_process_on_the_same_global_batch(train_runs):
    records = rank_records(train_runs["two"])
    assert set(records) == {0, 1}
    assert all(r["world_size"] == 2 and r["num_nodes"] == 2 and len(r["losses"]) == STEPS for r in records.values())
    assert records[0]["losses"] != records[1]["losses"]  # each rank trained on its own batches
    two = step_losses(train_runs["two"], STEPS)
    one = step_losses(train_runs["one"], STEPS, accumulate=2)
    diffs = [abs(a - b) for a, b in zip(two, one)]
    print(f"two nodes vs one process, per-step train/loss: {two} vs {one}; |diff| {[f'{d:.3g}' for d in diffs]}")
    assert max(diffs) <= 1e-4, (two, one)
    assert one[0] != one[-1]  # the model trained: later losses differ
    assert json.loads((train_runs["two"] / "test_metrics.json").read_text())["test"]["q3"] >= 0  # rank 0 wrote it


def test_a_launch_that_disagrees_with_devices_and_num_nodes_is_one_line(monkeypatch):
    """torchrun started 2 processes but the command says 1: refused before any work, naming both."""
    from fastankh.errors import DataError
    from tasks.infer.harness import build_predict_trainer

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError, match=r"devices=1 num_nodes=1: 1 process\(es\), but the launcher started 2"):
        build_predict_trainer("cpu", 1, 1, "auto", progress=False)
