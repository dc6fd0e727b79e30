"""Every error class of the project a user can fix, in one module: `UserError`, the one base, and its kinds.

A message is one line naming the file, row or option and the problem; the command-line wrapper (tasks/cli.py)
prints it as `error: <message>` and exits non-zero, without a traceback. Library code raises these and never
`SystemExit`. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class UserError(ValueError):
    """A problem the user can fix; `str(err)` is the whole message (one line per problem)."""


class RecordError(UserError):
    """Bad input records or files; one line per problem, naming the file and the row or line."""


class InputNotFoundError(RecordError, FileNotFoundError):
    """An input file that does not exist: a user error, and still the FileNotFoundError Python code expects."""


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


__all__ = [
    "BaseChangedError",
    "BenchmarkError",
    "CheckpointError",
    "DataError",
    "InputNotFoundError",
    "NonFiniteLossError",
    "RecordError",
    "UserError",
]
