"""What is computed for each record: the output spec (layers, poolings, per residue, stored dtype) and the
per-window routine that tokenizes, length-batches and runs the encoder.

Residues only: `[NLU]`, `</s>` and padding never enter an output; letters the tokenizer maps to `<unk>` are
residues and do. Feature axis of an output: for each pooling in the order given (per residue: none), the
selected layers in the order given, each d_model wide; e.g. `layers=(-2, -1)`, `pooling="mean+max"` gives
[mean(layer -2), mean(layer -1), max(layer -2), max(layer -1)], 4 x d_model.
Layer indices follow transformers' `hidden_states`: 0 is the embedding output, i the output of block i (the
input of block i + 1), and the last (num_layers, or -1) is the final normed output, `last_hidden_state`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..batching import length_batches
from ..errors import UserError
from ..records import Record
from ..tokenization import prefix_length

POOLINGS = ("mean", "max", "min", "std")  # std: the population standard deviation (0 for one residue)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class OutputSpec:
    """What one record's output is: `layers` of the encoder, pooled over residues by each of `poolings`
    (concatenated), or per residue when `poolings` is empty; stored in `dtype`."""

    layers: tuple[int, ...] = (-1,)
    poolings: tuple[str, ...] = ("mean",)
    dtype: torch.dtype = torch.float32

    @classmethod
    def make(
        cls, layers: int | Sequence[int] = -1, pooling: str = "mean", full: bool = False, dtype=torch.float32
    ) -> OutputSpec:
        """From the user-facing options: `pooling` "mean", "max", "min", "std" or several joined by "+";
        `full` per residue (pooling ignored); `dtype` a torch dtype or its name."""
        layers = (layers,) if isinstance(layers, int) else tuple(int(x) for x in layers)
        if not layers:
            raise UserError("layers must name at least one layer")
        names = tuple(p.strip() for p in str(pooling).split("+"))
        bad = [p for p in names if p not in POOLINGS]
        if bad:
            raise UserError(f"pooling must be one of {POOLINGS} or several joined by '+', got {pooling!r}")
        if isinstance(dtype, str):
            if dtype.removeprefix("torch.") not in DTYPES:
                raise UserError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype.removeprefix("torch.")]
        if dtype not in DTYPES.values():
            raise UserError(f"dtype must be one of {tuple(DTYPES)}, got {dtype}")
        return cls(layers, () if full else names, dtype)

    @property
    def per_residue(self) -> bool:
        return not self.poolings

    def width(self, d_model: int) -> int:
        """The length of the feature axis."""
        return d_model * len(self.layers) * max(1, len(self.poolings))

    def describe(self, num_layers: int) -> dict[str, object]:
        """The fields of the run fingerprint; negative layers resolved, so -1 and num_layers are one setting."""
        layers = [x % (num_layers + 1) for x in self.layers]
        output = "per_residue" if self.per_residue else "pooled_" + "+".join(self.poolings)
        return {"layers": layers, "output": output, "dtype": str(self.dtype).removeprefix("torch.")}


def check_layers(spec: OutputSpec, num_layers: int) -> None:
    bad = [x for x in spec.layers if not -(num_layers + 1) <= x <= num_layers]
    if bad:
        raise UserError(
            f"layers {bad} out of range: the encoder has hidden states 0..{num_layers} (or -1..-{num_layers + 1})"
        )


def tokenize_residues(tokenizer: PreTrainedTokenizerBase, sequences: list[str], where: list[str]) -> list[list[int]]:
    """Token ids of each cleaned sequence (prefix, one token per residue, </s>); `where[i]` names sequence i
    in the error raised when a sequence does not tokenize to one token per character."""
    prefix = prefix_length(tokenizer)
    encoded = tokenizer(sequences, add_special_tokens=True)["input_ids"] if sequences else []
    for seq, ids, name in zip(sequences, encoded, where):
        if len(ids) != prefix + len(seq) + 1:
            # e.g. "<extra_id_0>" inside a sequence is one token for many characters.
            raise UserError(
                f"{name}: {len(seq)} characters tokenize to {len(ids) - prefix - 1} "
                "residue tokens; sequences must hold one character per residue"
            )
    return encoded


def _pool(x: torch.Tensor, residues: torch.Tensor, count: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, W) fp32 hidden states pooled over each row's residue positions (`residues`, (B, T, 1) bool;
    `count`, (B, 1) residues per row) -> (B, W). One operation per batch, not per row."""
    if how == "max":
        return x.masked_fill(~residues, float("-inf")).amax(1)
    if how == "min":
        return x.masked_fill(~residues, float("inf")).amin(1)
    mean = x.masked_fill(~residues, 0.0).sum(1) / count
    if how == "mean":
        return mean
    return ((x - mean[:, None]).masked_fill(~residues, 0.0).square().sum(1) / count).sqrt()


def embed_batch(
    model: torch.nn.Module,
    token_ids: list[list[int]],
    pad_id: int,
    prefix: int,
    spec: OutputSpec,
    weights: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The outputs of one batch of tokenized sequences (each: `prefix` tokens, residues, </s>), in order, on CPU,
    in spec.dtype, each in its own storage. The batch is right-padded to its longest member; `weights` replace
    the model's own for the call (a compute-precision copy, see weights_in)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(token_ids), width, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    hidden_states = spec.layers != (-1,)
    with torch.inference_mode():
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if hidden_states:
            inputs["output_hidden_states"] = True
        output = torch.func.functional_call(model, weights, (), inputs) if weights else model(**inputs)
    chosen = [output.hidden_states[x] for x in spec.layers] if hidden_states else [output.last_hidden_state]
    # Outside inference mode (when the caller is), so the results are ordinary tensors a user can train on.
    hidden = chosen[0] if len(chosen) == 1 else torch.cat(chosen, -1)  # (B, width, W)
    counts = [len(ids) - prefix - 1 for ids in token_ids]  # residues: no prefix, no </s>
    if spec.per_residue:
        stored = hidden.to(device="cpu", dtype=spec.dtype)
        # clone: a view would keep the whole batch alive and share storage between keys.
        return [stored[row, prefix : prefix + n].clone() for row, n in enumerate(counts)]
    positions = torch.arange(width, device=hidden.device)
    count = torch.tensor(counts, device=hidden.device)[:, None]
    residues = ((positions >= prefix) & (positions < prefix + count))[..., None]  # (B, width, 1)
    x = hidden.float()
    pooled = torch.cat([_pool(x, residues, count, how) for how in spec.poolings], -1)
    stored = pooled.to(device="cpu", dtype=spec.dtype)
    return [row.clone() for row in stored]


_COMPUTE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its state key, the copy)


def weights_in(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Copies in `dtype` of the model's floating weights and buffers when any is in another dtype (empty: none),
    so a model can compute in bf16 without being changed. The copy is kept with the model (weakly) and reused
    while no weight was replaced or changed in place, so repeated calls do not convert the weights again."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
        return {}
    key = (dtype, tuple((n, t.data_ptr(), t._version) for n, t in tensors.items()))
    cached = _COMPUTE_COPIES.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        copy = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    _COMPUTE_COPIES[model] = (key, copy)
    return copy


class WindowEmbedder:
    """Embeds windows of records with one model: each distinct sequence of a window runs once, in length-sorted
    batches of at most `batch_size` rows and `max_tokens` padded tokens; results come back in window order."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: OutputSpec,
        batch_size: int = 16,
        max_tokens: int | None = None,
        weights: dict[str, torch.Tensor] | None = None,
    ):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.batch_size, self.max_tokens, self.weights = batch_size, max_tokens, weights
        self.prefix, self.pad_id = prefix_length(tokenizer), tokenizer.pad_token_id

    def tokenize(self, records: Sequence[Record]) -> tuple[list[str], list[list[int]], list[int]]:
        """(distinct sequences, their token ids, for each record the index of its sequence)."""
        index: dict[str, int] = {}
        where: list[str] = []
        of_record = []
        for r in records:
            if r.sequence not in index:
                index[r.sequence] = len(index)
                where.append(r.where)
            of_record.append(index[r.sequence])
        sequences = list(index)
        return sequences, tokenize_residues(self.tokenizer, sequences, where), of_record

    def __call__(self, records: Sequence[Record]) -> list[torch.Tensor]:
        """One output per record, in order (records sharing a sequence get equal tensors in separate storage)."""
        _, encoded, of_record = self.tokenize(records)
        out: list[torch.Tensor | None] = [None] * len(encoded)
        for batch in length_batches([len(ids) for ids in encoded], self.batch_size, self.max_tokens):
            vectors = embed_batch(
                self.model, [encoded[i] for i in batch], self.pad_id, self.prefix, self.spec, self.weights
            )
            for i, v in zip(batch, vectors):
                out[i] = v
        used: set[int] = set()
        results = []
        for i in of_record:
            results.append(out[i] if i not in used else out[i].clone())  # safetensors refuses shared storage
            used.add(i)
        return results


__all__ = [
    "DTYPES",
    "POOLINGS",
    "OutputSpec",
    "WindowEmbedder",
    "check_layers",
    "embed_batch",
    "tokenize_residues",
    "weights_in",
]
