"""FastANKH: fast, exact ANKH protein language models.

Importing the package registers the config and models with transformers' Auto classes, so
`AutoModel.from_pretrained(dir)` works on FastANKH checkpoints without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .batching import length_batches
from .configuration_fastankh import ATTN_BACKENDS, PRESETS, FastAnkhConfig
from .embeddings import embed_dataset, open_embeddings
from .modeling_fastankh import FastAnkhForMaskedLM, FastAnkhModel, FastAnkhPreTrainedModel
from .modeling_tasks import (
    FastAnkhForContactPrediction,
    FastAnkhForSequenceClassification,
    FastAnkhForTokenClassification,
)
from .records import clean_sequence, read_fasta, read_records
from .tokenization import load_tokenizer, prefix_length

AutoConfig.register(FastAnkhConfig.model_type, FastAnkhConfig, exist_ok=True)
AutoModel.register(FastAnkhConfig, FastAnkhModel, exist_ok=True)
AutoModelForMaskedLM.register(FastAnkhConfig, FastAnkhForMaskedLM, exist_ok=True)
AutoModelForTokenClassification.register(FastAnkhConfig, FastAnkhForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(FastAnkhConfig, FastAnkhForSequenceClassification, exist_ok=True)

# Saved checkpoints carry auto_map + the modeling files, so a Hub user needs only transformers.
FastAnkhConfig.register_for_auto_class()
FastAnkhModel.register_for_auto_class("AutoModel")
FastAnkhForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
FastAnkhForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
FastAnkhForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
# No Auto class for residue-pair outputs exists: an export's auto_map serves the contact model under the token
# one (remote code only; locally AutoModelForTokenClassification stays FastAnkhForTokenClassification).
FastAnkhForContactPrediction.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "ATTN_BACKENDS",
    "PRESETS",
    "FastAnkhConfig",
    "FastAnkhModel",
    "FastAnkhForMaskedLM",
    "FastAnkhForTokenClassification",
    "FastAnkhForSequenceClassification",
    "FastAnkhForContactPrediction",
    "FastAnkhPreTrainedModel",
    "embed_dataset",
    "open_embeddings",
    "read_fasta",
    "read_records",
    "clean_sequence",
    "length_batches",
    "load_tokenizer",
    "prefix_length",
]
