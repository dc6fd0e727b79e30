"""train.py end to end on a tiny backbone: every task kind and every finetune mode, outputs in the run
directory, local test files named by stem, masked_lm -> model.path, bad data stops before any model, the
tensorboard logger, the cosine schedule, and DDP with two CPU processes (data split, metrics, resume)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import tasks.train.model
import train
from fastankh import FastAnkhModel, load_tokenizer
from tasks.data.datamodule import TaskDataModule
from tasks.task.spec import TaskSpec
from tasks.train.module import FineTuneModule
from tests.helpers import REPO, TINY_TRAIN, metrics_of, run_data, short_rows, single_process, write_sequences


def run(tmp_path: Path, *overrides: str) -> Path:
    """Run train.main in this process on a composed config; returns the run directory."""
    out = tmp_path / "run"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_TRAIN, *overrides, f"paths.output_dir={out}"])
    train.main(cfg)
    return out


def only_epoch_checkpoint(out: Path) -> Path:
    (path,) = (out / "checkpoints").glob("epoch*.ckpt")
    return path


def test_residue_classification_frozen_with_cache_writes_table_json_and_config(tmp_path, capsys):
    out = run(tmp_path, "task=ss3_local", "finetune=frozen", "finetune.cache_embeddings=true")
    results = metrics_of(out)
    assert set(results) == {"test"}
    assert {"q3", "per_protein_accuracy", "mcc", "f1", "loss"} <= set(results["test"])
    assert "test metrics" in capsys.readouterr().out
    saved = (out / "config.yaml").read_text()
    assert "${" not in saved and "cache_embeddings: true" in saved
    # The reported scores, recomputed by hand from the best checkpoint without the embedding cache on the
    # batches the run tested (limit_test_batches=2).
    module = FineTuneModule.load_from_checkpoint(only_epoch_checkpoint(out), map_location="cpu").eval()
    module.embedding_cache = None
    correct, total, per_protein = 0, 0, []
    for batch in itertools.islice(run_data(out).test_dataloader()[0], 2):
        with torch.no_grad():
            hits = (module(batch).argmax(-1) == batch["labels"]) & batch["label_mask"]
        correct, total = correct + int(hits.sum()), total + int(batch["label_mask"].sum())
        per_protein += (hits.sum(1) / batch["label_mask"].sum(1)).tolist()
    assert results["test"]["q3"] == pytest.approx(correct / total, abs=1e-6)
    assert results["test"]["per_protein_accuracy"] == pytest.approx(sum(per_protein) / len(per_protein), abs=1e-6)


def test_residue_regression_lora_and_local_test_files_named_by_stem(tmp_path):
    source = (REPO / "data" / "rsa.csv").read_text().splitlines()
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
        tmp_path,
        "task=solubility_local",
        "task.kind=sequence_multilabel",
        "task.labels=[a,b,c]",
        f"task.data.train={data}",
        "task.metrics=[f1,auroc]",
        "task.monitor=val/f1",
        "head=max",
    )
    assert set(metrics_of(out)["test"]) == {"f1", "auroc", "loss"}


def test_sequence_regression_from_local_files(tmp_path):
    def files(name: str, n: int, seed: int) -> Path:
        path = write_sequences(tmp_path / name, n, lambda r: f"{r.uniform(1, 4):.3f}", seed)
        path.write_text(path.read_text().replace("sequence,label", "primary,log_fluorescence", 1))
        return path

    out = run(
        tmp_path,
        "task=fluorescence",
        "task.data.hub_id=null",
        f"task.data.train={files('train.csv', 24, 0)}",
        f"task.data.val={files('valid.csv', 8, 1)}",
        f"task.data.test=[{files('gfp_test.csv', 8, 2)}]",
        "task.data.id_column=id",
        "head=convbert",
        "head.num_heads=2",
    )
    assert {"spearman", "r2", "rmse"} <= set(metrics_of(out)["gfp_test"])


def test_masked_lm_saves_a_backbone_that_model_path_loads(tmp_path):
    out = run(tmp_path, "task=masked_lm")
    assert {"masked_accuracy", "perplexity"} <= set(next(iter(metrics_of(out).values())))
    saved = out / "backbone"
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()
    adapted = FastAnkhModel.from_pretrained(saved)
    best = torch.load(next((out / "checkpoints").glob("epoch*.ckpt")), weights_only=False)["state_dict"]
    torch.testing.assert_close(adapted.embed_tokens.weight, best["model.model.embed_tokens.weight"], atol=0, rtol=0)
    downstream = run(tmp_path / "next", "task=ss3_local", f"model.path={saved}")
    assert "q3" in metrics_of(downstream)["test"]


def test_tensorboard_logger_writes_the_validation_and_test_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(tmp_path, "task=ss3_local", "logger=tensorboard")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"val/q3", "val/loss", "train/loss", "test/test/q3"} <= set(events.Tags()["scalars"])
    (q3,) = events.Scalars("val/q3")  # one epoch: the score the best checkpoint was chosen by
    state = torch.load(only_epoch_checkpoint(out), weights_only=False)["callbacks"]
    (best,) = [v["best_model_score"] for k, v in state.items() if k.startswith("BestAndLastCheckpoint")]
    assert q3.value == pytest.approx(float(best), abs=1e-6)
    (tested,) = events.Scalars("test/test/q3")
    assert tested.value == pytest.approx(metrics_of(out)["test"]["q3"], abs=1e-6)


def test_cosine_schedule_follows_warmup_then_half_cosine(tmp_path):
    """2 epochs x 3 batches = 6 optimizer steps, warmup_ratio 0.5 -> 3 warmup steps; the learning rate
    each step ran with (LearningRateMonitor, logged before the step) against transformers' formula."""
    out = run(
        tmp_path,
        "task=ss3_local",
        "optim.scheduler=cosine",
        "optim.warmup_ratio=0.5",
        "trainer.max_epochs=2",
        "optim.lr=1e-4",
        "optim.head_lr=1e-3",
    )
    frame = pd.read_csv(out / "csv" / "metrics.csv")
    total, warmup = 6, 3

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    for column, base in (("lr-AdamW/backbone", 1e-4), ("lr-AdamW/head", 1e-3)):
        logged = frame[frame[column].notna()].set_index("step")[column]
        assert list(logged.index) == list(range(total)), column
        expected = [base * factor(step) for step in range(total)]
        assert logged.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-12), column


def test_bad_data_stops_before_any_model_is_built(tmp_path, monkeypatch):
    bad = write_sequences(tmp_path / "bad.csv", 20, lambda r: r.randint(0, 1))
    rows = bad.read_text().splitlines()
    rows[7] = "weird,MKV1LL,1"  # data row 7: a digit is no residue
    bad.write_text("\n".join(rows) + "\n")

    def no_model(*args, **kwargs):
        pytest.fail("a model was built before the data was validated")

    monkeypatch.setattr(tasks.train.model, "load_backbone", no_model)
    with pytest.raises(SystemExit) as err:  # the CLI prints this one line and exits 1
        run(tmp_path, "task=solubility_local", f"task.data.train={bad}")
    message = str(err.value.code)
    assert "bad.csv" in message and "row 7" in message and "'1'" in message
    assert len(message.splitlines()) == 1


class RecordTrainBatches(L.Callback):
    """Writes <directory>/rank<r>.json at the end of training: epoch -> record ids of the training batches
    this process received, in order."""

    def __init__(self, directory: str):
        self.directory, self.seen = Path(directory), {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["ids"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def batches_seen(out: Path) -> dict[int, dict[int, list[str]]]:
    """rank -> epoch -> record ids, as RecordTrainBatches wrote them."""
    return {
        int(path.stem.removeprefix("rank")): {int(e): ids for e, ids in json.loads(path.read_text()).items()}
        for path in (out / "batches").glob("rank*.json")
    }


def val_rows(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "csv" / "metrics.csv")
    return frame[frame["val/loss"].notna()].dropna(axis=1, how="all").set_index("epoch")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, Path]:
    """train.py with 2 CPU processes on 12 training, 6 validation (3 batches: one rank gets more) and 4 test
    chains, 2 epochs: straight, stopped after epoch 1, and resumed from that with ckpt_path=last."""
    root = tmp_path_factory.mktemp("ddp")
    rows = short_rows("secondary_structure.csv", 22)
    for name, part in (("train", rows[:12]), ("val", rows[12:18]), ("test", rows[18:])):
        part.to_csv(root / f"{name}.csv", index=False)

    def ddp(out: Path, *extra: str) -> Path:
        cmd = [
            sys.executable,
            "train.py",
            "task=ss3_local",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *TINY_TRAIN,
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=null",
            "trainer.limit_val_batches=null",
            "trainer.limit_test_batches=null",
            "trainer.num_sanity_val_steps=0",
            "data.batch_size=2",
            "head.dropout=0.3",
            f"task.data.train={root / 'train.csv'}",
            f"task.data.val={root / 'val.csv'}",
            f"task.data.test=[{root / 'test.csv'}]",
            "task.data.test_fraction=0",
            "+callbacks.record._target_=tests.e2e.test_train.RecordTrainBatches",
            f"+callbacks.record.directory={out / 'batches'}",
            *extra,
            f"hydra.run.dir={out}",
        ]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / "train_ddp_process_1.log").exists()  # the second rank really ran
        return out

    stop = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1"]
    return {
        "root": root,
        "straight": ddp(root / "reference" / "straight"),
        "interrupted": ddp(root / "runs" / "interrupted", *stop),
        # a new run directory beside the interrupted one: ckpt_path=last finds its checkpoints/last.ckpt
        "resumed": ddp(root / "runs" / "resumed", "ckpt_path=last"),
    }


def test_ddp_ranks_train_on_disjoint_halves_of_the_training_set(ddp_runs):
    train_ids = pd.read_csv(ddp_runs["root"] / "train.csv")["id"].tolist()
    seen = batches_seen(ddp_runs["straight"])
    assert set(seen) == {0, 1}
    for epoch in (0, 1):
        first, second = seen[0][epoch], seen[1][epoch]
        assert len(first) == len(second) == len(train_ids) // 2, (epoch, first, second)
        assert not set(first) & set(second), epoch
        assert sorted(first + second) == sorted(train_ids), epoch
    assert seen[0][0] != seen[0][1]  # reshuffled per epoch


def test_ddp_test_metrics_equal_one_process_on_the_same_data(ddp_runs):
    """The test split has 2 batches, one per rank: the metrics must be reduced over both ranks."""
    out = ddp_runs["straight"]
    tested = single_process(out, only_epoch_checkpoint(out), "test")
    assert metrics_of(out)["test"] == pytest.approx(tested, abs=1e-5)


def test_ddp_validation_metrics_equal_one_process_with_an_odd_batch_count(ddp_runs):
    out = ddp_runs["straight"]
    logged = val_rows(out).loc[1]  # the last epoch: the weights in last.ckpt
    expected = single_process(out, out / "checkpoints" / "last.ckpt", "validate")
    for name in ("val/q3", "val/per_protein_accuracy", "val/loss"):
        assert logged[name] == pytest.approx(expected[name], abs=1e-5), name


def test_ddp_resumed_run_ends_like_the_straight_run(ddp_runs):
    straight, interrupted, resumed = (ddp_runs[k] for k in ("straight", "interrupted", "resumed"))
    assert list(val_rows(interrupted).index) == [0] and list(val_rows(resumed).index) == [1]
    pd.testing.assert_series_equal(val_rows(resumed).loc[1], val_rows(straight).loc[1], check_exact=True)
    assert metrics_of(resumed) == metrics_of(straight)
    # each rank got the same epoch-1 batches as in the uninterrupted run
    assert {r: epochs[1] for r, epochs in batches_seen(resumed).items()} == {
        r: epochs[1] for r, epochs in batches_seen(straight).items()
    }


def test_quickstart_beats_the_majority_class(tmp_path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quickstart"])
    data = TaskDataModule(TaskSpec.from_config(cfg.task), load_tokenizer("ankh_tiny"), seed=cfg.seed)
    data.setup()
    counted = [
        label
        for labels, keep in zip(data.splits["test"]["labels"], data.splits["test"]["label_mask"])
        for label, k in zip(labels, keep)
        if k
    ]
    majority = Counter(counted).most_common(1)[0][1] / len(counted)
    done = subprocess.run(
        [sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test metrics" in done.stdout
    assert metrics_of(tmp_path)["test"]["q3"] >= majority + 0.05, (metrics_of(tmp_path), majority)


def test_console_tells_each_thing_once_and_ends_with_the_next_command(tmp_path):
    """`python train.py` as a user runs it: no line twice (Lightning's own handler + Hydra's), no litlogger
    advert, no deprecation warning, and a last line naming the run, its best checkpoint and export.py."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", *TINY_TRAIN, "task=ss3_local", f"hydra.run.dir={out}"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    borders = set("┏┳┓┡╇┩└┴┘━─ ")  # rich table rules: two tables of one width share them
    lines = [line.rstrip() for line in console.splitlines()]
    counted = Counter(line for line in lines if line.strip() and not set(line) <= borders and "━" not in line)
    assert [line for line, n in counted.items() if n > 1] == []
    assert "litlogger" not in console and "Tip:" not in console
    assert "DeprecationWarning" not in console and "deprecated" not in console.lower()
    (best,) = (out / "checkpoints").glob("epoch*.ckpt")
    last = [line for line in lines if line.strip()][-1]
    assert last == (
        f"run: {out} | best checkpoint: {best} | next: python export.py checkpoint={best} output_dir=exports/ss3_local"
    )
    assert (out / "train.log").read_text().count("GPU available") == 1


def test_bf16_true_trains_on_cpu_with_bf16_weights(tmp_path):
    out = run(tmp_path, "model.precision=bf16-true")
    state = torch.load(only_epoch_checkpoint(out), weights_only=True)["state_dict"]
    assert {v.dtype for k, v in state.items() if k.endswith("weight")} == {torch.bfloat16}
    assert math.isfinite(metrics_of(out)["test"]["loss"])


def test_fp16_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="model.precision=16-mixed: T5 models such as ANKH overflow in fp16"):
        run(tmp_path, "model.precision=16-mixed")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path):
    """val/loss watched with mode=max on a learning model: the best stays an early epoch, last.ckpt moves on."""
    out = run(tmp_path, "trainer.max_epochs=3", "task.monitor=val/loss", "task.monitor_mode=max")
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(only_epoch_checkpoint(out), weights_only=False)
    assert last["epoch"] == 2 and best["epoch"] < 2
