"""Lightning checkpoint -> Hub-ready folder (weights, config with auto_map, tokenizer, modeling code, model card).

    export_checkpoint("outputs/ss3_local/runs/X/checkpoints/epoch007.ckpt", "ss3-model")
    push_folder("ss3-model", "my-org/ankh-ss3", private=True)

What is saved is the module's own task model (`FineTuneModule.model`, the class tasks/task/kinds.py names),
config.json as it trained. Two layouts:
- merged (default): `FastAnkhFor{Token,Sequence}Classification` / `FastAnkhForContactPrediction` (served
  under AutoModelForTokenClassification) with LoRA (if any) merged into the encoder
  (`merge_and_unload`); `AutoModelFor*Classification.from_pretrained(dir, trust_remote_code=True)` needs
  only transformers, and `AutoModel.from_pretrained(dir, trust_remote_code=True)` gives the fine-tuned encoder.
- adapter-only (`merge_lora=False`, LoRA runs): the peft model as trained (LoRA on the encoder + the trained
  head as `modules_to_save`), config.json/code/tokenizer, and the base model id in
  `config.base_model_name_or_path`; see `ADAPTER_USAGE` for how it loads with peft onto the base.
The run directory (two levels above the checkpoint: config.yaml, test_metrics.json) feeds the model card.
Every folder is written under `<dir>.tmp-*` and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from fastankh.errors import UserError
from fastankh.modeling_fastankh import copy_remote_code
from fastankh.tokenization import prefix_length
from tasks.hub.model_card import model_card
from tasks.hub.run import Run, load_run, run_tokenizer
from tasks.train.model import weights_source
from tasks.train.run_files import atomic_dir, write_text_atomic

PROBE_SEQUENCES = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVNX", "ACDEFGHIKLMNPQRSTVWY")
PROBE_TOLERANCE = 1e-4  # exported vs Lightning logits on the probe, relative to the largest logit


def _probe_batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """A padded batch of PROBE_SEQUENCES with the data module's residue_mask (prefix .. before </s>)."""
    batch = tokenizer(list(PROBE_SEQUENCES), padding=True, return_tensors="pt")
    prefix, lengths = prefix_length(tokenizer), batch["attention_mask"].sum(1)
    positions = torch.arange(batch["input_ids"].shape[1])
    residue_mask = (positions >= prefix) & (positions < (lengths - 1)[:, None])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "residue_mask": residue_mask}


@torch.no_grad()
def check_same_predictions(run: Run, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> float:
    """Max |exported - Lightning| logit on the probe batch at residue tokens (residue tasks), residue pairs
    (pair tasks) or rows; the
    exported model finds residues from ids alone (config.non_residue_token_ids), the module gets the data
    module's residue_mask. Raises if the difference exceeds PROBE_TOLERANCE relative to the largest logit."""
    batch = _probe_batch(tokenizer)
    expected = run.module(batch)
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if run.task.regression:
        got = got.squeeze(-1)
    if run.task.residue_level:
        expected, got = expected[batch["residue_mask"]], got[batch["residue_mask"]]
    elif run.task.pair_level:
        pairs = batch["residue_mask"][:, :, None] & batch["residue_mask"][:, None, :]
        expected, got = expected[pairs], got[pairs]
    diff = (got - expected).abs().max().item()
    if diff > PROBE_TOLERANCE * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"exported model differs from the checkpoint by {diff:.3g} on the probe sequences")
    return diff


# ------------------------------------------------------------------------------------------ folders
def export_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    merge_lora: bool = True,
    run_dir: str | os.PathLike | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Write the Hub folder of `checkpoint` to `output_dir` (atomically) and return its path.

    base_model: what the adapter-only export loads onto (default: the run's model.path or preset hub id).
    repo_id: the name the model card's usage snippet loads (default: the folder path).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise UserError(f"{output_dir}: already exists; pass overwrite=true to replace it")
    run = load_run(checkpoint, run_dir)
    if not merge_lora and not run.lora:
        mode = run.module.hparams.finetune["mode"]
        raise UserError(f"{checkpoint}: merge_lora=false exports LoRA adapters, but this run used finetune={mode}")
    if base_model is None and run.config is not None:
        base_model = weights_source(run.config["model"])
    if not merge_lora and base_model is None:
        raise UserError(
            f"{checkpoint}: merge_lora=false needs the base encoder the adapters load onto, and this run's was "
            "randomly initialised (no model.path or hub id); pass base_model=PATH_OR_HUB_ID or use merge_lora=true"
        )

    tokenizer = run_tokenizer(run)
    with atomic_dir(output_dir) as tmp:
        if merge_lora:
            model = run.module.merged_model()
            check_same_predictions(run, model, tokenizer)
            model.save_pretrained(tmp)
            config = model.config
        else:
            model = run.module.model  # the peft model as trained: LoRA adapters + the head (modules_to_save)
            check_same_predictions(run, model, tokenizer)
            model.peft_config["default"].base_model_name_or_path = base_model
            model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
            task_model = model.get_base_model()
            config = task_model.config
            config.base_model_name_or_path = base_model
            config.architectures = [type(task_model).__name__]
            # The model class's AutoModelFor* entry, as a full export's save_pretrained adds it, and the same
            # remote-code files (REMOTE_CODE_FILES) a full export carries.
            cls = type(task_model)
            auto_class = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
            config.auto_map = {**(config.auto_map or {}), cls._auto_class: auto_class}
            copy_remote_code(tmp)
            config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = model_card(run, config, base_model, adapter=not merge_lora, repo=repo_id or str(output_dir))
        write_text_atomic(tmp / "README.md", card)
    return output_dir


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload FastANKH fine-tuned model",
) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it with huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


__all__ = ["export", "export_checkpoint", "push_folder"]


def export(cfg: DictConfig) -> Path:
    """export.py's body: conf/cli/export.yaml's `cfg` -> the exported folder (pushed to the Hub when
    cfg.push_to_hub); prints what it did. Bad options and checkpoints are UserErrors."""
    if cfg.push_to_hub and not cfg.repo_id:
        raise UserError("push_to_hub=true needs repo_id=ORG/NAME")
    folder = export_checkpoint(
        cfg.checkpoint,
        cfg.output_dir,
        merge_lora=cfg.merge_lora,
        run_dir=cfg.run_dir,
        base_model=cfg.base_model,
        overwrite=cfg.overwrite,
        repo_id=cfg.repo_id,
    )
    print(f"exported {cfg.checkpoint} -> {folder}")
    if cfg.push_to_hub:
        url = push_folder(folder, cfg.repo_id, private=cfg.private, commit_message=cfg.commit_message)
        print(f"pushed to https://huggingface.co/{cfg.repo_id} ({url})")
    return folder
