"""Shared fixtures of the embedding tests."""

from __future__ import annotations

import pytest


class ForwardRecorder:
    """Records the (batch, width) of every forward; optionally fails at call `fail_at` (1-based)."""

    def __init__(self, model, fail_at: int | None = None):
        self.shapes: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.fail_at is not None and len(self.shapes) + 1 == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    @property
    def rows(self) -> int:
        return sum(b for b, _ in self.shapes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture
def forwards():
    """ForwardRecorder: `with forwards(model) as rec: ...` then rec.shapes / rec.rows."""
    return ForwardRecorder
