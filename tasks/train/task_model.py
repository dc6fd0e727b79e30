"""The task model's config, built from the kind table (tasks/task/kinds.py), the task and the Hydra `head`
group: the head chosen for the task, the token ids its heads never read, and the config the model trained,
checkpointed and exported is made from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastankh.errors import UserError
from tasks.task.kinds import TASK_KINDS
from tasks.task.spec import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fastankh import FastAnkhConfig


def head_choice(task: TaskSpec, head_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(head name, head options) of the Hydra `head` group for this task; head=auto reads the table."""
    kind = TASK_KINDS[task.kind]
    name = head_cfg["name"]
    if kind.default_head is None:
        if name != "auto":
            raise UserError(
                f"task {task.name} trains the model's own {kind.head_attribute}; use head=auto, not {name!r}"
            )
        return name, {}
    options = {k: v for k, v in dict(head_cfg).items() if k != "name" and v is not None}
    return (kind.default_head if name == "auto" else name), options


def non_residue_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids the task model's heads never read: padding, </s> and the specials around every sequence ([NLU])."""
    template = tokenizer("")["input_ids"]
    return sorted({tokenizer.pad_token_id, tokenizer.eos_token_id, *template})


def task_model_config(
    task: TaskSpec, head_cfg: Mapping[str, Any], encoder_config: FastAnkhConfig, non_residue_ids: list[int] | None
) -> FastAnkhConfig:
    """Encoder config + the task fields `fastankh.modeling_tasks` reads: labels, problem_type, head, specials.

    The model built from it is the model trained, checkpointed and exported (config.json as is).
    """
    from fastankh import FastAnkhConfig

    kind = TASK_KINDS[task.kind]
    config = FastAnkhConfig.from_dict(encoder_config.to_dict())
    config.finetuning_task = task.name
    # Only the entries an export serves (a base checkpoint's own auto_map may name other files); saving adds
    # the model class's AutoModelFor* entry. AutoModel gives the fine-tuned encoder (base_model_prefix "model").
    config.auto_map = {
        "AutoConfig": "configuration_fastankh.FastAnkhConfig",
        "AutoModel": "modeling_fastankh.FastAnkhModel",
    }
    name, options = head_choice(task, head_cfg)
    if kind.default_head is None:  # masked_lm: the vocabulary head of FastAnkhForMaskedLM
        return config
    if task.regression:
        config.id2label = {0: task.data.label_column}
    else:
        config.id2label = dict(enumerate(str(label) for label in task.labels))
    config.label2id = {label: i for i, label in config.id2label.items()}
    config.problem_type = kind.problem_type
    config.head_name, config.head_kwargs = name, options
    if non_residue_ids is not None:
        config.non_residue_token_ids = list(non_residue_ids)
    return config


__all__ = ["head_choice", "non_residue_token_ids", "task_model_config"]
