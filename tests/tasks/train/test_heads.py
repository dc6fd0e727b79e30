"""Heads read residues only: padding invariance, no leak from special tokens, shapes, builder errors."""

from __future__ import annotations

import pytest
import torch

from fastankh.heads import MaskedPooling, build_head
from tasks.task.spec import TaskSpec
from tasks.train.task_model import head_choice
from tests.helpers import make_module

D, C = 16, 5
PREFIX = 1  # an [NLU]-like token before the residues, as in ANKH3
HEADS = [
    ("residue", "linear", {}),
    ("residue", "mlp", {}),
    ("residue", "convbert", {"num_heads": 2}),
    ("sequence", "mean", {}),
    ("sequence", "max", {}),
    ("sequence", "attention", {}),
    ("sequence", "convbert", {"num_heads": 2}),
    ("sequence", "convbert", {"num_heads": 2, "pooling": "attention", "num_layers": 2}),
]
IDS = [f"{level}-{name}-{len(kw)}" for level, name, kw in HEADS]


def make_head(level: str, name: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_head(level, name, D, C, **kwargs).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Hidden (B, T, D) with garbage at padding, residue mask, and each sequence's own unpadded hidden."""
    g = torch.Generator().manual_seed(seed)
    singles = [torch.randn(PREFIX + n + 1, D, generator=g) for n in lengths]  # prefix, residues, </s>
    t = max(x.shape[0] for x in singles)
    hidden = 100 * torch.randn(len(lengths), t, D, generator=g)  # padding a head must never read
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, (x, n) in enumerate(zip(singles, lengths)):
        hidden[i, : x.shape[0]] = x
        mask[i, PREFIX : PREFIX + n] = True
    return hidden, mask, singles


def residues(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return out[mask] if out.dim() == 3 else out


@pytest.mark.parametrize("level,name,kwargs", HEADS, ids=IDS)
def test_output_of_a_sequence_does_not_depend_on_its_batch(level, name, kwargs):
    head = make_head(level, name, kwargs)
    lengths = [7, 23, 2, 12]
    hidden, mask, singles = padded_batch(lengths)
    with torch.no_grad():
        batched = head(hidden, mask)
        for i, (x, n) in enumerate(zip(singles, lengths)):
            alone_mask = torch.zeros(1, x.shape[0], dtype=torch.bool)
            alone_mask[0, PREFIX : PREFIX + n] = True
            alone = head(x[None], alone_mask)
            expected_shape = (1, x.shape[0], C) if level == "residue" else (1, C)
            assert alone.shape == expected_shape
            in_batch = residues(batched[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(in_batch, residues(alone, alone_mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("level,name,kwargs", HEADS, ids=IDS)
def test_only_residue_positions_are_read(level, name, kwargs):
    head = make_head(level, name, kwargs)
    hidden, mask, _ = padded_batch([9, 4])
    with torch.no_grad():
        base = residues(head(hidden, mask), mask)
        special = hidden.clone()
        special[~mask] = torch.randn_like(special[~mask])  # prefix, </s> and padding
        torch.testing.assert_close(residues(head(special, mask), mask), base, atol=1e-5, rtol=0)
        changed = hidden.clone()
        changed[0, PREFIX + 3] += 5.0  # a residue: the output must see it (the test is not vacuous)
        assert not torch.allclose(residues(head(changed, mask), mask), base, atol=1e-4)


def test_pooling_matches_residue_mean_and_max_computed_by_hand():
    hidden, mask, _ = padded_batch([6, 3])
    for i in range(2):
        rows = hidden[i][mask[i]]
        torch.testing.assert_close(MaskedPooling(D, "mean")(hidden, mask)[i], rows.mean(0))
        torch.testing.assert_close(MaskedPooling(D, "max")(hidden, mask)[i], rows.max(0).values)


def test_builder_names_the_problem():
    with pytest.raises(ValueError, match="unknown residue head 'mean'"):
        build_head("residue", "mean", D, C)
    with pytest.raises(ValueError, match="unknown sequence head 'linear'"):
        build_head("sequence", "linear", D, C)
    with pytest.raises(ValueError, match="kind_level"):
        build_head("token", "linear", D, C)
    with pytest.raises(ValueError, match="does not accept"):
        build_head("residue", "linear", D, C, kernel_size=7)
    with pytest.raises(ValueError, match="odd"):
        build_head("residue", "convbert", D, C, kernel_size=4)


def test_auto_head_and_regression_bias_start_at_the_label_mean():
    residue = TaskSpec(name="r", kind="residue_regression", data={})
    sequence = TaskSpec(name="s", kind="sequence_classification", data={}, labels=["a", "b"])
    assert head_choice(residue, {"name": "auto", "dropout": 0.1}) == ("linear", {"dropout": 0.1})
    assert head_choice(sequence, {"name": "auto", "dropout": 0.1, "hidden_dim": None}) == ("mean", {"dropout": 0.1})
    head = make_module("residue_regression", head={"name": "convbert", "num_heads": 2}, label_mean=0.37).head
    assert head.out.bias.item() == pytest.approx(0.37)
    assert make_module("sequence_classification", head={"name": "auto"}).head.out.out_features == 3
    with pytest.raises(ValueError, match="use head=auto, not 'mean'"):
        make_module("masked_lm", head={"name": "mean"})
