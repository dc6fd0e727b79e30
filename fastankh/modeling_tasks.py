"""FastANKH task models: the encoder plus a per-residue, per-sequence or per-pair head, as plain transformers models.

`FastAnkhForTokenClassification` (one prediction per residue), `FastAnkhForSequenceClassification` (one per
sequence) and `FastAnkhForContactPrediction` (one contact logit per residue pair) hold `model` (a
`FastAnkhModel`) and `head` (built by `heads.build_head` from config fields), so
`AutoModelFor{Token,Sequence}Classification.from_pretrained(dir, trust_remote_code=True)` rebuilds a
fine-tuned model with nothing but torch and transformers (the contact model is served under
AutoModelForTokenClassification: transformers has no contact Auto class).

Config fields read here (besides the encoder's):
- `id2label` / `label2id` / `num_labels`; `problem_type`: "single_label_classification",
  "multi_label_classification" (sequence models), "regression" (num_labels = 1) or "contact_prediction"
  (the contact model, num_labels = 1);
- `head_name` (residue heads: linear, mlp, convbert; sequence heads: mean, max, attention, convbert; pair
  heads: mlp, convbert) and `head_kwargs` (hidden_dim, dropout, num_heads, kernel_size, num_layers, pooling,
  separation_buckets, chunk_size);
- `non_residue_token_ids`: token ids that are not residues ([NLU], </s>, <pad>); heads read residues only.

The loss of each problem type is `loss` of the model class; `forward(labels=...)` returns it, and a
fine-tuning loop that computes hidden states itself (e.g. cached) calls `head_logits` and `loss`. `forward` takes
transformers' `output_hidden_states`, `output_attentions` (the encoder's per-layer probabilities) and `return_dict`
(False: the tuple of the output fields that are set).

This file travels to the Hub as remote code: it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import ModelOutput

from .configuration_fastankh import FastAnkhConfig
from .heads import build_head
from .losses import counted_loss
from .modeling_fastankh import FastAnkhModel, FastAnkhPreTrainedModel, _checkpoint_model_type

Tensor = torch.Tensor
Mask = torch.Tensor | None  # a (B, T) bool mask, or None for the default

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification", "contact_prediction")
DEFAULT_HEADS = {"residue": "linear", "sequence": "mean", "pair": "mlp"}
# Pairs closer in sequence than this are trivially near in space: no loss, no metric, no prediction (the field's rule).
MIN_CONTACT_SEPARATION = 6


class _FastAnkhTaskModel(FastAnkhPreTrainedModel):
    """Encoder `model` + task `head`; `head_level` ("residue" | "sequence" | "pair") is set by the subclass."""

    head_level: str
    output_class: type[ModelOutput]

    def __init__(self, config: FastAnkhConfig):
        super().__init__(config)
        if config.problem_type is not None and config.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {config.problem_type!r}")
        self.model = FastAnkhModel(config)
        self.head = build_head(
            self.head_level,
            getattr(config, "head_name", None) or DEFAULT_HEADS[self.head_level],
            config.d_model,
            config.num_labels,
            **(getattr(config, "head_kwargs", None) or {}),
        )
        self.post_init()

    @classmethod
    def with_encoder(cls, config: FastAnkhConfig, encoder: FastAnkhModel) -> _FastAnkhTaskModel:
        """The task model of `config` around `encoder` (the object itself), its head freshly initialised from the
        current RNG state. The encoder `cls(config)` would build is never materialised (built on the meta device):
        a random encoder only to be replaced would cost a whole model's memory and initialisation time."""
        with torch.device("meta"):
            model = cls(config)
        model.model = encoder
        model.head.to_empty(device=encoder.device)
        model.head.apply(model._init_weights)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config: FastAnkhConfig | None = None, **kwargs):
        """A saved task model, or an encoder checkpoint (FastANKH, or original ElnaggarLab T5) whose head then
        starts untrained, e.g. the base an adapter-only export loads onto. `config` sets labels and head."""
        path = os.fspath(pretrained_model_name_or_path)
        if _checkpoint_model_type(path, kwargs) != "t5":
            return super().from_pretrained(path, *args, config=config, **kwargs)
        # T5 conversion knows the encoder only; the head comes from `config`.
        loaded = FastAnkhModel.from_pretrained(path, *args, **kwargs)
        config = config if config is not None else loaded.config
        with torch.device("meta"):  # an encoder of `config` (its runtime fields: backend, ...) on the loaded tensors
            encoder = FastAnkhModel(config)
        encoder.load_state_dict(loaded.state_dict(), assign=True)
        return cls.with_encoder(config, encoder).to(loaded.dtype).eval()

    def _init_weights(self, module: nn.Module) -> None:
        """Head modules get PyTorch's default init (the encoder's own init runs in `self.model`)."""
        if isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif module is not self and hasattr(module, "reset_parameters"):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def residue_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) bool: True at residue tokens, False at [NLU], </s>, padding (ids in non_residue_token_ids)."""
        excluded = getattr(self.config, "non_residue_token_ids", None)
        if excluded is None:
            excluded = [self.config.pad_token_id, self.config.eos_token_id]
        mask = ~torch.isin(input_ids, torch.tensor(excluded, device=input_ids.device))
        return mask if attention_mask is None else mask & attention_mask.bool()

    def _problem_type(self, labels: torch.Tensor) -> str:
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        integral = labels.dtype in (torch.long, torch.int)
        return "single_label_classification" if integral else "multi_label_classification"

    def head_logits(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """The head on encoder output (B, T, D): (B, T, num_labels), (B, num_labels) or pair logits (B, T, T)."""
        return self.head(hidden, residue_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        residue_mask: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput:
        """input_ids / attention_mask: (B, T); residue_mask (B, T) bool defaults to `self.residue_mask`;
        labels and label_mask: see the subclass's `loss`. Returns the subclass's `output_class` (loss, logits,
        hidden_states, attentions), or its tuple with return_dict=False."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        if residue_mask is None:
            residue_mask = self.residue_mask(input_ids, attention_mask)
        logits = self.head_logits(out.last_hidden_state, residue_mask)
        loss = None if labels is None else self.loss(logits, labels, label_mask, residue_mask)
        output = self.output_class(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return output if return_dict is not False else output.to_tuple()


class FastAnkhForTokenClassification(_FastAnkhTaskModel):
    """One prediction per residue: logits (B, T, num_labels), meaningful at residue tokens only.

    labels: (B, T) class ids, or float values for regression. Unlabelled residues: label_mask (B, T) bool False
    there (what the fine-tuning data module passes), or, without label_mask, the label -100 (class ids) / NaN
    (values). See `loss`."""

    head_level = "residue"
    output_class = TokenClassifierOutput

    def loss(self, logits: Tensor, labels: Tensor, label_mask: Mask = None, residue_mask: Mask = None) -> Tensor:
        """Mean loss over labelled residues: cross-entropy, or MSE for problem_type "regression".

        A residue counts where `label_mask` is True; without it, where its label is not the ignore value
        (-100 for class ids, NaN for regression values). Only residue tokens (`residue_mask`) ever count.
        """
        problem = self._problem_type(labels)
        if label_mask is None:
            label_mask = ~labels.isnan() if problem == "regression" else labels != -100
        if residue_mask is not None:
            label_mask = label_mask & residue_mask
        return counted_loss(logits, labels, label_mask, problem)


class FastAnkhForSequenceClassification(_FastAnkhTaskModel):
    """One prediction per sequence, pooled over residues: logits (B, num_labels)."""

    head_level = "sequence"
    output_class = SequenceClassifierOutput

    def loss(self, logits: Tensor, labels: Tensor, label_mask: Mask = None, residue_mask: Mask = None) -> Tensor:
        """Mean over sequences: cross-entropy on (B,) class ids, MSE on (B,) floats (regression), BCE on
        (B, num_labels) 0/1 (multi-label). Every sequence counts; the masks (the token model's signature,
        so a training loop calls either alike) are unused."""
        counted = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        return counted_loss(logits, labels, counted, self._problem_type(labels))


def counted_pairs(
    labels: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    residue_mask: torch.Tensor | None = None,
    min_separation: int = MIN_CONTACT_SEPARATION,
) -> torch.Tensor:
    """(B, T, T) bool: the pairs a contact loss or metric counts, each once (i < j, j - i >= min_separation),
    where the label is 0 or 1 (negative = ignored) and both residues count in `label_mask` / `residue_mask`."""
    counted = labels >= 0
    for mask in (label_mask, residue_mask):
        if mask is not None:
            counted = counted & mask[:, :, None] & mask[:, None, :]
    positions = torch.arange(labels.shape[-1], device=labels.device)
    return counted & (positions[None, :] - positions[:, None] >= min_separation)


@dataclass
class ContactPredictionOutput(ModelOutput):
    """loss: mean BCE over counted pairs; logits: (B, T, T) contact logits (symmetric, sigmoid = probability)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class FastAnkhForContactPrediction(_FastAnkhTaskModel):
    """One contact logit per residue pair: logits (B, T, T) in token coordinates (residue k of a sequence is
    token prefix + k), meaningful where both tokens are residues. The pair head computes the map in row chunks
    (`head.chunk_size` rows at a time: a memory knob, the values do not depend on it)."""

    head_level = "pair"
    output_class = ContactPredictionOutput

    def loss(self, logits: Tensor, labels: Tensor, label_mask: Mask = None, residue_mask: Mask = None) -> Tensor:
        """Mean binary cross-entropy over the pairs `counted_pairs` keeps: labels (B, T, T) 1 contact, 0 none,
        negative (e.g. -100) ignored; label_mask (B, T) bool False at residues whose pairs never count (e.g.
        without coordinates); pairs closer than MIN_CONTACT_SEPARATION in sequence never count."""
        counted = counted_pairs(labels, label_mask, residue_mask)
        return counted_loss(logits, labels, counted, "multi_label_classification")


__all__ = [
    "FastAnkhForTokenClassification",
    "FastAnkhForSequenceClassification",
    "FastAnkhForContactPrediction",
    "ContactPredictionOutput",
    "counted_pairs",
    "MIN_CONTACT_SEPARATION",
    "PROBLEM_TYPES",
]
