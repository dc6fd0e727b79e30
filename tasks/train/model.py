"""The backbone a run fine-tunes, from the Hydra `model` config group.

`model.path` (a local FastANKH or original T5 checkpoint) wins over the preset's hub id; a preset
without hub id (ankh_tiny) is built with random weights from `model.config` overrides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.configuration_fastankh import ARCHITECTURE_FIELDS
from fastankh.errors import UserError

log = logging.getLogger(__name__)


def weights_source(model_cfg: Mapping[str, Any]) -> str | None:
    """Local path or hub id the weights come from; None for random init. A `model.path` that names a local
    folder that does not exist (absolute, relative with ./ or ../, or deeper than a hub id's org/name) is a
    UserError naming the key."""
    path = model_cfg.get("path")
    if path:
        path = str(path)
        local = os.path.isabs(path) or path.startswith(".") or path.count("/") != 1
        if local and not os.path.exists(path):
            raise UserError(f"model.path={path}: no such checkpoint folder")
        return path
    return FastAnkhConfig.hub_id(model_cfg["preset"])


def tokenizer_source(model_cfg: Mapping[str, Any]) -> str:
    """What `fastankh.load_tokenizer` gets: the checkpoint when it carries a tokenizer, else the preset."""
    source = weights_source(model_cfg)
    if source is None or (os.path.isdir(source) and not os.path.isfile(os.path.join(source, "tokenizer.json"))):
        return model_cfg["preset"]
    return source


def load_backbone(model_cfg: Mapping[str, Any], masked_lm: bool = False) -> FastAnkhModel | FastAnkhForMaskedLM:
    """FastAnkhModel (or FastAnkhForMaskedLM for task=masked_lm) with `model.attn_backend` set, and its
    `fastankh_base` attribute: base_reference(model_cfg) (None for a random init).

    `model.config` fields apply on every path: they shape a random init, and a checkpoint takes the
    runtime ones (dropout_rate, ...); a shape field the checkpoint contradicts is a one-line error.
    """
    backbone = _load(model_cfg, masked_lm)
    # tasks/train/module.py records it in the checkpoints of runs that keep the base frozen (lean checkpoints)
    backbone.fastankh_base = base_reference(model_cfg)
    return backbone


def _load(model_cfg: Mapping[str, Any], masked_lm: bool) -> FastAnkhModel | FastAnkhForMaskedLM:
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
        raise UserError(f"model.config.{key}={overrides[key]}: {err}") from None


# ------------------------------------------------------------------ the base a lean checkpoint refers to
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_SAMPLE = 1 << 20  # 1 MiB
_SAMPLES = 16


def _file_digest(path: str, digest: Any) -> None:
    """Feed `digest` with a file's name, size and content: all of it up to 18 MiB; beyond that the first MiB
    (a safetensors header with every tensor's name, dtype, shape and offsets), the last MiB and 16 MiB-samples
    at evenly spaced offsets. Cheap for multi-GB files (18 MiB read), and any replaced or retrained checkpoint
    changes it; a change confined to bytes between the samples goes unnoticed."""
    size = os.path.getsize(path)
    digest.update(f"{os.path.basename(path)}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= (_SAMPLES + 2) * _SAMPLE:
            digest.update(f.read())
            return
        offsets = [0, size - _SAMPLE] + [(size - _SAMPLE) * (i + 1) // (_SAMPLES + 1) for i in range(_SAMPLES)]
        for offset in sorted(offsets):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))


def weights_checksum(directory: str) -> str:
    """'sha256:<hex>' over the weight files of a checkpoint directory (see _file_digest), in name order."""
    import hashlib

    files = sorted(n for n in os.listdir(directory) if n.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for name in files:
        _file_digest(os.path.join(directory, name), digest)
    return f"sha256:{digest.hexdigest()}"


def _local_weights_dir(source: str) -> tuple[str, str | None]:
    """(directory holding the weights, hub revision or None) for a local path or a hub id in the HF cache."""
    if os.path.isdir(source):
        return os.path.abspath(source), None
    from huggingface_hub import snapshot_download

    directory = snapshot_download(source, local_files_only=True)  # the snapshot from_pretrained just used
    return directory, os.path.basename(os.path.normpath(directory))  # snapshots/<commit hash>


def base_reference(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a lean checkpoint records about its frozen base: the source (absolute model.path, or hub id with the
    snapshot's revision), the weights checksum, and the `model` config to rebuild it with load_backbone.
    None for a random-init backbone (nothing to refer to: checkpoints stay complete)."""
    source = weights_source(model_cfg)
    if source is None:
        return None
    try:
        directory, revision = _local_weights_dir(source)
    except (OSError, ValueError) as err:
        log.warning("%s: no local copy of the weights to refer to (%s); checkpoints hold the whole model", source, err)
        return None
    cfg = {k: model_cfg.get(k) for k in ("preset", "attn_backend")}
    cfg["config"] = dict(model_cfg.get("config") or {})
    cfg["path"] = directory if revision is None else model_cfg.get("path")
    return {
        "source": directory if revision is None else source,
        "revision": revision,
        "checksum": weights_checksum(directory),
        "model": cfg,
    }


def current_checksum(reference: Mapping[str, Any]) -> str | None:
    """The checksum of what `reference["source"]` holds now (None: it is gone)."""
    try:
        directory, _ = _local_weights_dir(reference["source"])
        return weights_checksum(directory)
    except (OSError, ValueError) as err:  # missing dir / not in the HF cache (LocalEntryNotFoundError: OSError)
        del err
        return None
