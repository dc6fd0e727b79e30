"""Embed protein sequences with an ANKH encoder into a safetensors file (fastankh.embed_dataset).

    python embed.py model=ankh_base input=proteins.fasta output=embeddings.safetensors pooling=mean full=false
    python embed.py model=ankh-ss3 input=proteins.csv output=residues.safetensors full=true   # an export's encoder

Keys are record ids; values (d_model,) pooled over residues, or (n_residues, d_model) with full=true.
Rerun the same command to resume: records already in the output are not recomputed. Options: conf/embed.yaml.
"""

from __future__ import annotations

from collections import Counter

import hydra
import torch
from omegaconf import DictConfig
from transformers import AutoConfig

import fastankh
from fastankh import PRESETS, FastAnkhConfig, FastAnkhModel, embed_dataset, load_tokenizer
from fastankh.records import RecordError, read_records
from tasks.data_sources import DataError


def load_encoder(name: str, attn_backend: str | None = None) -> FastAnkhModel:
    """The encoder of a preset, a FastANKH/T5 checkpoint (folder or hub id) or an export.py folder."""
    source = FastAnkhConfig.hub_id(name) if name in PRESETS else name
    if source is None:
        raise ValueError(f"preset {name!r} has no pretrained weights; pass a checkpoint folder or hub id")
    config = AutoConfig.from_pretrained(source)
    task_class = next((a for a in config.architectures or [] if a.endswith("Classification")), None)
    if config.model_type == FastAnkhConfig.model_type and task_class is not None:
        # Task exports keep the encoder under `model.`; load the task model and keep that part.
        encoder = getattr(fastankh, task_class).from_pretrained(source).model
    else:
        encoder = FastAnkhModel.from_pretrained(source)
    if attn_backend is not None:
        encoder.config.attn_backend = attn_backend
    return encoder


def embed(cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The embeddings of cfg.input (conf/cli/embed.yaml), also written to cfg.output."""
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
        )
    except ValueError as err:  # a bad record (named) or an output file written with other options
        message = str(err)
        for key, location in where.items():  # name the file row, not the dict key embed_dataset saw
            message = message.replace(f"record {key!r}: ", f"{location}: ", 1)
        message = message.replace("max_len=", "max_length=").replace(
            "raise max_len or pass truncate=True", "raise max_length or set truncate=true"
        )
        raise DataError(message) from None


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="embed")
def main(cfg: DictConfig) -> None:
    try:
        embeddings = embed(cfg)
    except DataError as err:  # bad input: its lines name the file and record; no traceback
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(embeddings)} embeddings to {cfg.output}")


if __name__ == "__main__":
    main()
