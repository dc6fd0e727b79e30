"""SeenRecords (fastankh/embeddings/seen.py): the digest map behind the duplicate policy and resume."""

from __future__ import annotations

import numpy as np

from fastankh.embeddings.seen import MISSING, SeenRecords, digest64, digests


def test_lookup_matches_a_dict_over_many_merges():
    rng = np.random.default_rng(0)
    seen, reference = SeenRecords(), {}
    for _ in range(40):
        keys = np.unique(rng.integers(1, 2**63, size=int(rng.integers(1, 300)), dtype=np.uint64))
        keys = np.array([k for k in keys.tolist() if k not in reference], dtype=np.uint64)
        values = rng.integers(1, 2**63, size=len(keys), dtype=np.uint64)
        seen.add(keys, values)
        reference.update(zip(keys.tolist(), values.tolist()))
    probe = np.array(list(reference)[::7] + [5, 6, 7], dtype=np.uint64)
    got = seen.lookup(probe).tolist()
    assert got == [reference.get(k, 0) for k in probe.tolist()]
    assert len(seen) == len(reference)
    assert len(seen._runs) <= int(np.log2(len(reference))) + 1  # merged like a binary counter


def test_digests_are_stable_and_never_missing():
    assert digest64("MKT") == digest64("MKT") != digest64("MKV")
    assert MISSING not in digests(["", "a", "b"]).tolist()
