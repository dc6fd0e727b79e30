"""Embed protein sequences with an ANKH encoder into a safetensors file (fastankh.embed_dataset).

    python embed.py model=ankh_base input=proteins.fasta output=embeddings.safetensors pooling=mean full=false
    python embed.py model=ankh-ss3 input=proteins.csv output=residues.safetensors full=true   # an export's encoder

Keys are record ids; values (d_model,) pooled over residues, or (n_residues, d_model) with full=true.
    python embed.py model=ankh_base input=proteins.fasta output=embeddings.safetensors devices=4   # 4 GPUs, ddp

Rerun the same command to resume: records already in the output, or in the shards an interrupted run left in
<output>.shards/, are not recomputed. Runs on Lightning's predict loop (tasks/infer/harness.py): devices=N
num_nodes=M accelerator=... strategy=... mean what they mean in conf/trainer.
Options: conf/cli/embed.yaml. The work: tasks/infer/embedding.py (`embed`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tasks import cli
from tasks.infer.embedding import embed


@hydra.main(version_base="1.3", config_path="conf/cli", config_name="embed")
def main(cfg: DictConfig) -> object:
    return cli.run_command(embed, cfg, __doc__)


if __name__ == "__main__":
    main()
