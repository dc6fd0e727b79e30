"""FastANKH: an exact, fast re-implementation of the ANKH (T5 v1.1) protein encoder.

Semantics match `transformers.T5EncoderModel`: pre-RMSNorm blocks, no biases, gated FFN,
UNSCALED attention with a bucketed relative position bias, final RMSNorm. Differences are in
how the work is done: the position bias is built once per forward and shared by every layer,
and attention runs through one of

- "sdpa": `scaled_dot_product_attention(scale=1.0)` with one additive float mask (bias + key padding);
- "flex": `flex_attention` with a score_mod that reads the bias from a (2L-1, heads) table indexed by
  the relative distance (no L x L x H tensor) and a block mask that skips padded key blocks;
- "kernels_flash": flash kernels cannot take an arbitrary bias, so this falls back to flex (GPU) or sdpa.

This file travels to the Hub as remote code: it imports only torch, transformers and its siblings, relatively
(the config file and t5_conversion.py, which transformers' save_pretrained copies next to it).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_fastankh import ARCHITECTURE_FIELDS, FastAnkhConfig
from .precision import resolve_precision
from .t5_conversion import (  # noqa: F401  (_checkpoint_model_type: used by modeling_tasks.py)
    _checkpoint_config,
    _checkpoint_model_type,
    _from_t5_checkpoint,
    config_from_t5,
    convert_t5_state_dict,
    t5_key_to_fastankh,
)

FLEX_BLOCK = 128  # flex's sparse block size
FLEX_MIN_ROW = 1024  # the shortest packed flex row (see flex_row_length)
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


_REGIONS: dict[str, object] = {}
_REGIONS_PROVEN: set[str] = set()


def _region(fn, compiled: bool):
    """`fn`, or its torch.compile'd twin (dynamic shapes: one graph for every token count) when `compiled`.

    Inductor fuses each region's elementwise chain into one kernel (the same ops, casts included). A first
    call that cannot compile (no C++ compiler, an unsupported backend) warns once and runs eager for good."""
    name = fn.__name__
    if not compiled or _REGIONS.get(name, True) is None:
        return fn
    if name not in _REGIONS:
        _REGIONS[name] = torch.compile(fn, dynamic=True)
    compiled_fn = _REGIONS[name]
    if name in _REGIONS_PROVEN:
        return compiled_fn

    def first_call(*args):
        try:
            out = compiled_fn(*args)
        except Exception as err:  # noqa: BLE001 - a compile failure of any kind means: eager, as before
            _REGIONS[name] = None
            _warn_once(f"torch.compile of {name} failed ({type(err).__name__}); running it eagerly")
            return fn(*args)
        _REGIONS_PROVEN.add(name)
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


class _BiasedAttention(torch.autograd.Function):
    """softmax(q k^T + mask) v on CPU when the mask needs a gradient (a trainable position bias).

    sdpa falls back to its math path then, which keeps every layer's (B, H, L, L) probabilities until the
    backward: the largest activation at L >= 512. Here the forward is the flash kernel (no L x L tensor kept; on
    2 cores ~3x faster than math at L=513) and the backward recomputes the probabilities from the saved
    log-sum-exp, in fp32, one layer at a time. q, k, v: (B, H, L, d_kv); mask: (B or 1, H, L, L)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=1.0)
        ctx.save_for_backward(q, k, v, mask, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, k, v, mask, lse = ctx.saved_tensors
        dtypes = (q.dtype, k.dtype, v.dtype, mask.dtype)
        q, k, v, grad = q.float(), k.float(), v.float(), grad.float()
        probs = torch.matmul(q, k.transpose(-1, -2)).add_(mask).sub_(lse.unsqueeze(-1)).exp_()  # (B, H, L, L)
        grad_v = torch.matmul(probs.transpose(-1, -2), grad)
        grad_scores = torch.matmul(grad, v.transpose(-1, -2))  # d probs, then in place d scores (softmax backward;
        grad_scores.sub_((grad_scores * probs).sum(-1, keepdim=True)).mul_(probs)  # sum(dO * O) is off in bf16)
        del probs
        grad_q, grad_k = torch.matmul(grad_scores, k), torch.matmul(grad_scores.transpose(-1, -2), q)
        grad_mask = grad_scores.sum(0, keepdim=True) if mask.size(0) == 1 < q.size(0) else grad_scores
        return tuple(g.to(dtype) for g, dtype in zip((grad_q, grad_k, grad_v, grad_mask), dtypes))


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

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if attn.backend == "flex":
            out = _flex_attention(q, k, v, attn)
        else:
            mask = attn.mask if attn.mask.dtype == q.dtype else attn.mask.to(q.dtype)
            if mask.requires_grad and q.device.type == "cpu":
                out = _BiasedAttention.apply(q, k, v, mask)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
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
        chunks = x.size(0) // rows if x.dim() == 2 else 0
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
# Attention inputs shared by every layer of one forward
# --------------------------------------------------------------------------------------------
def flex_row_length(tokens: int) -> int:
    """Length of the one packed flex row holding `tokens` real tokens: FLEX_MIN_ROW * 4**k.

    flex is compiled for static shapes, one graph per row length; rows of 1024, 4096, 16384 and 65536
    tokens mean any mix of batch sizes and lengths up to 65,536 tokens a batch compiles at most 4 graphs.
    The unused tail is cheap: its blocks are skipped by the block mask and no matmul outside attention
    sees it (norms, projections and FFN run on the real tokens only)."""
    length = FLEX_MIN_ROW
    while length < tokens:
        length *= 4
    return length


@dataclass
class AttentionInputs:
    """What every layer needs to attend, built once per forward.

    Layout: everything position-wise (norms, projections, FFN) runs on the real tokens only, packed
    as (N, d_model) rows; `token_index` (N,) says where they sit in the flattened (B * L) padded batch
    (None: no padding, N = B * L). Attention sees them as `rows` x `length`:
    - sdpa: the padded batch (B, L); `mask` (B or 1, H, L, L) additive float = position bias + key padding.
    - flex: ONE packed row (1, T) of the N tokens, sequence after sequence, zeros after (T =
      flex_row_length(N)); `block_mask` lets a token attend only its own sequence and skips every block
      outside it, `score_mod` adds the bias of the within-sequence distance. Results equal the padded path;
      the compiled graph depends on T only, never on the batch size or the lengths.
    """

    backend: str
    batch: int  # B of the padded batch
    length: int  # L of the padded batch
    rows: int  # rows attention runs on: B (sdpa) or 1 (flex)
    row_length: int  # L (sdpa) or T (flex)
    tokens: int  # N, real tokens
    token_index: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    score_mod: object = None
    block_mask: object = None
    kernel_options: dict | None = None
    compiled: bool = False  # norms and the FFN gate run as compiled regions (config.compile_regions)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B * L, d) padded batch -> (N, d) real tokens."""
        return x if self.token_index is None else x.index_select(0, self.token_index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (B * L, d), zeros at padding."""
        if self.token_index is None:
            return x
        return x.new_zeros(self.batch * self.length, x.size(-1)).index_copy(0, self.token_index, x)

    def to_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (rows * row_length, d), the layout attention runs on."""
        if self.backend == "flex":
            return F.pad(x, (0, 0, 0, self.row_length - self.tokens))
        return self.unpack(x)

    def from_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(rows * row_length, d) -> (N, d)."""
        return x[: self.tokens] if self.backend == "flex" else self.pack(x)


def _document_block_mask(documents: torch.Tensor, real: int, mask_mod) -> object:
    """Block mask of a packed row whose position p belongs to sequence `documents[p]` (sorted; `real` marks
    the tail): a (query block, key block) pair is computed only when both hold a common real sequence, and
    is "full" (no mask_mod call) when both lie inside one. O((T / 128)^2) work, no T x T tensor."""
    from torch.nn.attention.flex_attention import BlockMask

    length = documents.numel()
    first, last = documents[::FLEX_BLOCK], documents[FLEX_BLOCK - 1 :: FLEX_BLOCK]  # (n_blocks,)
    low = torch.maximum(first[:, None], first[None, :])
    high = torch.minimum(last[:, None], last[None, :])
    shared = (low <= high) & (low < real)
    full = shared & (first == last)[:, None] & (first == last)[None, :] & (first[:, None] == first[None, :])
    partial = shared & ~full

    def listed(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = blocks.sum(-1, dtype=torch.int32)[None, None]  # (1, 1, n_blocks)
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)[None, None]
        return count, order

    return BlockMask.from_kv_blocks(
        *listed(partial), *listed(full), BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(length, length)
    )


_FLEX = None


def _compiled_flex():
    """flex_attention compiled once per process, for static shapes (one graph per packed row length)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def flex_kernel_options(choice: str, device: torch.device) -> dict | None:
    """kernel_options for flex on `device`: config.flex_kernel "auto" takes FLASH (FA4, cute-dsl) on Hopper and
    Blackwell GPUs where flash_attn.cute is installed, torch's default (Triton) elsewhere; "triton" / "flash"
    force one. CPU kernels take no backend choice."""
    if device.type != "cuda":
        return None
    if choice == "auto":
        import importlib.util

        hopper_or_later = torch.cuda.get_device_capability(device)[0] in (9, 10)
        try:
            has_flash = importlib.util.find_spec("flash_attn.cute") is not None
        except ImportError:  # no flash_attn at all
            has_flash = False
        choice = "flash" if hopper_or_later and has_flash else "triton"
    return {"BACKEND": choice.upper()}


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
    """Compiled flex on (1, H, T, d_kv); a FLASH kernel that cannot run falls back to Triton once, with a warning."""
    global _FLASH_FAILED
    options = attn.kernel_options
    if _FLASH_FAILED and options and options["BACKEND"] == "FLASH":
        options = {"BACKEND": "TRITON"}
    try:
        return _compiled_flex()(
            q, k, v, score_mod=attn.score_mod, block_mask=attn.block_mask, scale=1.0, kernel_options=options
        )
    except Exception as err:  # noqa: BLE001 - FA4 is experimental in torch; anything it raises means "not here"
        if not options or options["BACKEND"] != "FLASH":
            raise
        _FLASH_FAILED = True
        _warn_once(f"flex FLASH kernel failed ({type(err).__name__}: {err}); using the Triton kernel instead")
        return _flex_attention(q, k, v, attn)


_FLASH_FAILED = False


def flex_available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def resolve_backend(requested: str, device: torch.device, training: bool) -> str:
    """The backend that can actually run: flex has no CPU backward, flash cannot take a bias."""
    backend = requested
    if backend == "kernels_flash":
        _warn_once("attn_backend='kernels_flash' cannot apply ANKH's relative position bias; using flex/sdpa instead.")
        backend = "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if backend == "flex" and not flex_available():
        _warn_once("flex_attention is not available in this torch build; using sdpa.")
        backend = "sdpa"
    if backend == "flex" and training and device.type == "cpu":
        _warn_once("flex_attention has no backward on CPU; training with attn_backend='sdpa' instead.")
        backend = "sdpa"
    return backend


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

    def _attention_inputs(self, backend: str, key_mask: torch.Tensor, dtype: torch.dtype) -> AttentionInputs:
        """key_mask: (B, L) bool, True for real tokens (for flex: one run of them per row)."""
        b, length = key_mask.shape
        device = key_mask.device
        token_index = None if bool(key_mask.all()) else key_mask.flatten().nonzero().squeeze(1)
        tokens = b * length if token_index is None else token_index.numel()
        if backend == "sdpa":
            bias = self.position_bias.dense(length, device)  # (1, H, L, L)
            if token_index is None:
                return AttentionInputs("sdpa", b, length, b, length, tokens, mask=bias.to(dtype))
            padding = torch.zeros(b, 1, 1, length, device=device, dtype=bias.dtype)
            padding.masked_fill_(~key_mask[:, None, None, :], torch.finfo(bias.dtype).min)
            mask = (bias + padding).to(dtype)
            return AttentionInputs("sdpa", b, length, b, length, tokens, token_index, mask=mask)

        # flex: the N tokens packed into one row, sequence after sequence; `documents` says whose each is.
        row = flex_row_length(tokens)
        lengths = key_mask.sum(1)
        documents = torch.full((row,), b, dtype=torch.int32, device=device)  # b = the empty tail
        documents[:tokens] = torch.repeat_interleave(torch.arange(b, dtype=torch.int32, device=device), lengths)
        # A token's distance to another of its sequence is its distance in the row: the bias table by distance.
        table = self.position_bias.by_distance(row, device).to(dtype)  # (2T-1, H)
        offset = row - 1

        def score_mod(score, batch, head, q_idx, kv_idx):
            return score + table[kv_idx - q_idx + offset, head]

        def mask_mod(batch, head, q_idx, kv_idx):
            return documents[q_idx] == documents[kv_idx]

        block_mask = _document_block_mask(documents, b, mask_mod)
        options = flex_kernel_options(self.config.flex_kernel, device)
        return AttentionInputs(
            "flex",
            b,
            length,
            1,
            row,
            tokens,
            token_index,
            score_mod=score_mod,
            block_mask=block_mask,
            kernel_options=options,
        )

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """hidden: (B, L, d_model) embeddings; attention_mask: (B, L), 1 for real tokens.

        Returns last_hidden_state (B, L, d_model); positions where attention_mask is 0 are zeros.
        """
        b, length, _ = hidden.shape
        key_mask = (
            torch.ones(b, length, dtype=torch.bool, device=hidden.device)
            if attention_mask is None
            else attention_mask.to(device=hidden.device, dtype=torch.bool)
        )
        training = torch.is_grad_enabled() and (self.training or any(p.requires_grad for p in self.parameters()))
        backend = resolve_backend(self.config.attn_backend, hidden.device, training)
        if backend == "flex":
            runs = key_mask[:, 0].int() + (key_mask[:, 1:] & ~key_mask[:, :-1]).sum(1)
            if bool((runs > 1).any()):  # packing keeps a sequence's distances only if its tokens are one run
                _warn_once("flex needs each row's tokens in one run (no holes in attention_mask); using sdpa")
                backend = "sdpa"
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        else:
            dtype = self.layers[0].attention.q.weight.dtype if len(self.layers) else hidden.dtype
        attn = self._attention_inputs(backend, key_mask, dtype)
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
            last_hidden_state=hidden, hidden_states=tuple(all_hidden) if output_hidden_states else None
        )


def _refuse_attentions(output_attentions: bool | None) -> None:
    if output_attentions:
        raise NotImplementedError(
            "FastANKH never materialises attention maps (output_attentions=True); use transformers' "
            "T5EncoderModel on the same checkpoint to inspect them"
        )


class FastAnkhPreTrainedModel(PreTrainedModel):
    config_class = FastAnkhConfig
    base_model_prefix = "model"  # task and MaskedLM models hold the encoder as `self.model`
    supports_gradient_checkpointing = True
    _no_split_modules = ["FastAnkhBlock"]
    # Original ElnaggarLab checkpoints are T5ForConditionalGeneration: decoder and lm_head are dropped;
    # AutoModel on a fine-tuned task export keeps the encoder and drops the task head.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\.", r"^head\."]

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
    def from_pretrained(cls, pretrained_model_name_or_path, *args, attn_backend: str | None = None, **kwargs):
        """Load a FastANKH checkpoint, or convert an original ElnaggarLab T5 checkpoint on the fly.

        `pretrained_model_name_or_path`: local directory or hub id. T5 checkpoints
        (T5ForConditionalGeneration / T5EncoderModel) keep the encoder and shared embedding only.
        Keyword arguments that name config fields override the checkpoint's config (`attn_backend`,
        `dropout_rate`, ...); architecture fields (ARCHITECTURE_FIELDS) must equal the checkpoint's.
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
        if attn_backend is not None:
            kwargs["attn_backend"] = attn_backend
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


class FastAnkhModel(FastAnkhPreTrainedModel):
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
        tensors (embedding output, the input of each later block, the final normed output).
        Attention maps are never materialised: `output_attentions=True` is an error.
        """
        _refuse_attentions(output_attentions)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        out = self.encoder(inputs_embeds, attention_mask, output_hidden_states=bool(output_hidden_states))
        return out if return_dict is not False else out.to_tuple()

    # embed_dataset (fastankh/protein_embeddings.py) is attached when the fastankh package is imported.


def counted_loss(logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Mean loss in fp32 over the positions where `counted` (bool, the shape of labels' leading dims) is True:
    MSE for "regression", BCE-with-logits for "multi_label_classification", else cross-entropy.

    No counted position (e.g. a batch of unlabelled residues) gives a zero that keeps the graph, not NaN.
    """
    if not counted.any():
        return logits.sum() * 0.0
    logits, labels = logits[counted].float(), labels[counted]
    if problem_type == "regression":
        return F.mse_loss(logits.reshape(labels.shape), labels.float())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels)


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
        _refuse_attentions(output_attentions)
        out = self.model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None if labels is None else self.loss(logits, labels)
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return out if return_dict is not False else out.to_tuple()


_DTYPE_KWARGS = ("dtype", "torch_dtype")


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


__all__ = [
    "FastAnkhPreTrainedModel",
    "FastAnkhModel",
    "FastAnkhForMaskedLM",
    "convert_t5_state_dict",
    "config_from_t5",
    "relative_position_bucket",
]
