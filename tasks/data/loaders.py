"""Batching: length-bucketed batch sampler (fixed size or token budget), padding collate, MLM corruption,
training crops (`task.data.crop_length`: a random window of each longer chain, drawn per (seed, epoch, sample)).

Order is a pure function of (seed, epoch): Lightning calls `set_epoch` on `batch_sampler.sampler` before
every epoch, so a resumed run sees the same batches as an uninterrupted one. Under DDP Lightning swaps that
sampler for a `DistributedSampler` (it passes it through our `sampler` argument and keeps the others);
batches are then formed over the whole dataset exactly as on one process and dealt out round-robin; in
training every rank gets the same number of batches even with a token budget (the last ones are repeated),
in evaluation each batch goes to exactly one rank, so no chain is counted twice.
Batches are planned lazily, on the first `next()`: Lightning may create the loader's iterator before it
calls `set_epoch` (it does when resuming). With `tag_epoch`, each index is yielded as (index, epoch) and
`EpochTaggedDataset` hands the epoch to the collator inside the sample, so masked-LM masks and crop windows
follow the epoch even in DataLoader workers, which are started before the epoch is known.
Mid-epoch resume: the training loader is a `ResumableDataLoader`, whose position in the epoch (epoch, batches
handed to the training loop) Lightning saves in every checkpoint and hands back on resume; the batch sampler
then skips the batches already trained on, so the rest of the epoch is replayed exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from fastankh.batching import length_batches
from tasks.task.spec import IGNORE_INDEX, TaskSpec


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class SeededSampler(Sampler[int]):
    """Indices 0..n-1, shuffled per (seed, epoch) when `shuffle`; `set_epoch` like DistributedSampler."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        yield from (permutation(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)).tolist()

    def __len__(self) -> int:
        return self.n


class BucketBatchSampler(BatchSampler):
    """Batches of similar length: sort by length within windows of `window` batches, then shuffle batches.

    With `max_tokens`, a batch holds as many sequences as fit B * T <= max_tokens (T = its longest
    token length, which collate pads to); otherwise `batch_size` sequences. Unshuffled samplers
    (evaluation) sort the whole set. `lengths[i]` = token count of sample i.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        lengths: Sequence[int],
        batch_size: int = 8,
        drop_last: bool = False,
        max_tokens: int | None = None,
        window: int = 50,
        tag_epoch: bool = False,
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens, self.window, self.tag_epoch = max_tokens, window, tag_epoch
        if max_tokens is not None and len(self.lengths) and self.lengths.max() > max_tokens:
            raise ValueError(
                f"data.max_tokens={max_tokens} is below the longest sequence ({self.lengths.max()} tokens): "
                "raise data.max_tokens or lower task.data.max_length"
            )
        self._cache: tuple[tuple, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) of a mid-epoch resume
        self.skipped = 0  # batches skipped at the start of the current iteration

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return getattr(self.sampler, "epoch", 0)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first `batches` batches the next time epoch `epoch` is iterated (once; another epoch
        iterated first cancels it)."""
        self._resume = (epoch, batches)

    def _plan(self) -> tuple[np.ndarray, bool, int, int, int, int]:
        """(global order, shuffle, seed, epoch, rank, world size) for the current epoch."""
        s = self.sampler
        if isinstance(s, DistributedSampler):
            n = len(self.lengths)
            order = permutation(n, s.seed, s.epoch) if s.shuffle else np.arange(n)
            return order, s.shuffle, s.seed, s.epoch, s.rank, s.num_replicas
        shuffle, seed, epoch = getattr(s, "shuffle", False), getattr(s, "seed", 0), getattr(s, "epoch", 0)
        return np.fromiter(iter(s), dtype=np.int64), shuffle, seed, epoch, 0, 1

    def _cut(self, indices: np.ndarray) -> list[list[int]]:
        """`indices` longest first, in batches under the size or token limit (fastankh.batching.length_batches)."""
        if self.max_tokens is not None:
            return length_batches(self.lengths, max_tokens=self.max_tokens, indices=indices)
        batches = length_batches(self.lengths, batch_size=self.batch_size, indices=indices)
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached until the epoch or sampler changes)."""
        order, shuffle, seed, epoch, rank, world = self._plan()
        key = (shuffle, seed, epoch, rank, world, id(self.sampler))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if not shuffle:
            batches = self._cut(order)
        else:
            per_batch = self.batch_size
            if self.max_tokens is not None:
                per_batch = max(1, self.max_tokens // max(1, int(self.lengths.mean())))
            size = self.window * per_batch
            windows = [order[start : start + size] for start in range(0, len(order), size)]
            batches = [b for window in windows for b in self._cut(window)]
            # Windows yield long-to-short runs; shuffling the batches removes that trend within an epoch.
            batches = [batches[j] for j in np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]
        if world > 1:
            if shuffle:  # training: every rank takes the same number of optimizer steps
                batches = batches + batches[: (-len(batches)) % world]
            # Evaluation is not padded: a repeated batch would count its chains twice in the metrics.
            batches = batches[rank::world]
        self._cache = (key, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        batches = self.batches()  # a generator body: runs on the first next(), after set_epoch
        _, _, epoch, *_ = self._cache[0]  # the planning key of these batches
        self.skipped = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                self.skipped = min(self._resume[1], len(batches))
            self._resume = None
        batches = batches[self.skipped :]
        if not self.tag_epoch:
            yield from batches
            return
        for batch in batches:
            yield [(i, epoch) for i in batch]

    def __len__(self) -> int:
        return len(self.batches())


class _Counting:
    """An iterator over a loader's batches that counts those handed out (on the consumer's side, so batches
    prefetched by workers are not counted)."""

    def __init__(self, loader: ResumableDataLoader, iterator: Iterator):
        self.loader, self.iterator = loader, iterator

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader.consumed += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `BucketBatchSampler` whose place in the epoch goes into checkpoints: Lightning saves
    `state_dict()` (epoch, batches handed to the training loop) with every checkpoint of a stateful training
    loader and calls `load_state_dict` when it resumes mid-epoch; the sampler then skips those batches."""

    consumed = 0

    def __iter__(self) -> Iterator:
        self.consumed = 0
        return _Counting(self, super().__iter__())

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler
        return {"epoch": int(sampler.epoch), "batches": int(sampler.skipped + self.consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # set_epoch too: Lightning creates the iterator (and workers plan batches) before it sets the epoch
        self.batch_sampler.set_epoch(state["epoch"])
        self.batch_sampler.resume_at(state["epoch"], state["batches"])


class EpochTaggedDataset(Dataset):
    """`dataset` indexed by (index, epoch) as `BucketBatchSampler(tag_epoch=True)` yields them; the
    sample carries its epoch so the collator's masked-LM draw follows it, in workers too."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        return {**self.dataset[index], "epoch": epoch}


class Collator:
    """Samples -> the batch dict of tasks/task/spec.py, padded to the longest sequence in the batch.

    Samples carry `input_ids`, `id`, `index` and, by task kind, `labels` / `label_mask` (see
    tasks/data/encoding.py). Residue i of a sample sits at token `prefix + i`.
    For masked_lm, `mask_token_id` and `residue_token_ids` set up `mask_tokens`, whose draw follows the
    samples' `epoch` (absent = 0 for evaluation, so validation masks never change).
    With `crop_length` (the training loader's collator only), each longer sample is first cut to a window
    (`crop`); pair labels become the (B, T, T) int8 contact map of tasks/task/spec.py.
    """

    def __init__(
        self,
        task: TaskSpec,
        prefix: int,
        pad_token_id: int = 0,
        mask_token_id: int | None = None,
        residue_token_ids: Sequence[int] = (),
        seed: int = 0,
        crop_length: int | None = None,
    ):
        self.task, self.prefix, self.pad = task, prefix, pad_token_id
        self.mask_token_id, self.residue_token_ids = mask_token_id, list(residue_token_ids)
        self.seed, self.crop_length = seed, crop_length

    def crop(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample cut to a window of `crop_length` residues (prefix and </s> kept; labels, label_mask and
        pairs follow, pairs shifted to the window), its start drawn from (seed, epoch, index); shorter
        samples are returned as they are."""
        ids, prefix = sample["input_ids"], self.prefix
        n = len(ids) - prefix - 1
        if self.crop_length is None or n <= self.crop_length:
            return sample
        rng = np.random.default_rng([self.seed, sample.get("epoch", 0), sample["index"], 1])
        start = int(rng.integers(0, n - self.crop_length + 1))
        stop = start + self.crop_length
        out = dict(sample, input_ids=ids[:prefix] + ids[prefix + start : prefix + stop] + ids[-1:])
        out["label_mask"] = sample["label_mask"][start:stop]
        if self.task.pair_level:
            out["labels"] = [[i - start, j - start] for i, j in sample["labels"] if start <= i and j < stop]
        else:
            out["labels"] = sample["labels"][start:stop]
        return out

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.crop_length is not None:
            samples = [self.crop(s) for s in samples]
        kind, b = self.task.kind, len(samples)
        width = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((b, width), self.pad, dtype=torch.long)
        attention_mask = torch.zeros(b, width, dtype=torch.long)
        residue_mask = torch.zeros(b, width, dtype=torch.bool)
        for r, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[r, :n] = torch.tensor(s["input_ids"])
            attention_mask[r, :n] = 1
            residue_mask[r, self.prefix : n - 1] = True  # everything between the prefix and </s>
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "residue_mask": residue_mask,
            "ids": [s["id"] for s in samples],
        }
        if kind == "masked_lm":
            draws = [(s["index"], s.get("epoch", 0)) for s in samples]
            batch["input_ids"], batch["labels"] = self.mask_tokens(input_ids, residue_mask, draws)
            batch["label_mask"] = batch["labels"] != IGNORE_INDEX
        elif self.task.residue_level:
            dtype = torch.float32 if self.task.regression else torch.long
            labels = torch.full((b, width), 0.0 if self.task.regression else IGNORE_INDEX, dtype=dtype)
            label_mask = torch.zeros(b, width, dtype=torch.bool)
            for r, s in enumerate(samples):
                n = len(s["labels"])
                labels[r, self.prefix : self.prefix + n] = torch.tensor(s["labels"], dtype=dtype)
                label_mask[r, self.prefix : self.prefix + n] = torch.tensor(s["label_mask"])
            batch["labels"], batch["label_mask"] = labels, label_mask
        elif self.task.pair_level:
            batch["labels"], batch["label_mask"] = self.contact_maps(samples, width)
        else:
            dtype = torch.long if kind == "sequence_classification" else torch.float32
            batch["labels"] = torch.tensor([s["labels"] for s in samples], dtype=dtype)
        return batch

    def contact_maps(self, samples: list[dict[str, Any]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (B, T, T) int8: 1 at both (i, j) and (j, i) of every contact, 0 at other pairs of counted
        residues, IGNORE_INDEX elsewhere; label_mask (B, T) bool), in token coordinates."""
        labels = torch.full((len(samples), width, width), IGNORE_INDEX, dtype=torch.int8)
        label_mask = torch.zeros(len(samples), width, dtype=torch.bool)
        p = self.prefix
        for r, s in enumerate(samples):
            valid = torch.tensor(s["label_mask"], dtype=torch.bool)
            n = len(valid)
            block = torch.zeros(n, n, dtype=torch.int8)
            pairs = torch.tensor(s["labels"], dtype=torch.long).reshape(-1, 2)
            block[pairs[:, 0], pairs[:, 1]] = 1
            block[pairs[:, 1], pairs[:, 0]] = 1
            labels[r, p : p + n, p : p + n] = block.masked_fill(~(valid[:, None] & valid), IGNORE_INDEX)
            label_mask[r, p : p + n] = valid
        return labels, label_mask

    def mask_tokens(
        self, input_ids: torch.Tensor, residue_mask: torch.Tensor, draws: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT corruption: (B, T) ids -> (corrupted ids, labels).

        In each sequence round(p * residues) residue tokens (at least one) are chosen; of those 80% become
        the mask token, 10% a random standard residue, 10% stay. Labels hold the original id at chosen
        tokens and IGNORE_INDEX elsewhere; [NLU], </s> and padding are never chosen. `draws` holds each
        row's (sample index, epoch): the draw depends only on them and the seed, not on batching or workers.
        """
        corrupted, labels = input_ids.clone(), torch.full_like(input_ids, IGNORE_INDEX)
        for r, (index, epoch) in enumerate(draws):
            rng = np.random.default_rng([self.seed, epoch, index])
            positions = torch.nonzero(residue_mask[r]).flatten().numpy()
            k = max(1, round(self.task.data.mlm_probability * len(positions)))
            chosen = torch.from_numpy(rng.choice(positions, size=k, replace=False))
            labels[r, chosen] = input_ids[r, chosen]
            action = rng.random(k)
            to_mask, to_random = chosen[action < 0.8], chosen[(action >= 0.8) & (action < 0.9)]
            corrupted[r, to_mask] = self.mask_token_id
            random_ids = rng.choice(self.residue_token_ids, size=len(to_random))
            corrupted[r, to_random] = torch.from_numpy(random_ids).long()
        return corrupted, labels
