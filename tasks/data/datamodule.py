"""The task LightningDataModule: read, validate, split, tokenize (once, with `datasets`), batch.

    dm = TaskDataModule(task, load_tokenizer("ankh_tiny"), batch_size=8)   # or max_tokens=8192
    dm.setup("fit")            # reads + validates every split; DataError before any training
    dm.train_dataloader(); dm.val_dataloader(); dm.test_dataloader()  # -> list, one per test split
    dm.test_split_names        # e.g. ["CASP12", "CASP14", "TS115", "CB513"]

Splits: `task.data.train` (+ `val`, `test` files or hub files/splits). Without `val`, a validation split
of `val_fraction` is carved out of train by whole `split_column` groups (rows when None), deterministic
given the seed; `test_fraction` > 0 carves a test split named "test" the same way, before val.
Tokenized splits are cached as Arrow files under `<HF_DATASETS_CACHE>/fastankh/`, keyed by the records
and the tokenizer: tokenizing is the slow step on large sets and a rerun skips it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import lightning as L
from datasets import Dataset
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader

from fastankh.errors import DataError
from fastankh.records import STANDARD_RESIDUES
from fastankh.tokenization import prefix_length
from tasks.data.encoding import encode
from tasks.data.loaders import BucketBatchSampler, Collator, EpochTaggedDataset, ResumableDataLoader, SeededSampler
from tasks.data.sources import Table, carve, local_path, partition, read_source, split_name
from tasks.task.spec import TaskSpec

__all__ = ["TaskDataModule", "DataError"]

MASK_TOKEN = "<extra_id_0>"


class TaskDataModule(L.LightningDataModule):
    """Data of one task for Lightning; see the module docstring.

    `max_tokens` (max B * T per batch) replaces the fixed `batch_size` when set. Attributes after
    `setup`: `splits` (name -> tokenized `datasets.Dataset`), `test_split_names`, `label_names`
    (class names; the label column for regression; [] for masked_lm), `train_label_mean` (regression
    kinds: mean of the counted training labels, else None).
    """

    def __init__(
        self,
        task: TaskSpec,
        tokenizer: Any,
        batch_size: int = 8,
        max_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.batch_size, self.max_tokens, self.num_workers, self.seed = batch_size, max_tokens, num_workers, seed
        self.prefix = prefix_length(tokenizer)
        self.splits: dict[str, Dataset] = {}
        self.test_split_names: list[str] = []
        if task.kind == "masked_lm":
            self.label_names: list[str] = []
        else:
            self.label_names = [str(x) for x in task.labels] if task.labels else [task.data.label_column]
        self.train_label_mean: float | None = None

    # ---------------------------------------------------------------- reading
    def _sources(self) -> list[str]:
        d = self.task.data
        return [s for s in (d.train, d.val, *d.test) if s]

    def prepare_data(self) -> None:
        """Download the hub sources (Lightning calls this on one process per node; `setup` then reads the cache)."""
        d = self.task.data
        for source in self._sources():
            if d.hub_id and local_path(source) is None:
                read_source(source, d)

    def _tables(self) -> dict[str, Table]:
        """Raw tables per split name: "train", "val", then test splits in order."""
        d = self.task.data
        if not d.train:
            raise DataError(f"task {self.task.name}: task.data.train is not set")
        train = read_source(d.train, d)
        parts = partition(train, d.split_filter_column) if d.split_filter_column else {"train": train}
        if "train" not in parts:
            raise DataError(f"{train.source}: no rows marked 'train' in column '{d.split_filter_column}'")
        tables = {"train": parts["train"]}
        tests: dict[str, Table] = {}
        if "test" in parts:
            tests["test"] = parts["test"]
        if d.test_fraction > 0:
            if "test" in tests:
                raise DataError(f"{train.source}: has 'test' rows and task.data.test_fraction > 0; use one")
            tables["train"], tests["test"] = carve(tables["train"], d.test_fraction, d.split_column, self.seed, 0)
        if d.val:
            tables["val"] = read_source(d.val, d)
        elif "val" in parts:
            tables["val"] = parts["val"]
        else:
            tables["train"], tables["val"] = carve(tables["train"], d.val_fraction, d.split_column, self.seed, 1)
        for source in d.test:
            name = split_name(source)
            if name in tests or name in ("train", "val"):
                raise DataError(f"{source}: test split name '{name}' is used twice; rename the file")
            tests[name] = read_source(source, d)
        return {**tables, **tests}

    # ---------------------------------------------------------------- tokenizing
    def _tokenize(self, name: str, table: Table) -> Dataset:
        columns = encode(table, self.task)
        columns["index"] = list(range(len(columns["id"])))
        tokenizer, prefix = self.tokenizer, self.prefix

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            ids = tokenizer(batch["sequence"], add_special_tokens=True)["input_ids"]
            return {"input_ids": ids, "length": [len(x) for x in ids]}

        fingerprint = Hasher.hash((columns, tokenizer))
        cache = None
        if datasets.is_caching_enabled():
            cache = Path(datasets.config.HF_DATASETS_CACHE) / "fastankh" / f"tokenized-{fingerprint}.arrow"
            cache.parent.mkdir(parents=True, exist_ok=True)
        dataset = Dataset.from_dict(columns).map(
            tokenize,
            batched=True,
            remove_columns=["sequence"],
            cache_file_name=cache and str(cache),
            new_fingerprint=fingerprint,
            desc=f"tokenize {name}",
        )
        expected = [prefix + len(s) + 1 for s in columns["sequence"]]
        for got, want, row, record_id in zip(dataset["length"][:], expected, columns["row"], columns["id"]):
            if got != want:
                raise DataError(
                    f"{table.source}: row {row} (id {record_id}): the tokenizer gave {got} tokens for "
                    f"{want - prefix - 1} residues; it must give one token per residue (+ {prefix} prefix and </s>)"
                )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Read, validate and tokenize every split (all stages at once; a second call does nothing)."""
        if self.splits:
            return
        splits = {name: self._tokenize(name, table) for name, table in self._tables().items()}
        self.test_split_names = [n for n in splits if n not in ("train", "val")]
        if self.task.regression:
            self.train_label_mean = _label_mean(splits["train"], self.task.residue_level)
        self.splits = splits

    # ---------------------------------------------------------------- loaders
    def _collator(self, crop_length: int | None = None) -> Collator:
        tok = self.tokenizer
        mask_id, residue_ids = None, []
        if self.task.kind == "masked_lm":
            mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
            if mask_id is None or mask_id == tok.unk_token_id:
                raise ValueError(f"masked_lm needs the tokenizer's {MASK_TOKEN} token; this tokenizer has none")
            residue_ids = tok.convert_tokens_to_ids(list(STANDARD_RESIDUES))
        return Collator(self.task, self.prefix, tok.pad_token_id, mask_id, residue_ids, self.seed, crop_length)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for dataloaders")
        dataset = self.splits[name]
        # Only training crops (task.data.crop_length): evaluation runs whole chains.
        crop = self.task.data.crop_length if shuffle else None
        collate = self._collator(crop)
        sampler = SeededSampler(len(dataset), shuffle=shuffle, seed=self.seed)
        # Training masks (masked_lm) and crop windows follow the epoch; evaluation masks stay at epoch 0 so
        # validation numbers are comparable across epochs.
        tag_epoch = shuffle and (self.task.kind == "masked_lm" or crop is not None)
        lengths = dataset["length"][:]
        if crop is not None:  # batches are planned on the cropped token counts
            lengths = [min(n, crop + self.prefix + 1) for n in lengths]
        batch_sampler = BucketBatchSampler(
            sampler, lengths, self.batch_size, max_tokens=self.max_tokens, tag_epoch=tag_epoch
        )
        if tag_epoch:
            dataset = EpochTaggedDataset(dataset)
        # training: a loader whose place in the epoch is checkpointed (mid-epoch resume replays the rest exactly)
        loader = ResumableDataLoader if shuffle else DataLoader
        return loader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, shuffle=False) for name in self.test_split_names]


def _label_mean(dataset: Dataset, residue_level: bool) -> float:
    if not residue_level:
        values = dataset["labels"][:]
        return float(sum(values) / len(values))
    total = count = 0.0
    for labels, mask in zip(dataset["labels"][:], dataset["label_mask"][:]):
        total += sum(v for v, m in zip(labels, mask) if m)
        count += sum(mask)
    return total / count if count else 0.0
