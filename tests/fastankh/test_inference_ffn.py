"""The FFN at inference runs in chunks of tokens (FastAnkhFeedForward._inference): same results as one pass."""

from __future__ import annotations

import pytest
import torch

import fastankh.modeling_fastankh as modeling
from fastankh import FastAnkhConfig, FastAnkhModel
from tests.conftest import random_batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compiled", [False, True])
def test_chunked_inference_ffn_equals_one_pass(dtype, compiled, monkeypatch):
    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, compile_regions=compiled))
    model.eval().to(dtype)
    ids, mask = random_batch([1500, 1200, 900, 640])  # 4,240 tokens: 4 chunks of 1,060 at the 1,024 floor
    outputs = {}
    for chunk_bytes in (1, 1 << 40):  # the smallest chunks (1,024 tokens), and one pass
        monkeypatch.setattr(modeling, "FFN_CHUNK_BYTES", chunk_bytes)
        with torch.inference_mode():
            outputs[chunk_bytes] = model(ids, mask).last_hidden_state.float()
    # same ops per token; the matmul library may only round a chunk's rows differently (bf16: one ulp)
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(outputs[1], outputs[1 << 40], **tolerance)


def test_chunks_are_used_only_without_autograd(monkeypatch):
    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, compile_regions=False)).eval()
    ffn = model.encoder.layers[0].ffn
    calls = []
    monkeypatch.setattr(modeling, "FFN_CHUNK_BYTES", 1)
    monkeypatch.setattr(
        type(ffn),
        "_gated_hidden",
        lambda self, x, compiled: calls.append(len(x)) or x.new_zeros(len(x), self.wi_0.out_features),
    )
    x = torch.randn(2100, model.config.d_model)
    with torch.no_grad():
        ffn(x)
    assert calls == [1050, 1050]
    calls.clear()
    ffn(x.requires_grad_())  # training graph: the one-pass path (and its saved-activation savings)
    assert calls == []
