"""embed.py: keys and shapes, pooling over residues only, resuming, formats, layers, an export's encoder, the
duplicate policy (the engine's: fastankh/embeddings/inputs.py)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from fastankh import FastAnkhConfig, FastAnkhForTokenClassification, FastAnkhModel, embed_dataset, load_tokenizer
from fastankh import open_embeddings as load_file
from fastankh.errors import UserError
from tasks.infer import embedding as embed
from tests.helpers import REPO, run_cli

RECORDS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "GSHMLE", "p3": "ACDEFGHIKLMNPQRSTVWYX", "p4": "MKV", "p5": "WWPLLAAG"}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("embed") / "encoder"
    torch.manual_seed(0)
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).save_pretrained(path)
    return path


def write_fasta(path, records: dict[str, str]) -> None:
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))


def residue_states(model: FastAnkhModel, sequence: str) -> torch.Tensor:
    """(n_residues, d_model) of one sequence alone: every token but the final </s>."""
    ids = load_tokenizer("ankh_tiny")([sequence], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).last_hidden_state[0, :-1]


def test_pooled_and_full_outputs(encoder_dir, tmp_path):
    write_fasta(tmp_path / "in.fasta", RECORDS)
    common = [f"model={encoder_dir}", f"input={tmp_path / 'in.fasta'}", "progress=false"]
    run_cli("embed", common + [f"output={tmp_path / 'mean.safetensors'}", "batch_size=2"])
    run_cli("embed", common + [f"output={tmp_path / 'full.safetensors'}", "full=true"])
    pooled, full = load_file(tmp_path / "mean.safetensors"), load_file(tmp_path / "full.safetensors")
    assert set(pooled) == set(full) == set(RECORDS)
    model = FastAnkhModel.from_pretrained(encoder_dir).eval()
    for key, seq in RECORDS.items():
        assert pooled[key].shape == (96,) and full[key].shape == (len(seq), 96)
        states = residue_states(model, seq)
        torch.testing.assert_close(full[key], states, atol=1e-5, rtol=0)
        torch.testing.assert_close(pooled[key], states.mean(0), atol=1e-5, rtol=0)


def test_rerun_resumes_and_embeds_only_new_records(encoder_dir, tmp_path, monkeypatch):
    first = dict(list(RECORDS.items())[:3])
    write_fasta(tmp_path / "first.fasta", first)
    write_fasta(tmp_path / "all.fasta", RECORDS)
    output = tmp_path / "out.safetensors"
    common = [f"model={encoder_dir}", f"output={output}", "progress=false"]
    run_cli("embed", common + [f"input={tmp_path / 'first.fasta'}"])
    saved = load_file(output)

    embedded = []
    load = embed.load_encoder

    def counting_encoder(*args, **kwargs):
        model = load(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: embedded.append(output.last_hidden_state.shape[0]))
        return model

    monkeypatch.setattr(embed, "load_encoder", counting_encoder)
    run_cli("embed", common + [f"input={tmp_path / 'all.fasta'}"])
    assert sum(embedded) == len(RECORDS) - len(first)
    resumed = load_file(output)
    assert set(resumed) == set(RECORDS)
    assert all(torch.equal(resumed[k], saved[k]) for k in first)


def test_export_folder_embeds_with_its_encoder(tmp_path):
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, id2label={0: "H", 1: "E", 2: "C"})
    torch.manual_seed(1)
    task_model = FastAnkhForTokenClassification(config).eval()
    task_model.save_pretrained(tmp_path / "export")
    encoder = embed.load_encoder(str(tmp_path / "export"))
    for name, weight in task_model.model.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], weight), name


def compose_embed(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf" / "cli"), version_base="1.3"):
        return compose("embed", overrides=overrides)


def test_duplicate_policy_is_the_engines(encoder_dir, tmp_path):
    """A repeated id with the same sequence is one record; with another sequence it is refused before any model."""
    (tmp_path / "same.csv").write_text("id,sequence\na,MKT\nb,GSH\na,mkt\n")
    out = embed.embed(
        compose_embed([f"model={encoder_dir}", f"input={tmp_path / 'same.csv'}", f"output={tmp_path / 's'}"])
    )
    assert list(out) == ["a", "b"]
    (tmp_path / "other.csv").write_text("id,sequence\na,MKT\nb,GSH\na,MKV\n")
    cfg = compose_embed(["model=no-such-model", f"input={tmp_path / 'other.csv'}", f"output={tmp_path / 'o'}"])
    with pytest.raises(UserError, match=r"other\.csv: row 3 \(id a\): id 'a' appears twice with different sequences"):
        embed.embed(cfg)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["out.safetensors", "out.parquet", "out.h5"])
def test_cli_equals_embed_dataset_in_every_format_and_layer(encoder_dir, tmp_path, name):
    write_fasta(tmp_path / "in.fasta", RECORDS)
    overrides = ["layers=[0,-1]", "pooling=mean+std", "precision=32", "progress=false", "batch_size=2"]
    run_cli(
        "embed", [f"model={encoder_dir}", f"input={tmp_path / 'in.fasta'}", f"output={tmp_path / name}", *overrides]
    )
    got = load_file(tmp_path / name)
    model = FastAnkhModel.from_pretrained(encoder_dir).eval()
    expected = embed_dataset(model, RECORDS, layers=[0, -1], pooling="mean+std", precision="32", progress=False)
    assert list(got) == list(RECORDS)
    for key in RECORDS:
        assert got[key].shape == (2 * 2 * 96,)
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)
