"""The backbone a run fine-tunes, from the Hydra `model` config group.

`model.path` (a local FastANKH or original T5 checkpoint) wins over the preset's hub id; a preset
without hub id (ankh_tiny) is built with random weights from `model.config` overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.configuration_fastankh import ARCHITECTURE_FIELDS


def weights_source(model_cfg: Mapping[str, Any]) -> str | None:
    """Local path or hub id the weights come from; None for random init."""
    return model_cfg.get("path") or FastAnkhConfig.hub_id(model_cfg["preset"])


def tokenizer_source(model_cfg: Mapping[str, Any]) -> str:
    """What `fastankh.load_tokenizer` gets: the checkpoint when it carries a tokenizer, else the preset."""
    source = weights_source(model_cfg)
    if source is None or (os.path.isdir(source) and not os.path.isfile(os.path.join(source, "tokenizer.json"))):
        return model_cfg["preset"]
    return source


def load_backbone(model_cfg: Mapping[str, Any], masked_lm: bool = False) -> FastAnkhModel | FastAnkhForMaskedLM:
    """FastAnkhModel (or FastAnkhForMaskedLM for task=masked_lm) with `model.attn_backend` set.

    `model.config` fields apply on every path: they shape a random init, and a checkpoint takes the
    runtime ones (dropout_rate, ...); a shape field the checkpoint contradicts is a one-line error.
    """
    cls = FastAnkhForMaskedLM if masked_lm else FastAnkhModel
    source = weights_source(model_cfg)
    overrides = dict(model_cfg.get("config") or {})
    if source is None:
        return cls(FastAnkhConfig.from_preset(model_cfg["preset"], attn_backend=model_cfg["attn_backend"], **overrides))
    try:
        return cls.from_pretrained(source, attn_backend=model_cfg["attn_backend"], **overrides)
    except ValueError as err:
        # The loader names the config field ("DIR: num_layers=3 was asked but the checkpoint has num_layers=2");
        # name the key as the user wrote it (maybe an alias such as num_hidden_layers) and where it lives.
        field = {k: FastAnkhConfig.attribute_map.get(k, k) for k in overrides}
        key = next((k for k in overrides if field[k] in ARCHITECTURE_FIELDS and f"{field[k]}=" in str(err)), None)
        if key is None:
            raise
        raise ValueError(f"model.config.{key}={overrides[key]}: {err}") from None
