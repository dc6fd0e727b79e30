"""config.compile_regions: RMSNorm and the FFN gate as torch.compile'd regions — same results as eager (to bf16
rounding), gradients included, a clean eager fallback when compiling fails, and where "auto" turns them on."""

from __future__ import annotations

import pytest
import torch

import fastankh.precision
from fastankh import FastAnkhConfig, FastAnkhModel
from fastankh.modeling_fastankh import use_compiled_regions
from fastankh.runtime import RUNTIME
from tests.conftest import random_batch


@pytest.fixture(scope="module")
def model() -> FastAnkhModel:
    torch.manual_seed(0)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2)).eval()


def outputs(model: FastAnkhModel, dtype: torch.dtype, compiled: bool) -> torch.Tensor:
    ids, mask = random_batch([40, 23, 31])
    copy = FastAnkhModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy.to(dtype).config.compile_regions = compiled
    with torch.inference_mode():
        return copy(ids, mask).last_hidden_state.float()


def test_compiled_regions_match_eager(model):
    reference = outputs(model, torch.float32, False)
    torch.testing.assert_close(outputs(model, torch.float32, True), reference, atol=1e-6, rtol=1e-6)
    # bf16: inductor may round differently inside a fused kernel, but no worse than eager bf16 does
    eager_error = (outputs(model, torch.bfloat16, False) - reference).abs().max()
    compiled_error = (outputs(model, torch.bfloat16, True) - reference).abs().max()
    assert compiled_error <= 2 * eager_error


def test_compiled_regions_give_eager_gradients(model):
    ids, mask = random_batch([40, 23])
    grads = []
    for compiled in (False, True):
        copy = FastAnkhModel(model.config).train()
        copy.load_state_dict(model.state_dict())
        copy.config.compile_regions = compiled
        copy(ids, mask).last_hidden_state.pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in copy.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-8, rtol=1e-5)


def test_a_region_that_cannot_compile_runs_eagerly_with_one_warning(model, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(RUNTIME, "regions", {})
    monkeypatch.setattr(RUNTIME, "regions_proven", set())
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(RUNTIME, "warned", set())
    with pytest.warns(UserWarning, match="torch.compile of _gated failed"):
        out = outputs(model, torch.float32, True)
    torch.testing.assert_close(out, outputs(model, torch.float32, False), atol=0, rtol=0)
    assert RUNTIME.regions["_gated"] is None  # not retried


@pytest.mark.parametrize(
    "device, dtype, d_model, training, native, on",
    [
        ("cuda", torch.float32, 96, True, False, True),
        ("cpu", torch.bfloat16, 768, False, True, True),
        ("cpu", torch.bfloat16, 768, True, True, False),  # CPU training: no gain measured
        ("cpu", torch.float32, 768, False, True, False),
        ("cpu", torch.bfloat16, 96, False, True, False),  # tiny widths: compile time would dominate
        ("cpu", torch.bfloat16, 768, False, False, False),
    ],
)
def test_auto_turns_regions_on_where_they_pay(device, dtype, d_model, training, native, on, monkeypatch):
    monkeypatch.setattr(fastankh.precision, "has_native_bf16", lambda device: native)
    assert use_compiled_regions("auto", torch.device(device), dtype, d_model, training) is on
    assert use_compiled_regions(False, torch.device(device), dtype, d_model, training) is False
