"""Fine-tuning modes: what trains, what stays bit-identical, LoRA targets, the frozen-embedding cache."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tasks.task.schema  # noqa: F401  (registers the task schema config.yaml composes, as train.py does)
from tasks.data.sources import PROJECT_ROOT
from tests.helpers import FINETUNE, TINY, fit, make_batch, make_module, make_task

# Parameter counts by hand from the shapes of make_module's backbone (ankh_tiny: vocab 144, 64 buckets).
V, BUCKETS, C = 144, 64, 3
D, FF, HEADS = TINY["d_model"], TINY["d_ff"], TINY["num_heads"]
INNER = HEADS * TINY["d_kv"]
BLOCK = 3 * D * INNER + INNER * D + 3 * D * FF + 2 * D  # q, k, v, o; wi_0, wi_1, wo; two RMSNorm weights


def backbone_params(layers: int) -> int:
    return V * D + BUCKETS * HEADS + layers * BLOCK + D  # embeddings, shared bias table, blocks, final norm


LINEAR_HEAD = D * C + C  # head=auto for residue kinds
MEAN_HEAD = D * (D // 2) + D // 2 + (D // 2) * C + C  # head=auto for sequence kinds: MLP D -> D/2 -> C


def is_head(name: str) -> bool:
    """A parameter of the task model's head (model.head.*, or under LoRA model.base_model.model.head.*)."""
    return ".head." in f".{name}"


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p)}


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    task = make_task("residue_classification")
    return [make_batch(task, [12, 7, 9], seed=s) for s in range(3)]


def test_frozen_trains_only_the_head_and_keeps_the_backbone_in_eval_mode(batches):
    module = make_module("residue_classification", "frozen")
    assert not any(p.requires_grad for p in module.encoder.parameters())
    assert module.param_counts.trainable == LINEAR_HEAD
    assert module.param_counts.total == LINEAR_HEAD + backbone_params(2)
    before = snapshot(module)
    fit(module, batches, steps=3)
    assert changed(before, module) == {n for n in before if is_head(n)}
    module.train()
    assert module.head.training and not module.encoder.training


def test_full_trains_every_parameter():
    module = make_module("sequence_classification", "full")
    assert module.param_counts.trainable == module.param_counts.total == MEAN_HEAD + backbone_params(2)
    assert all(p.requires_grad for p in module.parameters())


def partial(n: int) -> dict:
    return {"mode": "partial", "trainable_layers": n}


def test_partial_trains_the_last_blocks_and_final_norm(batches):
    module = make_module("residue_classification", "partial", num_layers=3, finetune=partial(2))
    assert module.param_counts.trainable == LINEAR_HEAD + 2 * BLOCK + D
    assert module.param_counts.total == LINEAR_HEAD + backbone_params(3)
    trainable = {
        ".".join(n.split(".")[:3]) if n.startswith("encoder.layers.") else n
        for n, p in module.encoder.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"encoder.layers.1", "encoder.layers.2", "encoder.final_norm.weight"}
    before = snapshot(module)
    fit(module, batches, steps=2)
    assert {n for n in changed(before, module) if n.startswith("model.model.")} == {
        n for n, p in module.named_parameters() if n.startswith("model.model.") and p.requires_grad
    }
    with pytest.raises(ValueError, match="trainable_layers=4: the backbone has 3 blocks"):
        make_module("residue_classification", "partial", num_layers=3, finetune=partial(4))


def test_lora_trains_only_adapters_and_head_and_base_weights_stay_bit_identical(batches):
    module = make_module("residue_classification", "lora")
    r = FINETUNE["lora"]["r"]
    adapters = 2 * 4 * r * (D + INNER)  # 2 layers x q, k, v, o: A (r x in) + B (out x r)
    assert module.param_counts.trainable == LINEAR_HEAD + adapters
    assert module.param_counts.total == LINEAR_HEAD + adapters + backbone_params(2)
    before = snapshot(module)
    fit(module, batches, steps=4)
    moved = changed(before, module)
    assert moved, "nothing trained"
    assert all("lora_" in n or is_head(n) for n in moved)
    assert any("lora_B" in n for n in moved) and any(is_head(n) for n in moved)
    base = {n for n in before if "lora_" not in n and not is_head(n)}
    assert base and not (base & moved)  # every base weight (embeddings, q/k/v/o, FFN, norms) untouched
    wrapped = {n.rsplit(".", 1)[0].split(".")[-1] for n, _ in module.encoder.named_modules() if n.endswith("lora_A")}
    assert wrapped == {"q", "k", "v", "o"}  # "o" does not also catch "wo"


def test_default_lora_config_adapts_q_k_v_o_of_every_block():
    """README: finetune=lora puts adapters on every block's attention q, k, v and o, and on nothing else."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        finetune = OmegaConf.to_container(compose("config", overrides=["finetune=lora"]).finetune)
    module = make_module("sequence_classification", "lora", num_layers=3, finetune=finetune)
    wrapped = {name.removesuffix(".lora_A") for name, _ in module.encoder.named_modules() if name.endswith(".lora_A")}
    assert wrapped == {f"encoder.layers.{i}.attention.{linear}" for i in range(3) for linear in ("q", "k", "v", "o")}


def test_lora_on_the_ffn_and_targets_that_match_nothing():
    ffn = {"mode": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q", "v", "wi_0", "wi_1", "wo"]}
    module = make_module("sequence_regression", "lora", finetune=ffn)
    wrapped = {n.rsplit(".", 1)[0].split(".")[-1] for n, _ in module.encoder.named_modules() if n.endswith("lora_A")}
    assert wrapped == {"q", "v", "wi_0", "wi_1", "wo"}
    for targets, bad in ((["query", "value"], "query"), (["q", "dense"], "dense"), ([], "empty")):
        with pytest.raises(ValueError, match=f"{bad}.*match no Linear of the backbone"):
            make_module("sequence_regression", "lora", finetune={**ffn, "target_modules": targets})


def test_frozen_cache_runs_the_backbone_once_per_sequence_and_changes_nothing(batches):
    cached = make_module("residue_classification", "frozen", finetune={"mode": "frozen", "cache_embeddings": True})
    plain = make_module("residue_classification", "frozen")
    sequences = []
    cached.encoder.register_forward_hook(
        lambda m, args, kwargs, out: sequences.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    cached.eval(), plain.eval()
    with torch.no_grad():
        for _ in range(2):  # two epochs over the same batches
            for batch in batches:
                torch.testing.assert_close(cached(batch), plain(batch), atol=1e-5, rtol=0)
    assert sum(sequences) == sum(b["input_ids"].shape[0] for b in batches)
    with pytest.raises(ValueError, match="cache_embeddings needs finetune=frozen"):
        make_module("residue_classification", "full", finetune={"mode": "full", "cache_embeddings": True})
