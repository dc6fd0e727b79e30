"""`embed.py`'s work: an ANKH encoder (preset, checkpoint, hub id or export folder) over a file of records,
into a safetensors file, with the reader and sequence rules of training and predict (fastankh.records)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch

from fastankh import PRESETS, FastAnkhConfig, FastAnkhModel, embed_dataset, load_tokenizer
from fastankh.records import RecordError, read_records
from tasks.data_sources import DataError


def load_encoder(name: str, attn_backend: str | None = None) -> FastAnkhModel:
    """The encoder of a preset, a FastANKH/T5 checkpoint (folder or hub id) or an export.py folder (whose
    task head is dropped: the encoder sits under the task model's `model.` prefix)."""
    source = FastAnkhConfig.hub_id(name) if name in PRESETS else name
    if source is None:
        raise ValueError(f"preset {name!r} has no pretrained weights; pass a checkpoint folder or hub id")
    encoder = FastAnkhModel.from_pretrained(source)
    if attn_backend is not None:
        encoder.config.attn_backend = attn_backend
    return encoder


def embed_file(cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The embeddings of cfg["input"], also written to cfg["output"]; cfg has the keys of conf/cli/embed.yaml."""
    cfg = SimpleNamespace(**cfg)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    # The reader and sequence rule of training and predict; the first invalid record stops the run.
    try:
        records = read_records(cfg.input, cfg.id_column, cfg.sequence_column)
    except RecordError as err:
        raise DataError(str(err)) from None
    bad = next((r for r in records if r.problem is not None), None)
    if bad is not None:
        raise DataError(bad.error)
    where = {r.id: r.where for r in records}
    repeated = [i for i, n in Counter(r.id for r in records).items() if n > 1]
    if repeated:
        raise DataError(f"{cfg.input}: record id {repeated[0]!r} appears more than once; ids key the output")
    encoder = load_encoder(cfg.model, cfg.attn_backend).to(device)
    try:
        return embed_dataset(
            encoder,
            {r.id: r.sequence for r in records},
            tokenizer=load_tokenizer(cfg.model),
            batch_size=cfg.batch_size,
            max_len=cfg.max_length,
            full_embeddings=cfg.full,
            pooling=cfg.pooling,
            save_path=cfg.output,
            dtype=getattr(torch, cfg.dtype),
            max_tokens=cfg.max_tokens,
            progress=cfg.progress,
            truncate=cfg.truncate,
            save_every=cfg.save_every,
            precision=cfg.precision,
        )
    except ValueError as err:  # a bad record (named) or an output file written with other options
        message = str(err)
        for key, location in where.items():  # name the file row, not the dict key embed_dataset saw
            message = message.replace(f"record {key!r}: ", f"{location}: ", 1)
        message = message.replace("max_len=", "max_length=").replace(
            "raise max_len or pass truncate=True", "raise max_length or set truncate=true"
        )
        raise DataError(message) from None
