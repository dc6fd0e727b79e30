"""`length_batches`: group sequences of similar length, longest first, under a row and/or token limit.

One routine for every batched pass over sequences: training batches (tasks/data_batching.py), predictions
(tasks/prediction.py) and embeddings (fastankh.embed_dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> list[list[int]]:
    """Indices (0..n-1, or those of `indices`) sorted longest first and cut into consecutive batches.

    The sort is stable: equal lengths keep their order. A batch holds at most `batch_size` indices and,
    with `max_tokens`, at most rows * (its longest length) <= max_tokens padded tokens; a sequence longer
    than `max_tokens` is a batch alone. `lengths[i]` is the (token) length of item i.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    indices = np.arange(len(lengths)) if indices is None else np.asarray(indices, dtype=np.int64)
    order = indices[np.argsort(-lengths[indices], kind="stable")]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in zip(order.tolist(), lengths[order].tolist()):
        full = (batch_size is not None and len(current) == batch_size) or (
            max_tokens is not None and (len(current) + 1) * max(longest, length) > max_tokens
        )
        if current and full:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


__all__ = ["length_batches"]
