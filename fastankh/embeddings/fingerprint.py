"""The run fingerprint: everything that decides an embedding's value, recorded with the output.

A rerun on the same output resumes only when its fingerprint is the same: a different model, tokenizer,
compute precision, layer, pooling, length rule, stored dtype, attention implementation or package version is
refused in one line naming the field and both values, so that one output never mixes two models' vectors.
The model is identified by a SHA-256 over its state dict (names, dtypes, shapes and bytes), so a fine-tuned
copy of a hub model, or the same weights under another name, are told apart correctly.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from ..errors import UserError


def model_digest(model: torch.nn.Module) -> str:
    """`sha256:<hex>` over the model's state dict: each entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return "sha256:" + h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """`sha256:<hex>` of the tokenizer's full definition (vocabulary, normaliser, template, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and special tokens
        text = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    import transformers

    try:
        ours = version("fastankh")
    except PackageNotFoundError:  # run from a source tree that was not installed
        ours = "unknown"
    return {"fastankh": ours, "torch": torch.__version__, "transformers": transformers.__version__}


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """A short digest of a whole fingerprint, stamped on every shard so a shard is never taken from another run."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_fingerprint(saved: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse to resume `where` (written with `saved`) with a run whose fingerprint is `now`: one line naming the
    first field that differs, with both values."""
    old, new = _flat(saved), _flat(json.loads(json.dumps(now)))
    for field in sorted(set(old) | set(new)):
        if old.get(field) != new.get(field):
            raise UserError(
                f"{where}: written with {field}={old.get(field)}, this run has {field}={new.get(field)}; "
                "rerun with the same settings to resume, or write to another output"
            )


__all__ = ["check_fingerprint", "fingerprint_digest", "model_digest", "package_versions", "tokenizer_digest"]
