"""FastANKH against transformers' T5EncoderModel on the same (locally saved) T5 weights, plus the loading API.

Oracles are transformers' own T5 code and the numbers of ankh-facts.md, never FastANKH's own output.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from transformers import AutoModel, T5EncoderModel, T5ForConditionalGeneration
from transformers.activations import ACT2FN

import fastankh.attention as attention
import fastankh.modeling_fastankh as modeling
from fastankh import PRESETS, FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.attention import resolve_backend
from fastankh.modeling_fastankh import (
    FastAnkhRelativePositionBias,
    FastAnkhRMSNorm,
    relative_position_bucket,
)
from fastankh.runtime import RUNTIME
from fastankh.t5_conversion import convert_t5_state_dict, t5_key_to_fastankh
from tests.conftest import FAMILIES, random_batch, t5_config
from tests.helpers import BLOCK_FASTANKH

# No length is a multiple of 128: flex pads 150 and 129 (alone) to 256; 150 > max_distance 128 reaches
# the clamped log buckets.
LENGTHS = [150, 37, 129, 5]
# fp32: max |ours - ref| / max |ref| over real positions. Measured <= 4.1e-7 (sdpa and flex); an RMSNorm
# eps of 1e-5 instead of 1e-6 gives >= 4.9e-6.
FP32 = 2e-6
# bf16 against transformers in bf16 (see bf16_reference): bitwise equal on the CPUs measured so far; an
# RMSNorm variance computed in bf16 gives >= 6.6e-3.
BF16 = 1e-3
GRAD = 1e-5  # per parameter, fp32: measured <= 7.2e-7


def reference_and_ours(path: str, **kwargs):
    ref = T5EncoderModel.from_pretrained(path).eval()
    ours = FastAnkhModel.from_pretrained(path, **kwargs).eval()
    return ref, ours


def relative_error(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    return ((ours.float() - ref.float())[m].abs().max() / ref.float()[m].abs().max()).item()


def assert_hidden_states_match(ours, ref, mask: torch.Tensor, bound: float) -> None:
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
        assert relative_error(a, b, mask) <= bound, f"hidden state {i}"
    assert relative_error(ours.last_hidden_state, ref.last_hidden_state, mask) <= bound


# --------------------------------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("num_buckets, max_distance", [(64, 128), (32, 128), (64, 256)])
def test_bucketing_matches_transformers(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-1000, 1001)
    expected = T5Attention._relative_position_bucket(
        rel, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(relative_position_bucket(rel, num_buckets, max_distance), expected)


@pytest.mark.parametrize("length", [1, 5, 17, 150, 300])
def test_position_bias_matches_transformers(length):
    from transformers.models.t5.modeling_t5 import T5Attention

    config = t5_config("ankh_base")
    reference = T5Attention(config, has_relative_attention_bias=True)
    ours = FastAnkhRelativePositionBias(FastAnkhConfig(num_heads=config.num_heads))
    ours.load_state_dict(reference.relative_attention_bias.state_dict(prefix="relative_attention_bias."))
    with torch.no_grad():
        assert torch.equal(ours.dense(length, torch.device("cpu")), reference.compute_bias(length, length))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_t5_layer_norm_at_small_scale(dtype):
    """Activations ~1e-3 have a variance ~1e-6 = eps: a wrong epsilon changes the output by percents."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 768, generator=g) * 1e-3).to(dtype)
    weight = 1 + 0.1 * torch.randn(768, generator=g)
    ours = FastAnkhRMSNorm(768, FastAnkhConfig().layer_norm_epsilon)
    reference = T5LayerNorm(768, eps=1e-6)  # ankh-facts §1
    with torch.no_grad():
        ours.weight.copy_(weight)
        reference.weight.copy_(weight)
        ours, reference = ours.to(dtype), reference.to(dtype)
        out, expected = ours(x), reference(x)
    assert out.dtype == expected.dtype == dtype
    if dtype == torch.float32:  # fused rms_norm vs the Python formula
        assert relative_error(out, expected, torch.ones_like(out)) <= FP32
    else:  # the same ops in the same order (variance in fp32, one rounding to bf16)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fp32_parity_every_hidden_state(t5_checkpoint, family, backend):
    ref, ours = reference_and_ours(t5_checkpoint(family), attn_backend=backend)
    assert ours.config.vocab_size == FAMILIES[family]["vocab_size"]
    assert ours.config.dense_act_fn == FAMILIES[family]["act"]
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        o = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(o.hidden_states) == FAMILIES[family]["num_layers"] + 1
    assert_hidden_states_match(o, r, mask, FP32)


def bf16_reference(path: str, family: str) -> T5EncoderModel:
    """transformers' T5 in bf16, rounding like FastANKH where both are right.

    Every weight in bf16: transformers may keep `wo` in fp32 (`_keep_in_fp32_modules`, for fp16 in
    5.x), FastANKH does not. gelu_new through PyTorch's tanh-GELU kernel, as FastANKH does: the Python
    formula rounds each of its steps to bf16 (the fp32 parity test shows the two functions agree).
    """
    ref = T5EncoderModel.from_pretrained(path, dtype=torch.bfloat16).to(torch.bfloat16).eval()
    if FAMILIES[family]["act"] == "gelu_new":
        for block in ref.encoder.block:
            block.layer[1].DenseReluDense.act = ACT2FN["gelu_pytorch_tanh"]
    return ref


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_parity_every_hidden_state(t5_checkpoint, family):
    """The forward autograd sees (padded sdpa, unfused FFN gate) does transformers' ops in transformers' order.
    Inference runs two kernels that round differently, checked against fp32 below
    (test_bf16_inference_as_accurate_as_transformers_bf16)."""
    path = t5_checkpoint(family)
    ref = bf16_reference(path, family)
    ours = FastAnkhModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    with torch.enable_grad():
        o = ours(ids, mask, output_hidden_states=True)
    assert all(h.dtype == torch.bfloat16 for h in o.hidden_states)
    assert_hidden_states_match(o, r, mask, BF16)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_inference_as_accurate_as_transformers_bf16(t5_checkpoint, family, monkeypatch):
    """bf16 inference on CPU runs (1) the FFN gate as oneDNN matmuls with the activation and the product in their
    epilogues (modeling_fastankh._fused_gate: activation on the fp32 accumulator, one rounding) and (2) attention
    per sequence on the packed tokens (attention.sdpa_varlen_attention; exact in fp32: the fp32 parity tests run
    it). Every hidden state stays as close to the fp32 transformers reference as transformers' own bf16 model is
    (measured: within 1.11x at every layer of every family, often closer); a wrong activation, a missing product
    or a misplaced bias block is far off."""
    path = t5_checkpoint(family)
    ids, mask = random_batch(LENGTHS)
    ours = FastAnkhModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    fused, varlen = [], []
    real_gate, real_attend = modeling._fused_gate, attention.sdpa_varlen_attention
    monkeypatch.setattr(modeling, "_fused_gate", lambda *args: fused.append(real_gate(*args)) or fused[-1])
    implementation = attention.AttentionImplementation(True, lambda *a: varlen.append(1) or real_attend(*a))
    monkeypatch.setitem(attention.ATTENTION_IMPLEMENTATIONS, "sdpa_varlen", implementation)
    monkeypatch.setattr(RUNTIME, "fused_gate_failed", False)
    with torch.no_grad():
        fp32 = T5EncoderModel.from_pretrained(path).eval()(
            input_ids=ids, attention_mask=mask, output_hidden_states=True
        )
        bf16 = bf16_reference(path, family)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        o = ours(ids, mask, output_hidden_states=True)
    layers = ours.config.num_layers
    assert len(fused) == len(varlen) == layers and all(h is not None for h in fused)  # both kernels ran
    for i, (a, b, r) in enumerate(zip(o.hidden_states, bf16.hidden_states, fp32.hidden_states)):
        assert relative_error(a, r, mask) <= 1.2 * relative_error(b, r, mask) + 1e-4, f"hidden state {i}"


def test_bf16_close_to_fp32_reference(t5_checkpoint):
    """bf16 weights + bf16 compute vs the fp32 transformers reference: relative error <= 3e-2."""
    path = t5_checkpoint("ankh3_large")
    ref = T5EncoderModel.from_pretrained(path).eval()
    ours = FastAnkhModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        o = ours(ids, mask).last_hidden_state
    assert o.dtype == torch.bfloat16
    assert relative_error(o, r, mask) <= 3e-2


@pytest.mark.parametrize("family", ["ankh_base", "ankh3_large"])  # gelu_new / silu, inner_dim != d_model
def test_gradients_match_transformers(t5_checkpoint, family):
    path = t5_checkpoint(family)
    ref = T5EncoderModel.from_pretrained(path).train()
    ours = FastAnkhModel.from_pretrained(path, attn_backend="sdpa").train()
    ids, mask = random_batch(LENGTHS)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(*ids.shape, ours.config.d_model, generator=g) * mask[..., None]  # real positions only
    (ref(input_ids=ids, attention_mask=mask).last_hidden_state * weights).sum().backward()
    (ours(ids, mask).last_hidden_state * weights).sum().backward()
    params = dict(ours.named_parameters())
    compared = set()
    for name, p in ref.named_parameters():
        q = params[t5_key_to_fastankh(name)]
        assert ((q.grad - p.grad).abs().max() / p.grad.abs().max()).item() <= GRAD, name
        compared.add(t5_key_to_fastankh(name))
    assert compared == set(params)  # every parameter, the relative position bias table included


# ------------------------------------------------------------------------------------------- invariances
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


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_padding_never_enters_a_matmul(t5_checkpoint, backend):
    """README: every Linear of the backbone sees the real tokens only (rows = sum of the attention mask) when it
    trains; at inference the packed rows are rounded up with zero rows to a multiple of INFERENCE_ROW_MULTIPLE
    (a few shapes for many lengths), still far below the padded batch."""
    from fastankh.modeling_fastankh import INFERENCE_ROW_MULTIPLE

    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh_base"), attn_backend=backend).eval()
    ids, mask = random_batch(LENGTHS)
    rows: dict[str, list[int]] = {}

    def recorder(name: str):
        return lambda module, args: rows.setdefault(name, []).append(args[0].shape[:-1].numel())

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in linears]
    try:
        with torch.no_grad():
            model(ids, mask)
        if backend == "sdpa":  # flex has no CPU backward
            model.train()
            model(ids, mask)
    finally:
        for h in handles:
            h.remove()
        model.eval()
    assert len(linears) == 7 * FAMILIES["ankh_base"]["num_layers"]  # q k v o wi_0 wi_1 wo
    tokens = int(mask.sum())
    rounded = -(-tokens // INFERENCE_ROW_MULTIPLE) * INFERENCE_ROW_MULTIPLE
    assert rounded < mask.numel()  # the test's batch: the rounding still skips most of the padding
    expected = [rounded, tokens] if backend == "sdpa" else [rounded]
    assert rows == {n: expected for n, _ in linears}


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


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_position_bias_is_built_once_per_forward(monkeypatch, backend):
    """README: one bias per forward, shared by every layer (here 4)."""
    calls: dict[str, int] = {}
    for name in ("dense", "by_distance"):
        original = getattr(FastAnkhRelativePositionBias, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(FastAnkhRelativePositionBias, name, counted)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", attn_backend=backend)).eval()
    assert model.config.num_layers == 4
    ids, mask = random_batch([20, 12])
    with torch.no_grad():
        model(ids, mask)
        model(ids, mask)
    # sdpa: dense() gathers the (L, L) bias from by_distance(); flex reads by_distance() in its score_mod
    assert calls == ({"dense": 2, "by_distance": 2} if backend == "sdpa" else {"by_distance": 2})


# ---------------------------------------------------------------------------------------------- backends
def test_backend_resolution(monkeypatch):
    """Decisions only: the cuda device is a plain torch.device, nothing runs on it."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve_backend("kernels_flash", cpu, training=False) == "sdpa"
        assert resolve_backend("kernels_flash", cuda, training=False) == "flex"
        assert resolve_backend("kernels_flash", cuda, training=True) == "flex"
        assert resolve_backend("flex", cpu, training=False) == "flex"
        assert resolve_backend("flex", cpu, training=True) == "sdpa"  # no flex backward on CPU
        assert resolve_backend("flex", cuda, training=True) == "flex"
        assert resolve_backend("sdpa", cuda, training=True) == "sdpa"
        monkeypatch.setattr(attention, "flex_available", lambda: False)
        assert resolve_backend("kernels_flash", cuda, training=False) == "sdpa"
        assert resolve_backend("flex", cuda, training=False) == "sdpa"


def test_kernels_flash_on_cpu_warns_and_matches_transformers(t5_checkpoint):
    ref, ours = reference_and_ours(t5_checkpoint("ankh_large"), attn_backend="kernels_flash")
    ids, mask = random_batch(LENGTHS)
    RUNTIME.warned.clear()
    with pytest.warns(UserWarning, match="kernels_flash"), torch.no_grad():
        o = ours(ids, mask).last_hidden_state
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert relative_error(o, r, mask) <= FP32


def test_flex_training_on_cpu_falls_back_to_sdpa_with_one_warning():
    RUNTIME.warned.clear()
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, attn_backend="flex")).train()
    ids, mask = random_batch([20, 12])
    with pytest.warns(UserWarning, match="no backward on CPU"):
        model(ids, mask).last_hidden_state.sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(ids, mask).last_hidden_state.sum().backward()
    assert not [w for w in caught if "backward on CPU" in str(w.message)]
    assert model.embed_tokens.weight.grad is not None


def test_invalid_backend_is_rejected():
    with pytest.raises(ValueError, match="attn_backend"):
        FastAnkhConfig.from_preset("ankh_tiny", attn_backend="flash_attention_2")


# ------------------------------------------------------------------------------------------------ presets
# ankh-facts §2: (d_model, d_kv, d_ff, num_layers, num_heads, dense_act_fn, vocab_size, hub id).
DOCUMENTED_SHAPES = {
    "ankh_base": (768, 64, 3072, 48, 12, "gelu_new", 144, "ElnaggarLab/ankh-base"),
    "ankh_large": (1536, 64, 3840, 48, 16, "gelu_new", 144, "ElnaggarLab/ankh-large"),
    "ankh2_large": (1536, 64, 3840, 48, 16, "silu", 144, "ElnaggarLab/ankh2-ext2"),
    "ankh3_large": (1536, 64, 3840, 48, 16, "silu", 256, "ElnaggarLab/ankh3-large"),
    "ankh3_xl": (2560, 64, 6720, 48, 32, "silu", 256, "ElnaggarLab/ankh3-xl"),  # d_ff inferred, low confidence
}
# Published sizes (FastPLMs' table: encoder + embedding + a same-size LM-head copy) and half their last digit.
PUBLISHED_SIZES = {
    "ankh_base": (453.3e6, 0.05e6),
    "ankh_large": (1.15e9, 0.005e9),
    "ankh2_large": (1.15e9, 0.005e9),
    "ankh3_large": (1.15e9, 0.005e9),
    "ankh3_xl": (3.49e9, 0.005e9),
}


@pytest.mark.parametrize("preset", sorted(DOCUMENTED_SHAPES))
def test_presets_have_documented_shapes(preset):
    c = FastAnkhConfig.from_preset(preset)
    fields = (c.hidden_size, c.d_kv, c.d_ff, c.num_hidden_layers, c.num_attention_heads, c.dense_act_fn, c.vocab_size)
    assert (*fields, FastAnkhConfig.hub_id(preset)) == DOCUMENTED_SHAPES[preset]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_share_the_ankh_constants(preset):
    c = FastAnkhConfig.from_preset(preset)
    assert c.layer_norm_epsilon == 1e-6
    assert (c.relative_attention_num_buckets, c.relative_attention_max_distance) == (64, 128)
    assert (c.pad_token_id, c.eos_token_id, c.dropout_rate) == (0, 1, 0.0)


@pytest.mark.parametrize("preset", sorted(PUBLISHED_SIZES))
def test_preset_parameter_count_matches_published_size(preset):
    with torch.device("meta"):  # shapes only, no memory
        model = FastAnkhForMaskedLM(FastAnkhConfig.from_preset(preset))
    count = sum(p.numel() for p in model.parameters())
    published, half_digit = PUBLISHED_SIZES[preset]
    assert abs(count - published) <= half_digit, count
    if preset == "ankh_base":  # ankh-facts §2, term by term
        assert count == 48 * (4 * 768**2 + 3 * 768 * 3072 + 2 * 768) + 768 + 768 + 2 * 144 * 768 == 453_281_280


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        FastAnkhConfig.from_preset("ankh_huge")


# ------------------------------------------------------------------------------------------------ loading
def test_conversion_keeps_encoder_and_drops_decoder(t5_checkpoint):
    from safetensors.torch import load_file

    state = load_file(f"{t5_checkpoint('ankh_base')}/model.safetensors")
    converted = convert_t5_state_dict(state)
    assert set(converted) == set(FastAnkhModel(FastAnkhConfig.from_preset("ankh_base", num_layers=2)).state_dict())
    assert torch.equal(converted["embed_tokens.weight"], state["shared.weight"])


def test_fastankh_checkpoint_round_trip_and_auto_model(tmp_path, t5_checkpoint):
    model = FastAnkhModel.from_pretrained(t5_checkpoint("ankh2_large")).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "fast_ankh" and "AutoModel" in config["auto_map"]
    assert (tmp_path / "modeling_fastankh.py").exists() and (tmp_path / "configuration_fastankh.py").exists()
    assert (tmp_path / "t5_conversion.py").exists()  # imported relatively by the modeling file: travels with it
    reloaded = AutoModel.from_pretrained(tmp_path, attn_backend="sdpa")
    assert isinstance(reloaded, FastAnkhModel)
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


def scaled_embedding(model) -> torch.Tensor:
    """What the untrained MaskedLM head starts as: the input embedding times d_model**-0.5 (T5's tied-head scale)."""
    return model.embed_tokens.weight * model.config.d_model**-0.5


def test_masked_lm_head_starts_as_the_scaled_embedding(t5_checkpoint):
    mlm = FastAnkhForMaskedLM.from_pretrained(t5_checkpoint("ankh_base"))
    assert torch.equal(mlm.lm_head.weight, scaled_embedding(mlm.model))
    assert mlm.lm_head.weight.data_ptr() != mlm.model.embed_tokens.weight.data_ptr()  # untied
    ids, mask = random_batch([12, 9])
    labels = ids.masked_fill(mask == 0, -100)
    out = mlm(ids, mask, labels=labels)
    assert out.logits.shape == (2, 12, 144) and torch.isfinite(out.loss)
    loss, logits = mlm(ids, mask, labels=labels, return_dict=False)
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)


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
        m = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            torch.save(m(x["ids"], x["mask"]).last_hidden_state, {str(tmp_path / "out.pt")!r})
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
        assert relative_error(model(ids, mask).last_hidden_state, r, mask) <= FP32


def test_sharded_t5_checkpoint(tmp_path, t5_checkpoint):
    t5 = T5ForConditionalGeneration.from_pretrained(t5_checkpoint("ankh_base"))
    t5.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    sharded = FastAnkhModel.from_pretrained(tmp_path).state_dict()
    single = FastAnkhModel.from_pretrained(t5_checkpoint("ankh_base")).state_dict()
    assert sharded.keys() == single.keys()
    for name, weight in single.items():
        assert torch.equal(sharded[name], weight), name


@pytest.mark.parametrize("sharded", [False, True])
def test_bin_t5_checkpoint(tmp_path, t5_checkpoint, sharded):
    """The ElnaggarLab repos hold pytorch_model.bin (ankh3-xl: sharded .bin), decoder and lm_head included."""
    path = t5_checkpoint("ankh_base")
    t5 = T5ForConditionalGeneration.from_pretrained(path)
    t5.config.save_pretrained(tmp_path)
    state = t5.state_dict()
    if sharded:
        keys = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
        for file, names in shards.items():
            torch.save({k: state[k] for k in names}, tmp_path / file)
        weight_map = {k: file for file, names in shards.items() for k in names}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    ref, ours = T5EncoderModel.from_pretrained(path).eval(), FastAnkhModel.from_pretrained(tmp_path).eval()
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        o = ours(ids, mask, output_hidden_states=True)
    assert_hidden_states_match(o, r, mask, FP32)


def test_masked_lm_loads_a_saved_fastankh_encoder(tmp_path, t5_checkpoint):
    from transformers import AutoModelForMaskedLM

    encoder = FastAnkhModel.from_pretrained(t5_checkpoint("ankh3_large"))
    encoder.save_pretrained(tmp_path)
    mlm = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(mlm, FastAnkhForMaskedLM)
    assert torch.equal(mlm.model.encoder.layers[1].ffn.wo.weight, encoder.encoder.layers[1].ffn.wo.weight)
    assert torch.equal(mlm.lm_head.weight, scaled_embedding(encoder))  # not left uninitialised
    fresh = FastAnkhForMaskedLM(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1))
    assert torch.equal(fresh.lm_head.weight, scaled_embedding(fresh.model))


def masked_lm_initial_loss(mlm: FastAnkhForMaskedLM, seed: int = 0) -> float:
    """Cross-entropy of an untrained head on BERT-style masked random residues (15% -> <extra_id_0>)."""
    from fastankh import load_tokenizer

    tok = load_tokenizer(mlm.config)
    mask_id, residues = (
        tok.convert_tokens_to_ids("<extra_id_0>"),
        tok.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY")),
    )
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(residues)[torch.randint(0, 20, (8, 100), generator=g)]
    chosen = torch.rand(8, 100, generator=g) < 0.15
    with torch.no_grad():
        out = mlm(ids.masked_fill(chosen, mask_id), labels=ids.masked_fill(~chosen, -100))
    return out.loss.item()


@pytest.mark.parametrize("source", ["random ankh_tiny", "T5 ankh_base", "T5 ankh3_large"])
def test_masked_lm_initial_loss_is_near_log_vocab(source, t5_checkpoint):
    """An unscaled copy of the embedding gave logits of std 12..66 and a loss of ~70-700 (perplexity inf)."""
    kind, family = source.split()
    torch.manual_seed(0)
    if kind == "random":
        mlm = FastAnkhForMaskedLM(FastAnkhConfig.from_preset(family)).eval()
    else:
        mlm = FastAnkhForMaskedLM.from_pretrained(t5_checkpoint(family)).eval()
    ln_vocab = math.log(mlm.config.vocab_size)
    loss = masked_lm_initial_loss(mlm)
    assert 0.5 * ln_vocab <= loss <= 2 * ln_vocab, (loss, ln_vocab)
    assert math.isfinite(math.exp(loss))
    with torch.no_grad():  # the old head: far outside the band
        mlm.lm_head.weight.copy_(mlm.model.embed_tokens.weight)
    assert masked_lm_initial_loss(mlm) > 4 * ln_vocab


# ------------------------------------------------------------------ nothing the caller asks is dropped
@pytest.fixture
def checkpoints(t5_checkpoint, tmp_path) -> dict[str, str]:
    """The same 2-layer ankh_base-family weights as an original T5 and as a FastANKH checkpoint."""
    t5 = t5_checkpoint("ankh_base")
    FastAnkhModel.from_pretrained(t5).save_pretrained(tmp_path / "fastankh")
    return {"t5": t5, "fastankh": str(tmp_path / "fastankh")}


@pytest.mark.parametrize("kind", ["t5", "fastankh"])
@pytest.mark.parametrize(
    "override, field, asked, have",
    [
        (dict(num_layers=3), "num_layers", "3", "2"),
        (dict(num_hidden_layers=1), "num_layers", "1", "2"),  # the transformers alias
        (dict(d_ff=64), "d_ff", "64", "192"),
        (dict(vocab_size=256), "vocab_size", "256", "144"),
        (dict(dense_act_fn="silu"), "dense_act_fn", "'silu'", "'gelu_new'"),
        (dict(feed_forward_proj="gated-silu"), "feed_forward_proj", "'gated-silu'", "'gated-gelu'"),
        (dict(relative_attention_max_distance=256), "relative_attention_max_distance", "256", "128"),
    ],
)
def test_architecture_override_that_disagrees_is_refused(checkpoints, kind, override, field, asked, have):
    with pytest.raises(ValueError, match=rf"{field}={asked} was asked but the checkpoint has {field}={have}"):
        FastAnkhModel.from_pretrained(checkpoints[kind], **override)


@pytest.mark.parametrize("kind", ["t5", "fastankh"])
def test_config_overrides_apply_to_both_checkpoint_kinds(checkpoints, kind):
    path = checkpoints[kind]
    model = FastAnkhModel.from_pretrained(
        path,
        attn_backend="flex",
        dropout_rate=0.25,
        layer_norm_epsilon=1e-5,
        num_layers=2,
        feed_forward_proj="gated-gelu",  # architecture fields that agree are fine
    )
    assert (model.config.attn_backend, model.config.dropout_rate, model.config.num_layers) == ("flex", 0.25, 2)
    assert model.encoder.layers[1].dropout.p == model.encoder.dropout.p == 0.25
    assert model.encoder.final_norm.eps == 1e-5
    with pytest.raises(ValueError, match="attn_backend"):
        FastAnkhModel.from_pretrained(path, attn_backend="flash_attention_2")
    with pytest.raises(ValueError, match="tie_word_embeddings=True cannot be set"):
        FastAnkhModel.from_pretrained(path, tie_word_embeddings=True)
    with pytest.raises(TypeError, match="no_such_option"):
        FastAnkhModel.from_pretrained(path, no_such_option=1)
    with pytest.raises(TypeError, match="one positional argument"):
        FastAnkhModel.from_pretrained(path, "extra")


def test_auto_model_config_overrides_are_checked_too(checkpoints):
    """AutoModel folds keyword arguments into the config it passes on: the same rule holds."""
    assert AutoModel.from_pretrained(checkpoints["fastankh"], dropout_rate=0.5).config.dropout_rate == 0.5
    with pytest.raises(ValueError, match="num_layers=3 was asked"):
        AutoModel.from_pretrained(checkpoints["fastankh"], num_layers=3)
    config = FastAnkhConfig.from_preset("ankh_tiny")
    with pytest.raises(ValueError, match="d_model=96 was asked but the checkpoint has d_model=48"):
        FastAnkhModel.from_pretrained(checkpoints["t5"], config=config)


def test_t5_checkpoint_keeps_its_dropout_rate(tmp_path, t5_checkpoint):
    folder = shutil.copytree(t5_checkpoint("ankh_base"), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.1}))
    model = FastAnkhModel.from_pretrained(folder)
    assert model.config.dropout_rate == 0.1
    assert model.encoder.layers[0].dropout.p == model.encoder.layers[0].ffn.dropout.p == 0.1


def test_t5_loading_info_and_device_map(tmp_path, checkpoints):
    from safetensors.torch import load_file, save_file

    model, info = FastAnkhModel.from_pretrained(checkpoints["t5"], output_loading_info=True)
    assert isinstance(model, FastAnkhModel)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    # The MaskedLM head is not in the checkpoint, for either kind: reported the way transformers does.
    for kind in ("t5", "fastankh"):
        _, info = FastAnkhForMaskedLM.from_pretrained(checkpoints[kind], output_loading_info=True)
        assert set(info["missing_keys"]) == {"lm_head.weight"} and not info["unexpected_keys"], kind
    stray = shutil.copytree(checkpoints["t5"], tmp_path / "stray")
    state = load_file(stray / "model.safetensors")
    save_file({**state, "encoder.stray.weight": torch.zeros(2)}, stray / "model.safetensors")
    _, info = FastAnkhModel.from_pretrained(stray, output_loading_info=True)
    assert info["unexpected_keys"] == {"encoder.stray.weight"}  # decoder.* and lm_head.* are expected extras

    on_meta = FastAnkhModel.from_pretrained(checkpoints["t5"], device_map=torch.device("meta"))
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    on_cpu = FastAnkhModel.from_pretrained(checkpoints["t5"], device_map="cpu")
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    for device_map in ("auto", {"": 0}):
        with pytest.raises(NotImplementedError, match="device_map="):
            FastAnkhModel.from_pretrained(checkpoints["t5"], device_map=device_map)


@pytest.mark.parametrize("cls", [FastAnkhModel, FastAnkhForMaskedLM])
def test_forward_refuses_what_it_cannot_do(cls):
    model = cls(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1)).eval()
    ids, mask = random_batch([7, 4])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, output_attentions=False)
        model(input_ids=ids, attention_mask=mask, output_attentions=None)
        with pytest.raises(TypeError, match="head_mask"):
            model(input_ids=ids, attention_mask=mask, head_mask=torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_fast_paths_keep_lora_adapters(dtype):
    """Inference fuses q/k/v into one matmul, runs the gate as a fused kernel and writes wo chunk by chunk from
    the weights: none of that may skip an adapter wrapping those Linears (peft LoRA, as a validation step under
    no_grad sees it). Output under no_grad equals the plain modules' forward (grad enabled) with LoRA on all."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2)).to(dtype).eval()
    targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft reads transformers' deprecated is_gradient_checkpointing
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    ids, mask = random_batch([700, 650, 690, 600])  # > 2048 tokens: the FFN runs in chunks
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.enable_grad():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    with torch.no_grad(), model.disable_adapter():  # the adapters matter here: without them the output moves
        without = model(input_ids=ids, attention_mask=mask).last_hidden_state
    bound = FP32 if dtype == torch.float32 else 2e-2
    assert relative_error(fast, plain, mask) <= bound
    assert relative_error(without, plain, mask) > 10 * bound
