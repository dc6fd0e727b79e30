"""FastANKH configuration: T5 v1.1 encoder field names, ANKH presets and the attention backend.

This file travels to the Hub as remote code: it imports only torch/transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

ATTN_BACKENDS = ("sdpa", "flex", "kernels_flash")
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
# ElnaggarLab T5ForConditionalGeneration checkpoint that `from_pretrained` converts on the fly.
PRESETS: dict[str, dict[str, Any]] = {
    "ankh_base": dict(
        hub_id="ElnaggarLab/ankh-base",
        vocab_size=144,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=48,
        num_heads=12,
        dense_act_fn="gelu_new",
    ),
    "ankh_large": dict(
        hub_id="ElnaggarLab/ankh-large",
        vocab_size=144,
        d_model=1536,
        d_kv=64,
        d_ff=3840,
        num_layers=48,
        num_heads=16,
        dense_act_fn="gelu_new",
    ),
    "ankh2_large": dict(
        hub_id="ElnaggarLab/ankh2-ext2",
        vocab_size=144,
        d_model=1536,
        d_kv=64,
        d_ff=3840,
        num_layers=48,
        num_heads=16,
        dense_act_fn="silu",
    ),
    "ankh3_large": dict(
        hub_id="ElnaggarLab/ankh3-large",
        vocab_size=256,
        d_model=1536,
        d_kv=64,
        d_ff=3840,
        num_layers=48,
        num_heads=16,
        dense_act_fn="silu",
    ),
    "ankh3_xl": dict(
        hub_id="ElnaggarLab/ankh3-xl",
        vocab_size=256,
        d_model=2560,
        d_kv=64,
        d_ff=6720,
        num_layers=48,
        num_heads=32,
        dense_act_fn="silu",
    ),
    # Same family, small enough for tests and the offline CPU quickstart (random init).
    # inner_dim = 4*32 = 128 != d_model = 96, like the large models.
    "ankh_tiny": dict(
        hub_id=None,
        vocab_size=144,
        d_model=96,
        d_kv=32,
        d_ff=192,
        num_layers=4,
        num_heads=4,
        dense_act_fn="gelu_new",
    ),
}


class FastAnkhConfig(PreTrainedConfig):
    """Configuration of a FastANKH encoder (T5 v1.1 encoder semantics).

    Field names follow `T5Config` so original ANKH `config.json` files load unchanged;
    `hidden_size`, `num_attention_heads`, `num_hidden_layers` and `head_dim` are aliases.
    `attn_backend` picks the attention kernel: "sdpa", "flex" or "kernels_flash". `flex_kernel` picks flex's
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
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if self.compile_regions not in ("auto", True, False):
            raise ValueError(f"compile_regions must be 'auto', true or false, got {self.compile_regions!r}")
        if self.flex_kernel not in FLEX_KERNELS:
            raise ValueError(f"flex_kernel must be one of {FLEX_KERNELS}, got {self.flex_kernel!r}")
        kwargs.pop("is_encoder_decoder", None)
        self.tie_word_embeddings = False
        super().__post_init__(**kwargs)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FastAnkhConfig:
        """Config of a named ANKH model (`ankh_base`, ..., `ankh3_xl`, `ankh_tiny`) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {k: v for k, v in PRESETS[name].items() if k != "hub_id"}
        fields.update(overrides)
        config = cls(**fields)
        config.preset = name
        return config

    @staticmethod
    def hub_id(name: str) -> str | None:
        """ElnaggarLab hub id of a preset (None for `ankh_tiny`)."""
        return PRESETS[name]["hub_id"]


__all__ = ["FastAnkhConfig", "PRESETS", "ATTN_BACKENDS", "ARCHITECTURE_FIELDS"]
