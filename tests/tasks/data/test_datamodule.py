"""Task data: validation messages, splits, token/label alignment, batching, MLM masking, task configs."""

from __future__ import annotations

import glob
import os

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.utilities.data import _update_dataloader
from omegaconf import OmegaConf
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from fastankh.errors import DataError
from fastankh.tokenization import load_tokenizer
from tasks.data.datamodule import TaskDataModule
from tasks.data.encoding import encode
from tasks.data.loaders import BucketBatchSampler, SeededSampler
from tasks.data.sources import PROJECT_ROOT, read_source
from tasks.task.spec import IGNORE_INDEX, KINDS, TaskSpec

SS_CSV = PROJECT_ROOT / "data" / "secondary_structure.csv"
TASK_CONFIGS = sorted(glob.glob(str(PROJECT_ROOT / "conf" / "task" / "*.yaml")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Tokenized splits are cached under HF_DATASETS_CACHE: keep each test's cache to itself.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer("ankh_tiny")  # v1 vocabulary: no prefix


@pytest.fixture(scope="module")
def ankh3_tok():
    return load_tokenizer("ankh3_large")  # [NLU] prefix


def write_csv(path, rows: list[dict], sep: str = ",") -> str:
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return str(path)


def make_task(kind: str = "residue_classification", labels=("H", "E", "C"), **data) -> TaskSpec:
    return TaskSpec(name="t", kind=kind, labels=list(labels) if labels else None, data=data)


def first_error(task: TaskSpec, tok) -> str:
    with pytest.raises(DataError) as err:
        TaskDataModule(task, tok).setup("fit")
    return str(err.value)


# ------------------------------------------------------------------------------------------ validation
GOOD = {"id": "a", "sequence": "MKTA", "label": "HHEC"}
BAD_ROWS = {  # case: (bad second row, expected text)
    "empty sequence": (("", "H"), "row 2 (id b): empty sequence"),
    "unknown letters": (("MKJ1", "HHEC"), "row 2 (id b): unknown residue letter(s) '1', 'J'"),
    "too long": (
        ("MKTAYIA", "HHHHHHH"),
        "row 2 (id b): sequence length 7 > task.data.max_length 6 "
        "(set task.data.truncate=true or raise task.data.max_length)",
    ),
    "label length": (("MKTA", "HHE"), "row 2 (id b): label length 3 != sequence length 4"),
    "label alphabet": (("MKTA", "HHEQ"), "row 2 (id b): label(s) 'Q' in column 'label' not in task labels"),
    "missing label": (("MKTA", None), "row 2 (id b): missing label"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_residue_row_gives_one_line_naming_file_row_and_problem(case, tmp_path, tiny_tok):
    (sequence, label), expected = BAD_ROWS[case]
    bad = {"id": "b", "sequence": sequence, "label": label}
    path = write_csv(tmp_path / "ss.csv", [GOOD, bad, GOOD | {"id": "c"}])
    message = first_error(make_task(train=path, val=path, max_length=6), tiny_tok)
    assert message.count("\n") == 0
    assert message == message.strip() and message.startswith(f"{path}: ") and expected in message


def test_missing_column_names_file_and_column(tmp_path, tiny_tok):
    path = write_csv(tmp_path / "ss.csv", [{"id": "a", "seq": "MKTA", "label": "HHEC"}] * 3)
    message = first_error(make_task(train=path, val=path), tiny_tok)
    assert "\n" not in message
    assert message.startswith(f"{path}: missing column(s) 'sequence' (task.data.sequence_column)")


@pytest.mark.parametrize(
    "kind, labels, cell, expected",
    [
        ("residue_regression", None, "0.1 nan 0.3 0.2", "row 2 (id b): NaN at residue 2 of column 'label'"),
        ("residue_regression", None, "0.1 0.2 0.3", "row 2 (id b): label length 3 != sequence length 4"),
        ("sequence_regression", None, "nan", "row 2 (id b): missing label (NaN)"),
        ("sequence_regression", None, "high", "row 2 (id b): label 'high' in column 'label' is not a number"),
        (
            "sequence_classification",
            ["0", "1"],
            "2",
            "row 2 (id b): label(s) '2' in column 'label' not in task labels [0, 1",
        ),
        ("sequence_multilabel", ["x", "y"], "x,z", "row 2 (id b): label(s) 'z' in column 'label' not in task labels"),
    ],
)
def test_bad_labels_of_every_kind(kind, labels, cell, expected, tmp_path, tiny_tok):
    good = "0.1 0.2 0.3 0.4" if kind == "residue_regression" else (labels[0] if labels else "1.5")
    rows = [{"id": "a", "sequence": "MKTA", "label": good}, {"id": "b", "sequence": "MKTA", "label": cell}]
    path = write_csv(tmp_path / "d.csv", rows + [rows[0]])
    message = first_error(make_task(kind, labels, train=path, val=path), tiny_tok)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message


def test_mask_length_mismatch_and_many_problems_one_line_each(tmp_path, tiny_tok):
    rows = [
        {"id": "a", "sequence": "MKTA", "label": "HHEC", "dis": "1.0 1.0 0.0 1.0"},
        {"id": "b", "sequence": "MKTA", "label": "HHEC", "dis": "1.0 1.0"},
        {"id": "c", "sequence": "MK*A", "label": "HHEC", "dis": "1.0 1.0 0.0 1.0"},
    ]
    path = write_csv(tmp_path / "ss.csv", rows)
    message = first_error(make_task(train=path, val=path, mask_column="dis", mask_value="0.0"), tiny_tok)
    assert message.splitlines() == [
        f"{path}: row 2 (id b): mask length 2 != sequence length 4 (column 'dis')",
        f"{path}: row 3 (id c): unknown residue letter(s) '*' (allowed: the 20 standard residues and X B O U Z)",
    ]


def test_fasta_rows_are_records_with_header_labels(tmp_path, tiny_tok):
    path = tmp_path / "seqs.fasta"
    path.write_text(">P1 label=1\nMKTAY\nIAK\n>P2 label=0\nMKLLV\n>P3 label=1\nMKJ\n")
    task = make_task("sequence_classification", ["0", "1"], train=str(path), val=str(path))
    assert first_error(task, tiny_tok) == (
        f"{path}: row 3 (id P3): unknown residue letter(s) 'J' (allowed: the 20 standard residues and X B O U Z)"
    )
    path.write_text(">P1 label=1\nMKTAY\nIAK\n>P2 label=0\nMKLLV\n")
    dm = TaskDataModule(task, tiny_tok)
    dm.setup()
    train = dm.splits["train"]
    assert train["id"][:] == ["P1", "P2"] and train["labels"][:] == [1, 0]
    assert train["input_ids"][0] == tiny_tok.convert_tokens_to_ids(list("MKTAYIAK")) + [tiny_tok.eos_token_id]


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_tsv_and_parquet_read_like_csv(fmt, tmp_path, tiny_tok):
    rows = [{"id": f"s{i}", "sequence": "MKTAYIAK"[: 3 + i], "label": "HEC"[i % 3] * (3 + i)} for i in range(4)]
    csv = write_csv(tmp_path / "a.csv", rows)
    other = str(tmp_path / f"a.{fmt}")
    if fmt == "tsv":
        write_csv(other, rows, sep="\t")
    else:
        pd.DataFrame(rows).to_parquet(other)
    task = make_task()
    assert encode(read_source(other, task.data), task) == encode(read_source(csv, task.data), task)


# ------------------------------------------------------------------------------------------ splits
def ss3_local() -> TaskSpec:
    return TaskSpec.from_config(OmegaConf.load(PROJECT_ROOT / "conf" / "task" / "ss3_local.yaml"))


def test_cluster_split_keeps_groups_whole_and_is_deterministic(tiny_tok):
    cluster = dict(pd.read_csv(SS_CSV, dtype=str)[["id", "cluster40"]].values)
    dm = TaskDataModule(ss3_local(), tiny_tok, seed=0)
    dm.setup()
    ids = {name: dm.splits[name]["id"][:] for name in ("train", "val", "test")}
    assert sorted(sum(ids.values(), [])) == sorted(cluster)  # every chain exactly once
    groups = {name: {cluster[i] for i in split} for name, split in ids.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert abs(len(ids["test"]) / len(cluster) - 0.2) < 0.05 and abs(len(ids["val"]) / len(cluster) - 0.1) < 0.05
    assert dm.test_split_names == ["test"]

    again = TaskDataModule(ss3_local(), tiny_tok, seed=0)
    again.setup()
    assert {name: again.splits[name]["id"][:] for name in ids} == ids
    other = TaskDataModule(ss3_local(), tiny_tok, seed=1)
    other.setup()
    assert set(other.splits["val"]["id"][:]) != set(ids["val"])


def test_split_column_partition_and_bad_split_value(tmp_path, tiny_tok):
    rows = [{"id": f"s{i}", "sequence": "MKTA", "label": "1", "split": "train"} for i in range(12)]
    for row in rows[::4]:
        row["split"] = "valid"
    path = write_csv(tmp_path / "loc.csv", rows)
    task = make_task("sequence_classification", ["0", "1"], train=path, split_filter_column="split")
    dm = TaskDataModule(task, tiny_tok)
    dm.setup()
    assert sorted(dm.splits["val"]["id"][:]) == sorted(r["id"] for r in rows if r["split"] == "valid")
    assert dm.test_split_names == []
    rows[5]["split"] = "holdout"
    write_csv(tmp_path / "loc.csv", rows)
    assert first_error(task, tiny_tok) == (
        f"{path}: row 6: split value 'holdout' in column 'split' is not one of train, valid, val, validation, dev, test"
    )


def test_hub_source_is_read_only_when_no_local_file_exists(tmp_path, tiny_tok, monkeypatch):
    calls = []

    def fake_load_dataset(hub_id, data_files=None, split=None):
        calls.append((hub_id, data_files, split))
        rows = [{"input": "MKTAY", "dssp3": "CHHEC", "disorder": "0.0 1.0 1.0 1.0 0.0"}] * 4
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "task" / "secondary_structure.yaml")
    mine = write_csv(tmp_path / "casp15.csv", [{"input": "MKT", "dssp3": "HHH", "disorder": "1.0 1.0 1.0"}] * 2)
    cfg.data.test = ["CASP12.csv", mine]
    dm = TaskDataModule(TaskSpec.from_config(cfg), tiny_tok)
    hub = "proteinea/secondary_structure_prediction"
    expected = [(hub, {"data": "training_hhblits.csv"}, "data"), (hub, {"data": "CASP12.csv"}, "data")]
    dm.prepare_data()
    assert calls == expected
    calls.clear()
    dm.setup()
    assert calls == expected
    assert dm.test_split_names == ["CASP12", "casp15"]
    assert dm.splits["CASP12"]["labels"][0] == [IGNORE_INDEX, 0, 0, 1, IGNORE_INDEX]  # disorder "0.0" masked
    assert dm.splits["casp15"]["id"][:] == ["casp15:1", "casp15:2"]


# ------------------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("tok_name", ["ankh_tiny", "ankh3_large"])
def test_residue_labels_align_with_tokens(tok_name, tmp_path):
    tok = load_tokenizer(tok_name)
    rows = [
        {"id": "a", "sequence": "MKTAYIAKQR", "label": "CHHHHEEECC", "dis": "0.0 1.0 1.0 1.0 1.0 1.0 1.0 1.0 1.0 0.0"},
        {"id": "b", "sequence": "GSWL", "label": "CEEC", "dis": "1.0 1.0 0.0 1.0"},
        {"id": "c", "sequence": "mkt avl", "label": "HHHHHH", "dis": "1.0 1.0 1.0 1.0 1.0 1.0"},
    ]
    path = write_csv(tmp_path / "ss.csv", rows)
    task = make_task(train=path, val=path, mask_column="dis", mask_value="0.0")
    dm = TaskDataModule(task, tok, batch_size=3)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    prefix = 1 if tok_name == "ankh3_large" else 0
    by_id = {r["id"]: r for r in rows}
    for b, rid in enumerate(batch["ids"]):
        seq = "".join(by_id[rid]["sequence"].split()).upper()
        labels, dis = by_id[rid]["label"], by_id[rid]["dis"].split()
        n = len(seq)
        expected_mask = torch.zeros(batch["input_ids"].shape[1], dtype=torch.bool)
        expected_mask[prefix : prefix + n] = True
        assert torch.equal(batch["residue_mask"][b], expected_mask)
        if prefix:
            assert batch["input_ids"][b, 0] == tok.convert_tokens_to_ids("[NLU]")
        assert batch["input_ids"][b, prefix + n] == tok.eos_token_id
        for i in range(n):
            assert batch["input_ids"][b, prefix + i] == tok.convert_tokens_to_ids(seq[i])
            want = IGNORE_INDEX if dis[i] == "0.0" else "HEC".index(labels[i])
            assert batch["labels"][b, prefix + i] == want
        assert (batch["labels"][b, ~expected_mask] == IGNORE_INDEX).all()
        assert torch.equal(batch["label_mask"][b], batch["labels"][b] != IGNORE_INDEX)
        assert batch["attention_mask"][b].sum() == prefix + n + 1


def test_truncate_cuts_sequence_and_labels(tmp_path, tiny_tok):
    path = write_csv(tmp_path / "r.csv", [{"id": "a", "sequence": "MKTAYIAK", "label": "0 1 2 3 4 5 6 7"}] * 2)
    task = make_task("residue_regression", None, train=path, val=path, max_length=5, truncate=True)
    dm = TaskDataModule(task, tiny_tok)
    dm.setup()
    assert dm.splits["val"]["labels"][0] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(dm.splits["val"]["input_ids"][0]) == 5 + 1
    assert dm.train_label_mean == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kind, labels, cell, expected",
    [
        ("residue_regression", None, "0.5 nan 0.25", [0.5, 0.0, 0.25]),
        ("residue_classification", ["H", "E", "C"], "H-C", [0, IGNORE_INDEX, 2]),
    ],
)
def test_masked_residues_are_ignored_and_not_validated(kind, labels, cell, expected, tmp_path, tiny_tok):
    path = write_csv(tmp_path / "m.csv", [{"id": "a", "sequence": "MKT", "label": cell, "m": "101"}] * 2)
    dm = TaskDataModule(make_task(kind, labels, train=path, val=path, mask_column="m", mask_value="0"), tiny_tok)
    dm.setup()
    assert dm.splits["val"]["labels"][0] == expected
    assert dm.splits["val"]["label_mask"][0] == [True, False, True]


@pytest.mark.parametrize(
    "kind, labels, cells, expected",
    [
        ("sequence_classification", ["neg", "pos"], ["pos", "neg"], torch.tensor([1, 0])),
        ("sequence_regression", None, ["1.5", "-0.5"], torch.tensor([1.5, -0.5])),
        ("sequence_multilabel", ["x", "y", "z"], ["x,z", "y"], torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
    ],
)
def test_sequence_level_labels_in_batches(kind, labels, cells, expected, tmp_path, tiny_tok):
    rows = [{"id": "a", "sequence": "MKTAYIAK", "label": cells[0]}, {"id": "b", "sequence": "MKT", "label": cells[1]}]
    path = write_csv(tmp_path / "s.csv", rows)
    dm = TaskDataModule(make_task(kind, labels, train=path, val=path), tiny_tok, batch_size=2)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["a", "b"]  # evaluation batches go longest first
    assert batch["labels"].dtype == expected.dtype and torch.equal(batch["labels"], expected)
    assert "label_mask" not in batch


# ------------------------------------------------------------------------------------------ batching
LENGTHS = np.random.default_rng(0).integers(10, 300, size=400).tolist()


def test_token_budget_respected_and_every_sample_once_per_epoch():
    seeded = SeededSampler(len(LENGTHS), shuffle=True, seed=3)
    sampler = BucketBatchSampler(seeded, LENGTHS, max_tokens=2000, window=5)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert all(len(b) * max(LENGTHS[i] for i in b) <= 2000 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert len(sampler) == len(batches)
    fixed = list(BucketBatchSampler(SeededSampler(len(LENGTHS), shuffle=True), LENGTHS, batch_size=16))
    assert [len(b) for b in fixed].count(16) >= len(LENGTHS) // 16 - 5 and max(len(b) for b in fixed) == 16
    assert sorted(i for b in fixed for i in b) == list(range(len(LENGTHS)))
    with pytest.raises(ValueError, match="max_tokens=100 is below the longest sequence"):
        BucketBatchSampler(SeededSampler(len(LENGTHS), shuffle=True), LENGTHS, max_tokens=100)


def test_buckets_reduce_padding():
    def padded(batches):
        return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)

    bucketed = list(BucketBatchSampler(SeededSampler(len(LENGTHS), shuffle=True), LENGTHS, batch_size=8, window=10))
    order = np.random.default_rng(0).permutation(len(LENGTHS)).tolist()
    plain = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert padded(bucketed) < 0.8 * padded(plain)


def test_same_seed_and_epoch_give_same_order_through_lightning_set_epoch(tiny_tok):
    def run(seed: int, epoch: int) -> list[list[str]]:
        dm = TaskDataModule(ss3_local(), tiny_tok, max_tokens=4096, seed=seed)
        dm.setup()
        loader = dm.train_dataloader()
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls before each epoch
        return [b["ids"] for b in loader]

    first = run(0, 3)
    assert first == run(0, 3)
    assert first != run(0, 4) and first != run(1, 3)
    assert all(len(batch) >= 1 for batch in first)


def test_loader_batches_respect_token_budget(tiny_tok):
    dm = TaskDataModule(ss3_local(), tiny_tok, max_tokens=3000)
    dm.setup()
    seen = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].numel() <= 3000
        seen += batch["ids"]
    assert sorted(seen) == sorted(dm.splits["train"]["id"][:])


def test_ddp_sampler_injection_gives_every_rank_the_same_number_of_batches(tiny_tok):
    dm = TaskDataModule(ss3_local(), tiny_tok, max_tokens=3000)
    dm.setup()
    # Lightning builds loaders inside this context (to record init args), then swaps in a DistributedSampler.
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    per_rank = []
    for rank in range(2):
        dist = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        dist.set_epoch(1)
        ranked = _update_dataloader(loader, dist)
        assert isinstance(ranked.batch_sampler, BucketBatchSampler) and ranked.batch_sampler.sampler is dist
        per_rank.append([b["ids"] for b in ranked])
    assert len(per_rank[0]) == len(per_rank[1])
    seen = [i for rank in per_rank for batch in rank for i in batch]
    assert set(seen) == set(dm.splits["train"]["id"][:])  # all of train; at most a batch repeated to even out


# ------------------------------------------------------------------------------------------ masked LM
@pytest.fixture(scope="module")
def mlm_data(ankh3_tok, tmp_path_factory):
    task = TaskSpec.from_config(OmegaConf.load(PROJECT_ROOT / "conf" / "task" / "masked_lm.yaml"))
    cache = tmp_path_factory.mktemp("mlm_cache")
    datasets.config.HF_DATASETS_CACHE, old = str(cache), datasets.config.HF_DATASETS_CACHE
    dm = TaskDataModule(task, ankh3_tok, batch_size=16, seed=5)
    dm.setup()
    datasets.config.HF_DATASETS_CACHE = old
    sequences = dict(pd.read_csv(SS_CSV, dtype=str)[["id", "sequence"]].values)
    return dm, sequences


def test_mlm_masking_proportions_and_specials_untouched(mlm_data, ankh3_tok):
    dm, sequences = mlm_data
    mask_id, nlu_id = ankh3_tok.convert_tokens_to_ids(["<extra_id_0>", "[NLU]"])
    residue_ids = set(ankh3_tok.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY")))
    chosen = residues = masked = replaced = kept = 0
    for batch in dm.train_dataloader():
        original = ankh3_tok([sequences[i] for i in batch["ids"]], padding=True, return_tensors="pt")["input_ids"]
        ids, labels, residue = batch["input_ids"], batch["labels"], batch["residue_mask"]
        pick = labels != IGNORE_INDEX
        specials = torch.isin(original, torch.tensor([nlu_id, ankh3_tok.eos_token_id, ankh3_tok.pad_token_id]))
        assert specials[:, 0].all() and not (pick & specials).any()  # [NLU], </s> and padding never chosen
        assert torch.equal(ids[~pick], original[~pick])  # nothing else changes
        assert torch.equal(labels[pick], original[pick])
        assert torch.equal(batch["label_mask"], pick)
        assert pick.sum(1).min() >= 1
        chosen, residues = chosen + pick.sum().item(), residues + residue.sum().item()
        masked += (ids[pick] == mask_id).sum().item()
        same = ids[pick] == original[pick]
        kept += same.sum().item()
        other = ids[pick][(ids[pick] != mask_id) & ~same]
        assert all(t in residue_ids for t in other.tolist())
        replaced += len(other)
    assert 0.14 < chosen / residues < 0.16
    assert 0.76 < masked / chosen < 0.84
    # a random residue can equal the original one, so "kept" gains ~1/20 of the random share
    assert 0.07 < replaced / chosen < 0.13 and 0.07 < kept / chosen < 0.14


def test_mlm_masks_are_deterministic_per_epoch_and_fixed_for_validation(mlm_data):
    dm, _ = mlm_data

    def masks(loader_fn, epoch, workers=0, batch_size=16):
        dm.num_workers, dm.batch_size = workers, batch_size
        loader = loader_fn()
        _set_sampler_epoch(loader, epoch)
        # unpadded rows: padding width depends on batch composition, masks must not
        out = {}
        for b in loader:
            for i, ids, n in zip(b["ids"], b["input_ids"].tolist(), b["attention_mask"].sum(1)):
                out[i] = ids[:n]
        dm.num_workers, dm.batch_size = 0, 16
        return out

    epoch2 = masks(dm.train_dataloader, 2)
    assert epoch2 == masks(dm.train_dataloader, 2)
    assert epoch2 == masks(dm.train_dataloader, 2, workers=1)  # workers see the epoch too
    assert epoch2 == masks(dm.train_dataloader, 2, batch_size=5)  # other batch mates, other padding
    assert epoch2 != masks(dm.train_dataloader, 3)
    val = masks(dm.val_dataloader, 0)
    assert val == masks(dm.val_dataloader, 7) == masks(dm.val_dataloader, 0, batch_size=5)


# ------------------------------------------------------------------------------------------ module API
def test_setup_twice_is_cheap_and_tokenization_is_cached(tiny_tok):
    dm = TaskDataModule(ss3_local(), tiny_tok)
    dm.setup("fit")
    train = dm.splits["train"]
    dm.setup("test")
    assert dm.splits["train"] is train
    cache_file = train.cache_files[0]["filename"]
    assert os.path.isfile(cache_file) and cache_file.startswith(datasets.config.HF_DATASETS_CACHE)
    again = TaskDataModule(ss3_local(), tiny_tok)
    again.setup()
    assert again.splits["train"].cache_files[0]["filename"] == cache_file
    assert again.splits["train"]["input_ids"][:] == train["input_ids"][:]
    assert dm.label_names == ["H", "E", "C"] and dm.train_label_mean is None
    assert len(dm.test_dataloader()) == 1


@pytest.mark.parametrize("path", TASK_CONFIGS, ids=os.path.basename)
def test_every_task_config_builds_a_taskspec(path):
    task = TaskSpec.from_config(OmegaConf.load(path))
    assert task.name == os.path.basename(path)[: -len(".yaml")] and task.kind in KINDS
    assert task.monitor.startswith("val/") and task.monitor_mode in ("min", "max")
    assert task.monitor[len("val/") :] in task.metrics + ["loss"]
    if task.data.hub_id is None:
        # Shipped data must pass validation under its config (tokenizing is covered elsewhere).
        encoded = encode(read_source(task.data.train, task.data), task)
        assert len(encoded["id"]) == len(read_source(task.data.train, task.data).frame)
