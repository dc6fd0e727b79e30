"""Task heads that sit on an ANKH encoder: per-residue and per-sequence predictors.

Every head is `forward(hidden (B, T, D), residue_mask (B, T) bool) -> logits` and reads ONLY the
positions where `residue_mask` is True (no [NLU], </s> or padding), so its output for a sequence
does not depend on what it is batched with.

- residue heads -> (B, T, C): `linear`, `mlp`, `convbert` (the Ankh paper's light ConvBERT head:
  masked self-attention + depthwise convolution over residues + FFN);
- sequence heads -> (B, C): pooling `mean`, `max` or `attention` over residues, then an MLP;
  `convbert` runs the ConvBERT layer(s) first and then pools (max by default, as in Ankh);
- pair heads -> (B, T, T), one logit per residue pair (contact maps): `mlp` (the Ankh package's pair features
  [a_i * a_j ; |a_i - a_j|] of projected residues, plus the bucketed separation |i - j|, then an MLP; symmetric
  by construction), `convbert` (ConvBERT layer(s) over residues first).

This file travels to the Hub as remote code next to modeling_fastankh.py: it imports only torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

RESIDUE_HEADS = ("linear", "mlp", "convbert")
SEQUENCE_HEADS = ("mean", "max", "attention", "convbert")
PAIR_HEADS = ("mlp", "convbert")
POOLINGS = ("mean", "max", "attention")


def _mlp(d_in: int, hidden_dim: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(d_in, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, d_out)
    )


class LinearResidueHead(nn.Module):
    """Dropout + one Linear per residue: (B, T, D) -> (B, T, C)."""

    def __init__(self, d_model: int, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, num_outputs)

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


class MLPResidueHead(nn.Module):
    """Two-layer MLP per residue: (B, T, D) -> (B, T, C); hidden_dim defaults to D/2."""

    def __init__(self, d_model: int, num_outputs: int, hidden_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.mlp = _mlp(d_model, hidden_dim or d_model // 2, num_outputs, dropout)

    @property
    def out(self) -> nn.Linear:
        return self.mlp[-1]

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden)


class ConvBertLayer(nn.Module):
    """One light ConvBERT-style layer over residues (post-norm, like HF ConvBertLayer).

    x = LN(x + MHA(x) over residue keys); x = LN(x + depthwise Conv1d(k) over residues);
    x = LN(x + FFN(x)) with FFN width `hidden_dim`. Non-residue positions are zeroed before the
    convolution so padding, [NLU] and </s> never leak into a residue's window.
    """

    def __init__(self, d_model: int, hidden_dim: int, num_heads: int = 4, kernel_size: int = 7, dropout: float = 0.2):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"convbert kernel_size must be odd so the window is centred, got {kernel_size}")
        if d_model % num_heads:
            raise ValueError(f"convbert num_heads={num_heads} must divide d_model={d_model}")
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, d_model)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); residue_mask: (B, T) bool -> (B, T, D), zero at non-residue positions."""
        keep = residue_mask.unsqueeze(-1).to(x.dtype)
        # A row without residues would make softmax NaN; let it attend anywhere (its output is unused).
        ignore = ~residue_mask & residue_mask.any(dim=1, keepdim=True)
        attended, _ = self.attention(x, x, x, key_padding_mask=ignore, need_weights=False)
        x = self.norms[0](x + self.dropout(attended)) * keep
        conv = self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.norms[1](x + self.dropout(conv)) * keep
        return self.norms[2](x + self.dropout(self.ffn(x))) * keep


class ConvBertResidueHead(nn.Module):
    """ConvBERT layer(s) then a per-residue Linear: (B, T, D) -> (B, T, C). hidden_dim defaults to D/2."""

    def __init__(
        self,
        d_model: int,
        num_outputs: int,
        hidden_dim: int | None = None,
        num_heads: int = 4,
        kernel_size: int = 7,
        num_layers: int = 1,
        dropout: float = 0.2,
    ):
        super().__init__()
        hidden_dim = hidden_dim or d_model // 2
        self.layers = nn.ModuleList(
            ConvBertLayer(d_model, hidden_dim, num_heads, kernel_size, dropout) for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, num_outputs)

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, residue_mask)
        return self.out(self.dropout(hidden))


class MaskedPooling(nn.Module):
    """Pool (B, T, D) -> (B, D) over residue positions only: mean, max or learned attention."""

    def __init__(self, d_model: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.score = nn.Linear(d_model, 1) if pooling == "attention" else None

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        mask = residue_mask.unsqueeze(-1)
        if self.pooling == "mean":
            total = (hidden * mask.to(hidden.dtype)).sum(dim=1)
            return total / mask.sum(dim=1).clamp(min=1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(dim=1)
        scores = self.score(hidden).masked_fill(~mask, torch.finfo(hidden.dtype).min)
        return (torch.softmax(scores.float(), dim=1).to(hidden.dtype) * hidden).sum(dim=1)


class SequenceHead(nn.Module):
    """Optional ConvBERT layer(s), masked pooling, then an MLP: (B, T, D) -> (B, C)."""

    def __init__(
        self,
        d_model: int,
        num_outputs: int,
        pooling: str = "mean",
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        convbert_layers: int = 0,
        num_heads: int = 4,
        kernel_size: int = 7,
    ):
        super().__init__()
        hidden_dim = hidden_dim or d_model // 2
        self.layers = nn.ModuleList(
            ConvBertLayer(d_model, hidden_dim, num_heads, kernel_size, dropout) for _ in range(convbert_layers)
        )
        self.pool = MaskedPooling(d_model, pooling)
        self.mlp = _mlp(d_model, hidden_dim, num_outputs, dropout)

    @property
    def out(self) -> nn.Linear:
        return self.mlp[-1]

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, residue_mask)
        return self.mlp(self.pool(hidden, residue_mask))


def separation_bucket(separation: torch.Tensor, num_buckets: int, max_distance: int = 512) -> torch.Tensor:
    """|i - j| -> bucket id: one bucket per separation below num_buckets / 2, then log-spaced up to
    max_distance (T5's scheme, unsigned); farther pairs share the last bucket."""
    exact = num_buckets // 2
    scaled = torch.log(separation.float().clamp(min=exact) / exact) / math.log(max_distance / exact)
    far = (exact + (scaled * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(separation < exact, separation, far)


class PairHead(nn.Module):
    """One logit per residue pair: (B, T, D) -> (B, T, T), symmetric in (i, j).

    Optional ConvBERT layer(s) over residues (FFN width D/2); each residue projected to a = W h (hidden_dim,
    default min(D/2, 128), zero at non-residues); pair features [a_i * a_j ; |a_i - a_j|] -> Linear, plus a
    learned embedding of the bucketed separation |i - j| (`separation_buckets`, 0 = none: contact odds fall
    with separation); GELU; Linear -> 1. Dropout acts on the residues, before the projection. Rows of the map
    are computed `chunk_size` at a time, so no (T, T, hidden) tensor of the whole map exists at once (peak
    O(B x chunk_size x T x hidden_dim)); every pair's value is the same whatever the chunk size. Padding,
    [NLU] and </s> never reach a residue pair.
    """

    def __init__(
        self,
        d_model: int,
        num_outputs: int = 1,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        convbert_layers: int = 0,
        num_heads: int = 4,
        kernel_size: int = 7,
        separation_buckets: int = 32,
        chunk_size: int = 64,
    ):
        super().__init__()
        if num_outputs != 1:
            raise ValueError(f"pair heads predict one logit per residue pair (contact), not {num_outputs}")
        if separation_buckets == 1 or separation_buckets < 0:
            raise ValueError(f"separation_buckets must be 0 (none) or at least 2, got {separation_buckets}")
        hidden_dim = hidden_dim or min(d_model // 2, 128)
        self.layers = nn.ModuleList(
            ConvBertLayer(d_model, d_model // 2, num_heads, kernel_size, dropout) for _ in range(convbert_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(d_model, hidden_dim)
        self.pair = nn.Linear(2 * hidden_dim, hidden_dim)
        self.separation = nn.Embedding(separation_buckets, hidden_dim) if separation_buckets else None
        self.out = nn.Linear(hidden_dim, 1)
        self.chunk_size = chunk_size  # rows per step: memory only, never the values

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, residue_mask)
        a = self.project(self.dropout(hidden)) * residue_mask.unsqueeze(-1).to(hidden.dtype)
        width = a.shape[1]
        rows = [self._rows(a, start, min(start + self.chunk_size, width)) for start in range(0, width, self.chunk_size)]
        return torch.cat(rows, dim=1)

    def _rows(self, a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Logits of rows start..stop-1 against every column: (B, stop - start, T)."""
        left, right = a[:, start:stop, None], a[:, None]
        h = self.pair(torch.cat([left * right, (left - right).abs()], dim=-1))
        if self.separation is not None:
            positions = torch.arange(a.shape[1], device=a.device)
            separation = (positions[start:stop, None] - positions[None, :]).abs()
            h = h + self.separation(separation_bucket(separation, self.separation.num_embeddings))
        return self.out(nn.functional.gelu(h)).squeeze(-1)  # no dropout here: a mask per pair costs a map


def build_head(kind_level: str, name: str, d_model: int, num_outputs: int, **kwargs: Any) -> nn.Module:
    """Build a head by name, so an exported model can rebuild it from its config.

    kind_level: "residue" (names linear, mlp, convbert), "sequence" (names mean, max, attention:
    the pooling; convbert: ConvBERT + pooling, max unless `pooling=` is given) or "pair" (mlp; convbert:
    ConvBERT layer(s) first). kwargs go to the head class (hidden_dim, dropout, num_heads, kernel_size,
    num_layers; pair heads also separation_buckets, chunk_size).
    """
    if kind_level == "residue":
        classes = {"linear": LinearResidueHead, "mlp": MLPResidueHead, "convbert": ConvBertResidueHead}
        if name not in classes:
            raise ValueError(f"unknown residue head {name!r}; choose one of {RESIDUE_HEADS}")
        cls = classes[name]
    elif kind_level == "sequence":
        if name not in SEQUENCE_HEADS:
            raise ValueError(f"unknown sequence head {name!r}; choose one of {SEQUENCE_HEADS}")
        if name == "convbert":
            kwargs.setdefault("pooling", "max")
            kwargs["convbert_layers"] = kwargs.pop("num_layers", 1)
        else:
            kwargs["pooling"] = name
        cls = SequenceHead
    elif kind_level == "pair":
        if name not in PAIR_HEADS:
            raise ValueError(f"unknown pair head {name!r}; choose one of {PAIR_HEADS}")
        kwargs["convbert_layers"] = kwargs.pop("num_layers", 1) if name == "convbert" else 0
        cls = PairHead
    else:
        raise ValueError(f"kind_level must be 'residue', 'sequence' or 'pair', got {kind_level!r}")
    try:
        return cls(d_model, num_outputs, **kwargs)
    except TypeError as err:  # an option the head does not have: name it instead of a bare TypeError
        raise ValueError(f"{kind_level} head {name!r} does not accept {sorted(kwargs)}: {err}") from None


__all__ = [
    "RESIDUE_HEADS",
    "SEQUENCE_HEADS",
    "PAIR_HEADS",
    "LinearResidueHead",
    "MLPResidueHead",
    "ConvBertLayer",
    "ConvBertResidueHead",
    "MaskedPooling",
    "SequenceHead",
    "PairHead",
    "separation_bucket",
    "build_head",
]
