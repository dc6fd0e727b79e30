"""Round trip: tiny train.py runs -> export.py -> a Python where fastankh/tasks cannot be imported.

The CLIs run in this process through Hydra's compose API (`run_cli`): the same config files and
`main` functions as `python train.py ...`, without paying the interpreter start-up per call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

import fastankh
from fastankh import (
    FastAnkhConfig,
    FastAnkhForSequenceClassification,
    FastAnkhForTokenClassification,
    FastAnkhModel,
    load_tokenizer,
    prefix_length,
)
from fastankh.configuration_fastankh import REMOTE_CODE_FILES
from fastankh.errors import UserError
from tasks.hub.export_folder import export_checkpoint
from tasks.infer.prediction import load_task_model
from tasks.task.spec import IGNORE_INDEX
from tasks.train.module import FineTuneModule
from tasks.train.task_model import non_residue_token_ids
from tests.helpers import BLOCK_FASTANKH, best_checkpoint, make_batch, make_module, run_cli, short_rows, train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A residue run (full fine-tuning, ConvBERT head) and a sequence run (LoRA on a saved base encoder)."""
    root = tmp_path_factory.mktemp("export")
    short_rows("secondary_structure.csv", 16).to_csv(root / "ss.csv", index=False)
    short_rows("solubility.csv", 16).to_csv(root / "sol.csv", index=False)
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(root / "base")
    residue = train_run(root / "residue", ["task=ss3_local", f"task.data.train={root / 'ss.csv'}", "head=convbert"])
    sequence = train_run(
        root / "sequence",
        [
            "task=solubility_local",
            f"task.data.train={root / 'sol.csv'}",
            "finetune=lora",
            "head=attention",
            f"model.path={root / 'base'}",
            "optim.lr=1e-2",
        ],
    )
    return {"root": root, "residue": residue, "sequence": sequence, "base": root / "base"}


@pytest.fixture(scope="module")
def exports(runs) -> dict[str, Path]:
    root = runs["root"]
    run_cli("export", [f"checkpoint={best_checkpoint(runs['residue'])}", f"output_dir={root / 'residue_export'}"])
    sequence_ckpt = best_checkpoint(runs["sequence"])
    return {
        "residue": root / "residue_export",
        "sequence": export_checkpoint(sequence_ckpt, root / "sequence_export"),
        "adapter": export_checkpoint(sequence_ckpt, root / "adapter_export", merge_lora=False),
    }


def usage_code(folder: Path) -> str:
    """The python block of the folder's README "How to use" section."""
    card = (folder / "README.md").read_text()
    return card.split("## How to use")[1].split("```python\n")[1].split("```")[0]


def lightning_logits(checkpoint: Path, sequences: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(batch, logits) of the Lightning module on `sequences`, residue_mask as the data module builds it."""
    module = FineTuneModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    tokenizer = load_tokenizer("ankh_tiny")
    batch = dict(tokenizer(sequences, padding=True, return_tensors="pt"))
    positions = torch.arange(batch["input_ids"].shape[1])
    lengths = batch["attention_mask"].sum(1, keepdim=True)
    batch["residue_mask"] = (positions >= prefix_length(tokenizer)) & (positions < lengths - 1)
    with torch.no_grad():
        return batch, module(batch)


def test_export_writes_a_hub_folder(runs, exports):
    folder = exports["residue"]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "configuration_fastankh.py",
        "modeling_fastankh.py",
        "modeling_tasks.py",
        "heads.py",
    ):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_tasks.FastAnkhForTokenClassification"
    assert config["id2label"] == {"0": "H", "1": "E", "2": "C"}
    assert config["head_name"] == "convbert" and config["problem_type"] == "single_label_classification"
    card = (folder / "README.md").read_text()
    metrics = json.loads((runs["residue"] / "test_metrics.json").read_text())
    assert f"{metrics['test']['q3']:.4f}" in card and "| test |" in card
    for text in (
        "`H`, `E`, `C`",
        "ss3_local",
        "AutoModelForTokenClassification.from_pretrained",
        "trust_remote_code=True",
        "2301.06568",
        "2505.20052",
        "name: convbert",
        'revision = "main"',  # pinned by the user: trust_remote_code runs the repo's code
        "pin a commit hash",
    ):
        assert text in card, text


def test_exports_hold_no_pickles(exports):
    """Safetensors only: a .bin / .pt / .pkl / .ckpt would be unpickled (code run) by whoever loads it."""
    for folder in exports.values():
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        assert not [p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]


def test_adapter_only_export_layout(runs, exports):
    folder = exports["adapter"]
    assert not (folder / "model.safetensors").exists()
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(runs["base"]) and adapter["modules_to_save"] == ["head"]
    config = json.loads((folder / "config.json").read_text())
    assert config["base_model_name_or_path"] == str(runs["base"])
    assert "AutoModelForSequenceClassification" in config["auto_map"]
    assert "PeftModel.from_pretrained" in (folder / "README.md").read_text()
    weights = load_file(folder / "adapter_model.safetensors")
    # Trained adapters (lora_B starts at zero) and the head travel in the adapter file.
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())
    assert any(".head." in k for k in weights)


def test_every_export_carries_exactly_the_remote_code_files(exports):
    """Merged and adapter-only exports carry the same remote code: the files of REMOTE_CODE_FILES as fastankh
    has them, and no other Python file; config.json's auto_map names classes in those files."""
    source = Path(fastankh.__file__).parent
    for key, folder in exports.items():
        assert sorted(p.name for p in folder.glob("*.py")) == sorted(REMOTE_CODE_FILES), key
        for name in REMOTE_CODE_FILES:
            assert (folder / name).read_bytes() == (source / name).read_bytes(), (key, name)
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert {entry.split(".")[0] + ".py" for entry in auto_map.values()} <= set(REMOTE_CODE_FILES), key


def test_exports_equal_lightning_in_a_python_without_fastankh(runs, exports, tmp_path):
    """AutoModelFor*Classification (remote code) and peft-on-base give the Lightning logits (<= 1e-5)."""
    sequences = pd.read_csv(runs["root"] / "ss.csv")["sequence"].head(5).tolist() + ["MKXTAY", "GSHMLEDPVNWAK"]
    residue_batch, residue_expected = lightning_logits(best_checkpoint(runs["residue"]), sequences)
    sequence_batch, sequence_expected = lightning_logits(best_checkpoint(runs["sequence"]), sequences)
    assert torch.equal(residue_batch["input_ids"], sequence_batch["input_ids"])
    torch.save({"sequences": sequences, "input_ids": residue_batch["input_ids"]}, tmp_path / "inputs.pt")
    # Each folder is loaded by the "How to use" code of its own model card, run as written.
    usage = {key: usage_code(exports[key]) for key in ("residue", "sequence", "adapter")}
    script = BLOCK_FASTANKH + textwrap.dedent(f"""
        import torch
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        out = {{}}
        for key, code in {usage!r}.items():
            card = {{}}
            exec(code, card)
            model, tokenizer = card["model"], card["tokenizer"]
            remote = model.get_base_model() if key == "adapter" else model
            assert type(remote).__module__.startswith("transformers_modules"), type(remote).__module__
            batch = tokenizer(x["sequences"], padding=True, return_tensors="pt")
            assert torch.equal(batch["input_ids"], x["input_ids"]), "exported tokenizer gives other ids"
            with torch.no_grad():
                out[key] = model(**batch).logits
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    residues = residue_batch["residue_mask"]
    assert (out["residue"][residues] - residue_expected[residues]).abs().max().item() <= 1e-5
    assert (out["sequence"] - sequence_expected).abs().max().item() <= 1e-5
    assert (out["adapter"] - sequence_expected).abs().max().item() <= 1e-5
    assert residue_expected.shape == (len(sequences), residues.shape[1], 3)
    assert sequence_expected.shape == (len(sequences), 2)


def test_export_errors_come_before_any_writing(runs, exports):
    with pytest.raises(ValueError, match="finetune=full"):
        export_checkpoint(best_checkpoint(runs["residue"]), runs["root"] / "nope", merge_lora=False)
    with pytest.raises(UserError, match="overwrite=true"):
        export_checkpoint(best_checkpoint(runs["residue"]), exports["residue"])
    assert not (runs["root"] / "nope").exists()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class DiskFull(OSError):
    pass


@pytest.mark.parametrize("crash", ["weights", "swap"])
def test_a_crash_during_export_keeps_the_previous_folder(runs, exports, crash, monkeypatch):
    """weights: save_pretrained writes half of model.safetensors, then fails; swap: renaming the finished
    folder into place fails after the old one was moved aside."""
    import tasks.train.run_files

    before = snapshot(exports["residue"])
    if crash == "weights":

        def half_written(self, directory, **kwargs):
            PreTrainedModel.save_pretrained(self, directory, **kwargs)
            weights = Path(directory) / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            raise DiskFull("no space left on device")

        monkeypatch.setattr(FastAnkhForTokenClassification, "save_pretrained", half_written)
    else:
        replace = os.replace

        def failing_replace(src, dst):
            if ".tmp-" in Path(src).name:
                raise DiskFull("rename failed")
            replace(src, dst)

        monkeypatch.setattr(tasks.train.run_files.os, "replace", failing_replace)
    with pytest.raises(DiskFull):
        export_checkpoint(best_checkpoint(runs["residue"]), exports["residue"], overwrite=True)
    assert snapshot(exports["residue"]) == before
    assert not [p for p in exports["residue"].parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_cli_push_uploads_the_exported_folder(runs, tmp_path, monkeypatch):
    """export.py push_to_hub=true: the repo is created with the requested visibility, and what is uploaded
    is a folder that loads and gives the checkpoint's logits, with a card naming the repo."""
    import huggingface_hub

    calls, uploaded = [], tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id))
            shutil.copytree(folder_path, uploaded)  # what the Hub receives, as it was at upload time
            return "https://huggingface.co/org/ankh-sol/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    checkpoint, folder = best_checkpoint(runs["sequence"]), tmp_path / "to_push"
    run_cli(
        "export",
        [
            f"checkpoint={checkpoint}",
            f"output_dir={folder}",
            "push_to_hub=true",
            "repo_id=org/ankh-sol",
            "private=false",
        ],
    )
    assert calls == [
        ("create_repo", "org/ankh-sol", {"private": False, "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", "org/ankh-sol"),
    ]
    assert snapshot(uploaded) == snapshot(folder)
    config = json.loads((uploaded / "config.json").read_text())
    assert (
        config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_tasks.FastAnkhForSequenceClassification"
    )
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLE", "ACDEFGHIKLMNPQRSTVWY"]
    batch, expected = lightning_logits(checkpoint, sequences)
    model, _, kind = load_task_model(uploaded)
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert kind == "sequence_classification"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    card = (uploaded / "README.md").read_text()
    metrics = json.loads((runs["sequence"] / "test_metrics.json").read_text())
    assert 'from_pretrained("org/ankh-sol", revision=revision, trust_remote_code=True)' in card
    assert f"{metrics['test']['accuracy']:.4f}" in card


@pytest.mark.parametrize(
    "kind, head",
    [
        ("residue_classification", "mlp"),
        ("residue_regression", "linear"),
        ("sequence_classification", "max"),
        ("sequence_multilabel", "attention"),
        ("sequence_regression", "mean"),
        ("residue_pair_classification", "convbert"),
    ],
)
def test_saved_task_model_logits_and_loss_equal_the_module(kind, head, tmp_path):
    """Every task kind: the module's task model, saved and reloaded, computes the module's logits and loss
    from ids alone. Residue kinds: residues without a label (a mask column) count in neither loss."""
    tokenizer = load_tokenizer("ankh_tiny")
    module = make_module(
        kind, head={"name": head, "dropout": 0.0}, non_residue_token_ids=non_residue_token_ids(tokenizer)
    )
    module.eval().merged_model().save_pretrained(tmp_path)
    model = module.kind.model_class.from_pretrained(tmp_path).eval()
    batch = make_batch(module.task, [7, 3, 5])
    if module.task.residue_level:  # as the data module encodes a mask column: label_mask False, label ignored
        batch["label_mask"][0, 1:4] = False
        batch["label_mask"][2, 0] = False
        batch["labels"][~batch["label_mask"]] = 0.0 if module.task.regression else IGNORE_INDEX
    with torch.no_grad():
        expected = module(batch)
        expected_loss, _ = module.loss(expected, batch)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            label_mask=batch.get("label_mask"),
        )
    logits = out.logits.squeeze(-1) if module.task.regression else out.logits
    if module.task.residue_level:
        logits, expected = logits[batch["residue_mask"]], expected[batch["residue_mask"]]
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, expected_loss, atol=1e-6, rtol=1e-6)


def test_residue_regression_loss_counts_labelled_residues_in_training_and_export(tmp_path):
    """A mask column's unlabelled residues: the same loss in FineTuneModule and the exported model, by hand
    over labelled residues only, and with NaN labels instead of label_mask (the convention without a mask)."""
    tokenizer = load_tokenizer("ankh_tiny")
    module = make_module("residue_regression", non_residue_token_ids=non_residue_token_ids(tokenizer)).eval()
    module.merged_model().save_pretrained(tmp_path)
    model = FastAnkhForTokenClassification.from_pretrained(tmp_path).eval()
    batch = make_batch(module.task, [9, 4, 6], seed=1)
    batch["label_mask"][0, 2:5] = False
    batch["label_mask"][2, 0] = False
    batch["labels"][~batch["label_mask"]] = 0.0  # what the data module writes at unlabelled residues
    ids, mask, labels, counted = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["label_mask"]
    with torch.no_grad():
        logits = module(batch)
        trained, n = module.loss(logits, batch)
        exported = model(input_ids=ids, attention_mask=mask, labels=labels, label_mask=counted).loss
        nan_labels = model(input_ids=ids, attention_mask=mask, labels=labels.masked_fill(~counted, float("nan"))).loss
        every_residue = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    by_hand = ((logits[counted] - labels[counted]) ** 2).mean()
    assert n == 9 + 4 + 6 - 4
    torch.testing.assert_close(trained, by_hand)
    torch.testing.assert_close(exported, trained, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(nan_labels, trained, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(every_residue, trained)  # the unlabelled zeros would count without a mask


def test_exported_folder_loads_the_fine_tuned_encoder_with_automodel(exports):
    """config.json's auto_map names AutoModel: it gives the fine-tuned encoder (the `model.` prefix stripped)."""
    from transformers import AutoModel

    folder = exports["residue"]
    assert (
        json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_fastankh.FastAnkhModel"
    )
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(encoder).__name__ == "FastAnkhModel"
    weights = load_file(folder / "model.safetensors")
    state = encoder.state_dict()
    assert {f"model.{k}" for k in state} == {k for k in weights if k.startswith("model.")}
    for name, value in state.items():
        assert torch.equal(value, weights[f"model.{name}"]), name


def test_task_model_loads_an_original_t5_checkpoint_as_its_encoder(t5_checkpoint):
    """The base of an adapter-only export may be an ElnaggarLab T5 checkpoint: encoder converted, head fresh."""
    path = t5_checkpoint("ankh_base")
    encoder = FastAnkhModel.from_pretrained(path)
    config = FastAnkhConfig.from_dict(encoder.config.to_dict())
    config.id2label, config.head_name = {0: "no", 1: "yes"}, "attention"
    model = FastAnkhForSequenceClassification.from_pretrained(path, config=config)
    assert model.config.num_labels == 2 and type(model.head.pool.score) is torch.nn.Linear
    for name, weight in encoder.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], weight), name


def test_a_truncated_checkpoint_is_one_line_naming_it(runs, tmp_path):
    from fastankh.errors import CheckpointError

    good = best_checkpoint(runs["residue"]).read_bytes()
    broken = tmp_path / "run" / "checkpoints" / "epoch000.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError) as err:
        export_checkpoint(broken, tmp_path / "out")
    assert str(err.value).startswith(f"{broken}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
