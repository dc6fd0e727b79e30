"""Task models built around an existing encoder: no random encoder is materialised, the head is drawn as before."""

from __future__ import annotations

import pytest
import torch

from fastankh import FastAnkhConfig, FastAnkhModel
from fastankh.modeling_tasks import (
    FastAnkhForContactPrediction,
    FastAnkhForSequenceClassification,
    FastAnkhForTokenClassification,
)

CLASSES = [FastAnkhForTokenClassification, FastAnkhForSequenceClassification, FastAnkhForContactPrediction]


def config(cls=None, **kwargs) -> FastAnkhConfig:
    labels = 1 if cls is FastAnkhForContactPrediction else 3  # one logit per residue pair
    return FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, num_labels=labels, **kwargs)


@pytest.mark.parametrize("cls", CLASSES)
def test_with_encoder_materialises_no_other_encoder(monkeypatch, cls):
    built = []
    init = FastAnkhModel.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self.embed_tokens.weight.device.type)

    encoder = FastAnkhModel(config())
    monkeypatch.setattr(FastAnkhModel, "__init__", spy)
    model = cls.with_encoder(config(cls), encoder)
    assert built == ["meta"]  # the encoder cls(config) makes is never allocated
    assert model.model is encoder
    assert all(p.device.type == "cpu" and p.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("head", [{}, {"head_name": "convbert"}])
def test_with_encoder_head_starts_as_a_head_built_on_its_own(cls, head):
    """The head draws from the seed as the whole model's own init would, right after the encoder's."""
    encoder = FastAnkhModel(config())
    torch.manual_seed(7)
    ours = cls.with_encoder(config(cls, **head), encoder).head.state_dict()
    torch.manual_seed(7)
    whole = cls(config(cls, **head))
    torch.manual_seed(7)
    whole.head.apply(whole._init_weights)  # the head's draws alone, from the same seed
    reference = whole.head.state_dict()
    assert ours.keys() == reference.keys()
    for name in reference:
        assert torch.equal(ours[name], reference[name]), name
