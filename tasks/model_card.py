"""The model card (README.md) of an exported folder: Hub metadata, task and labels, test metrics per split,
usage code, the training config and the citation."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import yaml

from fastankh import FastAnkhConfig

if TYPE_CHECKING:
    from tasks.export import Run

ADAPTER_USAGE = """\
from peft import PeftModel
from transformers import AutoConfig, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module

repo = "{repo}"
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
model_class = get_class_from_dynamic_module(config.auto_map["{auto_class}"], repo)
base = model_class.from_pretrained(config.base_model_name_or_path, config=config)  # base encoder + head slot
model = PeftModel.from_pretrained(base, repo).eval()  # LoRA adapters + trained head
tokenizer = AutoTokenizer.from_pretrained(repo)"""

MERGED_USAGE = """\
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("{repo}", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("{repo}")"""

CITATION = """\
@article{elnaggar2023ankh,
  title   = {Ankh: Optimized Protein Language Model Unlocks General-Purpose Modelling},
  author  = {Elnaggar, Ahmed and Essam, Hazem and Salah-Eldin, Wafaa and Moustafa, Walid and
             Elkerdawy, Mohamed and Rochereau, Charlotte and Rost, Burkhard},
  journal = {arXiv preprint arXiv:2301.06568},
  year    = {2023}
}

@article{ankh3,
  title   = {Ankh3: Multi-Task Pretraining with Sequence Denoising and Completion Enhances Protein Representations},
  journal = {arXiv preprint arXiv:2505.20052},
  year    = {2025}
}"""


def _metrics_table(metrics: dict[str, dict[str, float]] | None) -> str:
    if not metrics:
        return "No test metrics were found next to the checkpoint (test_metrics.json)."
    names = sorted({m for values in metrics.values() for m in values}, key=lambda m: (m == "loss", m))
    lines = ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for split, values in metrics.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[n]:.4f}" if n in values else "-" for n in names) + " |")
    return "\n".join(lines)


def model_card(run: "Run", config: FastAnkhConfig, base_model: str | None, adapter: bool, repo: str) -> str:
    """README.md: front matter, task and labels, test metrics per split, usage, training config, citation."""
    task, auto_class = run.task, f"AutoModelFor{'Token' if run.task.residue_level else 'Sequence'}Classification"
    front = {"library_name": "peft" if adapter else "transformers", "tags": ["protein", "ankh", "fastankh", task.kind]}
    if base_model and not os.path.exists(base_model):
        front["base_model"] = base_model
    if base_model and base_model.startswith("ElnaggarLab/"):
        front["license"] = "cc-by-nc-sa-4.0"  # the ANKH weights' licence carries over to fine-tunes
    labels = ", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels))
    output = {
        "residue_classification": "one class per residue, logits (B, T, C)",
        "residue_regression": "one value per residue token, logits (B, T, 1)",
        "sequence_classification": "one class per sequence, logits (B, C)",
        "sequence_multilabel": "independent sigmoid per label, logits (B, C)",
        "sequence_regression": "one value per sequence, logits (B, 1)",
    }[task.kind]
    training = {k: v for k, v in (run.config or {}).items() if k not in ("paths", "hydra")}
    usage = (ADAPTER_USAGE if adapter else MERGED_USAGE).format(repo=repo, auto_class=auto_class)
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# FastANKH fine-tuned on `{task.name}`",
        f"An ANKH protein encoder ({base_model or 'random init, ' + str(getattr(config, 'preset', 'custom'))}) "
        f"fine-tuned with FastANKH on the task `{task.name}` ({task.kind}): {output}.\n\n"
        f"- head: `{config.head_name}` {config.head_kwargs or ''}\n"
        f"- fine-tuning: `{run.module.hparams.finetune['mode']}`"
        + (" (adapter-only export: LoRA weights + head, base loaded separately)" if adapter else "")
        + f"\n- labels ({config.num_labels}): {labels}",
        "## Test metrics\n\n" + _metrics_table(run.test_metrics),
        "## How to use\n\n```python\n" + usage + "\n\nbatch = tokenizer([\"MKTAYIAKQRQISFVKSHFSRQ\"], padding=True, "
        "return_tensors=\"pt\")\nlogits = model(**batch).logits\n```\n\nSequences are raw residue strings "
        "(one letter per residue); the tokenizer appends `</s>` (ANKH3: also prepends `[NLU]`). "
        "Per-residue outputs are meaningful at residue tokens only (not `[NLU]`, `</s>` or padding).",
        "## Training config\n\n```yaml\n"
        + (yaml.safe_dump(training, sort_keys=False) if training else "# not found\n")
        + "```",
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return "\n\n".join(sections) + "\n"
