"""`embed.py`'s work: an ANKH encoder (preset, checkpoint, hub id or export folder) over a file of records,
into a safetensors file, with the reader and sequence rules of training and predict (fastankh.records)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fastankh import PRESETS, FastAnkhConfig, FastAnkhModel, load_tokenizer
from fastankh.batching import length_batches
from fastankh.protein_embeddings import (
    POOLINGS,
    _check_records,
    _Record,
    embed_batch,
    load_store,
    save_store,
    store_metadata,
    tokenize_residues,
)
from fastankh.records import RecordError, read_records
from fastankh.tokenization import prefix_length
from tasks.errors import DataError
from tasks.infer import harness

SHARD_SUFFIX = ".safetensors"


def load_encoder(name: str, attn_backend: str | None = None) -> FastAnkhModel:
    """The encoder of a preset, a FastANKH/T5 checkpoint (folder or hub id) or an export.py folder (whose
    task head is dropped: the encoder sits under the task model's `model.` prefix)."""
    harness.check_model_files(name)
    source = FastAnkhConfig.hub_id(name) if name in PRESETS else name
    if source is None:
        raise ValueError(f"preset {name!r} has no pretrained weights; pass a checkpoint folder or hub id")
    encoder = FastAnkhModel.from_pretrained(source)
    if attn_backend is not None:
        encoder.config.attn_backend = attn_backend
    return encoder


def embed_file(cfg: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The embeddings of cfg["input"], also written to cfg["output"]; cfg has the keys of conf/cli/embed.yaml.

    Runs on Lightning's predict loop over `devices` x `num_nodes` processes (tasks/infer/harness.py): the
    batches of fastankh.embed_dataset's plan, shared out between ranks, each rank's results saved as shards
    beside the output and merged by rank 0. Records already in the output or in the shards of an interrupted
    run are not recomputed. Returns {record id: embedding} on rank 0, None on the other ranks."""
    cfg = SimpleNamespace(**cfg)
    if cfg.pooling not in POOLINGS:
        raise DataError(f"pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
    if cfg.batch_size < 1 or cfg.save_every < 1:
        raise DataError("batch_size and save_every must be >= 1")
    dtype = getattr(torch, str(cfg.dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype must be float32, float16 or bfloat16, got {cfg.dtype!r}")
    # The reader and sequence rule of training and predict; the first invalid record stops the run.
    try:
        records = read_records(cfg.input, cfg.id_column, cfg.sequence_column)
    except RecordError as err:
        raise DataError(str(err)) from None
    bad = next((r for r in records if r.problem is not None), None)
    if bad is not None:
        raise DataError(bad.error)
    repeated = [i for i, n in Counter(r.id for r in records).items() if n > 1]
    if repeated:
        raise DataError(f"{cfg.input}: record id {repeated[0]!r} appears more than once; ids key the output")
    try:
        checked = _check_records([_Record(r.id, r.sequence, r.where) for r in records], cfg.max_length, cfg.truncate)
    except ValueError as err:
        raise DataError(_cli_message(str(err))) from None

    harness.check_model_files(cfg.model)  # a corrupt config, weights or tokenizer file: one line naming it
    trainer = harness.build_trainer(*(getattr(cfg, k) for k in harness.TRAINER_KEYS), progress=cfg.progress)
    compute = harness.compute_dtype(cfg.precision, trainer)
    metadata = store_metadata(cfg.full, cfg.pooling, dtype, compute)
    output, shards = Path(cfg.output), harness.shard_dir(cfg.output)
    try:  # the output of an earlier run: its records are kept, not recomputed
        saved = load_store(str(output), metadata) if output.exists() else {}
    except (ValueError, OSError) as err:
        raise DataError(str(err)) from None
    check_saved_lengths(saved, checked, cfg.full, str(output))
    options = {**metadata, "model": str(cfg.model), "attn_backend": cfg.attn_backend, "truncate": cfg.truncate}
    harness.check_shard_options(shards, options)
    done = set(saved) | {key for path in harness.shard_files(shards, SHARD_SUFFIX) for key in _shard_keys(path)}

    try:
        tokenizer = load_tokenizer(cfg.model)
    except (ValueError, OSError) as err:
        raise harness.loading_error(cfg.model, err) from None
    prefix, pad_id = prefix_length(tokenizer), tokenizer.pad_token_id
    keys_of: dict[str, list[str]] = {}  # each distinct residue string runs once, whatever its number of ids
    for key, r in checked.items():
        keys_of.setdefault(r.sequence, []).append(key)
    sequences = list(keys_of)
    try:
        encoded = tokenize_residues(tokenizer, sequences, [checked[keys_of[seq][0]].where for seq in sequences])
    except ValueError as err:
        raise DataError(str(err)) from None
    # Items are every distinct sequence with all its ids (the same list on every rank, whatever shards each one
    # saw); the plan (rank 0's) batches those with an id still to do, as embed_dataset would.
    items = [(keys_of[seq], ids) for seq, ids in zip(sequences, encoded)]
    todo = [i for i, (keys, _) in enumerate(items) if any(k not in done for k in keys)]
    batches = length_batches([len(ids) for ids in encoded], cfg.batch_size, cfg.max_tokens, indices=todo)

    def step(model: torch.nn.Module, batch: list[tuple[list[str], list[int]]]) -> list[tuple[str, torch.Tensor]]:
        vectors = embed_batch(model, [ids for _, ids in batch], pad_id, prefix, cfg.full, cfg.pooling, dtype)
        return [(key, v if j == 0 else v.clone()) for (keys, _), v in zip(batch, vectors) for j, key in enumerate(keys)]

    def save(results: list[tuple[str, torch.Tensor]], path: Path) -> None:
        save_file(dict(results), path, metadata=metadata)

    def merge() -> dict[str, torch.Tensor]:
        store = load_store(str(output), metadata) if output.exists() else {}
        files = harness.shard_files(shards, SHARD_SUFFIX)
        for path in files:
            store.update(_load_shard(path))
        missing = [key for key in checked if key not in store]
        if missing:
            raise DataError(f"{shards}: {len(missing)} record(s) missing after the run (e.g. {missing[0]!r}); rerun")
        if files or not output.exists():
            save_store(str(output), store, metadata)
        shutil.rmtree(shards, ignore_errors=True)
        return {key: store[key] for key in checked}

    def load_model() -> FastAnkhModel:
        try:
            return load_encoder(cfg.model, cfg.attn_backend)
        except (ValueError, OSError) as err:
            raise harness.loading_error(cfg.model, err) from None

    writer = harness.ShardWriter(shards, SHARD_SUFFIX, save, options, cfg.save_every)
    return harness.run(trainer, writer, merge, load_model, items, batches, step, compute)


def _shard_keys(path: Path) -> list[str]:
    """Record ids in one shard; an unreadable shard counts as absent (its records are recomputed)."""
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError):
        return []


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One shard's embeddings; an unreadable shard counts as absent (its records were recomputed)."""
    try:
        return load_file(path)
    except (SafetensorError, OSError):
        return {}


def check_saved_lengths(saved: Mapping[str, torch.Tensor], records, full: bool, path: str) -> None:
    """Per-residue outputs already saved must have the input's residue count."""
    for key, tensor in saved.items():
        if key in records and full and tensor.shape[0] != len(records[key].sequence):
            raise DataError(
                f"{records[key].where}: {path} holds {tensor.shape[0]} residues for it, the input has "
                f"{len(records[key].sequence)}"
            )


def _cli_message(message: str) -> str:
    """embed_dataset's wording of a length error, in embed.py's option names."""
    return message.replace("max_len=", "max_length=").replace(
        "raise max_len or pass truncate=True", "raise max_length or set truncate=true"
    )


def embed(cfg: DictConfig) -> dict[str, torch.Tensor] | None:
    """embed.py's body: embed_file on conf/cli/embed.yaml's `cfg`; rank 0 prints what it wrote."""
    embeddings = embed_file(OmegaConf.to_container(cfg, resolve=True))
    if embeddings is not None:  # rank 0 (the only process unless devices/num_nodes > 1)
        print(f"wrote {len(embeddings)} embeddings to {cfg.output}")
    return embeddings
