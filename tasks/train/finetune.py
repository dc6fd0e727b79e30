"""Fine-tuning modes: which encoder parameters of the task model train.

- `frozen`: nothing in the backbone trains (a probe); the backbone stays in eval mode and its
  outputs may be cached (tasks/train/module.py) so it runs once per sequence.
- `full`: everything trains.
- `lora`: peft LoRA adapters on the encoder's T5 Linear names (q, k, v, o and optionally wi_0, wi_1, wo);
  base weights stay frozen and bit-identical. The whole task model is the peft model and its head a
  `modules_to_save` module, so `merge_and_unload` gives the exportable task model and `save_pretrained`
  the adapter-only export.
- `partial`: the last N encoder blocks and the final norm train.
The head always trains. The task model holds the encoder as `model` and the head as `head_attribute`
(tasks/task/kinds.py).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fastankh.errors import UserError

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
    """Trainable and total parameters over the given modules (shared tensors counted once).

    peft keeps an untrained copy of a `modules_to_save` head (`original_module`); it is not part of the
    model that trains or exports, so it is not counted.
    """
    params = {
        id(p): p for m in modules for name, p in m.named_parameters() if ".original_module." not in f".{name}"
    }.values()
    return ParamCounts(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def apply_lora(
    model: nn.Module, head: str, r: int, alpha: float, dropout: float, target_modules: Sequence[str]
) -> nn.Module:
    """peft LoRA over the task model: adapters on the encoder (`model.model`) Linears named in
    target_modules (never the head's), the head trained whole as a `modules_to_save` module."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    present = _leaf_names(model.model)
    missing = [t for t in targets if t not in present]
    if not targets or missing:
        raise UserError(
            f"finetune.target_modules={targets}: {missing or 'empty list'} match no Linear of the backbone "
            f"(ANKH Linear names: {', '.join(n for n in BACKBONE_LINEARS if n in present)})"
        )
    # A regex over module names inside the encoder: a head Linear named like a target (e.g. `out`) stays whole.
    regex = rf"model\..*\.(?:{'|'.join(re.escape(t) for t in sorted(targets))})"
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none", modules_to_save=[head]
    )
    with warnings.catch_warnings():
        # peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning in
        # transformers 5); nothing here can use the current `is_activation_checkpointing` in its place.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def apply_finetune(model: nn.Module, head: str, cfg: Mapping[str, Any]) -> tuple[nn.Module, ParamCounts]:
    """Set requires_grad for the mode `cfg["mode"]` on the task model `model` (encoder `model.model`, head
    attribute `head`); returns the (possibly peft-wrapped) model and its counts.

    cfg keys by mode: lora: r, alpha, dropout, target_modules; partial: trainable_layers.
    """
    mode = cfg["mode"]
    if mode not in MODES:
        raise UserError(f"finetune.mode must be one of {MODES}, got {mode!r}")
    encoder = model.model
    encoder.requires_grad_(mode == "full")
    getattr(model, head).requires_grad_(True)
    if mode == "lora":
        model = apply_lora(model, head, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["target_modules"])
    elif mode == "partial":
        layers = encoder.encoder.layers
        n = cfg["trainable_layers"]
        if not 1 <= n <= len(layers):
            raise UserError(f"finetune.trainable_layers={n}: the backbone has {len(layers)} blocks")
        for block in layers[len(layers) - n :]:
            block.requires_grad_(True)
        encoder.encoder.final_norm.requires_grad_(True)
    elif mode == "frozen":
        encoder.eval()
    counts = count_params(model)
    log.info("finetune=%s: %s", mode, counts)
    return model, counts
