"""Compute precision for inference: `auto` | `32` | `bf16`, resolved to the dtype the weights compute in.

`auto` computes in bf16 where the hardware has native bf16 matmuls (CUDA GPUs that report bf16 support;
CPUs with AMX or avx512_bf16, where a bf16 matmul runs several times faster than fp32) and in fp32
elsewhere; `32` is exact (the transformers reference). The stored dtype of results is a separate choice.
bf16 is ANKH's training precision; fp16 is refused because T5 activations overflow it.

This file travels to the Hub with the model code: torch only.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "32", "bf16")
# Lightning's spellings are accepted too, so one `precision` value can be shared with the trainer config.
_ALIASES = {"32": "32", "fp32": "32", "32-true": "32", "bf16": "bf16", "bf16-true": "bf16", "bf16-mixed": "bf16"}


def has_native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run natively: a CUDA device with bf16, or a CPU with AMX tiles or avx512_bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str | int, device: torch.device | str) -> torch.dtype:
    """The dtype to compute in on `device` for `precision` ("auto", "32", "bf16" or Lightning's
    "32-true" / "bf16-true" / "bf16-mixed")."""
    name = str(precision).lower()
    if name == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    if name in ("16", "fp16", "16-mixed", "16-true"):
        raise ValueError(f"precision={precision}: T5 models such as ANKH overflow in fp16; use bf16 or 32")
    if name not in _ALIASES:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if _ALIASES[name] == "bf16" else torch.float32


__all__ = ["PRECISIONS", "has_native_bf16", "resolve_precision"]
