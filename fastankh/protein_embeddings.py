"""`embed_dataset`: per-protein (pooled) or per-residue embeddings of many sequences.

One vector per residue: `[NLU]`, `</s>` and padding never enter pooled or per-residue outputs;
unknown letters (`<unk>`) are residues and do. Batches are length-sorted (longest first) and the
result keeps the input order. Results can be stored in a safetensors file (keys = sequence ids,
written atomically) that a later call resumes from.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .tokenization import load_tokenizer, prefix_length

FASTA_SUFFIXES = (".fa", ".fasta", ".faa")
POOLINGS = ("mean", "max")
STORE_FORMAT = "fastankh-embeddings-v1"


@dataclass
class _Record:
    key: str  # the id in the result: the sequence itself (list input) or the record id
    sequence: str  # residues, whitespace removed
    where: str  # how an error names this record


def _fasta_records(path: str) -> list[_Record]:
    """Records of a FASTA file: id = first word of the header, sequence lines joined."""
    headers: list[tuple[str, str]] = []  # (id, where)
    chunks: list[list[str]] = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith(">"):
                words = line[1:].split()
                if not words:
                    raise ValueError(f"{path}: line {line_no}: header '>' without a record id")
                headers.append((words[0], f"{path}: record {words[0]!r} (line {line_no})"))
                chunks.append([])
            elif line and not line.startswith(";"):
                if not chunks:
                    raise ValueError(f"{path}: line {line_no}: sequence data before the first '>' header")
                chunks[-1].append("".join(line.split()))
    return [_Record(key, "".join(parts), where) for (key, where), parts in zip(headers, chunks)]


def read_fasta(path: str | os.PathLike) -> dict[str, str]:
    """id -> sequence of a FASTA file (id = first word of the header line). Duplicate ids are an error."""
    out: dict[str, str] = {}
    for r in _fasta_records(os.fspath(path)):
        if r.key in out:
            raise ValueError(f"{r.where}: duplicate record id")
        out[r.key] = r.sequence
    return out


def _input_records(sequences: list[str] | dict[str, str] | str | os.PathLike) -> list[_Record]:
    if isinstance(sequences, (str, os.PathLike)):
        path = os.fspath(sequences)
        if not (os.path.isfile(path) or path.lower().endswith(FASTA_SUFFIXES)):
            raise ValueError(
                f"sequences must be a list of sequences, a dict id -> sequence or a FASTA path; "
                f"{path[:50]!r} is not an existing file"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: FASTA file not found")
        return _fasta_records(path)
    if isinstance(sequences, dict):
        items = [(str(k), v, f"record {k!r}") for k, v in sequences.items()]
    else:
        items = [(v, v, f"sequence #{i}") for i, v in enumerate(sequences)]
    records = []
    for key, seq, where in items:
        if not isinstance(seq, str):
            raise TypeError(f"{where}: expected a string sequence, got {type(seq).__name__}")
        records.append(_Record(key, "".join(seq.split()), where))
    return records


def _check_records(records: list[_Record], max_len: int, truncate: bool) -> dict[str, _Record]:
    """key -> its first record, in input order; raises on the first bad record."""
    out: dict[str, _Record] = {}
    for r in records:
        if not r.sequence:
            raise ValueError(f"{r.where}: empty sequence")
        if len(r.sequence) > max_len:
            if not truncate:
                raise ValueError(
                    f"{r.where}: {len(r.sequence)} residues > max_len={max_len} (raise max_len or pass truncate=True)"
                )
            r.sequence = r.sequence[:max_len]
        if out.setdefault(r.key, r).sequence != r.sequence:
            raise ValueError(f"{r.where}: id {r.key!r} appears twice with different sequences")
    return out


def _store_metadata(full_embeddings: bool, pooling: str, dtype: torch.dtype) -> dict[str, str]:
    return {
        "format": STORE_FORMAT,
        "output": "per_residue" if full_embeddings else f"pooled_{pooling}",
        "dtype": str(dtype).removeprefix("torch."),
    }


def _load_store(path: str, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """Embeddings already saved at `path`; refuses a file written with other options."""
    with safe_open(path, framework="pt") as f:
        saved = f.metadata() or {}
        if saved.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{path}: not a FastANKH embeddings file (no {STORE_FORMAT!r} metadata); refusing to overwrite it"
            )
        for field in ("output", "dtype"):
            if saved.get(field) != metadata[field]:
                raise ValueError(
                    f"{path}: saved with {field}={saved.get(field)}, this run asks {field}={metadata[field]}; "
                    "use another save_path or the same options"
                )
        return {k: f.get_tensor(k) for k in f.keys()}


def _save_store(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically: a temp file in the same directory, then os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Indices grouped longest first; a batch holds <= batch_size rows and <= max_tokens padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        # The first (longest) row sets the padded width of the whole batch.
        if current is None or len(current) == batch_size or (
            max_tokens is not None and (len(current) + 1) * lengths[current[0]] > max_tokens
        ):
            batches.append([i])
        else:
            current.append(i)
    return batches


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
) -> dict[str, torch.Tensor]:
    """Embed protein sequences with an ANKH encoder (FastAnkhModel, or any encoder whose forward
    takes input_ids/attention_mask and returns `last_hidden_state`, e.g. transformers' T5EncoderModel).

    sequences: list of sequences (result keyed by the sequence), dict id -> sequence, or a FASTA
    file path (keyed by record id). Whitespace inside sequences is ignored; a repeated key or a
    repeated sequence is computed once.
    Returns {key: (d_model,)} pooled over residues (`pooling` "mean" | "max"), or with
    `full_embeddings` {key: (n_residues, d_model)}, in input order, on CPU, in `dtype`.
    Residues only: `[NLU]`, `</s>` and padding are excluded; `<unk>` letters are residues.

    max_len: residues per sequence; longer is an error unless `truncate` cuts to max_len.
    max_tokens: optional cap on padded tokens per batch (on top of batch_size).
    save_path: safetensors file; if it exists, ids already there are loaded, not recomputed, and
    the file is rewritten atomically every `save_every` batches and at the end.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1 or save_every < 1:
        raise ValueError("batch_size and save_every must be >= 1")
    records = _check_records(_input_records(sequences), max_len, truncate)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model.config)
    prefix = prefix_length(tokenizer)

    metadata = _store_metadata(full_embeddings, pooling, dtype)
    save_path = os.fspath(save_path) if save_path is not None else None
    store = _load_store(save_path, metadata) if save_path and os.path.exists(save_path) else {}
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
    encoded = tokenizer(todo, add_special_tokens=True)["input_ids"] if todo else []
    for seq, ids in zip(todo, encoded):
        if len(ids) != prefix + len(seq) + 1:
            # e.g. "<extra_id_0>" inside a sequence is one token for many characters.
            raise ValueError(
                f"{records[keys_of[seq][0]].where}: {len(seq)} characters tokenize to {len(ids) - prefix - 1} "
                "residue tokens; sequences must hold one character per residue"
            )

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(todo), unit="seq", desc="embedding", disable=not progress)
    try:
        for n, batch in enumerate(_batches([len(ids) for ids in encoded], batch_size, max_tokens), 1):
            width = len(encoded[batch[0]])
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                attention_mask[row, : len(encoded[i])] = 1
            with torch.inference_mode():
                output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
            hidden = output.last_hidden_state  # (B, width, d_model)
            # Outside inference mode, so the results are ordinary tensors a user can train on.
            for row, i in enumerate(batch):
                seq = todo[i]
                vectors = hidden[row, prefix : prefix + len(seq)].float()  # (n_residues, d_model)
                if not full_embeddings:
                    vectors = vectors.mean(0) if pooling == "mean" else vectors.amax(0)
                # copy: a view would keep the whole batch alive and share storage between keys.
                out = vectors.to(device="cpu", dtype=dtype, copy=True)
                for j, key in enumerate(keys_of[seq]):
                    store[key] = out if j == 0 else out.clone()  # safetensors refuses shared storage
            bar.update(len(batch))
            if save_path and n % save_every == 0:
                _save_store(save_path, store, metadata)
    finally:
        bar.close()
        model.train(was_training)
    if save_path and todo:
        _save_store(save_path, store, metadata)
    return {key: store[key] for key in records}


__all__ = ["embed_dataset", "read_fasta"]
