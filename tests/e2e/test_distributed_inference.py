"""embed.py and predict.py on the job harness (tasks/infer/harness.py, Lightning's predict loop): 2 CPU processes
(ddp) give the one-process outputs, each rank on a disjoint share of the windows; a run stopped half-way resumes
from its shards, recomputes none of them and ends with the same output; a corrupt export is one line naming the
file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import tasks.infer.embedding
import tasks.infer.harness
import tasks.infer.predict_job
from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer
from fastankh import open_embeddings as load_file
from fastankh.errors import UserError
from tasks.task.kinds import TASK_KINDS
from tests.helpers import REPO, run_cli, short_rows

N_RECORDS = 16  # window=2: 8 windows, 4 per rank
# Runs each script in the repository's root, recording the records of every window a rank writes (its own
# process: the ddp launcher starts this file again for rank 1).
WRAPPER = """
import json, os, sys
sys.path.insert(0, {repo!r})
import tasks.infer.harness as harness

write = harness.JobWriter.write_on_batch_end

def recording_write(self, trainer, pl_module, prediction, batch_indices, batch, *args):
    window = batch[1] if isinstance(batch, tuple) else batch  # predict's items carry their window index
    name = f"rank{{trainer.global_rank}}-{{trainer.predict_loop.batch_progress.current.completed:04d}}.json"
    with open(os.path.join({log!r}, name), "w") as f:
        json.dump([r.id for r in window], f)
    write(self, trainer, pl_module, prediction, batch_indices, batch, *args)

harness.JobWriter.write_on_batch_end = recording_write
# as `python <script>` would, but with sys.argv[0] left pointing here: rank 1 is launched with this file too
with open({script!r}) as f:
    exec(compile(f.read(), {script!r}, "exec"), {{"__name__": "__main__", "__file__": {script!r}}})
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny encoder, a tiny residue-classification export (untrained) and 16 real chains (+1 invalid)."""
    root = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(root / "encoder")
    load_tokenizer("ankh_tiny").save_pretrained(root / "encoder")
    kind = TASK_KINDS["residue_classification"]
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, id2label={0: "H", 1: "E", 2: "C"})
    config.problem_type = kind.problem_type
    kind.model_class(config).save_pretrained(root / "export")
    load_tokenizer("ankh_tiny").save_pretrained(root / "export")
    frame = short_rows("secondary_structure.csv", N_RECORDS)
    records = list(zip(frame["id"], frame["sequence"]))
    write_fasta(root / "in.fasta", records)
    write_fasta(root / "with_bad.fasta", records[:5] + [("bad_record", "MKTJJAY")] + records[5:])
    return {"root": root, "encoder": root / "encoder", "export": root / "export", "input": root / "in.fasta"}


def embed_args(setup, output: Path, *extra: str) -> list[str]:
    common = ["batch_size=2", "window=2", "shard_size=1", "precision=32", "progress=false"]
    return [f"model={setup['encoder']}", f"input={setup['input']}", f"output={output}", *common, *extra]


def predict_args(setup, output: Path, *extra: str) -> list[str]:
    common = ["batch_size=2", "window=2", "precision=32", "progress=false"]
    return [
        f"model={setup['export']}",
        f"input={setup['root'] / 'with_bad.fasta'}",
        f"output={output}",
        *common,
        *extra,
    ]


@pytest.fixture(scope="module")
def ddp_runs(setup) -> dict[str, object]:
    """embed.py and predict.py with accelerator=cpu devices=2 (started together), and their one-process runs."""
    root = setup["root"]
    launches = {}
    for script, args in (("embed", embed_args), ("predict", predict_args)):
        out = root / f"{script}_ddp" / ("out.safetensors" if script == "embed" else "out.csv")
        (out.parent / "log").mkdir(parents=True)
        wrapper = out.parent / "run.py"
        wrapper.write_text(
            WRAPPER.format(repo=str(REPO), script=str(REPO / f"{script}.py"), log=str(out.parent / "log"))
        )
        cmd = [sys.executable, str(wrapper), *args(setup, out, "accelerator=cpu", "devices=2")]
        # each launch its own rendezvous port: the two start at once and must not pick the same free port
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port())}
        launches[script] = (out, subprocess.Popen(cmd, cwd=root, env=env, text=True, stdout=-1, stderr=-1))
    results: dict[str, object] = {}
    for script, (out, proc) in launches.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        results[script] = out
        results[f"{script}_stdout"], results[f"{script}_stderr"] = stdout, stderr
        results[f"{script}_shares"] = {
            rank: [
                k for p in sorted((out.parent / "log").glob(f"rank{rank}-*.json")) for k in json.loads(p.read_text())
            ]
            for rank in (0, 1)
        }
    # one process, in this one
    run_cli("embed", embed_args(setup, root / "embed_one" / "out.safetensors"))
    run_cli("predict", predict_args(setup, root / "predict_one" / "out.csv"))
    results["embed_one"], results["predict_one"] = (
        root / "embed_one" / "out.safetensors",
        root / "predict_one" / "out.csv",
    )
    return results


def test_two_processes_embed_like_one(ddp_runs):
    two, one = load_file(ddp_runs["embed"]), load_file(ddp_runs["embed_one"])
    assert set(two) == set(one) and len(one) == N_RECORDS
    diff = max((two[k] - one[k]).abs().max().item() for k in one)
    assert diff <= 1e-6, diff
    shares = ddp_runs["embed_shares"]
    assert len(shares[0]) == len(shares[1]) == N_RECORDS // 2  # 4 windows of 2 each
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == set(one)
    assert ddp_runs["embed_stdout"].count("wrote 16 embeddings") == 1  # rank 0 only
    shards = sorted(p.name for p in ddp_runs["embed"].glob("part-*"))
    assert len(shards) == 8 and {s.split("-")[2] for s in shards} == {"r00000", "r00001"}  # each rank its own


def test_two_processes_predict_like_one(ddp_runs):
    two = pd.read_csv(ddp_runs["predict"], keep_default_na=False)
    one = pd.read_csv(ddp_runs["predict_one"], keep_default_na=False)
    assert len(one) == N_RECORDS and two["id"].tolist() == one["id"].tolist()  # input order, bad record skipped
    assert two[["id", "sequence", "prediction"]].equals(one[["id", "sequence", "prediction"]])
    for label in "HEC":
        for a, b in zip(two[f"prob_{label}"], one[f"prob_{label}"]):
            got, expected = torch.tensor([float(v) for v in a.split()]), torch.tensor([float(v) for v in b.split()])
            torch.testing.assert_close(got, expected, atol=1.1e-4, rtol=0)  # 4 decimals: one rounding step
    assert two.equals(one)  # measured: identical
    shares = ddp_runs["predict_shares"]
    assert len(shares[0]) == len(shares[1]) == N_RECORDS // 2
    assert sorted(shares[0] + shares[1]) == sorted(one["id"])
    assert ddp_runs["predict_stderr"].count("(id bad_record)") == 1  # reported by rank 0 only
    assert ddp_runs["predict_stdout"].count("wrote ") == 1
    assert not tasks.infer.predict_job.shard_dir(ddp_runs["predict"]).exists()


class Stop(Exception):
    pass


def stop_after(monkeypatch, windows: int) -> None:
    """The next run dies once it has handed `windows` windows to its store."""
    write, written = tasks.infer.harness.JobWriter.write_on_batch_end, []

    def write_then_die(self, *args):
        write(self, *args)
        written.append(1)
        if len(written) == windows:
            raise Stop("killed")

    monkeypatch.setattr(tasks.infer.harness.JobWriter, "write_on_batch_end", write_then_die)


def count_rows(monkeypatch, module, name: str, rows: list[int]) -> None:
    """Count the records each model that module.name loads runs forward on."""
    load = getattr(module, name)

    def counting(*args, **kwargs):
        loaded = load(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.register_forward_hook(
            lambda module, inputs, kwargs, output: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )
        return loaded

    monkeypatch.setattr(module, name, counting)


def test_embed_stopped_half_way_resumes_to_the_same_output(setup, ddp_runs, tmp_path, monkeypatch):
    output = tmp_path / "out.safetensors"
    stop_after(monkeypatch, 4)  # 4 of 8 windows, one shard each (shard_size=1)
    with pytest.raises(Stop):
        run_cli("embed", embed_args(setup, output))
    monkeypatch.undo()
    shards = {p: p.stat().st_mtime_ns for p in output.glob("part-*.safetensors")}
    assert len(shards) == 4 and not (output / "index.tsv").exists()
    with pytest.raises(UserError, match=r"written with output=pooled_mean, this run has output=pooled_max"):
        tasks.infer.embedding.embed(compose_embed(setup, output, "pooling=max"))
    rows: list[int] = []
    count_rows(monkeypatch, tasks.infer.embedding, "load_encoder", rows)
    run_cli("embed", embed_args(setup, output))
    assert sum(rows) == N_RECORDS // 2  # the other half only
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in shards.items())  # no shard rewritten
    resumed, straight = load_file(output), load_file(ddp_runs["embed_one"])
    assert list(resumed) == list(straight) and all(torch.equal(resumed[k], straight[k]) for k in straight)


def compose_embed(setup, output: Path, *extra: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf" / "cli"), version_base="1.3"):
        return compose("embed", overrides=embed_args(setup, output, *extra))


def test_predict_stopped_half_way_resumes_to_the_same_output(setup, ddp_runs, tmp_path, monkeypatch):
    output = tmp_path / "out.csv"
    stop_after(monkeypatch, 4)
    with pytest.raises(Stop):
        run_cli("predict", predict_args(setup, output))
    monkeypatch.undo()
    shards = tasks.infer.predict_job.shard_dir(output)
    assert not output.exists() and len(list(shards.glob("w*.parquet"))) == 4
    rows: list[int] = []
    count_rows(monkeypatch, tasks.infer.predict_job, "load_task_model", rows)
    run_cli("predict", predict_args(setup, output))
    assert sum(rows) == N_RECORDS // 2
    assert output.read_bytes() == ddp_runs["predict_one"].read_bytes()
    assert not shards.exists()


def corrupt(path: Path) -> None:
    if path.suffix == ".safetensors":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.write_text('{"broken": ' if path.name == "tokenizer.json" else "{not json")


@pytest.mark.parametrize("script", ["embed", "predict"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_corrupt_export_is_one_line_naming_the_file(setup, script, name, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(setup["encoder" if script == "embed" else "export"], model)
    corrupt(model / name)
    output = tmp_path / ("out.safetensors" if script == "embed" else "out.csv")
    args = embed_args if script == "embed" else predict_args
    overrides = [a for a in args(setup, output) if not a.startswith("model=")] + [f"model={model}"]
    with pytest.raises(SystemExit) as stop:
        run_cli(script, overrides)
    message = stop.value.code  # a string: Python prints it as the one line on stderr and exits with 1
    assert isinstance(message, str) and message.startswith(f"error: {model / name}: ") and "\n" not in message
    assert not output.exists() and not tasks.infer.predict_job.shard_dir(output).exists()


@pytest.mark.parametrize("script", ["embed", "predict"])
def test_impossible_devices_are_one_line(setup, script, tmp_path):
    args = embed_args if script == "embed" else predict_args
    output = tmp_path / ("out.safetensors" if script == "embed" else "out.csv")
    with pytest.raises(SystemExit) as stop:
        run_cli(script, args(setup, output, "accelerator=cpu", "devices=0"))
    assert str(stop.value.code).startswith("error: accelerator=cpu devices=0 num_nodes=1: ")
    assert not output.exists()
