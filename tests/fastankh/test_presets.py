"""Preset hub ids load their pinned official revision (weights and tokenizer), overridable with `revision=`."""

from __future__ import annotations

import os
import re

import huggingface_hub
import pytest
from huggingface_hub.errors import EntryNotFoundError

from fastankh import PRESETS, FastAnkhModel, load_tokenizer


@pytest.mark.parametrize("preset", [name for name, p in PRESETS.items() if p["hub_id"]])
def test_every_hub_preset_pins_a_full_commit(preset):
    assert re.fullmatch(r"[0-9a-f]{40}", PRESETS[preset]["revision"])


@pytest.mark.parametrize("asked, expected", [({}, PRESETS["ankh_large"]["revision"]), ({"revision": "main"}, "main")])
def test_loaders_pass_the_pinned_revision_unless_told_otherwise(monkeypatch, t5_checkpoint, asked, expected):
    folder = t5_checkpoint("ankh_large")
    revisions = set()

    def fake_download(repo_id, filename, **kwargs):
        revisions.add(kwargs.get("revision"))
        path = os.path.join(folder, filename)
        if not os.path.exists(path):
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    FastAnkhModel.from_pretrained("ElnaggarLab/ankh-large", **asked)
    load_tokenizer("ElnaggarLab/ankh-large", **asked)
    assert revisions == {expected}
