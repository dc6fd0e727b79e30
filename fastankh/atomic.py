"""`atomic_path`: write a file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` (same folder, so the final rename is atomic): fsynced and renamed over
    `path` when the block succeeds, removed when it fails. The result has the umask's permissions, as a
    plain open() gives (mkstemp, or safetensors' writer, would leave it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    tmp.touch(exist_ok=False)
    mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file
    try:
        yield tmp
        # Some writers replace the file with their own owner-only one (safetensors' save_file does).
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["atomic_path"]
