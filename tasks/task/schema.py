"""Hydra schema of the `task` config group, from the TaskSpec/DataSpec dataclasses.

conf/config.yaml merges it under every task YAML, so each task has every field (typed, with the
dataclass defaults) and `task.data.val=PATH` or `task.data.test=[A,B]` works on the command line even
when the task file does not mention the key. Importing this module registers the schema, and the resolver
`${class_ids:N}` -> ["0", ..., "N-1"] for tasks whose classes are integer ids (remote homology: 1195 folds).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from tasks.task.spec import TaskSpec  # registers `${class_ids:N}` too

ConfigStore.instance().store(name="task_schema", node=TaskSpec)
