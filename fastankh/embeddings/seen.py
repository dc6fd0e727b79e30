"""`SeenRecords`: which record ids a run has met, and the sequence each had, in 16 bytes per record.

Streamed inputs can hold 10^8 records: a Python dict of ids would cost ~100 bytes each. Ids and sequences are
kept as 64-bit BLAKE2b digests in sorted numpy runs, merged like a binary counter (log-structured: each record
is copied O(log N) times in all), so adding and looking up a window of records is a few vectorised searches.
Two different ids share a digest with probability about N^2 / 2^65 (3e-4 at 10^8 records, 3e-8 at 10^6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

MISSING = np.uint64(0)  # the sequence digest of "not seen"; digest64 never returns 0


def digest64(text: str) -> int:
    """A 64-bit BLAKE2b digest of `text` (never 0, which marks an absent entry)."""
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


def digests(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((digest64(t) for t in texts), dtype=np.uint64)


class SeenRecords:
    """A map id digest -> sequence digest, for record ids met so far (see the module docstring)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted id digests, their sequence digests)

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self._runs)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The sequence digest stored for each id digest in `ids`, MISSING where absent."""
        found = np.zeros(len(ids), dtype=np.uint64)
        for keys, values in self._runs:
            at = np.searchsorted(keys, ids).clip(max=len(keys) - 1)
            hit = keys[at] == ids
            found[hit] = values[at[hit]]
        return found

    def add(self, ids: np.ndarray, sequences: np.ndarray) -> None:
        """Record `ids` (not seen before, no repeats among them) with their sequence digests."""
        if not len(ids):
            return
        order = np.argsort(ids, kind="stable")
        run = (ids[order], sequences[order])
        # Merge runs of equal or smaller size, so at most log2(N) runs exist.
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            keys, values = self._runs.pop()
            merged = np.concatenate([keys, run[0]])
            order = np.argsort(merged, kind="stable")
            run = (merged[order], np.concatenate([values, run[1]])[order])
        self._runs.append(run)


__all__ = ["MISSING", "SeenRecords", "digest64", "digests"]
