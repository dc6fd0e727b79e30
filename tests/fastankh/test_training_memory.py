"""What CPU training keeps for the backward, and that keeping less changes no gradient.

- The FFN keeps gate and up only (act(gate) is recomputed in the backward): autograd's gradients bit for bit,
  one (tokens, d_ff) saved tensor less per layer.
- Attention with a trainable position bias keeps no (B, H, L, L) probabilities (flash forward, probabilities
  recomputed from the log-sum-exp in the backward): sdpa's math-path gradients to fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastankh.modeling_fastankh as modeling
from fastankh import FastAnkhConfig, FastAnkhModel
from fastankh.attention import _BiasedAttention
from fastankh.modeling_fastankh import FastAnkhFeedForward
from tests.conftest import random_batch


def ffn(preset: str) -> FastAnkhFeedForward:
    torch.manual_seed(0)
    return FastAnkhFeedForward(FastAnkhConfig.from_preset(preset))


def saved_d_ff_tensors(module: FastAnkhFeedForward, x: torch.Tensor) -> int:
    """How many (tokens, d_ff) tensors autograd keeps for the backward of one forward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        module(x)
    return saved.count((x.shape[0], module.wi_0.out_features))


@pytest.mark.parametrize("preset", ["ankh_tiny", "ankh3_large"])  # gelu_new / silu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_equal_autograds_bit_for_bit(monkeypatch, preset, dtype):
    module = ffn(preset).to(dtype)
    x = torch.randn(37, module.wi_0.in_features, dtype=dtype, requires_grad=True)
    grads = []
    for activations in (dict(modeling._ACTIVATION_BACKWARD), {}):  # {}: autograd's act + mul
        monkeypatch.setattr(modeling, "_ACTIVATION_BACKWARD", activations)
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([out.detach(), x.grad, *(p.grad for p in module.parameters())])
    for ours, autograds in zip(*grads):
        assert torch.equal(ours, autograds)


@pytest.mark.parametrize("preset", ["ankh_tiny", "ankh3_large"])
def test_training_keeps_one_d_ff_tensor_less(monkeypatch, preset):
    module = ffn(preset)
    x = torch.randn(11, module.wi_0.in_features, requires_grad=True)
    assert saved_d_ff_tensors(module, x) == 3  # gate, up, and wo's input
    monkeypatch.setattr(modeling, "_ACTIVATION_BACKWARD", {})
    assert saved_d_ff_tensors(module, x) == 4  # autograd also keeps act(gate)


def sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


def attention_grads(attend, q, k, v, bias, padding, dtype):
    """Output and gradients of q, k, v and the bias, in fp32, for inputs cast to `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, bias)]
    out = attend(*leaves[:3], leaves[3] + padding.to(dtype))
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in leaves]


@pytest.mark.parametrize("padded", [True, False])  # mask (B, H, L, L), or (1, H, L, L) broadcast over the batch
def test_biased_attention_gradients_match_sdpa(padded):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 70, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 70, 70, generator=g)
    padding = torch.zeros(3 if padded else 1, 1, 1, 70)
    if padded:
        padding[1, ..., 45:] = torch.finfo(torch.float32).min
    reference = attention_grads(sdpa, q, k, v, bias, padding, torch.float32)
    ours = attention_grads(_BiasedAttention.apply, q, k, v, bias, padding, torch.float32)
    for name, a, b in zip(("out", "q", "k", "v", "bias"), ours, reference):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 2e-6, name
    # bf16 inputs (autocast training): no further from the fp32 result than sdpa in bf16 is
    ours_bf16 = attention_grads(_BiasedAttention.apply, q, k, v, bias, padding, torch.bfloat16)
    sdpa_bf16 = attention_grads(sdpa, q, k, v, bias, padding, torch.bfloat16)
    for name, a, b, ref in zip(("out", "q", "k", "v", "bias"), ours_bf16, sdpa_bf16, reference):
        assert (a - ref).abs().max() <= 1.5 * (b - ref).abs().max(), name


def saved_square_storages(model: FastAnkhModel, length: int) -> int:
    """Distinct storages of (..., L, L) float tensors that a training forward keeps for the backward."""
    ids, mask = random_batch([length, length - 7])
    saved = set()

    def pack(t):
        if t.is_floating_point() and t.dim() >= 2 and t.shape[-2:] == (length, length):
            saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, mask)
    return len(saved)


def test_training_keeps_no_attention_probabilities(monkeypatch):
    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=3)).train()
    assert saved_square_storages(model, 40) == 1  # the (bias + padding) mask, one tensor shared by the layers
    monkeypatch.setattr(_BiasedAttention, "apply", sdpa)  # sdpa's math path: every layer keeps its probabilities
    assert saved_square_storages(model, 40) == 3
