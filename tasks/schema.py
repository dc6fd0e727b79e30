"""Hydra schema of the `task` config group, from the TaskSpec/DataSpec dataclasses.

conf/config.yaml merges it under every task YAML, so each task has every field (typed, with the
dataclass defaults) and `task.data.val=PATH` or `task.data.test=[A,B]` works on the command line even
when the task file does not mention the key. Importing this module registers the schema, and the resolver
`${class_ids:N}` -> ["0", ..., "N-1"] for tasks whose classes are integer ids (remote homology: 1195 folds).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from tasks.spec import TaskSpec

ConfigStore.instance().store(name="task_schema", node=TaskSpec)

if not OmegaConf.has_resolver("class_ids"):
    OmegaConf.register_new_resolver("class_ids", lambda n: [str(i) for i in range(int(n))])
