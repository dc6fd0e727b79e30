"""The embedding engine: one run from a source of records to a store, used by `embed_dataset` (one process) and
by embed.py (every process of Lightning's predict loop).

    input (streamed) -> checked records (rules, duplicates, resume) -> windows -> length-sorted batches
    -> encoder -> per-residue or pooled outputs, window order restored -> store (shards / HDF5 / dict)

Memory follows the window and one shard, not the input: the only per-record state is 16 bytes of digests
(fastankh.embeddings.seen) for the duplicate policy and resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..errors import UserError
from ..precision import resolve_precision
from ..records import Record
from ..tokenization import load_tokenizer
from .compute import OutputSpec, WindowEmbedder, check_layers, weights_in
from .fingerprint import model_digest, package_versions, tokenizer_digest
from .heap import release_free_memory
from .inputs import Source, checked_records, count, is_reiterable, raw_records, windows
from .stores import DEFAULT_SHARD_BYTES, open_store

DEFAULT_WINDOW = 1024


def run_fingerprint(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: OutputSpec,
    compute: torch.dtype,
    max_length: int,
    truncate: bool,
) -> dict[str, Any]:
    """Everything that decides an output's values (see fastankh.embeddings.fingerprint)."""
    config = model.config
    return {
        "model": model_digest(model),
        "tokenizer": tokenizer_digest(tokenizer),
        "precision": str(compute).removeprefix("torch."),
        **spec.describe(config.num_layers),
        "max_length": int(max_length),
        "truncate": bool(truncate),
        "attn_backend": str(getattr(config, "attn_backend", getattr(config, "_attn_implementation", ""))),
        "versions": package_versions(),
    }


class EmbeddingRun:
    """One embedding run of `model` over `source` into `output` (None: a dict in memory).

    With several processes (`rank` of `world_size`), every process reads the same input and takes windows
    rank, rank + world_size, ...; each writes its own shards, and rank 0 calls `finish` once all have flushed.
    `length_option` / `length_hint` word the too-long error in the caller's option names; `fingerprint` (see
    run_fingerprint) is computed from the model unless given (a caller that casts or moves the model first)."""

    def __init__(
        self,
        model: torch.nn.Module,
        source: Source,
        output: str | os.PathLike | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        spec: OutputSpec | None = None,
        compute: torch.dtype = torch.float32,
        max_length: int = 1024,
        truncate: bool = False,
        batch_size: int = 16,
        max_tokens: int | None = None,
        window: int = DEFAULT_WINDOW,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        id_column: str = "id",
        sequence_column: str = "sequence",
        rank: int = 0,
        world_size: int = 1,
        run_token: str | None = None,
        length_option: str = "max_len",
        length_hint: str = "raise max_len or pass truncate=True",
        fingerprint: dict[str, Any] | None = None,
    ):
        if batch_size < 1 or window < 1 or shard_bytes < 1:
            raise UserError("batch_size, window and shard_size must be >= 1")
        self.spec = spec or OutputSpec()
        check_layers(self.spec, model.config.num_layers)
        self.model, self.source = model, source
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model.config)
        self.output = None if output is None else os.fspath(output)
        self.rank, self.world_size, self.window = rank, world_size, window
        self.read = lambda: raw_records(source, id_column, sequence_column)
        self.rules = {"max_length": max_length, "truncate": truncate, "length_option": length_option}
        self.rules["length_hint"] = length_hint
        if self.output is not None and fingerprint is None:
            fingerprint = run_fingerprint(model, self.tokenizer, self.spec, compute, max_length, truncate)
        self.store = open_store(self.output, fingerprint, shard_bytes, rank, world_size, run_token)
        self.done = self.store.done()
        self.embedder = WindowEmbedder(model, self.tokenizer, self.spec, batch_size, max_tokens)

    def records(self) -> Iterator[Record]:
        """The records still to embed, in input order (all of them, whatever the rank)."""
        return checked_records(self.read(), done=self.done, output=self.output or "the output", **self.rules)

    def check(self) -> int | None:
        """Read the whole input once and raise on its first bad record, before any compute; the number of records
        to embed (None for a one-shot iterator, which is checked as it is embedded)."""
        return count(self.records()) if is_reiterable(self.source) else None

    def my_windows(self) -> Iterator[list[Record]]:
        """This process's windows of the records to embed."""
        for i, window in enumerate(windows(self.records(), self.window)):
            if i % self.world_size == self.rank:
                yield window

    def embed(self, window: Sequence[Record], weights: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        self.embedder.weights = weights
        return self.embedder(window)

    def write(self, window: Sequence[Record], outputs: Sequence[torch.Tensor]) -> None:
        self.store.add(window, outputs)
        release_free_memory()  # see fastankh.embeddings.heap: resident memory follows one window, not the run

    def flush(self) -> None:
        """Keep what is finished (an interrupted process calls this before it stops)."""
        self.store.flush()

    def finish(self) -> Any:
        """Rank 0, after every process flushed: the index (folders), the rename (HDF5) or the dict (memory)."""
        return self.store.finish()

    def close(self) -> None:
        getattr(self.store, "close", lambda: None)()


def embed_dataset(
    model: torch.nn.Module,
    sequences: Source,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 16,
    max_len: int = 1024,
    full_embeddings: bool = False,
    pooling: str = "mean",
    save_path: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    max_tokens: int | None = None,
    progress: bool = True,
    truncate: bool = False,
    precision: str = "auto",
    layers: int | Sequence[int] = -1,
    window: int = DEFAULT_WINDOW,
    shard_size: int = DEFAULT_SHARD_BYTES,
    id_column: str = "id",
    sequence_column: str = "sequence",
):
    """Embed protein sequences with an ANKH encoder (FastAnkhModel, or any encoder whose forward takes
    input_ids/attention_mask and returns `last_hidden_state` / `hidden_states`, e.g. transformers'
    T5EncoderModel).

    sequences: a list of sequences (results keyed by the sequence as given), a dict id -> sequence, an iterable
    of (id, sequence) pairs, or a file path (FASTA, or .csv/.tsv/.parquet with `id_column` and
    `sequence_column`, optionally .gz) streamed in chunks. Sequences are cleaned by
    fastankh.records.clean_sequence; an invalid one is an error naming it, raised before any compute
    (`<file>: row <n> (id <id>): <problem>`). Duplicates: see fastankh.embeddings.inputs.

    Output per record: `layers` (default -1, the last; negative indices count from the end; several are
    concatenated on the feature axis) pooled over residues by `pooling` ("mean", "max", "min", "std", or
    several joined by "+", concatenated), or with `full_embeddings` one row per residue; residues only (no
    `[NLU]`, `</s>`, padding). Layout: fastankh.embeddings.compute. Stored in `dtype`.

    Without `save_path`: a dict {key: tensor} in input order. With `save_path`, results are written as the run
    goes and a lazy read-only mapping (fastankh.open_embeddings) is returned: a folder of safetensors shards
    (default), Parquet shards (`.parquet`) or an HDF5 file (`.h5`); a rerun resumes, skipping the records
    already there, and refuses in one line if the model, tokenizer, precision, layers, pooling, length rule,
    dtype or package versions differ.

    max_len / truncate: residues per sequence; longer is an error unless `truncate` cuts to max_len.
    batch_size / max_tokens: rows and padded tokens per batch; `window` records are length-sorted together
    (memory grows with it); `shard_size` bytes per shard file.
    precision: the dtype the model computes in ("auto" | "32" | "bf16", fastankh.precision); the model is
    not changed: a copy of its weights in that dtype is used for the call.
    """
    spec = OutputSpec.make(layers, pooling, full_embeddings, dtype)
    device = next(model.parameters()).device
    compute = resolve_precision(precision, device)
    run = EmbeddingRun(
        model, sequences, save_path, tokenizer, spec, compute, max_len, truncate, batch_size, max_tokens,
        window, shard_size, id_column, sequence_column,
    )  # fmt: skip
    total = run.check()
    weights = weights_in(model, compute)
    was_training = model.training
    model.eval()
    bar = tqdm(total=total, unit="seq", desc="embedding", disable=not progress)
    try:
        for window_records in run.my_windows():
            run.write(window_records, run.embed(window_records, weights))
            bar.update(len(window_records))
        result = run.finish()
    except BaseException:
        run.flush()  # finished windows are kept for the rerun
        raise
    finally:
        bar.close()
        run.close()
        model.train(was_training)
    if save_path is None:
        return result
    from .reader import open_embeddings

    return open_embeddings(save_path)


__all__ = ["DEFAULT_WINDOW", "EmbeddingRun", "embed_dataset", "run_fingerprint"]
