"""LightningModule: ANKH backbone + task head, the task's loss, AdamW + warmup/decay, metrics.

Logs `train/loss` per step, `val/loss` and `val/<metric>` per validation epoch, and
`test/<split>/<metric>` per test split (split names from the data module). The constructor
arguments are plain dicts saved as hyperparameters, so `FineTuneModule.load_from_checkpoint(path)`
rebuilds the architecture (from the saved backbone config) and loads the trained weights.
Gradient clipping, accumulation and precision are Trainer settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from transformers import get_scheduler

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from tasks.finetune import apply_finetune
from tasks.heads import LMHead, build_task_head
from tasks.metrics import TaskMetrics
from tasks.spec import TaskSpec


class FineTuneModule(L.LightningModule):
    """Fine-tune an ANKH encoder on one task.

    task: TaskSpec fields (the Hydra `task` node); head / finetune / optim: the Hydra groups of those
    names; backbone: FastAnkhModel (FastAnkhForMaskedLM for kind masked_lm), or None to rebuild it
    from `backbone_config` when reloading a checkpoint; label_mean: regression heads start there.
    """

    def __init__(
        self,
        task: Mapping[str, Any],
        head: Mapping[str, Any],
        finetune: Mapping[str, Any],
        optim: Mapping[str, Any],
        backbone: FastAnkhModel | FastAnkhForMaskedLM | None = None,
        backbone_config: dict[str, Any] | None = None,
        label_mean: float | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.task = TaskSpec.from_config(dict(task))
        masked_lm = self.task.kind == "masked_lm"
        if backbone is None:
            cls = FastAnkhForMaskedLM if masked_lm else FastAnkhModel
            backbone = cls(FastAnkhConfig.from_dict(backbone_config))
        self.hparams.backbone_config = backbone.config.to_dict()

        if masked_lm:
            if head["name"] != "auto":
                raise ValueError(
                    f"task {self.task.name} trains the backbone's LM head; use head=auto, not {head['name']!r}"
                )
            self.head = LMHead(backbone.lm_head)
            backbone = backbone.model
        else:
            self.head = build_task_head(self.task, head, backbone.config.d_model, label_mean)
        if gradient_checkpointing:
            # Non-reentrant: works when the backbone input does not require grad (frozen embeddings, LoRA).
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.backbone, self.param_counts = apply_finetune(backbone, self.head, finetune)

        self.frozen = finetune["mode"] == "frozen"
        if finetune.get("cache_embeddings") and (not self.frozen or masked_lm):
            raise ValueError(
                "finetune.cache_embeddings needs finetune=frozen and a supervised task (inputs must not change)"
            )
        # token ids of one sequence (bytes) -> its last_hidden_state (T_i, D) on CPU; not saved in checkpoints
        self.embedding_cache: dict[bytes, torch.Tensor] | None = {} if finetune.get("cache_embeddings") else None

        if masked_lm:
            self._num_classes = backbone.config.vocab_size
        else:
            self._num_classes = None if self.task.regression else len(self.task.labels)
        self.val_metrics = TaskMetrics(self.task.kind, self.task.metrics, self._num_classes)
        self.val_loss = MeanMetric()
        self.test_results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ forward and loss
    def train(self, mode: bool = True) -> "FineTuneModule":
        super().train(mode)
        if self.frozen:  # a frozen backbone never runs in train mode (no dropout)
            self.backbone.eval()
        return self

    def _backbone_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def _cached_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Backbone output (B, T, D), running the backbone only on sequences not seen before."""
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        new = [i for i, key in enumerate(keys) if key not in self.embedding_cache]
        if new:
            hidden = self._backbone_hidden(input_ids[new], attention_mask[new])
            for row, i in enumerate(new):
                self.embedding_cache[keys[i]] = hidden[row, : lengths[i]].cpu()
        rows = [self.embedding_cache[key] for key in keys]
        out = rows[0].new_zeros(input_ids.shape[0], input_ids.shape[1], rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, : row.shape[0]] = row
        return out.to(input_ids.device)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits: residue kinds (B, T, C), sequence kinds (B, C), masked_lm (B, T, V); regression drops C."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.embedding_cache is not None:
            hidden = self._cached_hidden(ids, mask)
        elif self.frozen:
            with torch.no_grad():
                hidden = self._backbone_hidden(ids, mask)
        else:
            hidden = self._backbone_hidden(ids, mask)
        logits = self.head(hidden, batch["residue_mask"])
        return logits.squeeze(-1) if self.task.regression else logits

    def _counted(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Bool mask of the label positions that count (None: every row of a sequence task)."""
        if self.task.kind == "masked_lm":
            return batch["labels"] != -100
        return batch["label_mask"] if self.task.residue_level else None

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """The task's loss in fp32 over counted positions, and how many positions counted."""
        labels, counted = batch["labels"], self._counted(batch)
        if counted is not None:
            logits, labels = logits[counted], labels[counted]
        n = labels.shape[0]
        if n == 0:  # e.g. every residue of the batch masked: no signal, but keep the graph
            return logits.sum() * 0.0, 0
        logits = logits.float()
        if self.task.regression:
            return F.mse_loss(logits, labels.float()), n
        if self.task.kind == "sequence_multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.float()), n
        return F.cross_entropy(logits, labels), n

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
        # values are already reduced over processes by torchmetrics; sync_dist only keeps Lightning quiet
        self.log_dict({f"val/{k}": v for k, v in values.items()}, prog_bar=True, sync_dist=True)
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
            self.log_dict({f"test/{name}/{k}": v for k, v in values.items()}, add_dataloader_idx=False, sync_dist=True)
        del self.test_metrics, self.test_losses  # keep the module's structure as it was trained

    # ------------------------------------------------------------------ optimisation
    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(
                {"params/trainable": self.param_counts.trainable, "params/total": self.param_counts.total}
            )

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: backbone at optim.lr, head at optim.head_lr; no weight decay on norms/biases."""
        o = self.hparams.optim
        groups = []
        for part, module, lr in (("backbone", self.backbone, o["lr"]), ("head", self.head, o["head_lr"])):
            params = [p for p in module.parameters() if p.requires_grad]
            decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
            groups.append({"name": part, "params": decay, "lr": lr, "weight_decay": o["weight_decay"]})
            groups.append({"name": f"{part}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(o["betas"]))

        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("the LR schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
        warmup = o["warmup_steps"] if o.get("warmup_steps") is not None else int(o["warmup_ratio"] * total)
        scheduler = get_scheduler(o["scheduler"], optimizer, num_warmup_steps=warmup, num_training_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
