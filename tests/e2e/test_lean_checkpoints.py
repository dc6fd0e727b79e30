"""Checkpoints that fit the mode: with a frozen base loaded from model.path (frozen, lora, partial), a checkpoint
holds only what trains plus a reference to the base (source, checksum); resume, test and export rebuild the
full model from it, and a changed base is refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import T5ForConditionalGeneration

from fastankh.errors import BaseChangedError
from tasks.hub.export_folder import export_checkpoint
from tasks.hub.run import load_run
from tasks.train.model import weights_checksum
from tests.conftest import t5_config
from tests.helpers import metrics_of, run_cli, short_rows, single_process, val_rows

# a 2-block T5 checkpoint of the ankh_base family (as the ElnaggarLab ones are saved), a few short batches
SMALL = [
    "task=ss3_local",
    "model=ankh_base",
    "model.precision=32-true",
    "model.attn_backend=sdpa",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "data.batch_size=4",
    "head.dropout=0.3",  # the resumed run must reproduce the RNG too
    "~callbacks.progress_bar",
    "+trainer.enable_model_summary=false",
    "logger=csv",
]
STOP = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1"]


def save_base(directory: Path, seed: int) -> None:
    torch.manual_seed(seed)
    T5ForConditionalGeneration(t5_config("ankh_base")).save_pretrained(directory)


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lean")
    save_base(root / "base", seed=0)
    short_rows("secondary_structure.csv", 24).to_csv(root / "ss.csv", index=False)

    def train(name: str, *overrides: str) -> Path:
        run_dir = root / name
        data = [f"task.data.train={root / 'ss.csv'}", "task.data.val_fraction=0.25", "task.data.test_fraction=0.25"]
        run_cli(
            "train", [*SMALL, *data, f"model.path={root / 'base'}", *overrides, f"paths.output_dir={run_dir}"], "config"
        )
        return run_dir

    runs = {
        "root": root,
        "lora": train("lora", "finetune=lora", "trainer.max_epochs=2"),
        "stopped": train("stopped", "finetune=lora", "trainer.max_epochs=2", *STOP),
        "frozen": train("frozen", "finetune=frozen", "trainer.max_epochs=1"),
        "partial": train("partial", "finetune=partial", "finetune.trainable_layers=1", "trainer.max_epochs=1"),
    }
    stopped = runs["stopped"] / "checkpoints" / "last.ckpt"
    runs["resumed"] = train("resumed", "finetune=lora", "trainer.max_epochs=2", f"ckpt_path={stopped}")
    return runs


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_checkpoints_hold_what_trains_and_refer_to_the_base(lean):
    base = lean["root"] / "base"
    base_size = (base / "model.safetensors").stat().st_size
    encoder = {
        "lora": "model.base_model.model.model.",
        "frozen": "model.model.",
        "partial": "model.model.",
    }
    for mode, prefix in encoder.items():
        ckpt = checkpoint(lean[mode])
        assert ckpt["fastankh_lean"]["base"]["source"] == str(base)
        assert ckpt["fastankh_lean"]["base"]["checksum"] == weights_checksum(str(base))
        encoder_keys = [k for k in ckpt["state_dict"] if k.startswith(prefix)]
        if mode == "frozen":
            assert encoder_keys == [], mode
        elif mode == "lora":
            assert encoder_keys and all(".lora_A." in k or ".lora_B." in k for k in encoder_keys), encoder_keys
        else:  # the last block (and the final norm) train, block 0 and the embeddings do not
            assert {k.split(".")[4] if ".layers." in k else k for k in encoder_keys} == {
                "1",
                "model.model.encoder.final_norm.weight",
            }, encoder_keys
        assert any(".head." in k or k.startswith("model.head.") for k in ckpt["state_dict"]), mode
        if mode != "partial":  # (partial: one block of two trains, with its AdamW states)
            assert (lean[mode] / "checkpoints" / "last.ckpt").stat().st_size < base_size / 2, mode


def test_loading_a_lean_checkpoint_rebuilds_the_trained_model(lean):
    base = T5ForConditionalGeneration.from_pretrained(lean["root"] / "base").state_dict()
    for mode in ("frozen", "partial", "lora"):
        run = load_run(lean[mode] / "checkpoints" / "last.ckpt")
        block0 = run.module.encoder.encoder.layers[0].attention
        q = getattr(block0.q, "base_layer", block0.q).weight
        assert torch.equal(q, base["encoder.block.0.layer.0.SelfAttention.q.weight"]), mode
    # the run's test metrics (tested in-run from its best checkpoint) recomputed from the lean checkpoint alone
    (best,) = (lean["lora"] / "checkpoints").glob("epoch*.ckpt")
    assert single_process(lean["lora"], best, "test") == pytest.approx(metrics_of(lean["lora"])["test"], abs=1e-6)
    exported = export_checkpoint(best, lean["root"] / "export")  # checks the export's logits against the module
    assert (exported / "model.safetensors").is_file()


def test_resumed_lean_run_continues_like_the_straight_run(lean):
    """Resumed from the lean last.ckpt of epoch 0: epoch 1 validates exactly as in the uninterrupted run."""
    resumed, straight = val_rows(lean["resumed"]), val_rows(lean["lora"])
    assert list(resumed.index) == [1]
    pd.testing.assert_series_equal(resumed.loc[1], straight.loc[1], check_exact=True)


def test_a_changed_base_is_refused_in_one_line(lean):
    base = lean["root"] / "base"
    keep = lean["root"] / "base_kept"
    shutil.copytree(base, keep)
    try:
        save_base(base, seed=1)  # same shapes, other weights
        ckpt = lean["lora"] / "checkpoints" / "last.ckpt"
        with pytest.raises(BaseChangedError) as err:
            load_run(ckpt)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"checkpoint {ckpt} was trained on base {base}")
        assert checkpoint(lean["lora"])["fastankh_lean"]["base"]["checksum"] in message
        assert weights_checksum(str(base)) in message
        with pytest.raises(SystemExit, match="error: checkpoint .* was trained on base"):  # resuming refuses too
            run_cli(
                "train",
                [*SMALL, f"model.path={base}", "finetune=lora", "trainer.max_epochs=3", f"ckpt_path={ckpt}"]
                + [f"paths.output_dir={lean['root'] / 'refused'}"],
                "config",
            )
    finally:
        shutil.rmtree(base)
        shutil.move(keep, base)


def test_a_hub_base_is_referred_to_by_id_and_snapshot_revision(tmp_path, monkeypatch):
    """model=ankh_base without model.path: the weights from_pretrained read are the HF cache's snapshot."""
    import huggingface_hub.constants

    from tasks.train.model import base_reference

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--ElnaggarLab--ankh-base"
    snapshot = repo / "snapshots" / revision
    save_base(snapshot, seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    ref = base_reference({"preset": "ankh_base", "path": None, "attn_backend": "sdpa", "config": {}})
    assert ref["source"] == "ElnaggarLab/ankh-base" and ref["revision"] == revision
    assert ref["checksum"] == weights_checksum(str(snapshot)) and ref["model"]["path"] is None


def test_checksum_of_a_large_file_reads_samples_and_sees_a_replaced_header(tmp_path):
    weights = tmp_path / "model.safetensors"
    data = bytearray(torch.randint(0, 256, (20 << 20,), dtype=torch.uint8).numpy().tobytes())  # 20 MiB > 18 MiB
    weights.write_bytes(bytes(data))
    first = weights_checksum(str(tmp_path))
    assert first == weights_checksum(str(tmp_path)) and first.startswith("sha256:")
    data[100] ^= 1  # in the header MiB
    weights.write_bytes(bytes(data))
    assert weights_checksum(str(tmp_path)) != first
