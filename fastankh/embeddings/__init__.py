"""The embedding engine: streamed input, bounded memory, resumable fingerprinted outputs, any layer, several
poolings, safetensors / Parquet / HDF5 outputs and one lazy reader. Flow: engine.py's docstring."""

from .compute import POOLINGS, OutputSpec
from .engine import EmbeddingRun, embed_dataset
from .reader import Embeddings, open_embeddings

__all__ = ["POOLINGS", "EmbeddingRun", "Embeddings", "OutputSpec", "embed_dataset", "open_embeddings"]
