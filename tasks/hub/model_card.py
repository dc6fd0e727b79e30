"""The model card (README.md) of an exported folder: Hub metadata, task and labels, test metrics per split,
usage code, the training config and the citation."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import yaml
from huggingface_hub import EvalResult, ModelCardData

from fastankh import FastAnkhConfig
from fastankh.configuration_fastankh import PRESETS
from tasks.task.kinds import TASK_KINDS

if TYPE_CHECKING:
    from tasks.hub.run import Run

ADAPTER_USAGE = """\
from peft import PeftModel
from transformers import AutoConfig, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module

repo = "{repo}"
# trust_remote_code runs this repo's Python files: pin a commit hash from the repo's history here, so a later
# push cannot change the code that runs on your machine ("main" follows the newest push)
revision = "main"
config = AutoConfig.from_pretrained(repo, revision=revision, trust_remote_code=True)
model_class = get_class_from_dynamic_module(config.auto_map["{auto_class}"], repo, revision=revision)
base = model_class.from_pretrained(config.base_model_name_or_path, config=config)  # base encoder + head slot
model = PeftModel.from_pretrained(base, repo, revision=revision).eval()  # LoRA adapters + trained head
tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)"""

MERGED_USAGE = """\
from transformers import {auto_class}, AutoTokenizer

# trust_remote_code runs this repo's Python files: pin a commit hash from the repo's history here, so a later
# push cannot change the code that runs on your machine ("main" follows the newest push)
revision = "main"
model = {auto_class}.from_pretrained("{repo}", revision=revision, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("{repo}", revision=revision, trust_remote_code=True)"""

PIPELINE_USAGE = """\
from transformers import pipeline

# trust_remote_code runs this repo's Python files: pin a commit hash from the repo's history here, so a later
# push cannot change the code that runs on your machine ("main" follows the newest push)
revision = "main"
predict = pipeline("{pipeline_tag}", model="{repo}", revision=revision, trust_remote_code=True)
predict("MKTAYIAKQRQISFVKSHFSRQ"{top_k})  # {returns}"""

ANKH_LICENSE = "cc-by-nc-sa-4.0"  # the released ANKH weights' licence (ElnaggarLab); it carries over to fine-tunes

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


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1


def ankh_weights(base_model: str | None, preset: str | None) -> bool:
    """Whether the encoder started from released ANKH weights: an ElnaggarLab hub id, or a real ANKH preset
    (one with a hub id) loaded from a local copy. ankh_tiny (random init) has none."""
    if base_model and base_model.startswith("ElnaggarLab/"):
        return True
    hub_id = (PRESETS.get(preset) or {}).get("hub_id") if preset else None
    return bool(hub_id) and hub_id.startswith("ElnaggarLab/") and base_model is not None


def card_metadata(
    task_name: str,
    kind: str,
    residue_level: bool,
    base_model: str | None,
    preset: str | None,
    adapter: bool,
    model_name: str,
    test_metrics: Mapping[str, Mapping[str, float]] | None,
    dataset: str | None = None,
) -> ModelCardData:
    """The Hub front matter: licence (ANKH weights: cc-by-nc-sa-4.0), base_model (hub id), pipeline_tag,
    datasets (the task's hub dataset), tags, and a model-index entry per test split (its finite metrics)."""
    pipeline_tag = "token-classification" if residue_level else "text-classification"
    if kind == "residue_pair_classification":  # no transformers pipeline serves a pair map
        pipeline_tag = None
    results = [
        EvalResult(
            task_type=pipeline_tag or "contact-prediction",
            task_name=task_name,
            dataset_type=dataset or task_name,
            dataset_name=split,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric,
            metric_value=float(value),
        )
        for split, values in (test_metrics or {}).items()
        for metric, value in values.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    ]
    return ModelCardData(
        license=ANKH_LICENSE if ankh_weights(base_model, preset) else None,
        base_model=base_model if _is_hub_id(base_model) else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=pipeline_tag,
        datasets=[dataset] if dataset else None,
        tags=["protein", "ankh", "fastankh", kind],
        model_name=model_name,
        eval_results=results or None,
    )


def model_card(run: Run, config: FastAnkhConfig, base_model: str | None, adapter: bool, repo: str) -> str:
    """README.md: front matter, task and labels, test metrics per split, usage, training config, citation."""
    task = run.task
    # the contact model is served under the token Auto class (transformers has none for pairs)
    auto_class = f"AutoModelFor{'Sequence' if TASK_KINDS[task.kind].level == 'sequence' else 'Token'}Classification"
    preset = ((run.config or {}).get("model") or {}).get("preset") or getattr(config, "preset", None)
    front = card_metadata(
        task.name,
        task.kind,
        task.residue_level,
        base_model,
        preset,
        adapter,
        model_name=repo.rstrip("/").split("/")[-1],
        test_metrics=run.test_metrics,
        dataset=getattr(task.data, "hub_id", None),
    )
    labels = ", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels))
    output = {
        "residue_classification": "one class per residue, logits (B, T, C)",
        "residue_regression": "one value per residue token, logits (B, T, 1)",
        "sequence_classification": "one class per sequence, logits (B, C)",
        "sequence_multilabel": "independent sigmoid per label, logits (B, C)",
        "sequence_regression": "one value per sequence, logits (B, 1)",
        "residue_pair_classification": "one contact logit per residue pair, logits (B, T, T), symmetric; "
        "sigmoid gives the contact probability",
    }[task.kind]
    training = {k: v for k, v in (run.config or {}).items() if k not in ("paths", "hydra")}
    usage = (ADAPTER_USAGE if adapter else MERGED_USAGE).format(repo=repo, auto_class=auto_class)
    returns = {
        "residue_classification": "one entity per residue (index, residue, argmax label, softmax score)",
        "residue_regression": "one entry per residue; the value is in the model's logits, not the score",
        "sequence_classification": "the argmax label and its softmax score",
        "sequence_multilabel": "every label with its sigmoid score",
        "sequence_regression": "the predicted value as the score (no activation)",
        "residue_pair_classification": "",  # no pipeline: the usage code shows the map
    }[task.kind]
    pipeline_usage = PIPELINE_USAGE.format(
        pipeline_tag=front.pipeline_tag,
        repo=repo,
        returns=returns,
        top_k=", top_k=None" if task.kind == "sequence_multilabel" else "",
    )
    sections = [
        "---\n" + front.to_yaml() + "\n---",
        f"# FastANKH fine-tuned on `{task.name}`",
        f"An ANKH protein encoder ({base_model or 'random init, ' + str(getattr(config, 'preset', 'custom'))}) "
        f"fine-tuned with FastANKH on the task `{task.name}` ({task.kind}): {output}.\n\n"
        f"- head: `{config.head_name}` {config.head_kwargs or ''}\n"
        f"- fine-tuning: `{run.module.hparams.finetune['mode']}`"
        + (" (adapter-only export: LoRA weights + head, base loaded separately)" if adapter else "")
        + f"\n- labels ({config.num_labels}): {labels}",
        "## Test metrics\n\n" + _metrics_table(run.test_metrics),
        "## How to use\n\n```python\n" + usage + '\n\nbatch = tokenizer(["MKTAYIAKQRQISFVKSHFSRQ"], padding=True, '
        'return_tensors="pt")\nlogits = model(**batch).logits\n```\n\nSequences are raw residue strings '
        "(one letter per residue); the tokenizer appends `</s>` (ANKH3: also prepends `[NLU]`). "
        "Per-residue outputs are meaningful at residue tokens only (not `[NLU]`, `</s>` or padding). "
        "`trust_remote_code=True` on the tokenizer too: transformers reads the (custom) model config first "
        "and would otherwise ask whether to run its code.\n\n"
        + (
            ""
            if adapter or front.pipeline_tag is None
            else "With a transformers pipeline:\n\n```python\n" + pipeline_usage + "\n```"
        ),
        "## Training config\n\n```yaml\n"
        + (yaml.safe_dump(training, sort_keys=False) if training else "# not found\n")
        + "```",
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return "\n\n".join(sections) + "\n"
