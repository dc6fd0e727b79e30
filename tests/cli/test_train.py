"""train.py end to end on a tiny backbone: every task kind and every finetune mode, outputs in the run
directory, local test files named by stem, masked_lm -> model.path, bad data stops before any model,
and DDP with two CPU processes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import tasks.backbone
import train
from fastankh import FastAnkhModel, load_tokenizer
from tasks.data import TaskDataModule
from tasks.spec import TaskSpec

ROOT = Path(__file__).resolve().parents[2]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# one encoder block of width 32, a few batches: seconds per run
TINY = [
    "model.config.num_layers=1", "model.config.d_model=32", "model.config.d_kv=8", "model.config.d_ff=64",
    "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "~callbacks.progress_bar",
    "data.batch_size=4",
]


def run(tmp_path: Path, *overrides: str) -> Path:
    """Run train.main in this process on a composed config; returns the run directory."""
    out = tmp_path / "run"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides, f"paths.output_dir={out}"])
    train.main(cfg)
    return out


def metrics_of(out: Path) -> dict:
    return json.loads((out / "test_metrics.json").read_text())


def write_sequences(path: Path, count: int, label, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = ["id,sequence,label"]
    for i in range(count):
        rows.append(f"p{i},{''.join(rng.choice(RESIDUES) for _ in range(rng.randint(8, 30)))},{label(rng)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_residue_classification_frozen_with_cache_writes_table_json_and_config(tmp_path, capsys):
    out = run(tmp_path, "task=ss3_local", "finetune=frozen", "finetune.cache_embeddings=true")
    results = metrics_of(out)
    assert set(results) == {"test"}
    assert {"q3", "per_protein_accuracy", "mcc", "f1", "loss"} <= set(results["test"])
    assert 0.0 <= results["test"]["q3"] <= 1.0
    assert "test metrics" in capsys.readouterr().out
    saved = (out / "config.yaml").read_text()
    assert "${" not in saved and "cache_embeddings: true" in saved
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_residue_regression_lora_and_local_test_files_named_by_stem(tmp_path):
    source = (ROOT / "data" / "rsa.csv").read_text().splitlines()
    held_out = tmp_path / "my_chains.csv"
    held_out.write_text("\n".join(source[:4]) + "\n")
    out = run(tmp_path, "task=rsa_local", "finetune=lora", f"task.data.test=[{held_out}]", "task.data.test_fraction=0")
    results = metrics_of(out)
    assert set(results) == {"my_chains"}
    assert {"spearman", "pearson", "r2", "rmse"} <= set(results["my_chains"])


def test_sequence_classification_partial(tmp_path):
    out = run(tmp_path, "task=solubility_local", "finetune=partial", "finetune.trainable_layers=1", "head=attention")
    assert {"accuracy", "mcc", "auroc"} <= set(metrics_of(out)["test"])


def test_sequence_multilabel_full(tmp_path):
    data = write_sequences(tmp_path / "multi.csv", 40, lambda r: '"' + ",".join(r.sample("abc", r.randint(1, 2))) + '"')
    out = run(
        tmp_path, "task=solubility_local", "task.kind=sequence_multilabel", "task.labels=[a,b,c]",
        f"task.data.train={data}", "task.metrics=[f1,auroc]", "task.monitor=val/f1", "head=max",
    )
    assert set(metrics_of(out)["test"]) == {"f1", "auroc", "loss"}


def test_sequence_regression_from_local_files(tmp_path):
    def files(name: str, n: int, seed: int) -> Path:
        path = write_sequences(tmp_path / name, n, lambda r: f"{r.uniform(1, 4):.3f}", seed)
        path.write_text(path.read_text().replace("sequence,label", "primary,log_fluorescence", 1))
        return path

    out = run(
        tmp_path, "task=fluorescence", "task.data.hub_id=null", f"task.data.train={files('train.csv', 24, 0)}",
        f"task.data.val={files('valid.csv', 8, 1)}", f"task.data.test=[{files('gfp_test.csv', 8, 2)}]",
        "task.data.id_column=id", "head=convbert", "head.num_heads=2",
    )
    assert {"spearman", "r2", "rmse"} <= set(metrics_of(out)["gfp_test"])


def test_masked_lm_saves_a_backbone_that_model_path_loads(tmp_path):
    out = run(tmp_path, "task=masked_lm")
    assert {"masked_accuracy", "perplexity"} <= set(next(iter(metrics_of(out).values())))
    saved = out / "backbone"
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()
    adapted = FastAnkhModel.from_pretrained(saved)
    best = torch.load(next((out / "checkpoints").glob("epoch*.ckpt")), weights_only=False)["state_dict"]
    torch.testing.assert_close(adapted.embed_tokens.weight, best["backbone.embed_tokens.weight"], atol=0, rtol=0)
    downstream = run(tmp_path / "next", "task=ss3_local", f"model.path={saved}")
    assert "q3" in metrics_of(downstream)["test"]


def test_bad_data_stops_before_any_model_is_built(tmp_path, monkeypatch):
    bad = write_sequences(tmp_path / "bad.csv", 20, lambda r: r.randint(0, 1))
    rows = bad.read_text().splitlines()
    rows[7] = "weird,MKV1LL,1"  # data row 7: a digit is no residue
    bad.write_text("\n".join(rows) + "\n")
    def no_model(*args, **kwargs):
        pytest.fail("a model was built before the data was validated")

    monkeypatch.setattr(tasks.backbone, "load_backbone", no_model)
    with pytest.raises(SystemExit) as err:  # the CLI prints this one line and exits 1
        run(tmp_path, "task=solubility_local", f"task.data.train={bad}")
    message = str(err.value.code)
    assert "bad.csv" in message and "row 7" in message and "'1'" in message
    assert len(message.splitlines()) == 1


def test_ddp_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "train.py", "task=ss3_local", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        *TINY, f"hydra.run.dir={out}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "train_ddp_process_1.log").exists()  # the second rank really ran
    assert "q3" in metrics_of(out)["test"]


def test_quickstart_finishes_in_5_minutes_and_beats_the_majority_class(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quickstart"])
    data = TaskDataModule(TaskSpec.from_config(cfg.task), load_tokenizer("ankh_tiny"), seed=cfg.seed)
    data.setup()
    counted = [label for labels, keep in zip(data.splits["test"]["labels"], data.splits["test"]["label_mask"])
               for label, k in zip(labels, keep) if k]
    majority = Counter(counted).most_common(1)[0][1] / len(counted)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test metrics" in done.stdout
    assert elapsed <= 300, elapsed
    assert metrics_of(tmp_path)["test"]["q3"] >= majority + 0.05, (metrics_of(tmp_path), majority)
