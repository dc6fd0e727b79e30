"""The contact kind end to end: a tiny train.py run on real chains -> export.py -> predict.py (ranked pairs and
.npz maps) and AutoModelForTokenClassification in a Python where fastankh cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.infer.prediction import load_task_model
from tests.helpers import BLOCK_FASTANKH, best_checkpoint, run_cli, short_rows, train_run


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("contacts")
    short_rows("contacts.csv", 16).to_csv(root / "contacts.csv", index=False)
    run = train_run(
        root / "run", ["task=contact_local", f"task.data.train={root / 'contacts.csv'}", "task.data.crop_length=40"]
    )
    run_cli("export", [f"checkpoint={best_checkpoint(run)}", f"output_dir={root / 'export'}"])
    return root


def test_export_config_and_card_name_the_contact_model(export):
    config = json.loads((export / "export" / "config.json").read_text())
    assert (
        config["architectures"] == ["FastAnkhForContactPrediction"] and config["problem_type"] == "contact_prediction"
    )
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_tasks.FastAnkhForContactPrediction"
    card = (export / "export" / "README.md").read_text()
    assert "long_p_at_l5" in card and "pipeline(" not in card and "(B, T, T)" in card


def test_predict_writes_ranked_pairs_and_maps_equal_to_the_model(export, tmp_path):
    frame = pd.read_csv(export / "contacts.csv")[["id", "sequence"]].head(5)
    frame.to_csv(tmp_path / "in.csv", index=False)
    overrides = [f"model={export / 'export'}", f"input={tmp_path / 'in.csv'}", f"output={tmp_path / 'out.csv'}"]
    run_cli(
        "predict",
        [*overrides, f"contact_maps={tmp_path / 'maps.npz'}", "batch_size=2", "progress=false", "precision=32"],
    )
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == ["id", "sequence", "prediction", "prob_contact"]
    assert out["id"].tolist() == frame["id"].tolist()
    maps = np.load(tmp_path / "maps.npz")
    model, tokenizer, kind = load_task_model(export / "export")
    assert kind == "residue_pair_classification"
    for row in out.itertuples():
        n = len(row.sequence)
        with torch.no_grad():
            logits = model(**tokenizer([row.sequence], return_tensors="pt")).logits[0, :n, :n]  # no prefix (v1)
        np.testing.assert_allclose(maps[row.id], logits.sigmoid().numpy(), atol=1e-5)
        pairs = [tuple(map(int, p.split("-"))) for p in row.prediction.split()]
        probs = [float(p) for p in row.prob_contact.split()]
        assert len(pairs) == n and all(j - i >= 6 for i, j in pairs) and probs == sorted(probs, reverse=True)
        np.testing.assert_allclose(probs, [maps[row.id][i, j] for i, j in pairs], atol=6e-5)  # 4 decimals
        best = max((maps[row.id][i, j], (i, j)) for i in range(n) for j in range(i + 6, n))
        assert pairs[0] == best[1]


def test_the_export_loads_with_transformers_alone(export, tmp_path):
    sequences = pd.read_csv(export / "contacts.csv")["sequence"].head(3).tolist()
    model, tokenizer, _ = load_task_model(export / "export")
    batch = tokenizer(sequences, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    script = BLOCK_FASTANKH + textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        try:
            import fastankh
            raise SystemExit("fastankh should not be importable here")
        except ImportError:
            pass
        folder = {str(export / "export")!r}
        model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__name__ == "FastAnkhForContactPrediction", type(model)
        with torch.no_grad():
            logits = model(**tokenizer({sequences!r}, padding=True, return_tensors="pt")).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    residues = batch["attention_mask"].bool() & (batch["input_ids"] != 1)
    pairs = residues[:, :, None] & residues[:, None, :]
    got = torch.load(tmp_path / "logits.pt")
    assert (got[pairs] - expected[pairs]).abs().max().item() <= 1e-5
