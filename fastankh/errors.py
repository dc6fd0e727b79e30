"""`UserError`: the one base class of errors a user can fix (bad input, a bad option, a changed file).

Its message is one line naming the file, row or option and the problem; the command-line wrapper prints it as
`error: <message>` and exits non-zero, without a traceback. Library code raises it (or a subclass) and never
`SystemExit`. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; `str(err)` is the whole message (one line per problem)."""


class RecordError(UserError):
    """Bad input records or files; one line per problem, naming the file and the row or line."""


class InputNotFoundError(RecordError, FileNotFoundError):
    """An input file that does not exist: a user error, and still the FileNotFoundError Python code expects."""


__all__ = ["InputNotFoundError", "RecordError", "UserError"]
