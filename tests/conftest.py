"""Shared fixtures: tiny checkpoints in the exact layout of the original ElnaggarLab ones."""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inductor compiles flex in-process: its worker pool is forked from a process that earlier tests left with
# live threads (wandb, tokenizers), and a fork there can deadlock.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import fastankh.precision
from fastankh import PRESETS


@pytest.fixture(autouse=True)
def no_native_bf16(monkeypatch):
    """precision="auto" computes in fp32 in tests, whatever the CPU, so exact comparisons hold on every
    machine; tests of bf16 ask for it explicitly or patch this back."""
    monkeypatch.setattr(fastankh.precision, "has_native_bf16", lambda device: False)


# Every preset's shape family at test size: its vocab, activation and heads, widths / 16, d_kv 8
# (so inner_dim = heads * 8 differs from d_model), two layers.
FAMILIES = {
    name: dict(
        vocab_size=p["vocab_size"],
        d_model=p["d_model"] // 16,
        d_kv=8,
        d_ff=p["d_ff"] // 16,
        num_heads=p["num_heads"],
        act=p["dense_act_fn"],
        num_layers=2,
    )
    for name, p in PRESETS.items()
    if name != "ankh_tiny"
}
# One case at ankh_base's true widths (one layer) so real sizes are covered too.
FAMILIES["ankh_base_full_width"] = dict(
    vocab_size=144, d_model=768, d_kv=64, d_ff=3072, num_heads=12, act="gelu_new", num_layers=1
)


def t5_config(family: str) -> T5Config:
    f = FAMILIES[family]
    return T5Config(
        vocab_size=f["vocab_size"],
        d_model=f["d_model"],
        d_kv=f["d_kv"],
        d_ff=f["d_ff"],
        num_layers=f["num_layers"],
        num_decoder_layers=1,
        num_heads=f["num_heads"],
        relative_attention_num_buckets=64,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if f["act"] == "gelu_new" else "gated-silu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


@pytest.fixture(scope="session")
def t5_checkpoint(tmp_path_factory):
    """Factory: family name -> directory of a random T5ForConditionalGeneration saved by transformers."""
    cache: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in cache:
            torch.manual_seed(zlib.crc32(family.encode()))  # stable across runs, unlike the salted hash()
            model = T5ForConditionalGeneration(t5_config(family))
            # T5's default init (std 1 embeddings, tiny d_model) is fine; make the bias table non-trivial.
            with torch.no_grad():
                model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 1.0)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            cache[family] = str(path)
        return cache[family]

    return make


def random_batch(lengths: list[int], vocab_low: int = 3, vocab_high: int = 23, seed: int = 0):
    """Right-padded ids ending in </s> (1) and the attention mask, like the tokenizer's output."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(vocab_low, vocab_high, (n - 1,), generator=g)
        ids[i, n - 1] = 1
        mask[i, :n] = 1
    return ids, mask
