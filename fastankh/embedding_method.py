"""`EmbeddingMixin`: gives the encoder classes their `embed_dataset` method.

This file travels to the Hub with the modeling code, which must import only torch and transformers: the engine
itself (fastankh.embeddings, with its readers and writers) is imported when the method is called, so a model
loaded as remote code has the method and asks for the fastankh package only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any


class EmbeddingMixin:
    def embed_dataset(self, sequences: Any, **kwargs: Any) -> Any:
        """Embed protein sequences with this encoder: fastankh.embeddings.embed_dataset(self, sequences, ...);
        see its documentation for the options (pooling, layers, save_path, precision, ...)."""
        try:
            engine = importlib.import_module("fastankh.embeddings")
        except ImportError as err:
            raise ImportError("embed_dataset needs the fastankh package: pip install fastankh") from err
        return engine.embed_dataset(self, sequences, **kwargs)


__all__ = ["EmbeddingMixin"]
