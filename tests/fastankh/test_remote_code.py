"""REMOTE_CODE_FILES is the one list of files that travel as remote code: save_pretrained copies each of them,
the list holds every file they import, and a saved task model runs from them alone (fastankh, tasks blocked)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import torch

import fastankh
from fastankh import FastAnkhConfig
from fastankh.configuration_fastankh import REMOTE_CODE_FILES
from fastankh.modeling_tasks import FastAnkhForTokenClassification
from tests.conftest import random_batch
from tests.fastankh.test_model import BLOCK_FASTANKH

PACKAGE = Path(fastankh.__file__).parent


def relative_imports(file: Path) -> set[str]:
    """File names of the sibling modules `file` imports relatively."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([f"{node.module}.py"] if node.module else [f"{a.name}.py" for a in node.names])
    return names


def test_the_list_holds_every_file_its_files_import():
    for name in REMOTE_CODE_FILES:
        missing = relative_imports(PACKAGE / name) - set(REMOTE_CODE_FILES)
        assert not missing, (name, missing)


def test_a_saved_task_model_runs_from_the_listed_files_alone_with_eager_attentions(tmp_path):
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, num_labels=3, attn_backend="sdpa")
    # what an export's config names (tasks' task_model_config): AutoModel serves the fine-tuned encoder
    config.auto_map = {
        "AutoConfig": "configuration_fastankh.FastAnkhConfig",
        "AutoModel": "modeling_fastankh.FastAnkhModel",
    }
    torch.manual_seed(0)
    model = FastAnkhForTokenClassification(config).eval()
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    assert {p.name for p in folder.glob("*.py")} == set(REMOTE_CODE_FILES)
    assert json.loads((folder / "config.json").read_text())["attn_backend"] == "sdpa"
    ids, mask = random_batch([21, 8])
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = BLOCK_FASTANKH + textwrap.dedent(f"""
        import warnings
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True, attn_implementation="eager").eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        assert m.config.attn_backend == "eager", m.config.attn_backend
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")  # eager is the configured implementation: no fallback warning
            out = m(x["ids"], x["mask"], output_attentions=True)
        torch.save((out.last_hidden_state, out.attentions), {str(tmp_path / "out.pt")!r})
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hidden, attentions = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        with warnings.catch_warnings():  # the one "runs eager instead" warning, expected here
            warnings.filterwarnings("ignore", message="output_attentions=True needs the attention probabilities")
            expected = model.model(ids, mask, output_attentions=True)
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=1e-6, rtol=1e-5)
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 21, 21)
    for a, b in zip(attentions, expected.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
