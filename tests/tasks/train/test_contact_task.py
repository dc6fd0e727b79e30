"""The residue-pair (contact) kind: pair heads and model, loss over counted pairs, label validation, training
crops and chunked whole-chain evaluation."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fastankh import FastAnkhConfig, FastAnkhForContactPrediction, load_tokenizer
from fastankh.errors import DataError
from fastankh.heads import build_head
from fastankh.modeling_tasks import counted_pairs
from tasks.data.datamodule import TaskDataModule
from tasks.data.loaders import Collator
from tasks.data.sources import PROJECT_ROOT
from tasks.task.metrics import TaskMetrics
from tasks.task.spec import IGNORE_INDEX, TaskSpec
from tests.helpers import TINY, make_batch, make_module, make_task

KIND = "residue_pair_classification"
CONTACTS_CSV = PROJECT_ROOT / "data" / "contacts.csv"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer("ankh_tiny")


def contact_task(**data) -> TaskSpec:
    fields = dict(label_column="contacts", mask_column="valid", mask_value="0", val=data.get("train"))
    return TaskSpec(name="c", kind=KIND, data={**fields, **data})


def pair_block(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The residue x residue block of one row's (T, T) map."""
    return x[mask][:, mask]


# ------------------------------------------------------------------------------------------ model and head
@pytest.mark.parametrize("head", ["mlp", "convbert"])
def test_a_chain_alone_and_in_a_padded_batch_gets_the_same_pair_logits(head):
    torch.manual_seed(0)
    options = {"num_heads": 2} if head == "convbert" else {}
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, **TINY)
    config.head_name, config.head_kwargs, config.num_labels = head, {"dropout": 0.0, **options}, 1
    model = FastAnkhForContactPrediction(config).eval()
    batch = make_batch(make_task(KIND), [23, 9, 40])  # padded to 41 tokens
    with torch.no_grad():
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for r in range(3):
            n = int(batch["attention_mask"][r].sum())
            alone = model(input_ids=batch["input_ids"][r : r + 1, :n]).logits[0]
            mask = batch["residue_mask"][r]
            torch.testing.assert_close(pair_block(batched[r], mask), pair_block(alone, mask[:n]), atol=1e-5, rtol=0)
            torch.testing.assert_close(alone, alone.T, atol=1e-6, rtol=0)  # symmetric by construction
    assert batched.shape == (3, 41, 41)


def test_chunked_pair_logits_equal_the_whole_map_and_read_residues_only():
    torch.manual_seed(0)
    head = build_head("pair", "mlp", 16, 1, dropout=0.0).eval()
    hidden = torch.randn(2, 30, 16)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :29], mask[1, :12] = True, True
    with torch.no_grad():
        head.chunk_size = 1000
        whole = head(hidden, mask)
        for rows in (1, 7, 29):
            head.chunk_size = rows
            torch.testing.assert_close(head(hidden, mask), whole, atol=1e-6, rtol=0)
        noisy = hidden.clone()
        noisy[~mask] = 100 * torch.randn_like(noisy[~mask])  # </s> and padding
        torch.testing.assert_close(pair_block(head(noisy, mask)[1], mask[1]), pair_block(whole[1], mask[1]))
    with pytest.raises(ValueError, match="unknown pair head 'linear'"):
        build_head("pair", "linear", 16, 1)


def test_loss_is_bce_over_valid_pairs_at_least_six_apart_counted_once():
    module = make_module(KIND, num_layers=1).eval()
    batch = make_batch(module.task, [15, 8, 12], seed=2)
    batch["label_mask"][0, 3] = False  # a residue without coordinates: none of its pairs count
    with torch.no_grad():
        logits = module(batch)
        loss, n = module.loss(logits, batch)
    labels = batch["labels"]
    by_hand, count = [], 0
    for r, length in enumerate([15, 8, 12]):
        for i in range(length):
            for j in range(i + 6, length):
                if batch["label_mask"][r, i] and batch["label_mask"][r, j]:
                    by_hand.append(F.binary_cross_entropy_with_logits(logits[r, i, j], labels[r, i, j].float()))
                    count += 1
    assert n == count == (45 - 6) + 3 + 21  # row 0: 45 pairs at least 6 apart, 6 of them with residue 3
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())
    exported = module.task_model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        label_mask=batch["label_mask"],
    )
    torch.testing.assert_close(exported.loss, loss, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------ labels
def write_rows(path, rows: list[tuple]) -> str:
    pd.DataFrame(rows, columns=["id", "sequence", "contacts", "valid"]).to_csv(path, index=False)
    return str(path)


def test_pairs_are_encoded_in_token_coordinates_with_masked_residues_ignored(tmp_path, tiny_tok):
    source = write_rows(
        tmp_path / "c.csv",
        [
            # residue 9 has no coordinates: 9-2 is dropped; 0-3 is kept but too close to ever count
            ("a", "MKTAYIAKQRQ", "0-7 9-2 10-1 0-3", "11111111101"),
            ("b", "GSHMLEDPV", "", "111111111"),  # an empty cell: a chain without contacts
        ],
    )
    dm = TaskDataModule(contact_task(train=source, test=[source]), tiny_tok, batch_size=2)
    dm.setup("fit")
    assert dm.splits["train"]["labels"][:] == [[[0, 3], [0, 7], [1, 10]], []]  # i < j, sorted
    batch = next(iter(dm.test_dataloader()[0]))
    labels, valid = batch["labels"], batch["label_mask"]
    assert labels.dtype == torch.int8 and labels.shape == (2, 12, 12)
    row = batch["ids"].index("a")
    assert {tuple(p) for p in (labels[row] == 1).nonzero().tolist()} == {
        (0, 3),
        (3, 0),
        (0, 7),
        (7, 0),
        (1, 10),
        (10, 1),
    }
    assert (labels[row, 9] == IGNORE_INDEX).all() and not valid[row, 9]
    assert (labels[row, 11] == IGNORE_INDEX).all()  # </s>
    counted = counted_pairs(labels, valid, batch["residue_mask"])
    assert int(counted[row].sum()) == sum(1 for i in range(11) for j in range(i + 6, 11) if 9 not in (i, j))


BAD_PAIRS = {
    "malformed": ("0-7 3:9", "1111111111", "malformed pair '3:9' in column 'contacts' (expected i-j"),
    "self pair": ("4-4", "1111111111", "pair '4-4' in column 'contacts' pairs residue 4 with itself"),
    "out of range": ("2-10", "1111111111", "pair '2-10' in column 'contacts': position 10 is out of range for 10"),
    "negative": ("-1-7", "1111111111", "malformed pair '-1-7'"),
    "validity length": ("0-7", "111", "mask length 3 != sequence length 10 (column 'valid')"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_a_bad_pair_row_is_one_line_naming_file_row_and_problem(case, tmp_path, tiny_tok):
    contacts, valid, expected = BAD_PAIRS[case]
    source = write_rows(
        tmp_path / "c.csv", [("a", "MKTAYIAKQR", "0-9", "1" * 10), ("b", "MKTAYIAKQR", contacts, valid)]
    )
    with pytest.raises(DataError) as err:
        TaskDataModule(contact_task(train=source), tiny_tok).setup("fit")
    message = str(err.value)
    assert message.startswith(f"{source}: row 2 (id b): ") and "\n" not in message and expected in message, message


# ------------------------------------------------------------------------------------------ crops and chunks
def test_a_crop_is_a_window_of_the_chain_and_its_map(tiny_tok):
    task = contact_task(crop_length=8)
    full = Collator(task, prefix=1)  # an [NLU]-like prefix token: the window keeps it and </s>
    crop = Collator(task, prefix=1, seed=3, crop_length=8)
    ids = [5] + list(range(10, 30)) + [1]  # 20 residues
    pairs = [[0, 19], [2, 9], [4, 11], [5, 18], [3, 10]]
    sample = {"input_ids": ids, "id": "x", "index": 7, "labels": pairs, "label_mask": [True] * 19 + [False]}
    whole = full([sample])
    starts = set()
    for epoch in range(6):
        cut = crop([{**sample, "epoch": epoch}])
        start = cut["input_ids"][0, 1].item() - 10
        starts.add(start)
        assert cut["input_ids"][0].tolist() == [5, *range(10 + start, 18 + start), 1]
        window = slice(1 + start, 9 + start)
        assert torch.equal(cut["labels"][0, 1:9, 1:9], whole["labels"][0, window, window])
        assert torch.equal(cut["label_mask"][0, 1:9], whole["label_mask"][0, window])
        assert torch.equal(crop([{**sample, "epoch": epoch}])["input_ids"], cut["input_ids"])  # same draw
    assert len(starts) > 1  # windows move with the epoch
    short = {**sample, "input_ids": ids[:7] + [1], "labels": [[0, 5]], "label_mask": [True] * 6}
    assert all(torch.equal(a, b) for a, b in zip(crop([short]).values(), full([short]).values()) if torch.is_tensor(a))


def test_crop_and_chunked_evaluation_give_the_whole_chain_metrics_on_short_chains(tiny_tok, tmp_path):
    frame = pd.read_csv(CONTACTS_CSV, dtype=str)
    frame[frame["sequence"].str.len().between(40, 70)].head(6).to_csv(tmp_path / "short.csv", index=False)
    source = str(tmp_path / "short.csv")
    plain = TaskDataModule(contact_task(train=source, test=[source]), tiny_tok, batch_size=3)
    cropped = TaskDataModule(contact_task(train=source, test=[source], crop_length=70), tiny_tok, batch_size=3)
    module = make_module(KIND, num_layers=1).eval()

    def metrics(dm: TaskDataModule, loader: str, chunk_size: int) -> dict[str, float]:
        dm.setup("fit")
        module.head.chunk_size = chunk_size
        loaders = {"train": dm.train_dataloader(), "test": dm.test_dataloader()[0]}
        values = TaskMetrics(KIND)
        with torch.no_grad():
            for batch in loaders[loader]:
                values.update(module(batch), batch)
        return {k: float(v) for k, v in values.compute().items()}

    whole = metrics(plain, "test", 10_000)
    assert whole["long_p_at_l5"] > 0 and set(whole) == {
        f"{r}_p_at_{k}" for r in ("long", "medium") for k in ("l5", "l2", "l")
    }
    assert metrics(cropped, "test", 7) == pytest.approx(
        whole, abs=1e-6
    )  # evaluation never crops; chunks change nothing
    assert metrics(cropped, "train", 5) == pytest.approx(metrics(plain, "train", 10_000), abs=1e-6)  # crop >= chains
