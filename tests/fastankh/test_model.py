"""Parity of FastANKH with transformers' T5EncoderModel on the same (locally saved) T5 weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, T5EncoderModel

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.modeling_fastankh import convert_t5_state_dict, relative_position_bucket
from tests.conftest import FAMILIES, random_batch

LENGTHS = [150, 37, 101, 5]


def reference_and_ours(path: str, **kwargs):
    ref = T5EncoderModel.from_pretrained(path).eval()
    ours = FastAnkhModel.from_pretrained(path, **kwargs).eval()
    return ref, ours


def relative_error(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    return ((ours.float() - ref.float())[m].abs().max() / ref.float()[m].abs().max()).item()


def test_bucketing_matches_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)
    expected = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=64, max_distance=128)
    assert torch.equal(relative_position_bucket(rel, 64, 128), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sdpa_parity_every_family(t5_checkpoint, family):
    path = t5_checkpoint(family)
    ref, ours = reference_and_ours(path, attn_backend="sdpa")
    assert ours.config.vocab_size == FAMILIES[family]["vocab_size"]
    assert ours.config.dense_act_fn == FAMILIES[family]["act"]
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        o = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert relative_error(o.last_hidden_state, r.last_hidden_state, mask) <= 1e-5
    assert len(o.hidden_states) == len(r.hidden_states) == FAMILIES[family]["num_layers"] + 1
    for a, b in zip(o.hidden_states, r.hidden_states):
        assert relative_error(a, b, mask) <= 1e-5


@pytest.mark.parametrize("family", ["ankh_base", "ankh3_xl"])
def test_flex_parity(t5_checkpoint, family):
    ref, ours = reference_and_ours(t5_checkpoint(family), attn_backend="flex")
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        o = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert relative_error(o, r, mask) <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_sequence_alone_equals_inside_padded_batch(t5_checkpoint, backend):
    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh_base"), attn_backend=backend).eval()
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        batched = model(ids, mask).last_hidden_state
        for i, n in enumerate(LENGTHS):
            alone = model(ids[i : i + 1, :n]).last_hidden_state[0]
            torch.testing.assert_close(batched[i, :n], alone, atol=1e-5, rtol=0)
    # padding is never computed (tokens are packed), and comes back as zeros
    assert batched[mask == 0].abs().max() == 0


def test_bf16_close_to_fp32_reference(t5_checkpoint):
    """bf16 weights + bf16 compute vs the fp32 transformers reference: relative error <= 3e-2."""
    path = t5_checkpoint("ankh3_large")
    ref = T5EncoderModel.from_pretrained(path).eval()
    ours = FastAnkhModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        o = ours(ids, mask).last_hidden_state
    assert o.dtype == torch.bfloat16
    assert relative_error(o, r, mask) <= 3e-2


def test_flex_compiles_a_handful_of_graphs_for_twenty_lengths():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, attn_backend="flex")).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 380, (20,), generator=g).tolist()
    assert len(set(lengths)) >= 15
    with torch.no_grad():
        for n in lengths:
            ids = torch.randint(3, 23, (2, n), generator=g)
            model(ids, torch.ones_like(ids))
    assert 1 <= counters["stats"]["unique_graphs"] <= 4  # lengths padded to 128 / 256 / 384


def test_flex_training_on_cpu_falls_back_to_sdpa_with_one_warning():
    import fastankh.modeling_fastankh as mf

    mf._WARNED.clear()
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, attn_backend="flex")).train()
    ids, mask = random_batch([20, 12])
    with pytest.warns(UserWarning, match="no backward on CPU"):
        model(ids, mask).last_hidden_state.sum().backward()
    with __import__("warnings").catch_warnings(record=True) as caught:
        __import__("warnings").simplefilter("always")
        model(ids, mask).last_hidden_state.sum().backward()
    assert not [w for w in caught if "backward on CPU" in str(w.message)]
    assert model.embed_tokens.weight.grad is not None


def test_kernels_flash_falls_back_and_matches_sdpa(t5_checkpoint):
    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh_large"), attn_backend="kernels_flash").eval()
    ids, mask = random_batch(LENGTHS)
    with pytest.warns(UserWarning, match="kernels_flash"), torch.no_grad():
        import fastankh.modeling_fastankh as mf

        mf._WARNED.clear()
        flash = model(ids, mask).last_hidden_state
    model.config.attn_backend = "sdpa"
    with torch.no_grad():
        sdpa = model(ids, mask).last_hidden_state
    torch.testing.assert_close(flash, sdpa)


def test_conversion_keeps_encoder_and_drops_decoder(t5_checkpoint):
    from safetensors.torch import load_file

    state = load_file(f"{t5_checkpoint('ankh_base')}/model.safetensors")
    converted = convert_t5_state_dict(state)
    assert set(converted) == set(FastAnkhModel(FastAnkhConfig.from_preset("ankh_base", num_layers=2)).state_dict())
    assert torch.equal(converted["embed_tokens.weight"], state["shared.weight"])


def test_invalid_backend_is_rejected():
    with pytest.raises(ValueError, match="attn_backend"):
        FastAnkhConfig.from_preset("ankh_tiny", attn_backend="eager")


def test_presets_have_documented_shapes():
    c = FastAnkhConfig.from_preset("ankh3_xl")
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.inner_dim) == (2560, 32, 48, 2048)
    assert FastAnkhConfig.hub_id("ankh_base") == "ElnaggarLab/ankh-base"
    with pytest.raises(ValueError, match="unknown preset"):
        FastAnkhConfig.from_preset("ankh_huge")


def test_fastankh_checkpoint_round_trip_and_auto_model(tmp_path, t5_checkpoint):
    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh2_large")).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "fast_ankh" and "AutoModel" in config["auto_map"]
    assert (tmp_path / "modeling_fastankh.py").exists() and (tmp_path / "configuration_fastankh.py").exists()
    reloaded = AutoModel.from_pretrained(tmp_path, attn_backend="sdpa")
    assert isinstance(reloaded, FastAnkhModel)
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


def test_masked_lm_head_starts_as_the_embedding(t5_checkpoint):
    mlm = FastAnkhForMaskedLM.from_pretrained(t5_checkpoint("ankh_base"))
    assert torch.equal(mlm.lm_head.weight, mlm.model.embed_tokens.weight)
    assert mlm.lm_head.weight.data_ptr() != mlm.model.embed_tokens.weight.data_ptr()  # untied
    ids, mask = random_batch([12, 9])
    labels = ids.masked_fill(mask == 0, -100)
    out = mlm(ids, mask, labels=labels)
    assert out.logits.shape == (2, 12, 144) and torch.isfinite(out.loss)


BLOCK_FASTANKH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastankh", "tasks"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""


def test_remote_code_in_a_python_without_fastankh(tmp_path, t5_checkpoint):
    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh3_large")).eval()
    model.save_pretrained(tmp_path / "ckpt")
    ids, mask = random_batch(LENGTHS)
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = BLOCK_FASTANKH + textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        try:
            import fastankh
            raise SystemExit("fastankh should not be importable here")
        except ImportError:
            pass
        m = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        x = torch.load({str(tmp_path / 'inputs.pt')!r})
        with torch.no_grad():
            torch.save(m(x["ids"], x["mask"]).last_hidden_state, {str(tmp_path / 'out.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        expected = model(ids, mask).last_hidden_state
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_hub_id_path_converts_a_t5_repo(monkeypatch, t5_checkpoint):
    """A hub id goes through huggingface_hub (served here from a local folder: the Hub is offline)."""
    import os

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    folder = t5_checkpoint("ankh_large")
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        path = os.path.join(folder, filename)
        if not os.path.exists(path):
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = FastAnkhModel.from_pretrained("ElnaggarLab/ankh-large", revision="main")
    assert ("ElnaggarLab/ankh-large", "config.json") in asked
    ref = T5EncoderModel.from_pretrained(folder).eval()
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        assert relative_error(model(ids, mask).last_hidden_state, r, mask) <= 1e-5


def test_sharded_t5_checkpoint(tmp_path, t5_checkpoint):
    from transformers import T5ForConditionalGeneration

    T5ForConditionalGeneration.from_pretrained(t5_checkpoint("ankh_base")).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    sharded = FastAnkhModel.from_pretrained(tmp_path)
    single = FastAnkhModel.from_pretrained(t5_checkpoint("ankh_base"))
    for (name, a), (_, b) in zip(sharded.state_dict().items(), single.state_dict().items()):
        assert torch.equal(a, b), name


def test_masked_lm_loads_a_saved_fastankh_encoder(tmp_path, t5_checkpoint):
    from transformers import AutoModelForMaskedLM

    encoder = FastAnkhModel.from_pretrained(t5_checkpoint("ankh3_large"))
    encoder.save_pretrained(tmp_path)
    mlm = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(mlm, FastAnkhForMaskedLM)
    assert torch.equal(mlm.model.encoder.layers[1].ffn.wo.weight, encoder.encoder.layers[1].ffn.wo.weight)
    assert torch.equal(mlm.lm_head.weight, encoder.embed_tokens.weight)  # not left uninitialised
    fresh = FastAnkhForMaskedLM(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1))
    assert torch.equal(fresh.lm_head.weight, fresh.model.embed_tokens.weight)
