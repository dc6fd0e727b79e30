"""All process-wide mutable state of FastANKH's modeling code, in one place.

The modeling files keep no other module-level state. Every field is a cache or a once-only decision that holds
for the whole process (compiled code, a kernel that turned out not to run here, warnings already shown):

- `regions`: name -> the torch.compile'd twin of a norm / FFN-gate region (modeling_fastankh._region), or None
  when its compilation failed (that region then runs eagerly for good);
- `regions_proven`: names of the regions whose compiled twin has run once without error;
- `flex`: flex_attention compiled once (static shapes: one graph per packed row length), None until first used;
- `flash_failed`: flex's FLASH kernel raised once, so every later flex call takes the Triton kernel;
- `fused_gate_failed`: the oneDNN matmul-with-activation kernel of the FFN gate raised once (or is missing from
  this build), so the gate runs as separate matmuls and elementwise ops for good;
- `warned`: the messages `warn_once` has already shown.

Tests reset a field with `monkeypatch.setattr(RUNTIME, name, ...)`. This file travels to the Hub as remote code
next to modeling_fastankh.py: it imports only the standard library.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RuntimeState:
    """The state described in the module docstring."""

    regions: dict[str, Callable | None] = field(default_factory=dict)
    regions_proven: set[str] = field(default_factory=set)
    flex: Callable | None = None
    flash_failed: bool = False
    fused_gate_failed: bool = False
    warned: set[str] = field(default_factory=set)


RUNTIME = RuntimeState()


def warn_once(message: str) -> None:
    """A UserWarning with `message`, the first time this process sees that message."""
    if message not in RUNTIME.warned:
        RUNTIME.warned.add(message)
        warnings.warn(message, stacklevel=3)


__all__ = ["RUNTIME", "RuntimeState", "warn_once"]
