"""Task heads that sit on an ANKH encoder: per-residue and per-sequence predictors.

Every head is `forward(hidden (B, T, D), residue_mask (B, T) bool) -> logits` and reads ONLY the
positions where `residue_mask` is True (no [NLU], </s> or padding), so its output for a sequence
does not depend on what it is batched with.

- residue heads -> (B, T, C): `linear`, `mlp`, `convbert` (the Ankh paper's light ConvBERT head:
  masked self-attention + depthwise convolution over residues + FFN);
- sequence heads -> (B, C): pooling `mean`, `max` or `attention` over residues, then an MLP;
  `convbert` runs the ConvBERT layer(s) first and then pools (max by default, as in Ankh).

This file travels to the Hub as remote code next to modeling_fastankh.py: it imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

RESIDUE_HEADS = ("linear", "mlp", "convbert")
SEQUENCE_HEADS = ("mean", "max", "attention", "convbert")
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


def build_head(kind_level: str, name: str, d_model: int, num_outputs: int, **kwargs: Any) -> nn.Module:
    """Build a head by name, so an exported model can rebuild it from its config.

    kind_level: "residue" (names linear, mlp, convbert) or "sequence" (names mean, max, attention:
    the pooling; convbert: ConvBERT + pooling, max unless `pooling=` is given). kwargs go to the head
    class (hidden_dim, dropout, num_heads, kernel_size, num_layers).
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
    else:
        raise ValueError(f"kind_level must be 'residue' or 'sequence', got {kind_level!r}")
    try:
        return cls(d_model, num_outputs, **kwargs)
    except TypeError as err:  # an option the head does not have: name it instead of a bare TypeError
        raise ValueError(f"{kind_level} head {name!r} does not accept {sorted(kwargs)}: {err}") from None


__all__ = [
    "RESIDUE_HEADS",
    "SEQUENCE_HEADS",
    "LinearResidueHead",
    "MLPResidueHead",
    "ConvBertLayer",
    "ConvBertResidueHead",
    "MaskedPooling",
    "SequenceHead",
    "build_head",
]
