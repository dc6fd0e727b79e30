"""Exported folders as a Hub user meets them, in a Python where fastankh and tasks cannot be imported:
AutoModel (the fine-tuned encoder), AutoModelFor*Classification, AutoTokenizer (no question asked), and the
transformers pipelines (token-classification: one entity per residue; text-classification: one label per
sequence, softmax / raw value by problem_type). Runs are trained by train.py and exported by export.py (their
Hydra CLIs, in this process); each folder is checked by ONE subprocess that runs every loader.
An adapter-only export (merge_lora=false) of a LoRA run carries the same remote-code files and, loaded as its
card says (peft onto the base), gives the merged export's logits.
Also: the model card's Hub front matter (license, base_model, pipeline_tag, datasets, model-index).
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer
from fastankh.configuration_fastankh import REMOTE_CODE_FILES
from tasks.hub.model_card import card_metadata
from tests.helpers import BLOCK_FASTANKH, TINY_RUN, best_checkpoint, run_cli, short_rows

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVNX", "ACDEFGHIKLMNPQRSTVWY"]
PROMPT = "Do you wish to run the custom code"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Exported folders of four tiny runs: residue classification, sequence classification, sequence regression,
    and LoRA sequence classification on a saved base encoder (exported merged and adapter-only)."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(root / "base")
    short_rows("secondary_structure.csv", 12).to_csv(root / "ss.csv", index=False)
    sol = short_rows("solubility.csv", 12)
    sol.to_csv(root / "sol.csv", index=False)
    rng = random.Random(0)
    sol.assign(brightness=[rng.uniform(1, 4) for _ in range(len(sol))]).to_csv(root / "reg.csv", index=False)
    runs = {
        "residue": ["task=ss3_local", f"task.data.train={root / 'ss.csv'}"],
        "sequence": ["task=solubility_local", f"task.data.train={root / 'sol.csv'}", "head=attention"],
        "regression": [
            "task=fluorescence",
            "task.data.hub_id=null",
            f"task.data.train={root / 'reg.csv'}",
            "task.data.val=null",
            "task.data.test=[]",
            "task.data.sequence_column=sequence",
            "task.data.label_column=brightness",
        ],
        "lora": [
            "task=solubility_local",
            f"task.data.train={root / 'sol.csv'}",
            "finetune=lora",
            f"model.path={root / 'base'}",
        ],
    }
    out = {}
    for name, overrides in runs.items():
        run_cli("train", TINY_RUN + overrides + [f"paths.output_dir={root / name}"], config_name="config")
        out[name] = root / f"{name}_export"
        run_cli("export", [f"checkpoint={best_checkpoint(root / name)}", f"output_dir={out[name]}"])
    out["adapter"] = root / "adapter_export"
    run_cli(
        "export", [f"checkpoint={best_checkpoint(root / 'lora')}", f"output_dir={out['adapter']}", "merge_lora=false"]
    )
    return out


LOADERS = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              AutoTokenizer, pipeline)

    folder, residue_level, sequences = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
    out = {}
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    out["tokenizer_class"] = type(tokenizer).__name__
    out["ids"] = [tokenizer(s)["input_ids"] for s in sequences]
    auto_class = AutoModelForTokenClassification if residue_level else AutoModelForSequenceClassification
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    out["classes"] = [type(model).__module__, type(model).__name__, type(encoder).__module__, type(encoder).__name__]
    batch = tokenizer(sequences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out["same_encoder"] = torch.equal(encoder(**batch).last_hidden_state, model.model(**batch).last_hidden_state)
        out["logits"] = [model(**tokenizer([s], return_tensors="pt")).logits[0].tolist() for s in sequences]
    task = "token-classification" if residue_level else "text-classification"
    pipe = pipeline(task, model=folder, trust_remote_code=True)
    as_python = lambda rows: [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in rows]
    if residue_level:
        out["pipeline"] = [as_python(rows) for rows in pipe(sequences)]
        out["pipeline_batched"] = [as_python(rows) for rows in pipe(sequences, batch_size=len(sequences))]
    else:
        out["pipeline"] = as_python(pipe(sequences))
        out["pipeline_batched"] = as_python(pipe(sequences, batch_size=len(sequences)))
    print("RESULT " + json.dumps(out))
""")


def load_everything(folder: Path, residue_level: bool, tmp_path: Path) -> tuple[dict, str]:
    """Run every loader on `folder` in one fresh Python without fastankh/tasks; (results, console output)."""
    return run_without_fastankh(LOADERS, [str(folder), str(int(residue_level)), json.dumps(SEQUENCES)], tmp_path)


def run_without_fastankh(code: str, args: list[str], tmp_path: Path) -> tuple[dict, str]:
    """`code` (which prints one `RESULT <json>` line) with `args` in a fresh Python where fastankh and tasks cannot
    be imported; (the RESULT, console output)."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_FASTANKH + code, *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), console


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exp = [math.exp(v - top) for v in values]
    return [e / sum(exp) for e in exp]


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def check_common(folder: Path, out: dict, console: str, model_class: str) -> dict:
    assert PROMPT not in console
    config = json.loads((folder / "config.json").read_text())
    assert out["classes"][0].startswith("transformers_modules") and out["classes"][1] == model_class
    assert out["classes"][2].startswith("transformers_modules") and out["classes"][3] == "FastAnkhModel"
    assert out["same_encoder"], "AutoModel is not the fine-tuned encoder of the task model"
    # The exported tokenizer gives the ids the run trained with.
    expected = load_tokenizer("ankh_tiny")
    assert out["ids"] == [expected(s)["input_ids"] for s in SEQUENCES]
    assert out["ids"] == [load_tokenizer(folder)(s)["input_ids"] for s in SEQUENCES]
    return config


def test_residue_export_loads_and_tags_every_residue(folders, tmp_path):
    folder = folders["residue"]
    out, console = load_everything(folder, True, tmp_path)
    config = check_common(folder, out, console, "FastAnkhForTokenClassification")
    for sequence, logits, entities, batched in zip(SEQUENCES, out["logits"], out["pipeline"], out["pipeline_batched"]):
        # One entity per residue, in order: no entity for </s> (the last token) or padding.
        assert len(logits) == len(sequence) + 1
        assert [e["word"] for e in entities] == list(sequence)
        assert [(e["index"], e["start"], e["end"]) for e in entities] == [(i, i, i + 1) for i in range(len(sequence))]
        for entity, row in zip(entities, logits):
            assert entity["entity"] == config["id2label"][str(argmax(row))]
            assert entity["score"] == pytest.approx(max(softmax(row)), abs=1e-5)
        # Batched (padded) calls give the same entities.
        assert [e["entity"] for e in batched] == [e["entity"] for e in entities]
        assert [e["score"] for e in batched] == pytest.approx([e["score"] for e in entities], abs=1e-5)


def test_sequence_export_loads_and_labels_every_sequence(folders, tmp_path):
    folder = folders["sequence"]
    out, console = load_everything(folder, False, tmp_path)
    config = check_common(folder, out, console, "FastAnkhForSequenceClassification")
    assert config["problem_type"] == "single_label_classification"
    for logits, result, batched in zip(out["logits"], out["pipeline"], out["pipeline_batched"]):
        assert result["label"] == config["id2label"][str(argmax(logits))]
        assert result["score"] == pytest.approx(max(softmax(logits)), abs=1e-5)  # softmax for single-label
        assert batched["label"] == result["label"] and batched["score"] == pytest.approx(result["score"], abs=1e-5)


def test_regression_export_pipeline_gives_the_raw_value(folders, tmp_path):
    folder = folders["regression"]
    out, console = load_everything(folder, False, tmp_path)
    config = check_common(folder, out, console, "FastAnkhForSequenceClassification")
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "brightness"}
    for logits, result in zip(out["logits"], out["pipeline"]):
        assert result == {"label": "brightness", "score": pytest.approx(logits[0], abs=1e-5)}  # no activation


ADAPTER_LOADER = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter, merged, sequences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    card = open(adapter + "/README.md").read().split("## How to use")[1].split("```python\\n")[1].split("```")[0]
    namespace = {}
    exec(card, namespace)  # the card's "How to use" code, as a user runs it
    model, tokenizer = namespace["model"], namespace["tokenizer"]
    reference = AutoModelForSequenceClassification.from_pretrained(merged, trust_remote_code=True).eval()
    batch = tokenizer(sequences, padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (model(**batch).logits - reference(**batch).logits).abs().max().item()
    remote = model.get_base_model()
    print("RESULT " + json.dumps({"module": type(remote).__module__, "class": type(remote).__name__, "diff": diff}))
""")


def test_adapter_export_carries_the_remote_code_and_loads_onto_its_base(folders, tmp_path):
    """The adapter-only folder holds exactly REMOTE_CODE_FILES (as the merged one does); its card's peft code, in
    a Python without fastankh/tasks, gives the logits of the merged export of the same checkpoint."""
    adapter, merged = folders["adapter"], folders["lora"]
    assert sorted(p.name for p in adapter.glob("*.py")) == sorted(REMOTE_CODE_FILES)
    assert sorted(p.name for p in merged.glob("*.py")) == sorted(REMOTE_CODE_FILES)
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    out, console = run_without_fastankh(ADAPTER_LOADER, [str(adapter), str(merged), json.dumps(SEQUENCES)], tmp_path)
    assert PROMPT not in console
    assert out["module"].startswith("transformers_modules") and out["class"] == "FastAnkhForSequenceClassification"
    assert out["diff"] <= 1e-5


def front_matter(folder: Path) -> dict:
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_exported_card_front_matter(folders):
    residue, regression = front_matter(folders["residue"]), front_matter(folders["regression"])
    metrics = json.loads((folders["residue"].parent / "residue" / "test_metrics.json").read_text())
    assert residue["pipeline_tag"] == "token-classification" and residue["library_name"] == "transformers"
    assert regression["pipeline_tag"] == "text-classification"
    assert "license" not in residue and "base_model" not in residue  # ankh_tiny: random init, no ANKH weights
    assert "datasets" not in residue  # a local csv
    (entry,) = residue["model-index"]
    assert entry["name"] == "residue_export"
    (result,) = entry["results"]
    assert result["task"] == {"type": "token-classification", "name": "ss3_local"}
    assert result["dataset"] == {"name": "test", "type": "ss3_local", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == pytest.approx(metrics["test"])
    usage = (folders["residue"] / "README.md").read_text().split("## How to use")[1]
    call = f'pipeline("token-classification", model="{folders["residue"]}", revision=revision, trust_remote_code=True)'
    assert call in usage


def test_card_metadata_of_an_ankh_base_run_with_several_test_sets():
    metrics = {"casp12": {"q3": 0.8, "f1": 0.7, "loss": 0.5}, "ts115": {"q3": 0.85, "mcc": float("nan")}}
    card = card_metadata(
        "secondary_structure",
        "residue_classification",
        True,
        "ElnaggarLab/ankh-base",
        "ankh_base",
        False,
        model_name="ankh-ss3",
        test_metrics=metrics,
        dataset="proteinea/secondary_structure_prediction",
    )
    front = yaml.safe_load(card.to_yaml())
    assert front["license"] == "cc-by-nc-sa-4.0" and front["base_model"] == "ElnaggarLab/ankh-base"
    assert front["datasets"] == ["proteinea/secondary_structure_prediction"]
    assert front["pipeline_tag"] == "token-classification"
    results = {r["dataset"]["name"]: r for r in front["model-index"][0]["results"]}
    assert set(results) == {"casp12", "ts115"}
    assert results["casp12"]["dataset"]["type"] == "proteinea/secondary_structure_prediction"
    assert {m["type"]: m["value"] for m in results["casp12"]["metrics"]} == metrics["casp12"]
    assert {m["type"]: m["value"] for m in results["ts115"]["metrics"]} == {"q3": 0.85}  # NaN left out
    # A local copy of ANKH weights keeps the licence but names no hub base; ankh_tiny has no licence.
    local = yaml.safe_load(
        card_metadata("t", "sequence_regression", False, "/tmp", "ankh_large", True, "m", None).to_yaml()
    )
    assert local["license"] == "cc-by-nc-sa-4.0" and "base_model" not in local and local["library_name"] == "peft"
    assert "model-index" not in local
    tiny = yaml.safe_load(
        card_metadata("t", "sequence_regression", False, None, "ankh_tiny", False, "m", None).to_yaml()
    )
    assert "license" not in tiny and tiny["pipeline_tag"] == "text-classification"
