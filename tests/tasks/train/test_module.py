"""FineTuneModule: training per kind and mode, losses and metrics over counted positions only,
overfitting, checkpoint reload, optimizer groups and schedule, gradient checkpointing."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from tasks.task.metrics import TaskMetrics, default_metrics
from tasks.task.spec import IGNORE_INDEX
from tasks.train.module import FineTuneModule
from tests.helpers import fit, make_batch, make_module, make_task

KINDS = [
    "residue_classification",
    "residue_regression",
    "sequence_classification",
    "sequence_multilabel",
    "sequence_regression",
    "masked_lm",
    "residue_pair_classification",
]
MODES = ["frozen", "full", "lora", "partial"]


def batches_for(kind: str, count: int = 2, lengths=(11, 6, 8)) -> list[dict]:
    task = make_task(kind)
    return [make_batch(task, list(lengths), seed=s) for s in range(count)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_short_training_logs_loss_and_the_kinds_metrics(kind, mode):
    module = make_module(kind, mode, num_layers=1)
    trainer = fit(module, batches_for(kind), steps=2, val_batches=batches_for(kind, 1))
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"])
    num_classes = 144 if kind == "masked_lm" else 3
    expected = {f"val/{m}" for m in default_metrics(kind, num_classes)} | {"val/loss"}
    assert expected <= set(logged), sorted(logged)


def test_a_tiny_model_overfits_four_sequences():
    optim = {"lr": 3e-3, "head_lr": 3e-3, "weight_decay": 0.0}
    module = make_module("residue_classification", "full", num_layers=2, optim=optim)
    data = [make_batch(make_task("residue_classification"), [14, 9, 17, 6], seed=3)]
    module.eval()
    with torch.no_grad():
        start = module.loss(module(data[0]), data[0])[0].item()
    fit(module.train(), data, steps=150)
    module.eval()
    with torch.no_grad():
        end = module.loss(module(data[0]), data[0])[0].item()
    assert end < 0.2 * start, (start, end)


@pytest.mark.parametrize("kind", ["residue_classification", "residue_regression", "masked_lm"])
def test_loss_counts_only_labelled_positions(kind):
    module = make_module(kind, "full", num_layers=1).eval()
    batch = make_batch(make_task(kind), [9, 4, 6], seed=1)
    if kind != "masked_lm":  # residues without a label (e.g. no coordinates), encoded as the data module does
        batch["label_mask"][0, 2:5] = False
        batch["label_mask"][2, 0] = False
        batch["labels"][~batch["label_mask"]] = IGNORE_INDEX if kind == "residue_classification" else 0.0
    counted = batch["labels"] != IGNORE_INDEX if kind == "masked_lm" else batch["label_mask"]
    with torch.no_grad():
        logits = module(batch)
        loss, n = module.loss(logits, batch)
        noisy_logits = logits.clone()
        noisy_logits[~counted] += 7.0  # predictions where nothing counts must not move the loss
        assert module.loss(noisy_logits, batch)[0] == loss
        if kind != "masked_lm":  # for MLM the -100s ARE the mask: no label there to change
            noisy = dict(batch, labels=batch["labels"].clone())
            noisy["labels"][~counted] = 1 if kind == "residue_classification" else 123.0
            assert module.loss(logits, noisy)[0] == loss
    assert n == int(counted.sum())
    if kind != "masked_lm":
        assert n == 9 + 4 + 6 - 4  # residues minus the four without a label
    per_position = []
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if counted[i, t]:
                if kind == "residue_regression":
                    per_position.append((logits[i, t] - batch["labels"][i, t]) ** 2)
                else:  # cross-entropy: log-sum-exp of the logits minus the label's logit
                    per_position.append(torch.logsumexp(logits[i, t], 0) - logits[i, t, batch["labels"][i, t]])
    torch.testing.assert_close(loss, torch.stack(per_position).mean())


def test_masked_lm_trains_on_the_models_own_loss():
    """One MLM loss: the Lightning module's equals FastAnkhForMaskedLM.forward(labels=...)'s."""
    module = make_module("masked_lm", "full", num_layers=1).eval()
    batch = make_batch(make_task("masked_lm"), [9, 4, 6], seed=2)
    with torch.no_grad():
        loss, _ = module.loss(module(batch), batch)
        out = module.task_model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    assert loss == out.loss


def test_residue_metrics_by_hand_ignore_masked_and_padded_positions():
    task = make_task("residue_classification")
    batch = make_batch(task, [10, 4, 7], seed=2)
    batch["label_mask"][0, :3] = False  # e.g. residues without coordinates
    logits = torch.randn(3, batch["input_ids"].shape[1], 3, generator=torch.Generator().manual_seed(0))
    # predictions at positions that do not count are set right: they must not raise the score
    outside = ~batch["label_mask"]
    logits[outside] = F.one_hot(batch["labels"].clamp(min=0)[outside], 3).float() * 10
    metrics = TaskMetrics("residue_classification", ["q3", "per_protein_accuracy"], 3)
    metrics.update(logits, batch)
    values = metrics.compute()
    pred, mask, labels = logits.argmax(-1), batch["label_mask"], batch["labels"]
    correct = (pred == labels) & mask
    assert values["q3"].item() == pytest.approx(correct.sum().item() / mask.sum().item())
    per_protein = [correct[i].sum().item() / mask[i].sum().item() for i in range(3)]
    assert values["per_protein_accuracy"].item() == pytest.approx(sum(per_protein) / 3)


def test_regression_metrics_and_metric_name_checks():
    batch = make_batch(make_task("sequence_regression"), [5] * 6, seed=4)
    preds = torch.linspace(-1, 2, 6)
    metrics = TaskMetrics("sequence_regression", ["spearman", "rmse"])
    metrics.update(preds, batch)
    values = metrics.compute()
    assert values["spearman"].item() == pytest.approx(spearmanr(preds, batch["labels"]).statistic, abs=1e-6)
    assert values["rmse"].item() == pytest.approx(((preds - batch["labels"]) ** 2).mean().sqrt().item(), abs=1e-6)
    with pytest.raises(ValueError, match="'q8' needs 8 classes, the task has 3"):
        TaskMetrics("residue_classification", ["q8"], 3)
    with pytest.raises(ValueError, match="'spearman' is not defined for sequence_classification"):
        TaskMetrics("sequence_classification", ["spearman"], 2)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_checkpoint_reloads_with_identical_outputs(tmp_path, mode):
    module = make_module("sequence_classification", mode, num_layers=1, head={"name": "attention", "dropout": 0.0})
    trainer = fit(module, batches_for("sequence_classification"), steps=2)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = FineTuneModule.load_from_checkpoint(path)
    batch = batches_for("sequence_classification", 1)[0]
    module.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), module(batch), atol=0, rtol=0)


def test_optimizer_groups_learning_rates_and_warmup():
    optim = {"lr": 1e-4, "head_lr": 1e-2, "scheduler": "linear", "warmup_steps": 10}
    module = make_module("residue_classification", "full", num_layers=1, optim=optim)
    trainer = fit(module, batches_for("residue_classification"), steps=3)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["weight_decay"] > 0 and groups["head_no_decay"]["weight_decay"] == 0
    assert all(p.ndim == 1 for p in groups["backbone_no_decay"]["params"])  # norms (and biases) only
    assert groups["backbone"]["lr"] == pytest.approx(1e-4 * 3 / 10)  # 3 of 10 warmup steps
    assert groups["head"]["lr"] == pytest.approx(1e-2 * 3 / 10)
    frozen = make_module("residue_classification", "frozen", num_layers=1)
    trainer = fit(frozen, batches_for("residue_classification"), steps=1)
    assert {g["name"] for g in trainer.optimizers[0].param_groups} == {"head", "head_no_decay"}


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = batches_for("residue_classification", 1)[0]
    grads = []
    for checkpointing in (False, True):
        module = make_module("residue_classification", "full", num_layers=2, gradient_checkpointing=checkpointing)
        module.train()
        module.loss(module(batch), batch)[0].backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_every_test_split_gets_its_metrics():
    module = make_module("sequence_multilabel", "full", num_layers=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loaders = [
        torch.utils.data.DataLoader(batches_for("sequence_multilabel", 1, lengths=lengths), batch_size=None)
        for lengths in ((5, 7), (9, 3, 4))
    ]
    trainer.test(module, dataloaders=loaders, verbose=False)
    assert set(module.test_results) == {"test_0", "test_1"}
    assert set(module.test_results["test_1"]) == {"loss", "f1", "auroc"}
    assert "test/test_1/auroc" in trainer.callback_metrics
