"""Export a fine-tuned checkpoint as a Hub-ready folder, optionally pushing it to the Hub.

    python export.py checkpoint=outputs/ss3_local/runs/X/checkpoints/epoch007.ckpt output_dir=ankh-ss3
    python export.py checkpoint=... output_dir=ankh-ss3-lora merge_lora=false        # adapter only
    python export.py checkpoint=... output_dir=ankh-ss3 push_to_hub=true repo_id=my-org/ankh-ss3 private=true

Options: conf/cli/export.yaml. Folder layout and loading: tasks/hub/export_folder.py (`export`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tasks import cli
from tasks.hub.export_folder import export


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="export")
def main(cfg: DictConfig) -> object:
    return cli.run_command(export, cfg, __doc__)


if __name__ == "__main__":
    main()
