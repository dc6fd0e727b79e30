"""Lightning's FSDPStrategy, also on CPU (gloo): the strategy `trainer=fsdp` instantiates.

Lightning 2.6 refuses `FSDPStrategy` with `accelerator="cpu"` ("The strategy `fsdp` requires a GPU
accelerator"): its check is `type(strategy) is FSDPStrategy`, and its `_setup_model` passes
`device_id=root_device.index` (None on CPU), for which torch's FSDP raises "FSDP needs a non-CPU accelerator
device". torch FSDP itself runs on CPU with the gloo backend when given `device_id=torch.device("cpu")`, so
this subclass wraps the module itself on CPU and lets Lightning do the rest (activation checkpointing,
optimizers, checkpoints). On GPU it is Lightning's FSDPStrategy unchanged. This is how the FSDP test runs
on 2 CPU processes (tests/cli/test_fsdp.py); CPU FSDP is for testing, not speed.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDP
from torch import nn


class FSDPStrategy(_LightningFSDP):
    """lightning.pytorch.strategies.FSDPStrategy that also accepts accelerator=cpu (process group: gloo)."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = getattr(self, "_fsdp_root", None)
        if root is not None and root.module is model:
            # trainer.test/validate after trainer.fit: the module's blocks are sharded in place already; Lightning
            # would keep the bare module (its remaining parameters then sharded views) and fail to load the
            # checkpoint into it. Reuse the root FSDP unit of the fit.
            return root
        if self.root_device.type == "cpu" and not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn that it is ignored
        model = super()._setup_model(model)
        if isinstance(model, FullyShardedDataParallel):
            self._fsdp_root = model
        return model

    def lightning_module_state_dict(self) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        with _cpu_full_state_dict_context(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        with _cpu_full_state_dict_context(self.model):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state


def _cpu_full_state_dict_context(module: nn.Module):
    """Lightning's full-state-dict context without `offload_to_cpu`: on CPU that option makes torch FSDP
    crash the process (segmentation fault) while gathering the parameters."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    return FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
    )
