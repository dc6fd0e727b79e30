"""LightningModule around ONE task model: steps, metrics, AdamW + warmup/decay, logging, the frozen cache.

The task model (`self.model`: the class tasks/task/kinds.py names for the task kind, built from the task, head
and encoder configs; a peft model over it for finetune=lora) computes the logits and THE loss; it is the
object tasks/hub/export_folder.py saves. Logs `train/loss` per step, `val/loss` and `val/<metric>` per validation
epoch, and `test/<split>/<metric>` per test split (split names from the data module). The constructor
arguments are plain dicts saved as hyperparameters, so `FineTuneModule.load_from_checkpoint(path)`
rebuilds the architecture (from the saved `model_config`) and loads the trained weights.
Gradient clipping, accumulation and precision are Trainer settings.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, get_scheduler

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.errors import BaseChangedError, UserError
from fastankh.modeling_tasks import counted_pairs
from tasks.task.kinds import TASK_KINDS
from tasks.task.metrics import TaskMetrics
from tasks.task.spec import IGNORE_INDEX, TaskSpec
from tasks.train.finetune import apply_finetune
from tasks.train.model import current_checksum, load_backbone
from tasks.train.task_model import head_choice, task_model_config

LOADING_FROM: ContextVar[str | None] = ContextVar("LOADING_FROM", default=None)  # checkpoint being loaded


class FineTuneModule(L.LightningModule):
    """Fine-tune an ANKH encoder on one task.

    task: TaskSpec fields (the Hydra `task` node); head / finetune / optim: the Hydra groups of those
    names; backbone: the pretrained FastAnkhModel (FastAnkhForMaskedLM for kind masked_lm), or None to
    rebuild the task model from `model_config` when reloading a checkpoint; non_residue_token_ids: the
    tokenizer's specials (tasks.train.task_model.non_residue_token_ids), so the exported model finds residues from
    ids alone; label_mean: regression heads start there.
    """

    def __init__(
        self,
        task: Mapping[str, Any],
        head: Mapping[str, Any],
        finetune: Mapping[str, Any],
        optim: Mapping[str, Any],
        backbone: FastAnkhModel | FastAnkhForMaskedLM | None = None,
        model_config: dict[str, Any] | None = None,
        non_residue_token_ids: list[int] | None = None,
        label_mean: float | None = None,
        gradient_checkpointing: bool = False,
        base: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        if backbone is not None:  # tasks.train.model.load_backbone's reference to the weights (None: random init)
            self.hparams.base = getattr(backbone, "fastankh_base", None)
        self._built_from_base = backbone is not None
        self.task = TaskSpec.from_config(dict(task))
        self.kind = TASK_KINDS[self.task.kind]
        model = self._build_model(backbone, model_config, head, non_residue_token_ids, label_mean)
        self.hparams.model_config = model.config.to_dict()
        if gradient_checkpointing:
            # Non-reentrant: works when the encoder input does not require grad (frozen embeddings, LoRA).
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model, self.param_counts = apply_finetune(model, self.kind.head_attribute, finetune)
        # state-dict key -> key in the base encoder's state dict, for every frozen base tensor (lean checkpoints)
        self._base_keys = self._frozen_base_keys() if self.hparams.base and finetune["mode"] != "full" else {}
        if self._base_keys:
            self.strict_loading = False  # the base keys come from the base (on_load_checkpoint checks the rest)

        self.frozen = finetune["mode"] == "frozen"
        # A from_pretrained backbone comes in eval mode and Lightning trains modules in the mode it finds them:
        # start in train mode (dropout on), the frozen encoder excepted (see `train`).
        self.train()
        if finetune.get("cache_embeddings") and (not self.frozen or self.kind.default_head is None):
            raise UserError(
                "finetune.cache_embeddings needs finetune=frozen and a supervised task (inputs must not change)"
            )
        # token ids of one sequence (bytes) -> its last_hidden_state (T_i, D) on CPU; not saved in checkpoints
        self.embedding_cache: dict[bytes, torch.Tensor] | None = {} if finetune.get("cache_embeddings") else None

        if self.kind.level == "token":
            self._num_classes = model.config.vocab_size
        else:
            self._num_classes = None if self.task.regression else len(self.task.labels)
        self.val_metrics = TaskMetrics(self.task.kind, self.task.metrics, self._num_classes)
        self.val_loss = MeanMetric()
        self.test_results: dict[str, dict[str, float]] = {}

    def _build_model(
        self,
        backbone: PreTrainedModel | None,
        model_config: dict[str, Any] | None,
        head_cfg: Mapping[str, Any],
        non_residue_ids: list[int] | None,
        label_mean: float | None,
    ) -> PreTrainedModel:
        """The task model: from the pretrained `backbone` (weights copied in), or empty from a saved config."""
        cls = self.kind.model_class
        if backbone is None:
            return cls(FastAnkhConfig.from_dict(model_config))
        if isinstance(backbone, cls):  # masked_lm: FastAnkhForMaskedLM is already the task model
            head_choice(self.task, head_cfg)  # refuses a head other than auto
            return backbone
        # the pretrained encoder object itself becomes the task model's encoder; the head is drawn from the seed
        model = cls.with_encoder(task_model_config(self.task, head_cfg, backbone.config, non_residue_ids), backbone)
        if self.task.regression and label_mean is not None:
            # As in the Ankh regression head: predictions start at the mean, so early MSE is the variance.
            nn.init.constant_(model.head.out.bias, float(label_mean))
        return model.to(backbone.dtype)

    # ------------------------------------------------------------------ parts of the task model
    @property
    def task_model(self) -> PreTrainedModel:
        """The task model itself (under LoRA: inside the peft model, adapters injected in place)."""
        return self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model

    @property
    def encoder(self) -> FastAnkhModel:
        return self.task_model.model

    @property
    def head(self) -> nn.Module:
        return getattr(self.task_model, self.kind.head_attribute)

    @property
    def lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def merged_model(self) -> PreTrainedModel:
        """The task model with LoRA folded into the encoder weights (a copy: this module stays as trained);
        without LoRA, the task model itself."""
        return copy.deepcopy(self.model).merge_and_unload() if self.lora else self.model

    # ------------------------------------------------------------------ lean checkpoints
    def _frozen_base_keys(self) -> dict[str, str]:
        """Checkpoint keys of the encoder's frozen tensors (every encoder entry but the trainable parameters:
        LoRA adapters, partial's unfrozen blocks) -> their names in the base encoder's own state dict (peft's
        `.base_layer` dropped)."""
        prefix = next(name for name, m in self.named_modules() if m is self.encoder) + "."
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {
            key: key[len(prefix) :].replace(".base_layer.", ".")
            for key in self.state_dict(keep_vars=True)
            if key.startswith(prefix) and key not in trainable
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen base (frozen, lora, partial) with weights from a path or hub id: the checkpoint keeps what
        trains (head, adapters, unfrozen blocks; Lightning saves optimizer states only for those) and refers
        to the base (hparams `base`: source, revision, checksum); loading rebuilds the rest from it."""
        if not self._base_keys:
            return
        state = checkpoint["state_dict"]
        for key in self._base_keys:
            state.pop(key, None)
        checkpoint["fastankh_lean"] = {"base": dict(self.hparams.base), "base_keys": len(self._base_keys)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Complete a lean checkpoint's state dict from its base before Lightning loads it (resume, test,
        load_from_checkpoint, export); refuse (BaseChangedError, one line) if the base is not the one it was
        trained on, or if anything else is missing."""
        lean = checkpoint.get("fastankh_lean")
        if lean is None:
            return
        base = lean["base"]
        own = self.hparams.get("base") if self._built_from_base else None
        now = own["checksum"] if own else current_checksum(base)
        if now != base["checksum"]:
            raise BaseChangedError(self._checkpoint_name(), base, now, own)
        state = checkpoint.get("state_dict")
        if state is None:  # FSDP loaded it into the sharded module already (non-strict); the base is this module's
            return
        missing = [key for key in self._base_keys if key not in state]
        if missing:
            if own:  # this module's encoder was loaded from that very base: its frozen tensors are the base's
                current = self.state_dict()
                source = {key: current[key] for key in missing}
            else:
                source = self._base_tensors(base, missing)
            state.update(source)
        absent = [key for key in self.state_dict() if key not in state]
        if absent:
            raise KeyError(f"{self._checkpoint_name()}: the checkpoint lacks {len(absent)} tensors, e.g. {absent[:3]}")

    def _base_tensors(self, base: Mapping[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
        """The given checkpoint keys' tensors, read from the base the checkpoint refers to."""
        backbone = load_backbone(base["model"], masked_lm=self.task.kind == "masked_lm")
        encoder = backbone.model if isinstance(backbone, FastAnkhForMaskedLM) else backbone
        weights, current = encoder.state_dict(), self.state_dict()
        return {key: weights[self._base_keys[key]].to(current[key].dtype) for key in keys}

    def _checkpoint_name(self) -> str:
        return str(getattr(self._trainer, "ckpt_path", None) or LOADING_FROM.get() or "(path not given)")

    @classmethod
    def load_checkpoint_file(cls, path: str | os.PathLike, **kwargs: Any) -> FineTuneModule:
        """load_from_checkpoint(path, **kwargs), with `path` named in a BaseChangedError."""
        token = LOADING_FROM.set(str(path))
        try:
            return cls.load_from_checkpoint(path, **kwargs)
        finally:
            LOADING_FROM.reset(token)

    # ------------------------------------------------------------------ forward and loss
    def train(self, mode: bool = True) -> FineTuneModule:
        super().train(mode)
        if self.frozen:  # a frozen encoder never runs in train mode (no dropout)
            self.encoder.eval()
        return self

    def _encoder_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def _cached_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, T, D), running the encoder only on sequences not seen before."""
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        new = [i for i, key in enumerate(keys) if key not in self.embedding_cache]
        if new:
            hidden = self._encoder_hidden(input_ids[new], attention_mask[new])
            for row, i in enumerate(new):
                self.embedding_cache[keys[i]] = hidden[row, : lengths[i]].cpu()
        rows = [self.embedding_cache[key] for key in keys]
        out = rows[0].new_zeros(input_ids.shape[0], input_ids.shape[1], rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, : row.shape[0]] = row
        return out.to(input_ids.device)

    def _model_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The task model's logits; a frozen encoder runs without autograd (or from the cache), then the head."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not self.frozen:
            extra = {} if self.kind.level == "token" else {"residue_mask": batch["residue_mask"]}
            return self.model(input_ids=ids, attention_mask=mask, **extra).logits
        if self.embedding_cache is not None:
            hidden = self._cached_hidden(ids, mask)
        else:
            with torch.no_grad():
                hidden = self._encoder_hidden(ids, mask)
        if self.kind.level == "token":
            return self.head(hidden)
        return self.task_model.head_logits(hidden, batch["residue_mask"])

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits: residue kinds (B, T, C), sequence kinds (B, C), masked_lm (B, T, V), pair kind (B, T, T);
        regression drops C."""
        logits = self._model_logits(batch)
        return logits.squeeze(-1) if self.task.regression else logits

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """The task model's loss (fp32, labelled positions only; see the batch contract in tasks/task/spec.py)
        on `forward`'s logits, and how many positions counted."""
        labels = batch["labels"]
        if self.kind.level == "token":
            # FastAnkhForMaskedLM's own loss: cross-entropy over the chosen tokens (-100 elsewhere)
            return self.task_model.loss(logits, labels), int((labels != IGNORE_INDEX).sum())
        if self.kind.level == "residue":
            loss = self.task_model.loss(logits, labels, batch["label_mask"], batch["residue_mask"])
            return loss, int((batch["label_mask"] & batch["residue_mask"]).sum())
        if self.kind.level == "pair":
            loss = self.task_model.loss(logits, labels, batch["label_mask"], batch["residue_mask"])
            return loss, int(counted_pairs(labels, batch["label_mask"], batch["residue_mask"]).sum())
        return self.task_model.loss(logits, labels), labels.shape[0]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.loss(self(batch), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluate(self, batch: Mapping[str, Any], metrics: TaskMetrics, loss_metric: MeanMetric) -> None:
        logits = self(batch)
        loss, n = self.loss(logits, batch)
        if n:
            loss_metric.update(loss, weight=n)
        metrics.update(logits, batch)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        values = {"loss": self.val_loss.compute(), **self.val_metrics.compute()}
        # values are already reduced over processes by torchmetrics; sync_dist only keeps Lightning quiet (and
        # Lightning reduces floats only: a degenerate MCC comes back as an integer tensor)
        self.log_dict({f"val/{k}": v.float() for k, v in values.items()}, prog_bar=True, sync_dist=True)
        self.val_loss.reset()
        self.val_metrics.reset()

    def _test_split_names(self) -> list[str]:
        count = len(self.trainer.test_dataloaders)
        names = list(getattr(self.trainer.datamodule, "test_split_names", None) or [])
        return names if len(names) == count else [f"test_{i}" for i in range(count)]

    def on_test_epoch_start(self) -> None:
        names = self._test_split_names()
        self.test_split_names = names
        self.test_metrics = nn.ModuleList(
            TaskMetrics(self.task.kind, self.task.metrics, self._num_classes) for _ in names
        ).to(self.device)
        self.test_losses = nn.ModuleList(MeanMetric() for _ in names).to(self.device)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.test_metrics[dataloader_idx], self.test_losses[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        for name, metrics, loss in zip(self.test_split_names, self.test_metrics, self.test_losses):
            values = {"loss": loss.compute(), **metrics.compute()}
            self.test_results[name] = {k: float(v) for k, v in values.items()}
            logged = {f"test/{name}/{k}": v.float() for k, v in values.items()}
            self.log_dict(logged, add_dataloader_idx=False, sync_dist=True)
        del self.test_metrics, self.test_losses  # keep the module's structure as it was trained

    # ------------------------------------------------------------------ optimisation
    def on_fit_start(self) -> None:
        if self.frozen:
            # Lightning warns of modules in eval mode when training starts; a frozen encoder is one on purpose.
            # Only its own module count is silenced: any other module left in eval mode is still reported.
            count = sum(1 for _ in self.encoder.modules())
            warnings.filterwarnings(
                "ignore", rf"Found {count} module\(s\) in eval mode at the start of training", PossibleUserWarning
            )
        for logger in self.loggers:
            logger.log_hyperparams(
                {"params/trainable": self.param_counts.trainable, "params/total": self.param_counts.total}
            )

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """trainer.gradient_clip_val as usual; under FSDP (whose precision plugin refuses norm clipping) by the
        sharded module's own clip_grad_norm_, which reduces the norm over all ranks: the same clipping as one
        process on the whole gradient."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        fsdp = isinstance(wrapped, FullyShardedDataParallel)
        if fsdp and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: encoder ("backbone") at optim.lr, head at optim.head_lr; no weight decay on norms/biases."""
        o = self.hparams.optim
        groups = []
        for part, module, lr in (("backbone", self.encoder, o["lr"]), ("head", self.head, o["head_lr"])):
            params = [p for p in module.parameters() if p.requires_grad]
            decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
            groups.append({"name": part, "params": decay, "lr": lr, "weight_decay": o["weight_decay"]})
            groups.append({"name": f"{part}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(o["betas"]))

        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise UserError("the LR schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
        warmup = o["warmup_steps"] if o.get("warmup_steps") is not None else int(o["warmup_ratio"] * total)
        scheduler = get_scheduler(o["scheduler"], optimizer, num_warmup_steps=warmup, num_training_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
