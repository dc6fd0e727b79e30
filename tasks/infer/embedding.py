"""`embed.py`'s work: an ANKH encoder (preset, checkpoint, hub id or export folder) over a file of records, into
an embeddings output, on the embedding engine (fastankh.embeddings: the one dedup, length rule, resume and set
of output formats of embed_dataset) and the job harness (tasks/infer/harness.py: Lightning's predict loop,
one or many processes)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from fastankh import PRESETS, FastAnkhConfig, FastAnkhModel, load_tokenizer, open_embeddings
from fastankh.embeddings import EmbeddingRun, OutputSpec
from fastankh.embeddings.engine import run_fingerprint
from fastankh.embeddings.inputs import checked_records, count, raw_records
from fastankh.errors import UserError
from tasks.infer import harness

LENGTH_WORDS = {"length_option": "max_length", "length_hint": "raise max_length or set truncate=true"}


def load_encoder(name: str, attn_backend: str | None = None) -> FastAnkhModel:
    """The encoder of a preset, a FastANKH/T5 checkpoint (folder or hub id) or an export.py folder (whose
    task head is dropped: the encoder sits under the task model's `model.` prefix)."""
    harness.check_model_files(name)
    source = FastAnkhConfig.hub_id(name) if name in PRESETS else name
    if source is None:
        raise UserError(f"preset {name!r} has no pretrained weights; pass a checkpoint folder or hub id")
    try:
        encoder = FastAnkhModel.from_pretrained(source)
    except (ValueError, OSError) as err:
        raise harness.loading_error(name, err) from None
    if attn_backend is not None:
        encoder.config.attn_backend = attn_backend
    return encoder


class EmbedJob:
    """The embedding engine's run as a harness job: one EmbeddingRun per rank, opened in `setup`."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, tokenizer: Any, spec: OutputSpec, compute, fingerprint):
        self.cfg, self.model, self.tokenizer, self.spec = cfg, model, tokenizer, spec
        self.compute, self.fingerprint = compute, fingerprint
        self.run: EmbeddingRun | None = None

    def setup(self, rank: int, world_size: int, token: str) -> None:
        cfg = self.cfg
        self.run = EmbeddingRun(
            self.model, cfg.input, cfg.output, self.tokenizer, self.spec, self.compute, cfg.max_length,
            cfg.truncate, cfg.batch_size, cfg.max_tokens, cfg.window, int(cfg.shard_size), cfg.id_column,
            cfg.sequence_column, rank, world_size, token, fingerprint=self.fingerprint, **LENGTH_WORDS,
        )  # fmt: skip
        self.run.check()  # a record that conflicts with the output stops before any compute

    def windows(self):
        return self.run.my_windows()

    def step(self, model: torch.nn.Module, window: list) -> list[torch.Tensor]:
        return self.run.embed(window)

    def write(self, window: list, results: list[torch.Tensor]) -> None:
        self.run.write(window, results)

    def flush(self) -> None:
        if self.run is not None:
            self.run.flush()

    def finish(self) -> Any:
        self.run.finish()
        self.run.close()
        return open_embeddings(self.cfg.output)


def embed(cfg: DictConfig) -> Any:
    """embed.py's body on conf/cli/embed.yaml's `cfg`: the input is checked before the model loads, then embedded
    on `devices` x `num_nodes` processes. Returns the output's lazy mapping on rank 0 (None elsewhere)."""
    spec = OutputSpec.make(
        list(cfg.layers) if not isinstance(cfg.layers, int) else cfg.layers, cfg.pooling, cfg.full, cfg.dtype
    )
    if cfg.batch_size < 1 or cfg.window < 1 or int(cfg.shard_size) < 1:
        raise UserError("batch_size, window and shard_size must be >= 1")
    # Every record follows the reader and sequence rules of training and predict; the first bad one stops here.
    records = checked_records(
        raw_records(cfg.input, cfg.id_column, cfg.sequence_column), cfg.max_length, cfg.truncate, **LENGTH_WORDS
    )
    count(records)
    harness.check_model_files(cfg.model)  # a corrupt config, weights or tokenizer file: one line naming it
    trainer = harness.build_predict_trainer(*(cfg[k] for k in harness.TRAINER_KEYS), progress=cfg.progress)
    compute = harness.compute_dtype(cfg.precision, trainer)
    model = load_encoder(cfg.model, cfg.attn_backend)
    try:
        tokenizer = load_tokenizer(cfg.model)
    except (ValueError, OSError) as err:
        raise harness.loading_error(cfg.model, err) from None
    fingerprint = run_fingerprint(model, tokenizer, spec, compute, cfg.max_length, cfg.truncate)
    result = harness.run_job(trainer, EmbedJob(cfg, model, tokenizer, spec, compute, fingerprint), model, compute)
    if result is not None:
        print(f"wrote {len(result)} embeddings to {cfg.output}")
    return result


__all__ = ["EmbedJob", "embed", "load_encoder"]
