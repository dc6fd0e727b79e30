"""Fine-tuning modes: which backbone parameters train.

- `frozen`: nothing in the backbone trains (a probe); the backbone stays in eval mode and its
  outputs may be cached (tasks/module.py) so it runs once per sequence.
- `full`: everything trains.
- `lora`: peft LoRA adapters on the T5 Linear names (q, k, v, o and optionally wi_0, wi_1, wo);
  base weights stay frozen and bit-identical.
- `partial`: the last N encoder blocks and the final norm train.
The head always trains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

MODES = ("frozen", "full", "lora", "partial")
BACKBONE_LINEARS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"trainable params {self.trainable:,} / {self.total:,} ({share:.2f}%)"


def count_params(*modules: nn.Module) -> ParamCounts:
    """Trainable and total parameters over the given modules (shared tensors counted once)."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    return ParamCounts(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def apply_lora(backbone: nn.Module, r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> nn.Module:
    """Wrap the backbone with peft LoRA adapters; every target must name a Linear of the backbone."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    present = _leaf_names(backbone)
    missing = [t for t in targets if t not in present]
    if not targets or missing:
        raise ValueError(
            f"finetune.target_modules={targets}: {missing or 'empty list'} match no Linear of the backbone "
            f"(ANKH Linear names: {', '.join(n for n in BACKBONE_LINEARS if n in present)})"
        )
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(backbone, config)


def apply_finetune(backbone: nn.Module, head: nn.Module, cfg: Mapping[str, Any]) -> tuple[nn.Module, ParamCounts]:
    """Set requires_grad for the mode `cfg["mode"]`; returns the (possibly peft-wrapped) backbone and counts.

    cfg keys by mode: lora: r, alpha, dropout, target_modules; partial: trainable_layers.
    """
    mode = cfg["mode"]
    if mode not in MODES:
        raise ValueError(f"finetune.mode must be one of {MODES}, got {mode!r}")
    backbone.requires_grad_(mode == "full")
    if mode == "lora":
        backbone = apply_lora(backbone, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["target_modules"])
    elif mode == "partial":
        layers = backbone.encoder.layers
        n = cfg["trainable_layers"]
        if not 1 <= n <= len(layers):
            raise ValueError(f"finetune.trainable_layers={n}: the backbone has {len(layers)} blocks")
        for block in layers[len(layers) - n :]:
            block.requires_grad_(True)
        backbone.encoder.final_norm.requires_grad_(True)
    elif mode == "frozen":
        backbone.eval()
    head.requires_grad_(True)
    counts = count_params(backbone, head)
    log.info("finetune=%s: %s", mode, counts)
    return backbone, counts
