"""predict.py on exported tiny models: input order, invalid records, per-kind output columns and values, adapters."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import tasks.infer.prediction
from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer, prefix_length
from fastankh.errors import DataError
from tasks.hub.export_folder import export_checkpoint
from tasks.infer.predict_job import predict_file
from tasks.infer.prediction import load_task_model
from tests.helpers import REPO, best_checkpoint, run_cli, short_rows, train_run, write_sequences


def write_fasta(path, records: list[tuple[str, str]]) -> None:
    path.write_text("".join(f">{rid} some description\n{seq[:40]}\n{seq[40:]}\n" for rid, seq in records))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exports of a residue run (ss3) and of a LoRA sequence run (solubility): merged and adapter-only."""
    root = tmp_path_factory.mktemp("predict")
    short_rows("secondary_structure.csv", 12).to_csv(root / "ss.csv", index=False)
    short_rows("solubility.csv", 12).to_csv(root / "sol.csv", index=False)
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(root / "base")
    residue = train_run(root / "residue", ["task=ss3_local", f"task.data.train={root / 'ss.csv'}"])
    sequence = train_run(
        root / "sequence",
        [
            "task=solubility_local",
            f"task.data.train={root / 'sol.csv'}",
            "finetune=lora",
            f"model.path={root / 'base'}",
        ],
    )
    return {
        "root": root,
        "residue": export_checkpoint(best_checkpoint(residue), root / "residue_export"),
        "sequence": export_checkpoint(best_checkpoint(sequence), root / "sequence_export"),
        "adapter": export_checkpoint(best_checkpoint(sequence), root / "adapter_export", merge_lora=False),
    }


@pytest.fixture(scope="module")
def fasta_records() -> list[tuple[str, str]]:
    """50 real chains, not in length order, plus one invalid record ('J' is no residue) in the middle."""
    frame = pd.read_csv(REPO / "data" / "secondary_structure.csv").head(50)
    records = list(zip(frame["id"], frame["sequence"]))
    return records[:20] + [("bad_record", "MKTJJAY")] + records[20:]


def test_fasta_rows_in_input_order_and_invalid_record_reported(models, fasta_records, tmp_path, capsys):
    write_fasta(tmp_path / "in.fasta", fasta_records)
    run_cli(
        "predict",
        [
            f"model={models['residue']}",
            f"input={tmp_path / 'in.fasta'}",
            f"output={tmp_path / 'out.csv'}",
            "batch_size=8",
            "progress=false",
            "accelerator=cpu",
        ],
    )
    assert "in.fasta: row 21 (id bad_record): unknown residue letter(s) 'J'" in capsys.readouterr().err
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    valid = [r for r in fasta_records if r[0] != "bad_record"]
    assert len(out) == 50 and out["id"].tolist() == [rid for rid, _ in valid]
    assert out["sequence"].tolist() == [seq for _, seq in valid]

    model, tokenizer, kind = load_task_model(models["residue"])
    assert kind == "residue_classification"
    for i in (0, 17, 49):  # each alone, unpadded: batching and length sorting must not change a row
        seq = valid[i][1]
        with torch.no_grad():
            probs = model(**tokenizer([seq], return_tensors="pt")).logits[0, : len(seq)].softmax(-1)
        assert out["prediction"][i] == "".join("HEC"[c] for c in probs.argmax(-1).tolist())
        for c, label in enumerate("HEC"):
            values = torch.tensor([float(v) for v in out[f"prob_{label}"][i].split()])
            assert len(values) == len(seq)
            torch.testing.assert_close(values, probs[:, c], atol=6e-5, rtol=0)


def test_on_invalid_error_stops_before_loading_the_model(models, fasta_records, tmp_path, monkeypatch):
    write_fasta(tmp_path / "in.fasta", fasta_records)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is invalid")

    monkeypatch.setattr(tasks.infer.prediction, "load_task_model", must_not_load)
    with pytest.raises(ValueError, match=r"in\.fasta: row 21 \(id bad_record\): unknown residue"):
        predict_file(models["residue"], tmp_path / "in.fasta", tmp_path / "out.csv", on_invalid="error")
    assert not (tmp_path / "out.csv").exists()


def test_a_repeated_id_is_refused_before_loading_the_model(tmp_path):
    """Outputs are keyed by id (the table's id column, contact maps): a later record with a seen id is invalid."""
    write_fasta(tmp_path / "in.fasta", [("a", "MKVLA"), ("b", "MKLLA"), ("a", "MKWLA")])
    pattern = r"in\.fasta: row 3 \(id a\): id 'a' appears more than once \(first at row 1\)"
    with pytest.raises(ValueError, match=pattern):  # "no-such-model": raising first means nothing was loaded
        predict_file("no-such-model", tmp_path / "in.fasta", tmp_path / "out.csv", on_invalid="error")
    assert not (tmp_path / "out.csv").exists()


def test_cli_on_invalid_error_names_the_record(models, fasta_records, tmp_path):
    write_fasta(tmp_path / "in.fasta", fasta_records)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"model={models['residue']}",
            f"input={tmp_path / 'in.fasta'}",
            f"output={tmp_path / 'out.csv'}",
            "on_invalid=error",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode != 0 and "row 21 (id bad_record)" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_sequence_task_csv_to_parquet_and_adapter_export_agree(models, tmp_path):
    frame = short_rows("solubility.csv", 30, max_len=300).iloc[12:][["id", "sequence"]]
    frame.to_csv(tmp_path / "in.csv", index=False)
    predict_file(models["sequence"], tmp_path / "in.csv", tmp_path / "merged.parquet", batch_size=4, progress=False)
    predict_file(models["adapter"], tmp_path / "in.csv", tmp_path / "adapter.parquet", batch_size=4, progress=False)
    merged, adapter = pd.read_parquet(tmp_path / "merged.parquet"), pd.read_parquet(tmp_path / "adapter.parquet")
    assert merged["id"].astype(str).tolist() == frame["id"].astype(str).tolist()
    assert set(merged["prediction"]) <= {"0", "1"}
    total = torch.tensor(merged["prob_0"] + merged["prob_1"])
    torch.testing.assert_close(total, torch.ones(len(merged), dtype=torch.float64))
    assert merged["prediction"].tolist() == adapter["prediction"].tolist()
    torch.testing.assert_close(torch.tensor(merged["prob_1"]), torch.tensor(adapter["prob_1"]), atol=1e-5, rtol=0)

    model, tokenizer, kind = load_task_model(models["sequence"])
    first = frame["sequence"].iloc[0]
    with torch.no_grad():
        probs = model(**tokenizer([first], return_tensors="pt")).logits[0].softmax(-1)
    assert kind == "sequence_classification"
    assert merged["prob_1"].iloc[0] == pytest.approx(probs[1].item(), abs=1e-5)


def test_unsupported_output_suffix_is_refused_before_work(models, tmp_path):
    (tmp_path / "in.fasta").write_text(">a\nMKT\n")
    with pytest.raises(ValueError, match=r"out\.xlsx: output must end in \.csv or \.parquet"):
        predict_file(models["residue"], tmp_path / "in.fasta", tmp_path / "out.xlsx")


def test_tokenizer_of_export_matches_training_tokenizer(models):
    exported = load_tokenizer(models["residue"])
    assert exported("MKTAYX")["input_ids"] == load_tokenizer("ankh_tiny")("MKTAYX")["input_ids"]


@pytest.fixture(scope="module")
def kind_models(tmp_path_factory) -> dict[str, object]:
    """Exports of tiny runs of the kinds without class probabilities per residue: residue regression (RSA),
    sequence regression and sequence multilabel (random labels, enough to exercise the outputs)."""
    root = tmp_path_factory.mktemp("kinds")
    short_rows("rsa.csv", 12).to_csv(root / "rsa.csv", index=False)
    values = write_sequences(root / "values.csv", 16, lambda r: f"{r.uniform(1, 4):.3f}")
    multi = write_sequences(root / "multi.csv", 16, lambda r: '"' + ",".join(r.sample("abc", r.randint(1, 2))) + '"')
    runs = {
        "residue_regression": ["task=rsa_local", f"task.data.train={root / 'rsa.csv'}"],
        "sequence_regression": [
            "task=fluorescence",
            "task.data.hub_id=null",
            f"task.data.train={values}",
            "task.data.val=null",
            "task.data.test=[]",
            "task.data.sequence_column=sequence",
            "task.data.label_column=label",
            "task.data.id_column=id",
            "head=mean",
        ],
        "sequence_multilabel": [
            "task=solubility_local",
            "task.kind=sequence_multilabel",
            "task.labels=[a,b,c]",
            f"task.data.train={multi}",
            "task.metrics=[f1,auroc]",
            "task.monitor=val/f1",
            "head=max",
        ],
    }
    return {
        kind: export_checkpoint(best_checkpoint(train_run(root / kind, overrides)), root / f"{kind}_export")
        for kind, overrides in runs.items()
    }


@pytest.mark.parametrize("kind", ["residue_regression", "sequence_regression", "sequence_multilabel"])
def test_predict_columns_and_values_are_the_models_outputs(kind, kind_models, tmp_path):
    """predict.py on each kind: the documented columns, and values equal to the exported model's outputs on
    each sequence alone (the CLI batches 4 length-sorted sequences with padding)."""
    frame = short_rows("secondary_structure.csv", 9)[["id", "sequence"]]
    frame.to_csv(tmp_path / "in.csv", index=False)
    run_cli(
        "predict",
        [
            f"model={kind_models[kind]}",
            f"input={tmp_path / 'in.csv'}",
            f"output={tmp_path / 'out.csv'}",
            "batch_size=4",
            "progress=false",
            "accelerator=cpu",
        ],
    )
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    labels = ["a", "b", "c"] if kind == "sequence_multilabel" else []
    assert list(out.columns) == ["id", "sequence", "prediction", *(f"prob_{label}" for label in labels)]
    assert out["id"].tolist() == frame["id"].tolist()

    model, tokenizer, loaded_kind = load_task_model(kind_models[kind])
    assert loaded_kind == kind
    prefix = prefix_length(tokenizer)
    for row, sequence in zip(out.itertuples(), frame["sequence"]):
        with torch.no_grad():
            logits = model(**tokenizer([sequence], return_tensors="pt")).logits[0]
        if kind == "residue_regression":
            values = torch.tensor([float(v) for v in row.prediction.split()])
            expected = logits[prefix : prefix + len(sequence), 0]
            assert len(values) == len(sequence)
            torch.testing.assert_close(values, expected, atol=6e-5, rtol=0)  # written with 4 decimals
        elif kind == "sequence_regression":
            assert float(row.prediction) == pytest.approx(logits[0].item(), abs=1e-5)
        else:
            probs = logits.sigmoid()
            got = torch.tensor([getattr(row, f"prob_{label}") for label in labels])
            torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)
            assert row.prediction == ",".join(label for label, p in zip(labels, probs) if p >= 0.5)


def test_bf16_predictions_agree_with_fp32_and_fp16_is_refused(models, tmp_path):
    frame = short_rows("solubility.csv", 12, max_len=300)[["id", "sequence"]]
    frame.to_csv(tmp_path / "in.csv", index=False)
    for precision in ("32", "bf16"):
        predict_file(models["sequence"], tmp_path / "in.csv", tmp_path / f"{precision}.csv", precision=precision)
    fp32, bf16 = pd.read_csv(tmp_path / "32.csv"), pd.read_csv(tmp_path / "bf16.csv")
    assert not fp32["prob_1"].equals(bf16["prob_1"])  # it computed in bf16
    torch.testing.assert_close(torch.tensor(bf16["prob_1"]), torch.tensor(fp32["prob_1"]), atol=0.02, rtol=0)
    with pytest.raises(DataError, match="overflow in fp16"):
        predict_file(models["sequence"], tmp_path / "in.csv", tmp_path / "16.csv", precision="16-mixed")
    assert not (tmp_path / "16.csv").exists()
