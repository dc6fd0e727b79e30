"""The training console: each line once, without third-party noise, and the run's last line (what next).

`drop_console_noise` removes Lightning's duplicate handler and filters known adverts and warnings a user cannot
act on; `print_next_step` names the run directory, its best checkpoint and the command that uses it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

LIGHTNING_NOISE = (
    "litlogger",  # "Tip: ... try installing litlogger": an advert in every run
    "TPU available: False",
    "was configured so validation will run at the end of the training epoch",  # val_check_interval=1.0
    "to estimate number of stepping batches",
)
WARNING_NOISE = (  # (category, start of the message): known third-party warnings a user cannot act on
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # lightning's _pytree on torch >= 2.10
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in LIGHTNING_NOISE)


def drop_console_noise() -> None:
    """Every console message once, without known third-party noise.

    The `lightning` package logger prints through its own handler and also propagates to the root logger,
    which Hydra's job logging has given a console (and train.log) handler: every Lightning line came twice.
    When the root prints to a terminal stream, the `lightning` handler goes (its lines keep reaching the root).
    Lightning's adverts and defaults-restating lines (LIGHTNING_NOISE) and WARNING_NOISE are filtered out by
    message, nothing else. Idempotent; call it after lightning is imported.
    """
    root = logging.getLogger()
    if any(type(h) is logging.StreamHandler for h in root.handlers):  # Hydra's console handler
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            if type(handler) is logging.StreamHandler:
                package.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for category, message in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


@rank_zero_only
def print_next_step(output_dir: str | os.PathLike, best: str | None, task_name: str, kind: str) -> None:
    """The run's last console line: where it is, its best checkpoint and the command that uses it."""
    if kind == "masked_lm":
        nxt = f"python train.py task=... model.path={Path(output_dir) / 'backbone'}"
    elif best:
        nxt = f"python export.py checkpoint={best} output_dir=exports/{task_name}"
    else:
        nxt = "no checkpoint was saved (callbacks.model_checkpoint is off), nothing to export"
    print(f"run: {output_dir} | best checkpoint: {best or 'none'} | next: {nxt}", flush=True)
