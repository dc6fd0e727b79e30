"""FastANKH configuration: T5 v1.1 encoder field names, ANKH presets (hub ids pinned to a revision), the
attention setting, and REMOTE_CODE_FILES, the files that travel to the Hub as remote code.

This file travels to the Hub as remote code: it imports only torch/transformers and its sibling attention.py.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .attention import ATTN_BACKENDS, backend_name, transformers_name

# The files a saved FastANKH folder carries as remote code (save_pretrained copies them; the config's auto_map names
# their classes): the modeling files and every sibling they import, so transformers alone runs them.
REMOTE_CODE_FILES = (
    "configuration_fastankh.py",
    "attention.py",
    "runtime.py",
    "losses.py",
    "embedding_method.py",
    "precision.py",
    "t5_conversion.py",
    "modeling_fastankh.py",
    "heads.py",
    "modeling_tasks.py",
)
FLEX_KERNELS = ("auto", "triton", "flash")
# Fields that fix what the weights mean: a checkpoint only loads with its own values of these.
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dense_act_fn",
    "feed_forward_proj",
)

# Shapes of the released ANKH encoders (see README "Models"). `hub_id` is the original
# ElnaggarLab T5ForConditionalGeneration checkpoint that `from_pretrained` converts on the fly; `revision` the
# commit of it that FastANKH loads (the official one), so a change on the Hub never changes weights or tokenizer.
_PRESET_FIELDS = ("hub_id", "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "dense_act_fn")
_REVISIONS = {
    "ankh_base": "d99cb6b966530dfc2ae96bc69d9255c2a07308b0",
    "ankh_large": "74b371dbfa3ee0a05d32ae74df0c2e0b82d6b9a6",
    "ankh2_large": "aa9b9fa72288c47d9f618ce80c011e24b54e17a8",
    "ankh3_large": "2be091622e8a393f0ef21735070084123c874b6e",
    "ankh3_xl": "e00113df5c95ef71df7ea3f5a73d56bd00e473a4",
}
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    name: {**dict(zip(_PRESET_FIELDS, row)), "revision": _REVISIONS.get(name)} for name, row in {
        "ankh_base": ("ElnaggarLab/ankh-base", 144, 768, 64, 3072, 48, 12, "gelu_new"),
        "ankh_large": ("ElnaggarLab/ankh-large", 144, 1536, 64, 3840, 48, 16, "gelu_new"),
        "ankh2_large": ("ElnaggarLab/ankh2-ext2", 144, 1536, 64, 3840, 48, 16, "silu"),
        "ankh3_large": ("ElnaggarLab/ankh3-large", 256, 1536, 64, 3840, 48, 16, "silu"),
        "ankh3_xl": ("ElnaggarLab/ankh3-xl", 256, 2560, 64, 6720, 48, 32, "silu"),
        # Same family, small enough for tests and the offline CPU quickstart (random init).
        # inner_dim = 4*32 = 128 != d_model = 96, like the large models.
        "ankh_tiny": (None, 144, 96, 32, 192, 4, 4, "gelu_new"),
    }.items()
}
# fmt: on


class FastAnkhConfig(PreTrainedConfig):
    """Configuration of a FastANKH encoder (T5 v1.1 encoder semantics).

    Field names follow `T5Config` so original ANKH `config.json` files load unchanged;
    `hidden_size`, `num_attention_heads`, `num_hidden_layers` and `head_dim` are aliases.
    `attn_backend` picks the attention implementation (attention.py): "auto", "sdpa", "flex", "kernels_flash" or
    "eager"; transformers' `_attn_implementation` is the same setting in its spelling ("flex_attention" for
    "flex"). `flex_kernel` picks flex's
    GPU kernel: "auto" (FLASH/FA4 on Hopper and Blackwell where flash_attn.cute is installed, else Triton),
    "triton" or "flash".
    """

    model_type = "fast_ankh"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "head_dim": "d_kv",
    }

    vocab_size: int = 144
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 48
    num_heads: int = 12
    relative_attention_num_buckets: int = 64
    relative_attention_max_distance: int = 128
    feed_forward_proj: str | None = None
    dense_act_fn: str | None = None
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    initializer_factor: float = 1.0
    attn_backend: str = "sdpa"
    flex_kernel: str = "auto"
    # "auto" | True | False: RMSNorm and the FFN gate as torch.compile'd regions (fused elementwise kernels);
    # auto = on CUDA, and on CPUs with native bf16 computing in bf16 at d_model >= 512 (see modeling_fastankh)
    compile_regions: str | bool = "auto"
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # T5 configs name the activation through feed_forward_proj ("gated-gelu" means gelu_new).
        if self.dense_act_fn is None:
            proj = self.feed_forward_proj or "gated-gelu"
            act = proj.split("-")[-1]
            self.dense_act_fn = "gelu_new" if act == "gelu" else act
        if self.feed_forward_proj is None:
            self.feed_forward_proj = "gated-gelu" if self.dense_act_fn == "gelu_new" else f"gated-{self.dense_act_fn}"
        self.attn_backend = backend_name(self.attn_backend)
        if self.compile_regions not in ("auto", True, False):
            raise ValueError(f"compile_regions must be 'auto', true or false, got {self.compile_regions!r}")
        if self.flex_kernel not in FLEX_KERNELS:
            raise ValueError(f"flex_kernel must be one of {FLEX_KERNELS}, got {self.flex_kernel!r}")
        kwargs.pop("is_encoder_decoder", None)
        self.tie_word_embeddings = False
        super().__post_init__(**kwargs)

    @property
    def _attn_implementation_internal(self) -> str:
        """transformers' attention setting (what `attn_implementation=`, `set_attn_implementation` and
        `_attn_implementation` read and write): `attn_backend` in transformers' spelling, one setting."""
        return transformers_name(self.attn_backend)

    @_attn_implementation_internal.setter
    def _attn_implementation_internal(self, value: str | None) -> None:
        if value is not None:  # None: nothing asked
            self.attn_backend = backend_name(value)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FastAnkhConfig:
        """Config of a named ANKH model (`ankh_base`, ..., `ankh3_xl`, `ankh_tiny`) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {k: v for k, v in PRESETS[name].items() if k not in ("hub_id", "revision")}
        fields.update(overrides)
        config = cls(**fields)
        config.preset = name
        return config

    @staticmethod
    def hub_id(name: str) -> str | None:
        """ElnaggarLab hub id of a preset (None for `ankh_tiny`)."""
        return PRESETS[name]["hub_id"]


def pinned_revision(name_or_path: str) -> str | None:
    """The pinned revision of a preset's hub id (None for anything else: a directory, another repo)."""
    return next((p["revision"] for p in PRESETS.values() if p["hub_id"] and p["hub_id"] == name_or_path), None)


__all__ = ["FastAnkhConfig", "PRESETS", "ATTN_BACKENDS", "ARCHITECTURE_FIELDS", "REMOTE_CODE_FILES", "pinned_revision"]
