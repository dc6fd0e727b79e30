"""Original ElnaggarLab (T5) checkpoints -> FastANKH: key mapping, config, on-the-fly loading.

`FastAnkhPreTrainedModel.from_pretrained` calls `_from_t5_checkpoint` when a checkpoint's config.json
says model_type "t5". This file travels to the Hub next to modeling_fastankh.py (which imports it
relatively), so it imports only torch, transformers, huggingface_hub, safetensors and its siblings; the
model classes reach it as arguments, never by import (no import cycle).
"""

from __future__ import annotations

import json
import os
import re

import torch

from .configuration_fastankh import ARCHITECTURE_FIELDS, FastAnkhConfig

# The architecture, plus what a T5 config.json also says about training and special ids.
T5_CONFIG_FIELDS = (
    *ARCHITECTURE_FIELDS,
    "layer_norm_epsilon",
    "dropout_rate",
    "pad_token_id",
    "eos_token_id",
    "initializer_factor",
)


def t5_key_to_fastankh(key: str) -> str | None:
    """Map one T5 state-dict key to its FastANKH name; None for keys FastANKH does not use."""
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return "embed_tokens.weight"
    if not key.startswith("encoder."):
        return None  # decoder.*, lm_head.*
    parts = key.split(".")
    if parts[1] == "final_layer_norm":
        return "encoder.final_norm.weight"
    if parts[1] != "block":
        return None
    i, sub, name = parts[2], parts[4], parts[5]
    if sub == "0":
        if name == "layer_norm":
            return f"encoder.layers.{i}.attn_norm.weight"
        if parts[6] == "relative_attention_bias":
            return "encoder.position_bias.relative_attention_bias.weight"
        return f"encoder.layers.{i}.attention.{parts[6]}.weight"
    if name == "layer_norm":
        return f"encoder.layers.{i}.ffn_norm.weight"
    return f"encoder.layers.{i}.ffn.{parts[6]}.weight"


def convert_t5_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """T5 (encoder-decoder or encoder-only) state dict -> FastAnkhModel state dict."""
    out = {}
    for key, value in state.items():
        new = t5_key_to_fastankh(key)
        if new is not None and new not in out:
            out[new] = value
    return out


def config_from_t5(t5_config: dict) -> FastAnkhConfig:
    """FastAnkhConfig from an original T5 config.json dict."""
    return FastAnkhConfig(**{k: t5_config[k] for k in T5_CONFIG_FIELDS if t5_config.get(k) is not None})


_HUB_KWARGS = ("revision", "token", "cache_dir", "force_download", "local_files_only")
# What transformers' Auto classes add to every from_pretrained call; nothing to do for a T5 conversion.
_AUTO_KWARGS = ("trust_remote_code", "adapter_kwargs", "_from_auto", "_from_pipeline")


def _resolve_file(path: str, filename: str, kwargs: dict) -> str | None:
    """Local path of `filename` inside a directory or hub repo, None if it is not there."""
    if os.path.isdir(path):
        full = os.path.join(path, filename)
        return full if os.path.isfile(full) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(path, filename, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except EntryNotFoundError:
        return None


def _checkpoint_config(path: str, kwargs: dict) -> dict | None:
    """The checkpoint's config.json as a dict, None if it has none."""
    config_file = _resolve_file(path, "config.json", kwargs)
    if config_file is None:
        return None
    with open(config_file) as f:
        return json.load(f)


def _checkpoint_model_type(path: str, kwargs: dict) -> str | None:
    raw = _checkpoint_config(path, kwargs)
    return None if raw is None else raw.get("model_type")


def _load_bin(file: str) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def _t5_weight_files(path: str, kwargs: dict) -> tuple[list[str], object]:
    """The weight files of a T5 checkpoint (safetensors or .bin, single or sharded) and their loader."""
    from safetensors.torch import load_file

    for index_name, single, loader in (
        ("model.safetensors.index.json", "model.safetensors", load_file),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", _load_bin),
    ):
        index = _resolve_file(path, index_name, kwargs)
        if index is not None:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [_resolve_file(path, shard, kwargs) for shard in shards], loader
        file = _resolve_file(path, single, kwargs)
        if file is not None:
            return [file], loader
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin (sharded or not) found")


def _load_t5_state(path: str, kwargs: dict, wanted: set[str], ignored: list[str]) -> tuple[dict, set[str]]:
    """The checkpoint's tensors under the FastANKH names in `wanted` (shard by shard, so the decoder is never
    all in memory), and the checkpoint keys that are neither used nor matched by an `ignored` regex."""
    files, loader = _t5_weight_files(path, kwargs)
    state, unexpected = {}, set()
    for file in files:
        for key, value in loader(file).items():
            new = t5_key_to_fastankh(key)
            if new in wanted:
                state.setdefault(new, value)  # shared.weight and encoder.embed_tokens.weight are one tensor
            elif new is not None or not any(re.search(pattern, key) for pattern in ignored):
                unexpected.add(key)
    return state, unexpected


def _single_device(device_map) -> torch.device | None:
    """`device_map` naming one device ("cpu", "cuda:0", 0, torch.device); a T5 conversion cannot split a model."""
    if device_map is None:
        return None
    if isinstance(device_map, (str, int, torch.device)):
        try:
            return torch.device(device_map)
        except RuntimeError:
            pass
    raise NotImplementedError(
        f"device_map={device_map!r}: an original T5 checkpoint is converted onto one device; pass one "
        "such as 'cpu' or 'cuda:0' (or load the converted FastANKH checkpoint for transformers' device maps)"
    )


def _from_t5_checkpoint(cls, path: str, config: FastAnkhConfig, kwargs: dict) -> tuple[torch.nn.Module, dict]:
    """(model, loading info) from an original T5 checkpoint; `kwargs` are the remaining loading options."""
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    device = _single_device(kwargs.pop("device_map", None))
    unsupported = sorted(set(kwargs) - set(_HUB_KWARGS) - set(_AUTO_KWARGS))
    if unsupported:
        raise TypeError(
            f"{cls.__name__}.from_pretrained({path!r}): unexpected keyword arguments {unsupported} (not "
            "FastAnkhConfig fields, nor loading options supported for an original T5 checkpoint)"
        )
    with torch.device("meta"):
        model = cls(config)
    # Task and MaskedLM models hold the encoder as `model.<base_model_prefix>`; the encoder itself does not.
    prefix = "" if model.base_model is model else f"{model.base_model_prefix}."
    own = model.state_dict()
    wanted = {k.removeprefix(prefix) for k in own}
    state, unexpected = _load_t5_state(path, kwargs, wanted, cls._keys_to_ignore_on_load_unexpected)
    missing = [k for k in own if k.removeprefix(prefix) not in state and not k.startswith("lm_head")]
    if missing:
        raise ValueError(f"{path}: T5 checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
    full = {k: state[k.removeprefix(prefix)] for k in own if k.removeprefix(prefix) in state}
    if "lm_head.weight" in own:  # the MaskedLM head is not in ANKH checkpoints: set by reset_lm_head below
        full["lm_head.weight"] = torch.empty_like(state["embed_tokens.weight"])
    if dtype is not None and dtype != "auto":
        full = {k: v.to(dtype) for k, v in full.items()}
    else:
        full = {k: v.float() for k, v in full.items()}
    model.load_state_dict(full, strict=True, assign=True)
    if "lm_head.weight" in own:
        model.reset_lm_head()
    model.config.name_or_path = path
    if device is not None:
        model.to(device)
    # Same fields as transformers' loading info; the MaskedLM head starts from the embedding.
    info = {
        "missing_keys": {k for k in own if k.startswith("lm_head")},
        "unexpected_keys": unexpected,
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    return model.eval(), info


__all__ = ["T5_CONFIG_FIELDS", "t5_key_to_fastankh", "convert_t5_state_dict", "config_from_t5"]
