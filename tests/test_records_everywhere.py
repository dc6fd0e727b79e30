"""One reader and one sequence rule (fastankh/records.py) for training, predict and embed: the same
decision and the same one-line message in all three."""

from __future__ import annotations

import datasets
import pytest
import torch
from hydra import compose, initialize_config_dir

from fastankh import FastAnkhConfig, FastAnkhModel, embed_dataset, load_tokenizer
from fastankh.batching import length_batches
from fastankh.errors import DataError, UserError
from fastankh.records import clean_sequence, read_records
from tasks.data.datamodule import TaskDataModule
from tasks.infer import embedding as embed
from tasks.infer.predict_job import check_records
from tasks.task.spec import TaskSpec
from tests.helpers import REPO

ALLOWED = "the 20 standard residues and X B O U Z"
CASES = {  # cell -> cleaned sequence, or the problem
    "NA": "NA",  # two residues, never a missing value
    "mkv": "MKV",
    "MK V": "MKV",
    "MKV*": "MKV",  # one terminal stop codon is dropped
    "MKJ": f"unknown residue letter(s) 'J' (allowed: {ALLOWED})",
    "MK1": f"unknown residue letter(s) '1' (allowed: {ALLOWED})",
    "M*K": f"unknown residue letter(s) '*' (allowed: {ALLOWED})",
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).eval()


def outcome(run) -> tuple[str, str]:
    """("ok", cleaned sequence) or ("error", message)."""
    try:
        return "ok", run()
    except ValueError as err:
        return "error", str(err)


def train(path: str) -> str:
    task = TaskSpec(name="t", kind="masked_lm", data={"train": path, "val": path})
    tok = load_tokenizer("ankh_tiny")
    dm = TaskDataModule(task, tok)
    dm.setup("fit")
    ids = dm.splits["train"]["input_ids"][0][:-1]  # without </s>
    return "".join(tok.convert_ids_to_tokens(ids))


def predict(path: str) -> str:
    records = read_records(path)
    valid, problems = check_records(records)
    if problems:
        raise DataError("\n".join(problems))
    return records[valid[0]].sequence


def embed_api(path: str, model) -> str:
    out = embed_dataset(model, path, full_embeddings=True, progress=False)["a"]
    return "x" * out.shape[0]  # compared by length below: the API returns vectors, not letters


def embed_cli(path: str, tmp_path) -> str:
    with initialize_config_dir(str(REPO / "conf" / "cli"), version_base="1.3"):
        cfg = compose(
            "embed", overrides=[f"input={path}", f"output={tmp_path / 'out.safetensors'}", "model=/nonexistent/encoder"]
        )
    embed.embed(cfg)  # a valid file goes on to load the (missing) encoder
    raise AssertionError("unreachable")


@pytest.mark.parametrize("cell", list(CASES))
def test_same_decision_and_message_in_train_predict_and_embed(cell, tmp_path, encoder):
    path = str(tmp_path / "in.csv")
    with open(path, "w") as f:
        f.write(f"id,sequence\na,{cell}\n")
    expected = CASES[cell]
    valid = expected.isupper() and "(" not in expected
    results = {
        "train": outcome(lambda: train(path)),
        "predict": outcome(lambda: predict(path)),
        "embed": outcome(lambda: embed_api(path, encoder)),
    }
    if valid:
        assert clean_sequence(cell) == expected
        assert results["train"] == results["predict"] == ("ok", expected)
        assert results["embed"] == ("ok", "x" * len(expected))
        with pytest.raises(Exception) as err:  # embed.py reads the file fine and fails only at the model
            embed_cli(path, tmp_path)
        assert "nonexistent" in str(err.value)
    else:
        message = f"{path}: row 1 (id a): {expected}"
        assert results == {name: ("error", message) for name in results}
        with pytest.raises(UserError) as err:  # the CLI's one `error:` line is this message
            embed_cli(path, tmp_path)
        assert str(err.value) == message


def test_fasta_gz_and_parquet_read_the_same_records(tmp_path):
    import gzip

    import pandas as pd

    with gzip.open(tmp_path / "in.fa.gz", "wt") as f:
        f.write(">a x=1\nmk v\n>b\nNA*\n")
    pd.DataFrame({"id": ["a", "b"], "sequence": ["mk v", "NA*"]}).to_parquet(tmp_path / "in.parquet")
    for name in ("in.fa.gz", "in.parquet"):
        records = read_records(tmp_path / name)
        assert [(r.id, r.sequence, r.row) for r in records] == [("a", "MKV", 1), ("b", "NA", 2)], name


@pytest.mark.parametrize(
    "lengths, batch_size, max_tokens, expected",
    [
        ([3, 9, 5, 9], 2, None, [[1, 3], [2, 0]]),  # longest first, ties in input order
        ([3, 9, 5, 9], None, 18, [[1, 3], [2, 0]]),  # 2 x 9 <= 18; 5 + 3: 2 x 5 <= 18
        ([3, 9, 5, 9], 3, 10, [[1], [3], [2, 0]]),
        ([30, 2], None, 10, [[0], [1]]),  # longer than the budget: a batch alone
        ([], 4, None, []),
    ],
)
def test_length_batches(lengths, batch_size, max_tokens, expected):
    assert length_batches(lengths, batch_size, max_tokens) == expected
