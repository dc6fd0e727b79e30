"""Hydra schema of the `task` config group, from the TaskSpec/DataSpec dataclasses.

conf/config.yaml merges it under every task YAML, so each task has every field (typed, with the
dataclass defaults) and `task.data.val=PATH` or `task.data.test=[A,B]` works on the command line even
when the task file does not mention the key. Importing this module registers the schema.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from tasks.spec import TaskSpec

ConfigStore.instance().store(name="task_schema", node=TaskSpec)
