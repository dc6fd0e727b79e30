"""load_backbone: `model.config` fields apply on every load path, or stop the run with one line naming the
key; a checkpoint (model.path or hub weights) never drops them silently."""

from __future__ import annotations

import pytest
import torch

from fastankh import FastAnkhConfig, FastAnkhForMaskedLM, FastAnkhModel
from tasks.train.model import load_backbone
from tests.helpers import TINY


def model_cfg(path: str | None, **config) -> dict:
    """The Hydra `model` node of ankh_tiny with `model.path` and `model.config` set."""
    return {"preset": "ankh_tiny", "path": path, "attn_backend": "sdpa", "config": config}


@pytest.fixture(scope="module")
def fastankh_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fastankh_two_layers")
    FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, **TINY)).save_pretrained(path)
    return str(path)


@pytest.fixture(params=["fastankh", "t5"])
def checkpoint(request, fastankh_dir, t5_checkpoint) -> tuple[str, int]:
    """(directory, layers in it): a FastANKH save, and an original ElnaggarLab-layout T5 checkpoint."""
    return (fastankh_dir, 2) if request.param == "fastankh" else (t5_checkpoint("ankh_base"), 2)


def dropout_rates(model: torch.nn.Module) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def test_random_init_is_built_from_the_overrides():
    model = load_backbone(model_cfg(None, num_layers=3, dropout_rate=0.2, **TINY))
    assert len(model.encoder.layers) == 3 and model.config.d_model == TINY["d_model"]
    assert dropout_rates(model) == {0.2}


@pytest.mark.parametrize("masked_lm", [False, True])
def test_a_checkpoint_takes_runtime_fields_and_keeps_its_weights(checkpoint, masked_lm):
    path, layers = checkpoint
    plain = load_backbone(model_cfg(path), masked_lm=masked_lm)
    tuned = load_backbone(model_cfg(path, dropout_rate=0.3, num_layers=layers), masked_lm=masked_lm)
    assert type(tuned) is (FastAnkhForMaskedLM if masked_lm else FastAnkhModel)
    assert tuned.config.dropout_rate == 0.3 and dropout_rates(tuned) == {0.3}  # the modules, not only the config
    assert dropout_rates(plain) == {0.0}
    assert len(tuned.state_dict()) == len(plain.state_dict())
    for name, weight in plain.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], weight, atol=0, rtol=0)


@pytest.mark.parametrize("more", [True, False], ids=["more_layers", "fewer_layers"])
def test_a_shape_override_the_checkpoint_contradicts_is_one_line_naming_the_key(checkpoint, more):
    path, layers = checkpoint
    wanted = layers + 1 if more else layers - 1  # fewer: loading only the first blocks would pass silently
    for key in ("num_layers", "num_hidden_layers"):  # the field, and its transformers alias, as written
        with pytest.raises(ValueError) as err:
            load_backbone(model_cfg(path, **{key: wanted}))
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"model.config.{key}={wanted}: ") and path in message and str(layers) in message
