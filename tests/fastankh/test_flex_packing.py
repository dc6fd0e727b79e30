"""Packed (varlen) flex attention: a bounded number of compiled graphs per epoch, results equal to the padded
sdpa path, and the choice of flex's GPU kernel."""

from __future__ import annotations

import random

import pytest
import torch
from torch._dynamo.utils import counters

import fastankh.attention as attention
from fastankh import FastAnkhConfig, FastAnkhModel
from fastankh.attention import flex_kernel_options, flex_row_length
from fastankh.batching import length_batches
from fastankh.runtime import RUNTIME


def token_budget_epoch(count: int = 40, budget: int = 4096, seed: int = 0) -> list[list[int]]:
    """`count` batches of random lengths 20..1000 cut by a token budget, as a training epoch forms them."""
    rng = random.Random(seed)
    lengths = [rng.randint(20, 1000) for _ in range(8 * count)]
    batches = [[lengths[i] for i in b] for b in length_batches(lengths, 64, budget)]
    rng.shuffle(batches)
    return batches[:count]


def padded_batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 25, (len(lengths), max(lengths)), generator=g)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.fixture(scope="module")
def model() -> FastAnkhModel:
    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, attn_backend="flex")).eval()
    with torch.no_grad():  # a bias that matters: T5's init gives a nearly flat one
        model.encoder.position_bias.relative_attention_bias.weight.normal_(0, 1.0)
    return model


def test_row_lengths_grow_by_four():
    assert [flex_row_length(n) for n in (1, 1024, 1025, 4096, 4097, 65536)] == [1024] * 2 + [4096] * 2 + [16384, 65536]


def test_an_epoch_of_mixed_shapes_compiles_at_most_4_flex_graphs_and_equals_padded_sdpa(model):
    batches = token_budget_epoch()
    assert len({(len(b), max(b)) for b in batches}) >= 20  # the padded layout would compile a graph for each
    torch._dynamo.reset()
    counters.clear()
    worst = 0.0
    with torch.inference_mode():
        for n, lengths in enumerate(batches):
            ids, mask = padded_batch(lengths, n)
            model.config.attn_backend = "flex"
            flex = model(ids, mask).last_hidden_state
            if n % 8 == 0:  # parity on a sample of the batches, each sequence on its own residues
                model.config.attn_backend = "sdpa"
                sdpa = model(ids, mask).last_hidden_state
                for row, length in enumerate(lengths):
                    a, b = flex[row, :length], sdpa[row, :length]
                    worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
                assert not flex[mask == 0].any()  # padding positions stay zero
    model.config.attn_backend = "flex"
    assert counters["stats"]["unique_graphs"] <= 4
    assert worst <= 1e-5


def test_rows_with_holes_fall_back_to_sdpa(model):
    ids, mask = padded_batch([40, 30], 1)
    mask[0, 5] = 0  # not one run of tokens: packing would change distances
    with torch.inference_mode(), pytest.warns(UserWarning, match="no holes in attention_mask"):
        flex = model(ids, mask).last_hidden_state
    model.config.attn_backend = "sdpa"
    try:
        with torch.inference_mode():
            sdpa = model(ids, mask).last_hidden_state
    finally:
        model.config.attn_backend = "flex"
    torch.testing.assert_close(flex, sdpa, atol=0, rtol=0)


@pytest.mark.parametrize(
    "choice, capability, installed, backend",
    [
        ("auto", (9, 0), True, "FLASH"),
        ("auto", (10, 0), True, "FLASH"),
        ("auto", (9, 0), False, "TRITON"),
        ("auto", (8, 0), True, "TRITON"),
        ("triton", (9, 0), True, "TRITON"),
        ("flash", (8, 0), False, "FLASH"),
    ],
)
def test_flex_kernel_choice_on_gpus(choice, capability, installed, backend, monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if installed else None)
    assert flex_kernel_options(choice, torch.device("cuda", 0)) == {"BACKEND": backend}


def test_cpu_takes_no_kernel_choice():
    assert flex_kernel_options("flash", torch.device("cpu")) is None


def test_a_failing_flash_kernel_falls_back_to_triton_once(monkeypatch):
    seen = []

    def fake_flex(q, k, v, kernel_options=None, **kwargs):
        seen.append(kernel_options["BACKEND"])
        if kernel_options["BACKEND"] == "FLASH":
            raise RuntimeError("no FA4 here")
        return q

    monkeypatch.setattr(attention, "_compiled_flex", lambda: fake_flex)
    monkeypatch.setattr(RUNTIME, "flash_failed", False)
    attn = attention.AttentionInputs("flex", 1, 8, 1, 8, 8, kernel_options={"BACKEND": "FLASH"})
    q = torch.zeros(1, 1, 8, 4)
    with pytest.warns(UserWarning, match="flex FLASH kernel failed"):
        attention._flex_attention(q, q, q, attn)
    attention._flex_attention(q, q, q, attn)
    assert seen == ["FLASH", "TRITON", "TRITON"]
