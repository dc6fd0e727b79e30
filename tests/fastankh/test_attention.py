"""The attention API: one setting (config.attn_backend) reached by FastANKH's and transformers' names, the eager
implementation's probabilities against transformers' T5 attentions, and the per-device default."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import T5EncoderModel

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from fastankh.attention import resolve_backend
from fastankh.modeling_tasks import FastAnkhForSequenceClassification, FastAnkhForTokenClassification
from fastankh.runtime import RUNTIME
from tests.conftest import random_batch

LENGTHS = [150, 37, 129, 5]  # padded, mixed lengths; 150 > max_distance reaches the clamped buckets
FP32 = 2e-6


def tiny(**kwargs) -> FastAnkhModel:
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, **kwargs)).eval()


def test_eager_attentions_equal_transformers_t5(t5_checkpoint):
    path = t5_checkpoint("ankh_large")
    ref = T5EncoderModel.from_pretrained(path, attn_implementation="eager").eval()
    ours = FastAnkhModel.from_pretrained(path, attn_implementation="eager").eval()
    ids, mask = random_batch(LENGTHS)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        o = ours(ids, mask, output_attentions=True)
    assert len(o.attentions) == len(r.attentions) == ours.config.num_layers
    real = mask.bool()[:, None, :, None]  # query rows of real tokens; padding rows are no token's
    for layer, (a, b) in enumerate(zip(o.attentions, r.attentions)):
        assert a.shape == b.shape
        error = ((a - b).abs() * real).max() / b.abs().max()
        assert error <= FP32, (layer, error.item())
        assert not (a * ~real).any()  # zero rows at padding queries
    scale = o.last_hidden_state[mask.bool()].abs().max()
    assert ((o.last_hidden_state - r.last_hidden_state)[mask.bool()].abs().max() / scale) <= FP32


def test_output_attentions_runs_eager_once_with_one_warning_naming_the_setting():
    model = tiny(attn_backend="sdpa")
    ids, mask = random_batch([12, 7])
    RUNTIME.warned.clear()
    with torch.no_grad():
        plain = model(ids, mask).last_hidden_state
        with pytest.warns(UserWarning, match="instead of the configured 'sdpa'"):
            out = model(ids, mask, output_attentions=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(ids, mask, output_attentions=True)  # the warning is shown once
    assert model.config.attn_backend == "sdpa"  # for that call only
    torch.testing.assert_close(out.last_hidden_state, plain, atol=1e-6, rtol=1e-5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 12, 12)
    sums = out.attentions[0].sum(-1)[mask.bool()[:, None, :].expand(-1, 4, -1)]
    torch.testing.assert_close(sums, torch.ones_like(sums))


@pytest.mark.parametrize(
    "transformers_name, backend", [("sdpa", "sdpa"), ("flex_attention", "flex"), ("eager", "eager")]
)
def test_both_names_act_on_one_setting(tmp_path, transformers_name, backend):
    model = tiny(attn_backend="kernels_flash")
    model.set_attn_implementation(transformers_name)
    assert model.config.attn_backend == backend
    assert model.config._attn_implementation == transformers_name
    model.config.attn_backend = "sdpa"
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    loaded = FastAnkhModel.from_pretrained(tmp_path, attn_implementation=transformers_name)
    assert (loaded.config.attn_backend, loaded.config._attn_implementation) == (backend, transformers_name)
    reloaded = FastAnkhModel.from_pretrained(tmp_path, attn_backend=backend)
    assert reloaded.config._attn_implementation == transformers_name


def test_set_attn_implementation_reaches_the_encoder_of_a_task_model():
    config = FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, num_labels=3)
    model = FastAnkhForTokenClassification.with_encoder(config, tiny(attn_backend="sdpa"))
    model.set_attn_implementation("eager")
    assert model.config.attn_backend == model.model.config.attn_backend == "eager"


def test_unknown_and_conflicting_names_are_refused(tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="flash_attention_2"):
        model.set_attn_implementation("flash_attention_2")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="disagrees"):
        FastAnkhModel.from_pretrained(tmp_path, attn_backend="flex", attn_implementation="sdpa")


def test_auto_is_flex_on_cuda_and_sdpa_elsewhere_without_a_warning():
    RUNTIME.warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cpu"), training=False) == "sdpa"
        assert resolve_backend("auto", torch.device("cpu"), training=True) == "sdpa"
        assert resolve_backend("auto", torch.device("cuda"), training=True) == "flex"


def test_cpu_inference_on_padded_batches_attends_per_sequence():
    """sdpa_varlen where it is exact and cheaper: CPU, no autograd, padding present, each row's tokens in one run."""
    cpu = torch.device("cpu")
    padded = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        assert resolve_backend("sdpa", cpu, training=False, key_mask=padded) == "sdpa_varlen"
        assert resolve_backend("auto", cpu, training=False, key_mask=padded) == "sdpa_varlen"
        assert resolve_backend("sdpa", cpu, training=False, key_mask=torch.ones(2, 3, dtype=torch.bool)) == "sdpa"
        holes = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)  # distances need the padded row
        assert resolve_backend("sdpa", cpu, training=False, key_mask=holes) == "sdpa"
        assert resolve_backend("sdpa", torch.device("cuda"), training=False, key_mask=padded) == "sdpa"
        assert resolve_backend("sdpa", cpu, training=True, key_mask=padded) == "sdpa"
    assert resolve_backend("sdpa", cpu, training=False, key_mask=padded) == "sdpa"  # autograd on: the padded kernel


def test_per_sequence_attention_equals_the_padded_batch_in_fp32():
    """Left and right padding, a one-token row, lengths past max_distance: the per-sequence path against the
    padded sdpa of the same model (autograd on), every hidden state."""
    model = tiny()
    ids, mask = random_batch([140, 1, 37, 90])
    mask[2] = mask[2].roll(50)  # a left-padded row: its tokens still one run
    ids[2] = ids[2].roll(50)
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    with torch.enable_grad():
        padded = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for a, b in zip(fast, padded):
        assert ((a - b.detach()).abs().max() / b.abs().max()).item() <= 2e-6


@pytest.mark.parametrize("cls", [FastAnkhModel, FastAnkhForMaskedLM, FastAnkhForSequenceClassification])
def test_return_dict_false_gives_the_tuple_of_the_set_fields(cls):
    model = cls(FastAnkhConfig.from_preset("ankh_tiny", num_layers=1, num_labels=2, attn_backend="eager")).eval()
    ids, mask = random_batch([9, 4])
    with torch.no_grad():
        as_dict = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        as_tuple = model(input_ids=ids, attention_mask=mask, output_attentions=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple()) == 2
    assert torch.equal(as_tuple[0], as_dict.to_tuple()[0])
    assert as_dict.attentions[0].shape == (2, 4, 9, 9)
