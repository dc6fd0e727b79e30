"""FastANKH attention: every implementation in ONE table, the one a forward runs chosen in ONE place.

T5 attention is UNSCALED: softmax(q k^T + position bias + key padding) v. `ATTENTION_IMPLEMENTATIONS` maps each
implementation's name to the layout it runs on and the function that attends:

- "sdpa": `scaled_dot_product_attention(scale=1.0)` on the padded batch with one additive float mask
  (bias + key padding);
- "flex": `flex_attention` on ONE packed row of the real tokens, with a score_mod that reads the bias from a
  (2T-1, heads) table indexed by the relative distance (no L x L x H tensor) and a block mask that keeps each
  token inside its own sequence and skips every block outside it;
- "eager": the sdpa mask, with the probabilities materialised and returned (what `output_attentions=True` needs);
- "sdpa_varlen" (not a setting: what "sdpa" runs for CPU inference on a batch with padding): sdpa on each
  sequence of the packed real tokens alone, with the top-left block of one (1, H, L, L) bias. No padded
  copies of q, k, v, no (B, H, L, L) mask, no attention over padding keys: length-sorted embedding batches of
  100-500 residues spent a third of their attention on padding.

The one setting is `config.attn_backend` (ATTN_BACKENDS): an implementation's name, "auto" (flex on CUDA, sdpa
elsewhere) or "kernels_flash" (a flash kernel cannot take ANKH's bias: flex on GPU, sdpa elsewhere, with one
warning). transformers' spelling of the same setting (`attn_implementation=` at load, `set_attn_implementation`,
`config._attn_implementation`) reads and writes it through TRANSFORMERS_NAMES. `resolve_backend` is the one place
that turns the setting into the implementation a forward runs.

This file travels to the Hub as remote code: it imports only torch and its sibling runtime.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import RUNTIME, warn_once

# Values of config.attn_backend.
ATTN_BACKENDS = ("auto", "sdpa", "flex", "kernels_flash", "eager")
# transformers' name of each implementation (`attn_implementation=`); the others are spelled alike in both.
TRANSFORMERS_NAMES = {"sdpa": "sdpa", "flex": "flex_attention", "eager": "eager"}
FLEX_BLOCK = 128  # flex's sparse block size
FLEX_MIN_ROW = 1024  # the shortest packed flex row (see flex_row_length)


def backend_name(name: str) -> str:
    """config.attn_backend's value for an attention name in FastANKH's or transformers' spelling."""
    backend = {alias: own for own, alias in TRANSFORMERS_NAMES.items()}.get(name, name)
    if backend not in ATTN_BACKENDS:
        spellings = sorted({*ATTN_BACKENDS, *TRANSFORMERS_NAMES.values()})
        raise ValueError(f"attn_backend / attn_implementation must be one of {spellings}, got {name!r}")
    return backend


def transformers_name(backend: str) -> str:
    """transformers' spelling of a config.attn_backend value ("auto" and "kernels_flash" have no other)."""
    return TRANSFORMERS_NAMES.get(backend, backend)


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
    """What every layer needs to attend, built once per forward by `attention_inputs`.

    Layout: everything position-wise (norms, projections, FFN) runs on the real tokens only, packed
    as (N, d_model) rows; `token_index` (N,) says where they sit in the flattened (B * L) padded batch
    (None: no padding, N = B * L). Attention sees them as `rows` x `row_length`:
    - padded implementations (sdpa, eager): the padded batch (B, L); `mask` (B or 1, H, L, L) additive float =
      position bias + key padding; `key_mask` (B, L) bool, True at real tokens (None: no padding).
    - packed implementations (flex): ONE packed row (1, T) of the N tokens, sequence after sequence, zeros after
      (T = flex_row_length(N)); `block_mask` lets a token attend only its own sequence and skips every block
      outside it, `score_mod` adds the bias of the within-sequence distance. Results equal the padded path;
      the compiled graph depends on T only, never on the batch size or the lengths.
    - per sequence (sdpa_varlen): the packed row (1, N) of the N tokens, `segments` (start, length) of each
      sequence in it, `mask` the (1, H, L, L) bias whose top-left (length, length) block each sequence takes.
    `attentions`: a list that collects each layer's probabilities (eager only), or None when nobody asked.
    """

    backend: str  # the ATTENTION_IMPLEMENTATIONS key this forward runs
    batch: int  # B of the padded batch
    length: int  # L of the padded batch
    rows: int  # rows attention runs on: B (padded) or 1 (packed)
    row_length: int  # L (padded) or T (packed)
    tokens: int  # N, real tokens
    token_index: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    score_mod: Callable | None = None
    block_mask: object = None
    kernel_options: dict | None = None
    segments: list[tuple[int, int]] | None = None
    compiled: bool = False  # norms and the FFN gate run as compiled regions (config.compile_regions)
    attentions: list[torch.Tensor] | None = field(default=None, repr=False)
    # Rows of the packed token matrix the row-wise modules see: N rounded up with zero rows (inference), so
    # batches of many different lengths share a few matmul shapes: oneDNN then reuses its kernels and the
    # allocator its blocks, instead of both growing with every new N. Zero rows stay zero (no bias anywhere).
    rows_out: int = 0

    @property
    def packed(self) -> bool:
        return ATTENTION_IMPLEMENTATIONS[self.backend].packed

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (max(N, rows_out), d): zero rows appended."""
        return F.pad(x, (0, 0, 0, self.rows_out - self.tokens)) if self.rows_out > self.tokens else x

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B * L, d) padded batch -> (N, d) real tokens (+ zero rows up to rows_out)."""
        return x if self.token_index is None else self._rows(x.index_select(0, self.token_index))

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (B * L, d), zeros at padding."""
        if self.token_index is None:
            return x
        # index_copy_, in place: index_copy would clone the zeros first
        out = x.new_zeros(self.batch * self.length, x.size(-1))
        return out.index_copy_(0, self.token_index, x[: self.tokens])

    def to_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (rows * row_length, d), the layout attention runs on."""
        if not self.packed:
            return self.unpack(x)
        x = x[: self.tokens]
        return F.pad(x, (0, 0, 0, self.row_length - self.tokens)) if self.row_length > self.tokens else x

    def from_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(rows * row_length, d) -> (N, d)."""
        return self._rows(x[: self.tokens]) if self.packed else self.pack(x)


# --------------------------------------------------------------------------------------------
# The implementations: (q, k, v, inputs) -> (output, probabilities or None), q/k/v/output (rows, H, T, d_kv)
# --------------------------------------------------------------------------------------------
class _BiasedAttention(torch.autograd.Function):
    """softmax(q k^T + mask) v on CPU when the mask needs a gradient (a trainable position bias).

    sdpa falls back to its math path then, which keeps every layer's (B, H, L, L) probabilities until the
    backward: the largest activation at L >= 512. Here the forward is the flash kernel (no L x L tensor kept,
    and faster than math) and the backward recomputes the probabilities from the saved log-sum-exp, in fp32,
    one layer at a time. q, k, v: (B, H, L, d_kv); mask: (B or 1, H, L, L)."""

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


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs
) -> tuple[torch.Tensor, None]:
    mask = attn.mask if attn.mask.dtype == q.dtype else attn.mask.to(q.dtype)
    if mask.requires_grad and q.device.type == "cpu":
        return _BiasedAttention.apply(q, k, v, mask), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0), None


def sdpa_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs
) -> tuple[torch.Tensor, None]:
    """sdpa on each sequence alone: q, k, v (1, H, N, d_kv) views of the packed tokens; the bias of a sequence of
    n tokens is the top-left (n, n) block of attn.mask (it depends on k - q only). Inference only (no autograd
    through the in-place writes)."""
    out = q.new_empty(1, q.size(2), q.size(1), q.size(3)).transpose(1, 2)  # (1, H, N, d) over (1, N, H, d) memory
    for start, length in attn.segments:
        part = slice(start, start + length)
        bias = attn.mask[:, :, :length, :length]
        out[:, :, part] = F.scaled_dot_product_attention(q[:, :, part], k[:, :, part], v[:, :, part], bias, scale=1.0)
    return out, None


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's own arithmetic: scores q k^T + mask (no 1/sqrt(d)), softmax in fp32 cast back to q's dtype, times v.
    The probabilities (B, H, L, L) are returned; rows of padding queries are zeros (they are no token's)."""
    mask = attn.mask if attn.mask.dtype == q.dtype else attn.mask.to(q.dtype)
    scores = torch.matmul(q, k.transpose(-1, -2)) + mask
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if attn.key_mask is not None:
        probs = probs.masked_fill(~attn.key_mask[:, None, :, None], 0.0)
    return torch.matmul(probs, v), probs


def _compiled_flex() -> Callable:
    """flex_attention compiled once per process, for static shapes (one graph per packed row length)."""
    if RUNTIME.flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        RUNTIME.flex = torch.compile(flex_attention, dynamic=False)
    return RUNTIME.flex


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
    """Compiled flex on (1, H, T, d_kv); a FLASH kernel that cannot run falls back to Triton once, with a warning."""
    options = attn.kernel_options
    if RUNTIME.flash_failed and options and options["BACKEND"] == "FLASH":
        options = {"BACKEND": "TRITON"}
    try:
        return _compiled_flex()(
            q, k, v, score_mod=attn.score_mod, block_mask=attn.block_mask, scale=1.0, kernel_options=options
        )
    except Exception as err:  # noqa: BLE001 - FA4 is experimental in torch; anything it raises means "not here"
        if not options or options["BACKEND"] != "FLASH":
            raise
        RUNTIME.flash_failed = True
        warn_once(f"flex FLASH kernel failed ({type(err).__name__}: {err}); using the Triton kernel instead")
        return _flex_attention(q, k, v, attn)


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionInputs
) -> tuple[torch.Tensor, None]:
    return _flex_attention(q, k, v, attn), None


@dataclass(frozen=True)
class AttentionImplementation:
    """packed: attention runs on ONE row of the real tokens (else on the padded batch); attend: the function."""

    packed: bool
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionInputs], tuple]


ATTENTION_IMPLEMENTATIONS: dict[str, AttentionImplementation] = {
    "sdpa": AttentionImplementation(packed=False, attend=sdpa_attention),
    "flex": AttentionImplementation(packed=True, attend=flex_attention),
    "eager": AttentionImplementation(packed=False, attend=eager_attention),
    "sdpa_varlen": AttentionImplementation(packed=True, attend=sdpa_varlen_attention),
}


# --------------------------------------------------------------------------------------------
# The choice, and the inputs every layer shares
# --------------------------------------------------------------------------------------------
def flex_available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(
    requested: str,
    device: torch.device,
    training: bool,
    key_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> str:
    """The ATTENTION_IMPLEMENTATIONS key a forward runs for the setting `requested` (either spelling).

    `output_attentions` needs the probabilities: eager, with one warning naming the setting it replaces. "auto"
    is flex on CUDA, sdpa elsewhere. Fallbacks, each with one warning: flash kernels cannot take a bias, flex
    has no backward on CPU, and packing needs each row's tokens (`key_mask`, (B, L) bool) in one run. sdpa on a
    CPU without autograd, on a batch with padding whose rows are one run each, runs per sequence (sdpa_varlen)."""
    backend = backend_name(requested)
    if output_attentions:
        if backend != "eager":
            warn_once(
                f"output_attentions=True needs the attention probabilities: this call runs attention 'eager' "
                f"instead of the configured {requested!r}"
            )
        return "eager"
    if backend == "auto":
        backend = "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if backend == "kernels_flash":
        warn_once("attn_backend='kernels_flash' cannot apply ANKH's relative position bias; using flex/sdpa instead.")
        backend = "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if backend == "flex" and not flex_available():
        warn_once("flex_attention is not available in this torch build; using sdpa.")
        backend = "sdpa"
    if backend == "flex" and training and device.type == "cpu":
        warn_once("flex_attention has no backward on CPU; training with attn_backend='sdpa' instead.")
        backend = "sdpa"
    if backend == "flex" and key_mask is not None and not _one_run_per_row(key_mask):
        warn_once("flex needs each row's tokens in one run (no holes in attention_mask); using sdpa")
        backend = "sdpa"
    if (
        backend == "sdpa"
        and not (training or torch.is_grad_enabled())
        and device.type == "cpu"
        and key_mask is not None
        and not bool(key_mask.all())
        and bool(key_mask.any())
        and _one_run_per_row(key_mask)
    ):
        backend = "sdpa_varlen"
    return backend


def _one_run_per_row(key_mask: torch.Tensor) -> bool:
    """Each row's tokens are one run (packing keeps a sequence's distances only then); key_mask (B, L) bool."""
    runs = key_mask[:, 0].int() + (key_mask[:, 1:] & ~key_mask[:, :-1]).sum(1)
    return not bool((runs > 1).any())


def _document_block_mask(documents: torch.Tensor, real: int, mask_mod: Callable) -> object:
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


def attention_inputs(
    backend: str,
    key_mask: torch.Tensor,
    dtype: torch.dtype,
    position_bias: nn.Module,
    flex_kernel: str,
    round_rows: int = 1,
) -> AttentionInputs:
    """The inputs of implementation `backend` for key_mask (B, L) bool, True at real tokens (for a packed
    implementation: one run of them per row). `position_bias`: the encoder's FastAnkhRelativePositionBias.
    `round_rows`: the packed token rows are padded to a multiple of it (see AttentionInputs.rows_out)."""
    inputs = _attention_inputs(backend, key_mask, dtype, position_bias, flex_kernel)
    if inputs.token_index is not None:
        inputs.rows_out = -(-inputs.tokens // round_rows) * round_rows
    return inputs


def _attention_inputs(
    backend: str, key_mask: torch.Tensor, dtype: torch.dtype, position_bias: nn.Module, flex_kernel: str
) -> AttentionInputs:
    b, length = key_mask.shape
    device = key_mask.device
    token_index = None if bool(key_mask.all()) else key_mask.flatten().nonzero().squeeze(1)
    tokens = b * length if token_index is None else token_index.numel()
    if backend == "sdpa_varlen":
        lengths = key_mask.sum(1).tolist()
        segments = [(end - n, n) for end, n in zip(itertools.accumulate(lengths), lengths) if n]
        bias = position_bias.dense(max(lengths), device).to(dtype)  # (1, H, L, L)
        return AttentionInputs(backend, b, length, 1, tokens, tokens, token_index, mask=bias, segments=segments)
    if not ATTENTION_IMPLEMENTATIONS[backend].packed:
        bias = position_bias.dense(length, device)  # (1, H, L, L)
        if token_index is None:
            return AttentionInputs(backend, b, length, b, length, tokens, mask=bias.to(dtype))
        padding = torch.zeros(b, 1, 1, length, device=device, dtype=bias.dtype)
        padding.masked_fill_(~key_mask[:, None, None, :], torch.finfo(bias.dtype).min)
        mask = (bias + padding).to(dtype)
        return AttentionInputs(backend, b, length, b, length, tokens, token_index, mask=mask, key_mask=key_mask)

    # Packed: the N tokens in one row, sequence after sequence; `documents` says whose each is.
    row = flex_row_length(tokens)
    lengths = key_mask.sum(1)
    documents = torch.full((row,), b, dtype=torch.int32, device=device)  # b = the empty tail
    documents[:tokens] = torch.repeat_interleave(torch.arange(b, dtype=torch.int32, device=device), lengths)
    # A token's distance to another of its sequence is its distance in the row: the bias table by distance.
    table = position_bias.by_distance(row, device).to(dtype)  # (2T-1, H)
    offset = row - 1

    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + table[kv_idx - q_idx + offset, head]

    def mask_mod(batch, head, q_idx, kv_idx):
        return documents[q_idx] == documents[kv_idx]

    return AttentionInputs(
        backend,
        b,
        length,
        1,
        row,
        tokens,
        token_index,
        score_mod=score_mod,
        block_mask=_document_block_mask(documents, b, mask_mod),
        kernel_options=flex_kernel_options(flex_kernel, device),
    )


__all__ = [
    "ATTN_BACKENDS",
    "TRANSFORMERS_NAMES",
    "ATTENTION_IMPLEMENTATIONS",
    "AttentionImplementation",
    "AttentionInputs",
    "attention_inputs",
    "backend_name",
    "transformers_name",
    "resolve_backend",
    "flex_row_length",
    "flex_kernel_options",
    "flex_available",
]
