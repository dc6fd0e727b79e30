"""Compute precision (fastankh/precision.py): what `auto` resolves to, and bf16 in embed_dataset, from_pretrained,
predict and training, with fp16 refused everywhere."""

from __future__ import annotations

import pytest
import torch

import fastankh.precision
from fastankh import FastAnkhConfig, FastAnkhModel, embed_dataset
from fastankh.precision import has_native_bf16 as real_has_native_bf16  # bound before conftest patches it
from fastankh.precision import resolve_precision

SEQS = {"a": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "b": "GSHMLEDPVDAFQ", "c": "LLKKLLKKAAGGWWYY" * 3}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2)).eval()


@pytest.mark.parametrize(
    "name, native, dtype",
    [
        ("auto", True, torch.bfloat16),
        ("auto", False, torch.float32),
        ("32", True, torch.float32),
        ("32-true", True, torch.float32),
        ("bf16", False, torch.bfloat16),
        ("bf16-mixed", False, torch.bfloat16),
    ],
)
def test_resolve_precision(name, native, dtype, monkeypatch):
    monkeypatch.setattr(fastankh.precision, "has_native_bf16", lambda device: native)
    assert resolve_precision(name, "cpu") == dtype


@pytest.mark.parametrize("name", ["16-mixed", "16", "fp16"])
def test_fp16_is_refused_with_the_reason(name):
    with pytest.raises(ValueError, match="overflow in fp16; use bf16"):
        resolve_precision(name, "cpu")


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match=r"one of \('auto', '32', 'bf16'\)"):
        resolve_precision("int8", "cpu")


@pytest.mark.parametrize("amx, avx512_bf16, native", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_cpu_reads_amx_and_avx512_bf16(amx, avx512_bf16, native, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert real_has_native_bf16("cpu") is native


def test_bf16_embeddings_agree_with_fp32_and_leave_the_model_alone(model, monkeypatch):
    fp32 = embed_dataset(model, SEQS, precision="32", progress=False)
    bf16 = embed_dataset(model, SEQS, precision="bf16", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a bf16 copy computed, not the model
    for key in SEQS:
        assert bf16[key].dtype == torch.float32  # the stored dtype is a separate choice
        assert not torch.equal(bf16[key], fp32[key])  # it did compute in bf16
        assert torch.cosine_similarity(bf16[key], fp32[key], dim=0) >= 0.999
    monkeypatch.setattr(fastankh.precision, "has_native_bf16", lambda device: True)
    auto = embed_dataset(model, SEQS, progress=False)
    assert all(torch.equal(auto[k], bf16[k]) for k in SEQS)


def test_resuming_with_another_compute_precision_is_refused(model, tmp_path):
    path = tmp_path / "emb.safetensors"
    embed_dataset(model, {"a": SEQS["a"]}, save_path=path, precision="32", progress=False)
    with pytest.raises(ValueError, match="precision=float32, this run has precision=bfloat16"):
        embed_dataset(model, SEQS, save_path=path, precision="bf16", progress=False)


def test_from_pretrained_precision_casts_the_weights(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path)
    assert FastAnkhModel.from_pretrained(tmp_path, precision="bf16").dtype == torch.bfloat16
    assert FastAnkhModel.from_pretrained(tmp_path, precision="auto").dtype == torch.float32
    monkeypatch.setattr(fastankh.precision, "has_native_bf16", lambda device: True)
    assert FastAnkhModel.from_pretrained(tmp_path, precision="auto").dtype == torch.bfloat16
