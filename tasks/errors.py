"""Every error of the fine-tuning framework a user can fix, in one place; each subclasses
`fastankh.errors.UserError`, whose message the command-line wrapper (tasks/cli.py) prints as one
`error: <message>` line before exiting non-zero, without a traceback. Other exceptions are bugs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastankh.errors import UserError


class DataError(UserError):
    """Bad task data or inference input: one line per problem, each naming the file, the 1-based data row and
    the problem (or the option, or the model file, that is wrong)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from: one line naming the file, why, and what to use instead."""


class NonFiniteLossError(UserError):
    """A NaN or infinite training loss: one line naming the step and the record ids of the batch."""


class BaseChangedError(UserError):
    """A lean checkpoint's base weights changed or are gone (one line); Python callers can catch it by this class."""

    def __init__(self, checkpoint: str, base: Mapping[str, Any], now: str | None, own: Mapping[str, Any] | None):
        trained = base["source"] + (f"@{base['revision']}" if base.get("revision") else "")
        ref = own or base
        where = f"model.path={ref['source']}" if ref.get("revision") is None else ref["source"]
        holds = f"now holds {now}" if now else "no longer holds its weights"
        super().__init__(
            f"checkpoint {checkpoint} was trained on base {trained} (checksum {base['checksum']}) "
            f"but {where} {holds}; restore that base or train again"
        )


class BenchmarkError(UserError):
    """An accuracy benchmark that cannot start: unknown task names, missing datasets (one line each)."""


__all__ = ["BaseChangedError", "BenchmarkError", "CheckpointError", "DataError", "NonFiniteLossError", "UserError"]
