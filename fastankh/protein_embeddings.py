"""`embed_dataset`: per-protein (pooled) or per-residue embeddings of many sequences.

One vector per residue: `[NLU]`, `</s>` and padding never enter pooled or per-residue outputs;
letters the tokenizer maps to `<unk>` are residues and do. Sequences follow the rule of
fastankh.records (the one training and predict use): whitespace dropped, uppercased, one terminal '*'
dropped, letters outside the 20 standard residues and X B O U Z refused. Batches come from
fastankh.batching.length_batches (longest first) and the result keeps the input order. Results can
be stored in a safetensors file (keys = sequence ids, written atomically) that a later call resumes from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .atomic import atomic_path
from .batching import length_batches
from .precision import resolve_precision
from .records import RECORD_SUFFIXES, RecordError, clean_sequence, file_suffix, read_records
from .tokenization import load_tokenizer, prefix_length

POOLINGS = ("mean", "max")
STORE_FORMAT = "fastankh-embeddings-v1"


@dataclass
class _Record:
    key: str  # the id in the result: the sequence itself (list input) or the record id
    sequence: str  # residues, cleaned by fastankh.records.clean_sequence
    where: str  # how an error names this record


def _input_records(sequences: list[str] | dict[str, str] | str | os.PathLike) -> list[_Record]:
    """The records to embed; raises on the first invalid one (same rule and message as training/predict)."""
    if isinstance(sequences, (str, os.PathLike)):
        path = os.fspath(sequences)
        if not os.path.isfile(path):
            if file_suffix(path) in RECORD_SUFFIXES:
                raise FileNotFoundError(f"{path}: file not found")
            raise ValueError(
                f"sequences must be a list of sequences, a dict id -> sequence or a file path (FASTA or table); "
                f"{path[:50]!r} is not an existing file"
            )
        records = []
        for r in read_records(path):
            if r.problem is not None:
                raise RecordError(r.error)
            records.append(_Record(r.id, r.sequence, r.where))
        return records
    if isinstance(sequences, dict):
        items = [(str(k), v, f"record {k!r}") for k, v in sequences.items()]
    else:
        items = [(v, v, f"sequence #{i}") for i, v in enumerate(sequences)]
    records = []
    for key, seq, where in items:
        if not isinstance(seq, str):
            raise TypeError(f"{where}: expected a string sequence, got {type(seq).__name__}")
        try:
            records.append(_Record(key, clean_sequence(seq), where))
        except ValueError as err:
            raise RecordError(f"{where}: {err}") from None
    return records


def _check_records(records: list[_Record], max_len: int, truncate: bool) -> dict[str, _Record]:
    """key -> its first record, in input order; raises on the first bad record."""
    out: dict[str, _Record] = {}
    for r in records:
        if len(r.sequence) > max_len:
            if not truncate:
                raise RecordError(
                    f"{r.where}: {len(r.sequence)} residues > max_len={max_len} (raise max_len or pass truncate=True)"
                )
            r.sequence = r.sequence[:max_len]
        if out.setdefault(r.key, r).sequence != r.sequence:
            raise RecordError(f"{r.where}: id {r.key!r} appears twice with different sequences")
    return out


def store_metadata(full_embeddings: bool, pooling: str, dtype: torch.dtype, compute: torch.dtype) -> dict[str, str]:
    return {
        "format": STORE_FORMAT,
        "output": "per_residue" if full_embeddings else f"pooled_{pooling}",
        "dtype": str(dtype).removeprefix("torch."),
        "compute": str(compute).removeprefix("torch."),
    }


def load_store(path: str, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """Embeddings already saved at `path`; refuses a file written with other options."""
    with safe_open(path, framework="pt") as f:
        saved = f.metadata() or {}
        if saved.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{path}: not a FastANKH embeddings file (no {STORE_FORMAT!r} metadata); refusing to overwrite it"
            )
        for field in ("output", "dtype", "compute"):
            if field == "compute" and field not in saved:  # written before compute precision was recorded
                continue
            if saved.get(field) != metadata[field]:
                raise ValueError(
                    f"{path}: saved with {field}={saved.get(field)}, this run asks {field}={metadata[field]}; "
                    "use another save_path or the same options"
                )
        return {k: f.get_tensor(k) for k in f.keys()}


def save_store(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically (fastankh.atomic.atomic_path)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def _weights_in(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Copies in `dtype` of the model's floating weights and buffers that are in another dtype (empty: none)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
        return {}
    with torch.no_grad():
        return {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}


def tokenize_residues(tokenizer: PreTrainedTokenizerBase, sequences: list[str], where: list[str]) -> list[list[int]]:
    """Token ids of each cleaned sequence (prefix, one token per residue, </s>); `where[i]` names sequence i
    in the error raised when a sequence does not tokenize to one token per character."""
    prefix = prefix_length(tokenizer)
    encoded = tokenizer(sequences, add_special_tokens=True)["input_ids"] if sequences else []
    for seq, ids, name in zip(sequences, encoded, where):
        if len(ids) != prefix + len(seq) + 1:
            # e.g. "<extra_id_0>" inside a sequence is one token for many characters.
            raise ValueError(
                f"{name}: {len(seq)} characters tokenize to {len(ids) - prefix - 1} "
                "residue tokens; sequences must hold one character per residue"
            )
    return encoded


def embed_batch(
    model: torch.nn.Module,
    token_ids: list[list[int]],
    pad_id: int,
    prefix: int,
    full_embeddings: bool = False,
    pooling: str = "mean",
    dtype: torch.dtype = torch.float32,
    weights: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The embeddings of one batch of tokenized sequences (each: `prefix` tokens, residues, </s>), in order:
    (d_model,) pooled over residues (`pooling` "mean" | "max") or (n_residues, d_model) with
    `full_embeddings`, on CPU, in `dtype`, each in its own storage. The batch is right-padded to its longest
    member; `weights` (see _weights_in) replace the model's own for the call (compute precision).
    The one per-batch routine of embed_dataset and embed.py's Lightning loop (tasks/inference.py)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(token_ids), width, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    with torch.inference_mode():
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        output = torch.func.functional_call(model, weights, (), inputs) if weights else model(**inputs)
    hidden = output.last_hidden_state  # (B, width, d_model)
    # Outside inference mode (when the caller is), so the results are ordinary tensors a user can train on.
    results = []
    for row, ids in enumerate(token_ids):
        vectors = hidden[row, prefix : len(ids) - 1].float()  # (n_residues, d_model): no prefix, no </s>
        if not full_embeddings:
            vectors = vectors.mean(0) if pooling == "mean" else vectors.amax(0)
        # copy: a view would keep the whole batch alive and share storage between keys.
        results.append(vectors.to(device="cpu", dtype=dtype, copy=True))
    return results


def embed_dataset(
    model: PreTrainedModel,
    sequences: list[str] | dict[str, str] | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 16,
    max_len: int = 1024,
    full_embeddings: bool = False,
    pooling: str = "mean",
    save_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
    progress: bool = True,
    truncate: bool = False,
    save_every: int = 100,
    precision: str = "auto",
) -> dict[str, torch.Tensor]:
    """Embed protein sequences with an ANKH encoder (FastAnkhModel, or any encoder whose forward
    takes input_ids/attention_mask and returns `last_hidden_state`, e.g. transformers' T5EncoderModel).

    sequences: list of sequences (result keyed by the sequence as given), dict id -> sequence, or a
    file path (FASTA, or a .csv/.tsv/.parquet table with columns `id` and `sequence`, optionally .gz;
    keyed by record id). Sequences are cleaned by fastankh.records.clean_sequence; an invalid one is
    an error naming it (`<file>: row <n> (id <id>): <problem>` for a file). A repeated key or a
    repeated sequence is computed once.
    Returns {key: (d_model,)} pooled over residues (`pooling` "mean" | "max"), or with
    `full_embeddings` {key: (n_residues, d_model)}, in input order, on CPU, in `dtype`.
    Residues only: `[NLU]`, `</s>` and padding are excluded.

    max_len: residues per sequence; longer is an error unless `truncate` cuts to max_len.
    max_tokens: optional cap on padded tokens per batch (on top of batch_size).
    save_path: safetensors file; if it exists, ids already there are loaded, not recomputed, and
    the file is rewritten atomically every `save_every` batches and at the end.
    precision: the dtype the model computes in ("auto" | "32" | "bf16", fastankh/precision.py). `auto` is
    bf16 on hardware with native bf16 matmuls (CUDA, CPUs with AMX or avx512_bf16), else fp32; `32` is exact.
    The model itself is not changed: a bf16 copy of its weights is used for the call. `dtype` is the
    stored dtype of the results, a separate choice.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1 or save_every < 1:
        raise ValueError("batch_size and save_every must be >= 1")
    records = _check_records(_input_records(sequences), max_len, truncate)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model.config)
    prefix = prefix_length(tokenizer)

    device = next(model.parameters()).device
    compute = resolve_precision(precision, device)
    metadata = store_metadata(full_embeddings, pooling, dtype, compute)
    save_path = os.fspath(save_path) if save_path is not None else None
    store = load_store(save_path, metadata) if save_path and os.path.exists(save_path) else {}
    for key, tensor in store.items():
        if key in records and full_embeddings and tensor.shape[0] != len(records[key].sequence):
            raise ValueError(
                f"{records[key].where}: {save_path} holds {tensor.shape[0]} residues for it, the input has "
                f"{len(records[key].sequence)}"
            )

    # Each distinct residue string is run once, whatever the number of keys that share it.
    keys_of: dict[str, list[str]] = {}
    for key, r in records.items():
        if key not in store:
            keys_of.setdefault(r.sequence, []).append(key)
    todo = list(keys_of)
    encoded = tokenize_residues(tokenizer, todo, [records[keys_of[seq][0]].where for seq in todo])

    weights = _weights_in(model, compute)
    pad_id = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(todo), unit="seq", desc="embedding", disable=not progress)
    try:
        for n, batch in enumerate(length_batches([len(ids) for ids in encoded], batch_size, max_tokens), 1):
            vectors = embed_batch(
                model, [encoded[i] for i in batch], pad_id, prefix, full_embeddings, pooling, dtype, weights
            )
            for i, out in zip(batch, vectors):
                for j, key in enumerate(keys_of[todo[i]]):
                    store[key] = out if j == 0 else out.clone()  # safetensors refuses shared storage
            bar.update(len(batch))
            if save_path and n % save_every == 0:
                save_store(save_path, store, metadata)
    finally:
        bar.close()
        model.train(was_training)
    if save_path and todo:
        save_store(save_path, store, metadata)
    return {key: store[key] for key in records}


__all__ = ["embed_batch", "embed_dataset", "load_store", "save_store", "store_metadata", "tokenize_residues"]
