"""The one command-line convention of the five entry points (train, embed, predict, export, benchmark).

Each script is the same three parts:

    @hydra.main(version_base="1.3", config_path=..., config_name=...)
    def main(cfg: DictConfig):
        return cli.run_command(embed, cfg, __doc__)   # the library function takes the DictConfig

`run_command` checks that every required key (`???` in the command's YAML) was given, naming the missing ones
with the command's usage line (the first `python ...` example of the script's docstring), then runs the command;
a `fastankh.errors.UserError` (fastankh/errors.py holds every error class of the project) ends the process
with its message as one `error: <message>` line on stderr and exit status 1, without a traceback. Other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from fastankh.errors import UserError

T = TypeVar("T")


def usage_line(doc: str | None) -> str:
    """The first example command of a script's docstring (`python <script>.py ...`), or ''."""
    return next((line.strip() for line in (doc or "").splitlines() if line.strip().startswith("python ")), "")


def run_command(command: Callable[[DictConfig], T], cfg: DictConfig, doc: str | None = None) -> T:
    """`command(cfg)`, with a missing required key or a UserError turned into one `error:` line and exit 1."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        order = {key: i for i, key in enumerate(cfg.keys())}
        names = sorted(missing, key=lambda key: (order.get(key, len(order)), key))
        usage = usage_line(doc)
        raise SystemExit(f"error: missing required key(s): {', '.join(names)}" + (f"; usage: {usage}" if usage else ""))
    try:
        return command(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


__all__ = ["run_command", "usage_line"]
