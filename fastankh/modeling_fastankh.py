"""FastANKH: an exact, fast re-implementation of the ANKH (T5 v1.1) protein encoder.

Semantics match `transformers.T5EncoderModel`: pre-RMSNorm blocks, no biases, gated FFN,
UNSCALED attention with a bucketed relative position bias, final RMSNorm. Differences are in
how the work is done: the position bias is built once per forward and shared by every layer, and
attention runs through one of the implementations of attention.py (sdpa, flex, eager), chosen there from
`config.attn_backend`, which transformers' `attn_implementation` / `set_attn_implementation` also set.

This file travels to the Hub as remote code: it imports only torch, transformers and its siblings, relatively
(the files of configuration_fastankh.REMOTE_CODE_FILES, which save_pretrained copies next to it).
"""

from __future__ import annotations

import math
import os
import shutil

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .attention import (
    ATTENTION_IMPLEMENTATIONS,
    AttentionInputs,
    attention_inputs,
    backend_name,
    resolve_backend,
    transformers_name,
)
from .configuration_fastankh import ARCHITECTURE_FIELDS, REMOTE_CODE_FILES, FastAnkhConfig, pinned_revision
from .embedding_method import EmbeddingMixin
from .losses import counted_loss
from .precision import resolve_precision
from .runtime import RUNTIME, warn_once
from .t5_conversion import (  # noqa: F401  (_checkpoint_model_type: used by modeling_tasks.py)
    _checkpoint_config,
    _checkpoint_model_type,
    _from_t5_checkpoint,
    config_from_t5,
    convert_t5_state_dict,
    t5_key_to_fastankh,
)

# from_pretrained keyword arguments that are config attributes too but here are loading options.
_DTYPE_KWARGS = ("dtype", "torch_dtype")
INFERENCE_ROW_MULTIPLE = 256  # packed token rows at inference: a multiple of this (AttentionInputs.rows_out)
FFN_CHUNK_BYTES = 12 << 20  # the smallest (tokens, d_ff) chunk of the FFN at inference (FastAnkhFeedForward._inference)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def _t5_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """T5LayerNorm's math for bf16/fp16 weights: variance in fp32, normalised x rounded to the weight's dtype."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return weight * x


def _gated(act: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """act(gate) * up, the FFN's elementwise middle."""
    return act(gate) * up


# Input gradient of the activations the ANKH family uses (ACT2FN names), for _GatedActivation's backward.
_ACTIVATION_BACKWARD = {
    "gelu_pytorch_tanh": lambda grad, x: torch.ops.aten.gelu_backward(grad, x, approximate="tanh"),
    "silu": torch.ops.aten.silu_backward,
}


def _bare(*layers: nn.Module) -> bool:
    """True when every layer is a plain nn.Linear without hooks: its weight alone is its function, so it may be
    fused with others or fed to a fused kernel. A wrapped layer (peft's LoRA, a quantized Linear) runs as itself."""
    return all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in layers)


# oneDNN post-op (name, algorithm) of each FFN activation (transformers' ACT2FN names).
_ONEDNN_ACTIVATIONS = {"gelu_pytorch_tanh": ("gelu", "tanh"), "silu": ("swish", ""), "swish": ("swish", "")}


def _fused_gate(x: torch.Tensor, gate: nn.Linear, up: nn.Linear, activation: str) -> torch.Tensor | None:
    """act(x W_gate^T) * (x W_up^T), (tokens, d_model) -> (tokens, d_ff), as two oneDNN matmuls whose epilogues
    apply the activation and the product (no separate pass over the (tokens, d_ff) intermediates: -20% time of
    a bf16 FFN on an AMX Xeon). The activation is computed in fp32 on the fp32 accumulator and rounded once, so it
    is as close to the fp32 result as the unfused bf16 path. None where not used: outside bf16 CPU inference, on a
    wrapped Linear, or once the kernel failed in this process (then the caller's unfused path runs)."""
    if (
        RUNTIME.fused_gate_failed
        or x.dtype != torch.bfloat16
        or x.device.type != "cpu"
        or activation not in _ONEDNN_ACTIVATIONS
        or gate.weight.dtype != x.dtype
        or not _bare(gate, up)
    ):
        return None
    name, algorithm = _ONEDNN_ACTIVATIONS[activation]
    try:
        activated = torch.ops.mkldnn._linear_pointwise(x, gate.weight, None, name, [], algorithm)
        return torch.ops.mkldnn._linear_pointwise.binary(x, activated, up.weight, None, "mul")
    except (AttributeError, RuntimeError, NotImplementedError) as err:  # a build without oneDNN's fused linear
        RUNTIME.fused_gate_failed = True
        warn_once(f"oneDNN's fused linear is not available here ({type(err).__name__}); the FFN gate runs unfused")
        return None


class _GatedActivation(torch.autograd.Function):
    """act(gate) * up for training, keeping only `gate` and `up` for the backward and recomputing act(gate)
    there. Autograd's act + mul also keeps act(gate): one (tokens, d_ff) tensor per layer more, the largest
    saved activation after the attention probabilities. The gradients are autograd's, op for op."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, act: nn.Module, act_backward) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.act, ctx.act_backward = act, act_backward
        return act(gate) * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        return ctx.act_backward(grad * up, gate), grad * ctx.act(gate), None, None


def _region(fn, compiled: bool):
    """`fn`, or its torch.compile'd twin (dynamic shapes: one graph for every token count) when `compiled`.

    Inductor fuses each region's elementwise chain into one kernel (the same ops, casts included). A first
    call that cannot compile (no C++ compiler, an unsupported backend) warns once and runs eager for good."""
    name = fn.__name__
    if not compiled or RUNTIME.regions.get(name, True) is None:
        return fn
    if name not in RUNTIME.regions:
        RUNTIME.regions[name] = torch.compile(fn, dynamic=True)
    compiled_fn = RUNTIME.regions[name]
    if name in RUNTIME.regions_proven:
        return compiled_fn

    def first_call(*args):
        try:
            out = compiled_fn(*args)
        except Exception as err:  # noqa: BLE001 - a compile failure of any kind means: eager, as before
            RUNTIME.regions[name] = None
            warn_once(f"torch.compile of {name} failed ({type(err).__name__}); running it eagerly")
            return fn(*args)
        RUNTIME.regions_proven.add(name)
        return out

    return first_call


def use_compiled_regions(
    choice: str | bool, device: torch.device, dtype: torch.dtype, d_model: int, training: bool
) -> bool:
    """config.compile_regions: True / False, or "auto": on CUDA, and for bf16 inference on CPUs with native bf16
    at real model widths (d_model >= 512): there fusing the norms and the FFN gate measurably pays (~6% of a
    forward on ankh_base widths); CPU training under autocast gains nothing (its norms are fp32 and fused)."""
    if choice != "auto":
        return bool(choice)
    if device.type == "cuda":
        return True
    from .precision import has_native_bf16

    return (
        device.type == "cpu" and not training and dtype == torch.bfloat16 and d_model >= 512 and has_native_bf16(device)
    )


class FastAnkhRMSNorm(nn.Module):
    """T5 LayerNorm: x / rms(x) * weight, no mean subtraction, no bias; variance in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # fused, same math
        return _region(_t5_rms_norm, compiled)(x, self.weight, self.eps)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bidirectional bucketing of `key_pos - query_pos` into `num_buckets` buckets."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    n = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = (
        max_exact
        + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class FastAnkhRelativePositionBias(nn.Module):
    """The encoder's one relative position bias table, (num_buckets, heads), shared by all layers."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__()
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_heads)

    def by_distance(self, length: int, device: torch.device) -> torch.Tensor:
        """Bias per relative distance: (2*length-1, heads); row `d + length - 1` is distance d = k - q."""
        distance = torch.arange(-(length - 1), length, device=device)
        return self.relative_attention_bias(relative_position_bucket(distance, self.num_buckets, self.max_distance))

    def dense(self, length: int, device: torch.device) -> torch.Tensor:
        """Full bias (1, heads, length, length), for the sdpa backend."""
        table = self.by_distance(length, device).t()  # (H, 2L-1)
        pos = torch.arange(length, device=device)
        index = pos[None, :] - pos[:, None] + (length - 1)  # (L, L): k - q
        return table[:, index].unsqueeze(0)  # gathered straight into a contiguous (1, H, L, L)


class FastAnkhAttention(nn.Module):
    """Multi-head self-attention, T5 style: no biases, no 1/sqrt(d) scaling, inner_dim = heads * d_kv."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__()
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        """x: (N, d_model) packed real tokens -> (N, d_model); see `AttentionInputs` for the layout."""
        rows, length = attn.rows, attn.row_length

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, inner) -> (rows, H, row_length, d_kv)
            return attn.to_attention(t).view(rows, length, self.num_heads, self.d_kv).transpose(1, 2)

        if torch.is_grad_enabled() or not _bare(self.q, self.k, self.v):
            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        else:  # inference: one matmul three times as wide (the weights concatenated), one move to the attention
            # layout for all three; q, k, v are strided views of it (the kernels take any last-dim-contiguous strides)
            fused = attn.to_attention(F.linear(x, torch.cat([self.q.weight, self.k.weight, self.v.weight])))
            q, k, v = fused.view(rows, length, 3, self.num_heads, self.d_kv).permute(2, 0, 3, 1, 4).unbind(0)
        out, probabilities = ATTENTION_IMPLEMENTATIONS[attn.backend].attend(q, k, v, attn)
        if attn.attentions is not None:
            attn.attentions.append(probabilities)
        return self.o(attn.from_attention(out.transpose(1, 2).reshape(rows * length, -1)))


class FastAnkhFeedForward(nn.Module):
    """Gated FFN: wo(act(wi_0 x) * wi_1 x); act is gelu_new (ankh v1) or silu (ankh2/3)."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        # gelu_new is the tanh GELU; PyTorch's fused kernel computes it without the five
        # intermediate tensors (and their saved activations) of the Python formula.
        self.activation = {"gelu_new": "gelu_pytorch_tanh"}.get(config.dense_act_fn, config.dense_act_fn)
        self.act = ACT2FN[self.activation]
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        if not (torch.is_grad_enabled() or (self.training and self.dropout.p > 0)):
            return self._inference(x, compiled)
        gate, up = self.wi_0(x), self.wi_1(x)
        act_backward = _ACTIVATION_BACKWARD.get(self.activation)
        if compiled or act_backward is None or not (gate.requires_grad or up.requires_grad):
            hidden = _region(_gated, compiled)(self.act, gate, up)
        else:
            hidden = _GatedActivation.apply(gate, up, self.act, act_backward)
        return self.wo(self.dropout(hidden))

    def _inference(self, x: torch.Tensor, compiled: bool) -> torch.Tensor:
        """The forward without autograd, in equal chunks of tokens, each chunk's wo written straight into the
        output. The (tokens, d_ff) intermediates of a whole batch (43 MB each at 7,000 tokens of ankh_base in bf16)
        are past glibc's largest mmap threshold (32 MB): every one was fresh memory, page-faulted in and handed
        back, three per layer (~40% of a bf16 forward's page faults on AMX; a fault costs ~1 ms per MB there when
        the cores are shared). Chunks of FFN_CHUNK_BYTES to twice that (>= 1024 tokens) are reused from the heap.
        Same ops per token; oneDNN's bf16 rows came out bit-equal to the whole batch's at ankh_base widths for
        chunks of >= ~1000 rows (they may round differently at other widths, as a change of batch does)."""
        rows = max(1024, FFN_CHUNK_BYTES // (self.wi_0.out_features * x.element_size()))
        chunks = x.size(0) // rows if x.dim() == 2 and _bare(self.wo) else 0
        if chunks < 2:
            return self.wo(self._gated_hidden(x, compiled))
        size = -(-x.size(0) // chunks)  # equal chunks of rows..2*rows-1 tokens, never a short tail
        out = x.new_empty(x.size(0), self.wo.out_features)
        for start in range(0, x.size(0), size):
            part = slice(start, start + size)
            # wo has no bias: nn.Linear runs mm(hidden, wo.weight^T); here it writes into the output's rows
            torch.mm(self._gated_hidden(x[part], compiled), self.wo.weight.t(), out=out[part])
        return out

    def _gated_hidden(self, x: torch.Tensor, compiled: bool) -> torch.Tensor:
        fused = _fused_gate(x, self.wi_0, self.wi_1, self.activation)
        if fused is not None:
            return fused
        if compiled:
            return _region(_gated, True)(self.act, self.wi_0(x), self.wi_1(x))
        # act(gate) replaces the gate before `up` exists and takes the product in place, so two (tokens, d_ff)
        # tensors are alive at once instead of four (gate, up, act(gate), product)
        return self.act(self.wi_0(x)).mul_(self.wi_1(x))


class FastAnkhBlock(GradientCheckpointingLayer):
    """Pre-norm residual block on packed tokens (N, d_model): x + Attn(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__()
        self.attn_norm = FastAnkhRMSNorm(config.d_model, config.layer_norm_epsilon)
        self.attention = FastAnkhAttention(config)
        self.ffn_norm = FastAnkhRMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FastAnkhFeedForward(config)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attn_norm(x, attn.compiled), attn))
        return x + self.dropout(self.ffn(self.ffn_norm(x, attn.compiled), attn.compiled))


# --------------------------------------------------------------------------------------------
# Encoder and models
# --------------------------------------------------------------------------------------------
class FastAnkhEncoder(nn.Module):
    """Stack of blocks sharing one relative position bias, then the final RMSNorm."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__()
        self.config = config
        self.position_bias = FastAnkhRelativePositionBias(config)
        self.layers = nn.ModuleList(FastAnkhBlock(config) for _ in range(config.num_layers))
        self.final_norm = FastAnkhRMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        """hidden: (B, L, d_model) embeddings; attention_mask: (B, L), 1 for real tokens.

        Returns last_hidden_state (B, L, d_model); positions where attention_mask is 0 are zeros. With
        `output_attentions`, `attentions`: each layer's probabilities (B, H, L, L), zero rows at padding queries.
        """
        b, length, _ = hidden.shape
        key_mask = (
            torch.ones(b, length, dtype=torch.bool, device=hidden.device)
            if attention_mask is None
            else attention_mask.to(device=hidden.device, dtype=torch.bool)
        )
        training = torch.is_grad_enabled() and (self.training or any(p.requires_grad for p in self.parameters()))
        backend = resolve_backend(self.config.attn_backend, hidden.device, training, key_mask, output_attentions)
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        else:
            dtype = self.layers[0].attention.q.weight.dtype if len(self.layers) else hidden.dtype
        # Inference rounds the packed rows to a few shapes (AttentionInputs.rows_out); training keeps them exact.
        round_rows = 1 if training else INFERENCE_ROW_MULTIPLE
        attn = attention_inputs(backend, key_mask, dtype, self.position_bias, self.config.flex_kernel, round_rows)
        attn.attentions = [] if output_attentions else None
        attn.compiled = use_compiled_regions(
            self.config.compile_regions, hidden.device, dtype, self.config.d_model, training
        )

        def padded(x: torch.Tensor) -> torch.Tensor:  # (N, d) -> (B, L, d), zeros at padding
            return attn.unpack(x).view(b, length, -1)

        hidden = self.dropout(attn.pack(hidden.flatten(0, 1)))
        all_hidden = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(padded(hidden))
            hidden = layer(hidden, attn)
        hidden = padded(self.dropout(self.final_norm(hidden, attn.compiled)))
        if output_hidden_states:
            all_hidden.append(hidden)
        return BaseModelOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(attn.attentions) if output_attentions else None,
        )


class FastAnkhPreTrainedModel(PreTrainedModel):
    config_class = FastAnkhConfig
    base_model_prefix = "model"  # task and MaskedLM models hold the encoder as `self.model`
    supports_gradient_checkpointing = True
    _no_split_modules = ["FastAnkhBlock"]
    # Original ElnaggarLab checkpoints are T5ForConditionalGeneration: decoder and lm_head are dropped;
    # AutoModel on a fine-tuned task export keeps the encoder and drops the task head.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\.", r"^head\."]
    # transformers' attention API: attn_implementation= and set_attn_implementation act on config.attn_backend
    # (attention.py's table), in transformers' spelling ("sdpa", "flex_attention", "eager") or FastANKH's.
    _supports_sdpa = True
    _supports_flex_attn = True

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        """transformers' check of a requested implementation: a name of attention.py's table in either spelling
        (None: the config's). Fallbacks are decided per forward, by attention.resolve_backend."""
        return transformers_name(backend_name(attn_implementation or self.config.attn_backend))

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """transformers' save_pretrained, then every file of REMOTE_CODE_FILES next to the weights (the
        config's auto_map names them), so the folder loads with trust_remote_code and transformers alone."""
        super().save_pretrained(save_directory, *args, **kwargs)
        copy_remote_code(save_directory)

    def _init_weights(self, module: nn.Module) -> None:
        """T5's initialisation, so a random `ankh_tiny` trains like the real family."""
        c, f = self.config, self.config.initializer_factor
        if isinstance(module, FastAnkhRMSNorm):
            nn.init.constant_(module.weight, f)
        elif isinstance(module, nn.Embedding):
            std = f * c.d_model**-0.5 if module.num_embeddings == c.relative_attention_num_buckets else f
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, FastAnkhAttention):
            nn.init.normal_(module.q.weight, 0.0, f * (c.d_model * c.d_kv) ** -0.5)
            nn.init.normal_(module.k.weight, 0.0, f * c.d_model**-0.5)
            nn.init.normal_(module.v.weight, 0.0, f * c.d_model**-0.5)
            nn.init.normal_(module.o.weight, 0.0, f * c.inner_dim**-0.5)
        elif isinstance(module, FastAnkhFeedForward):
            nn.init.normal_(module.wi_0.weight, 0.0, f * c.d_model**-0.5)
            nn.init.normal_(module.wi_1.weight, 0.0, f * c.d_model**-0.5)
            nn.init.normal_(module.wo.weight, 0.0, f * c.d_ff**-0.5)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args,
        attn_backend: str | None = None,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        """Load a FastANKH checkpoint, or convert an original ElnaggarLab T5 checkpoint on the fly.

        `pretrained_model_name_or_path`: local directory or hub id; a preset's hub id loads its pinned
        revision (configuration_fastankh.PRESETS) unless `revision=` says otherwise. T5 checkpoints
        (T5ForConditionalGeneration / T5EncoderModel) keep the encoder and shared embedding only.
        Keyword arguments that name config fields override the checkpoint's config (`attn_backend`,
        `dropout_rate`, ...); architecture fields (ARCHITECTURE_FIELDS) must equal the checkpoint's.
        `attn_implementation` is transformers' name for `attn_backend` ("sdpa", "flex_attention", "eager").
        `device` moves the loaded model there; `dtype` casts the weights; `precision` ("auto" | "32" | "bf16",
        fastankh/precision.py) casts them to the dtype that precision computes in on that device (`auto`:
        bf16 where the hardware has native bf16, else fp32); other keyword arguments are
        transformers' loading options (for T5 checkpoints: hub options, `config`, `device_map` as one
        device and `output_loading_info`).
        """
        if args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes one positional argument (the path), got {args!r}")
        path = os.fspath(pretrained_model_name_or_path)
        device = kwargs.pop("device", None)
        precision = kwargs.pop("precision", None)
        want_info = kwargs.pop("output_loading_info", False)
        if attn_implementation is not None:
            asked = backend_name(attn_implementation)
            if attn_backend is not None and backend_name(attn_backend) != asked:
                raise ValueError(
                    f"attn_backend={attn_backend!r} disagrees with attn_implementation={attn_implementation!r}"
                )
            attn_backend = asked
        if attn_backend is not None:
            kwargs["attn_backend"] = attn_backend
        revision = pinned_revision(path)
        if revision is not None:
            kwargs.setdefault("revision", revision)
        raw = _checkpoint_config(path, kwargs)
        if raw is None:  # no config.json: transformers explains what is missing
            return super().from_pretrained(path, output_loading_info=want_info, **kwargs)
        is_t5 = raw.get("model_type") == "t5"
        checkpoint = config_from_t5(raw) if is_t5 else cls.config_class.from_dict(raw)
        config = kwargs.pop("config", None)
        if isinstance(config, (str, os.PathLike)):
            config = cls.config_class.from_pretrained(config)
        # dtype / torch_dtype are config attributes too, but here they are loading options.
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in _DTYPE_KWARGS and hasattr(checkpoint, k)}
        config = _configured(config if config is not None else checkpoint, checkpoint, overrides, path)
        if is_t5:
            model, info = _from_t5_checkpoint(cls, path, config, kwargs)
        else:
            model, info = super().from_pretrained(path, config=config, output_loading_info=True, **kwargs)
            if "lm_head.weight" in info["missing_keys"]:  # an encoder-only checkpoint into the MaskedLM
                model.reset_lm_head()
        if device is not None:
            model.to(device)
        if precision is not None:
            model.to(resolve_precision(precision, model.device))
        return (model, info) if want_info else model


class FastAnkhModel(EmbeddingMixin, FastAnkhPreTrainedModel):
    """ANKH encoder: token ids -> per-token hidden states (B, L, d_model)."""

    def __init__(self, config: FastAnkhConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = FastAnkhEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        """input_ids: (B, L); attention_mask: (B, L) 1 = token, 0 = padding.

        Returns `last_hidden_state` (B, L, d_model) and, if asked, `hidden_states`: num_layers + 1
        tensors (embedding output, the input of each later block, the final normed output), and `attentions`:
        each layer's probabilities (B, H, L, L), computed by the eager implementation for this call (zero rows at
        padding queries). `return_dict=False` gives the tuple of the fields that are set.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        out = self.encoder(
            inputs_embeds,
            attention_mask,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
        )
        return out if return_dict is not False else out.to_tuple()


class FastAnkhForMaskedLM(FastAnkhPreTrainedModel):
    """Encoder + a per-token vocabulary head, for continued masked-LM fine-tuning.

    ANKH was pretrained as a T5 denoiser, NOT for masked-LM on the encoder: this head is not a
    pretrained component. It starts as the shared input embedding scaled by d_model**-0.5 (what T5 does
    before a tied head), so the initial logits are O(1) and the loss near ln(vocab_size); it must be trained.
    """

    def __init__(self, config: FastAnkhConfig):
        super().__init__(config)
        self.model = FastAnkhModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self.reset_lm_head()

    @torch.no_grad()
    def reset_lm_head(self) -> None:
        """Start the (untrained) LM head as the shared input embedding times d_model**-0.5.

        An unscaled copy gives logits of std ~ sqrt(d_model) * |embedding row| (12..66 on the ANKH family),
        an initial masked-token loss of ~70 and an infinite perplexity."""
        self.lm_head.weight.copy_(self.model.embed_tokens.weight * self.config.d_model**-0.5)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the chosen tokens: logits (B, L, V), labels (B, L) with -100 elsewhere."""
        return counted_loss(logits, labels, labels != -100, "single_label_classification")

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput:
        """labels: (B, L) token ids, -100 where no loss is taken."""
        out = self.model(
            input_ids, attention_mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None if labels is None else self.loss(logits, labels)
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return out if return_dict is not False else out.to_tuple()


def _configured(config: FastAnkhConfig, checkpoint: FastAnkhConfig, overrides: dict, path: str) -> FastAnkhConfig:
    """A copy of `config` with `overrides` set (validated like a new config); its architecture must be the
    checkpoint's, so that no asked value is dropped or silently met with random weights."""
    config = type(config).from_dict({**config.to_dict(), **overrides})
    for field in ARCHITECTURE_FIELDS:
        asked, have = getattr(config, field), getattr(checkpoint, field)
        if asked != have:
            raise ValueError(f"{path}: {field}={asked!r} was asked but the checkpoint has {field}={have!r}")
    for name, value in overrides.items():
        if getattr(config, name) != value:  # e.g. tie_word_embeddings, which FastAnkhConfig pins to False
            kept = getattr(config, name)
            raise ValueError(f"{name}={value!r} cannot be set on a FastANKH config (it stays {kept!r})")
    return config


def copy_remote_code(folder: str | os.PathLike) -> None:
    """Copy every file of REMOTE_CODE_FILES (this file's siblings) into `folder`."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(os.path.join(here, name), os.path.join(folder, name))


__all__ = [
    "FastAnkhPreTrainedModel",
    "FastAnkhModel",
    "FastAnkhForMaskedLM",
    "convert_t5_state_dict",
    "config_from_t5",
    "relative_position_bucket",
    "copy_remote_code",
]
