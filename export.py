"""Export a fine-tuned checkpoint as a Hub-ready folder, optionally pushing it to the Hub.

    python export.py checkpoint=outputs/ss3_local/runs/X/checkpoints/epoch007.ckpt output_dir=ankh-ss3
    python export.py checkpoint=... output_dir=ankh-ss3-lora merge_lora=false        # adapter only
    python export.py checkpoint=... output_dir=ankh-ss3 push_to_hub=true repo_id=my-org/ankh-ss3 private=true

Options: conf/cli/export.yaml. Folder layout and loading: tasks/hub_export.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tasks.hub_export import export_checkpoint, push_folder
from tasks.trainer import CheckpointError


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="export")
def main(cfg: DictConfig) -> None:
    if cfg.push_to_hub and not cfg.repo_id:
        raise ValueError("push_to_hub=true needs repo_id=ORG/NAME")
    try:
        folder = export_checkpoint(
            cfg.checkpoint,
            cfg.output_dir,
            merge_lora=cfg.merge_lora,
            run_dir=cfg.run_dir,
            base_model=cfg.base_model,
            overwrite=cfg.overwrite,
            repo_id=cfg.repo_id,
        )
    except (FileNotFoundError, CheckpointError) as err:  # a missing, truncated or unsafe checkpoint: one line
        raise SystemExit(f"error: {err}") from None
    print(f"exported {cfg.checkpoint} -> {folder}")
    if cfg.push_to_hub:
        url = push_folder(folder, cfg.repo_id, private=cfg.private, commit_message=cfg.commit_message)
        print(f"pushed to https://huggingface.co/{cfg.repo_id} ({url})")


if __name__ == "__main__":
    main()
