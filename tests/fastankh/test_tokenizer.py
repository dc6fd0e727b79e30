"""ANKH tokenizer: exact ids (ankh-facts.md §3), padding, input cleaning, tokenizer.json reading."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from fastankh import FastAnkhConfig
from fastankh.tokenization import load_tokenizer, prefix_length

# Every oracle below is typed in from ankh-facts.md (ids of the official tokenizers), never read from
# fastankh.tokenization's own tables.
# Reference ids of the official ankh-base tokenizer (ankh-facts.md §3.2).
V1_REFERENCE = {
    "MKTAYIAKQRQISFVKSHF": [19, 14, 11, 3, 18, 12, 3, 14, 16, 8, 16, 12, 7, 15, 6, 14, 7, 20, 15, 1],
    "GSUZBOX": [5, 7, 26, 27, 24, 25, 23, 1],
    "MA": [19, 3, 1],
}
# The whole verified v1 table (ankh-facts.md §3.2); 28..143 (sentinels) are not verified.
V1_IDS = {
    "<pad>": 0,
    "</s>": 1,
    "<unk>": 2,
    "A": 3,
    "L": 4,
    "G": 5,
    "V": 6,
    "S": 7,
    "R": 8,
    "E": 9,
    "D": 10,
    "T": 11,
    "I": 12,
    "P": 13,
    "K": 14,
    "F": 15,
    "Q": 16,
    "N": 17,
    "Y": 18,
    "M": 19,
    "H": 20,
    "W": 21,
    "C": 22,
    "X": 23,
    "B": 24,
    "O": 25,
    "U": 26,
    "Z": 27,
}
# ANKH3 (ankh-facts.md §3.3): verified for <pad> </s> <unk> and the 20 standard residues only. The ids of
# [NLU] (3 here), X/B/O/U/Z and the sentinels are this implementation's choice, NOT verified.
ANKH3_IDS = {
    "<pad>": 0,
    "</s>": 1,
    "<unk>": 2,
    "L": 7,
    "A": 8,
    "G": 9,
    "S": 10,
    "V": 11,
    "E": 12,
    "R": 13,
    "T": 14,
    "I": 15,
    "D": 16,
    "P": 17,
    "K": 18,
    "N": 19,
    "F": 20,
    "Q": 21,
    "Y": 22,
    "H": 23,
    "M": 24,
    "C": 25,
    "W": 26,
}
NLU_ID = 3  # unverified (see above)


@pytest.fixture(scope="module")
def v1():
    return load_tokenizer("ankh_base")


@pytest.fixture(scope="module")
def ankh3():
    return load_tokenizer("ankh3_large")


@pytest.mark.parametrize("preset", ["ankh_base", "ankh_large", "ankh2_large", "ankh_tiny"])
def test_v1_reference_ids(preset):
    tok = load_tokenizer(preset)
    assert len(tok) == 144
    for seq, ids in V1_REFERENCE.items():
        assert tok(seq)["input_ids"] == ids
    for token, i in V1_IDS.items():
        assert tok.convert_tokens_to_ids(token) == i, token
        if len(token) == 1:  # each residue alone: its id, then </s>
            assert tok(token)["input_ids"] == [i, 1], token


@pytest.mark.parametrize("preset", ["ankh3_large", "ankh3_xl"])
def test_ankh3_residue_ids_and_nlu_prefix(preset):
    tok = load_tokenizer(preset)
    assert len(tok) == 256
    for token, i in ANKH3_IDS.items():
        assert tok.convert_tokens_to_ids(token) == i, token
    seq = "LAGSVERTIDPKNFQYHMCW"
    assert tok(seq)["input_ids"] == [NLU_ID] + list(range(7, 27)) + [1]
    assert prefix_length(tok) == 1


def test_ankh3_without_prefix_on_request():
    tok = load_tokenizer("ankh3_xl", nlu_prefix=False)
    assert tok("MA")["input_ids"] == [24, 8, 1]  # M A </s>, all verified
    assert prefix_length(tok) == 0
    with pytest.raises(ValueError, match=r"\[NLU\]"):
        load_tokenizer("ankh_base", nlu_prefix=True)


def test_v1_has_no_prefix(v1):
    assert prefix_length(v1) == 0


def test_batch_pads_right_with_zero(v1):
    batch = v1(["MKTAY", "MA", "GSUZBOX"], padding=True, return_tensors="pt")
    lengths = torch.tensor([6, 3, 8])
    assert batch["input_ids"].shape == (3, 8)
    positions = torch.arange(8)
    expected_mask = (positions[None, :] < lengths[:, None]).long()
    assert torch.equal(batch["attention_mask"], expected_mask)
    assert torch.all(batch["input_ids"][expected_mask == 0] == 0)
    assert batch["input_ids"][1].tolist() == V1_REFERENCE["MA"] + [0] * 5


def test_whitespace_and_lowercase_are_normalised(v1, ankh3):
    for tok in (v1, ankh3):
        ref = tok("MKTAYIAKQRQISFVKSHF")["input_ids"]
        assert tok("mktayiakqrqisfvkshf")["input_ids"] == ref
        assert tok(" M K\tTAY\nIAKQ RQISFVKSHF ")["input_ids"] == ref
        assert tok("mKt AyIAKQRQISFVKSHF")["input_ids"] == ref


def test_unknown_letters_are_unk(v1, ankh3):
    assert v1("MJA")["input_ids"] == [19, 2, 3, 1]
    assert v1("j*")["input_ids"] == [2, 2, 1]
    assert ankh3("MJA")["input_ids"] == [NLU_ID, 24, 2, 8, 1]


def test_sentinels_and_prefixes_are_single_tokens(v1, ankh3):
    # Sentinel, [NLU] and [S2S] ids are not verified: only "one token, never <unk>" is checked.
    sentinel = v1.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel not in (v1.unk_token_id, None)
    assert v1("M<extra_id_0>A")["input_ids"] == [19, sentinel, 3, 1]
    s2s = ankh3.convert_tokens_to_ids("[S2S]")
    assert s2s not in (ankh3.unk_token_id, None)
    assert ankh3("[S2S]MA")["input_ids"] == [NLU_ID, s2s, 24, 8, 1]


def test_empty_string_gives_only_the_specials(v1, ankh3):
    # Documented behaviour: "" is not an error for the tokenizer (embed_dataset rejects it).
    assert v1("")["input_ids"] == [1]
    assert ankh3("")["input_ids"] == [NLU_ID, 1]


def test_decode_joins_residues(v1):
    ids = v1("MKTAY")["input_ids"]
    assert v1.decode(ids, skip_special_tokens=True) == "MKTAY"


def _write_checkpoint_tokenizer(path):
    """A tokenizer.json in the shape transformers writes for T5 (Unigram + Metaspace), with its own ids."""
    pieces = ["<pad>", "</s>", "<unk>", "M", "K", "A", "[NLU]", "<extra_id_0>"]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(pieces)
            if t.startswith(("<", "["))
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": [[t, -1.0] for t in pieces], "byte_fallback": False},
    }
    path.mkdir(exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(data))
    return path


def test_reads_vocabulary_from_checkpoint_tokenizer_json(tmp_path):
    ckpt = _write_checkpoint_tokenizer(tmp_path / "ckpt")
    tok = load_tokenizer(str(ckpt))
    # The file's ids (M=3, K=4, A=5, [NLU]=6), not the built-in ones, and no Metaspace <unk> prefix.
    assert tok("mk a")["input_ids"] == [6, 3, 4, 5, 1]
    assert tok("MQ")["input_ids"] == [6, 3, 2, 1]
    assert tok("M<extra_id_0>")["input_ids"] == [6, 3, 7, 1]
    assert prefix_length(tok) == 1


def test_config_picks_table_or_checkpoint_file(tmp_path):
    assert load_tokenizer(FastAnkhConfig(vocab_size=256))("MA")["input_ids"] == [NLU_ID, 24, 8, 1]
    assert load_tokenizer(FastAnkhConfig.from_preset("ankh_tiny"))("MA")["input_ids"] == [19, 3, 1]
    config = FastAnkhConfig.from_preset("ankh_tiny")
    config.name_or_path = str(_write_checkpoint_tokenizer(tmp_path / "ckpt"))
    assert load_tokenizer(config)("MA")["input_ids"] == [6, 3, 5, 1]
    with pytest.raises(ValueError, match="vocab_size"):
        load_tokenizer(FastAnkhConfig(vocab_size=100))


def test_directory_without_tokenizer_uses_its_config(tmp_path):
    FastAnkhConfig(vocab_size=256).save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))("MA")["input_ids"] == [NLU_ID, 24, 8, 1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(empty))


@pytest.mark.parametrize("preset", ["ankh_base", "ankh3_large"])
def test_save_and_autotokenizer_round_trip(tmp_path, preset):
    tok = load_tokenizer(preset)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    batch = ["MKTAYIAKQRQISFVKSHF", "m a", "GSUZBOXJ", "M<extra_id_3>A"]
    a = tok(batch, padding=True, return_tensors="pt")
    b = loaded(batch, padding=True, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])
    assert prefix_length(loaded) == prefix_length(tok)
    # load_tokenizer on the saved directory reads the same vocabulary back.
    reloaded = load_tokenizer(str(tmp_path))(batch, padding=True, return_tensors="pt")
    assert torch.equal(reloaded["input_ids"], a["input_ids"])


def test_hub_id_reads_the_repo_tokenizer_json(tmp_path, monkeypatch):
    import huggingface_hub

    ckpt = _write_checkpoint_tokenizer(tmp_path / "ckpt")
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(ckpt / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert load_tokenizer("SomeLab/some-ankh")("MA")["input_ids"] == [6, 3, 5, 1]
    config = FastAnkhConfig.from_preset("ankh_tiny")
    config.name_or_path = "SomeLab/some-ankh"
    assert load_tokenizer(config)("MA")["input_ids"] == [6, 3, 5, 1]
    assert asked == [("SomeLab/some-ankh", "tokenizer.json")] * 2


def test_unreachable_hub_falls_back_to_table_for_a_config(monkeypatch):
    import huggingface_hub

    def offline(repo_id, filename, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    config = FastAnkhConfig(vocab_size=256)
    config.name_or_path = "ElnaggarLab/ankh3-large"
    with pytest.warns(UserWarning, match="built-in ANKH table"):
        tok = load_tokenizer(config)
    assert tok("MA")["input_ids"] == [NLU_ID, 24, 8, 1]
    with pytest.raises(OSError):  # an explicit hub id does not fall back silently
        load_tokenizer("ElnaggarLab/ankh3-large")


@pytest.mark.parametrize("content", ["{not json", '{"model": {}}', '{"model": {"vocab": 7}}'])
def test_unreadable_checkpoint_tokenizer_json_is_an_error(tmp_path, monkeypatch, content):
    """Never the built-in table behind the user's back: the file is named, for a directory or a hub repo."""
    import huggingface_hub

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "tokenizer.json").write_text(content)
    match = re.escape(f"{ckpt / 'tokenizer.json'}: not a readable tokenizer.json")
    with pytest.raises(ValueError, match=match):
        load_tokenizer(str(ckpt))
    config = FastAnkhConfig.from_preset("ankh_tiny")
    config.name_or_path = str(ckpt)
    with pytest.raises(ValueError, match=match):
        load_tokenizer(config)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(ckpt / filename))
    config.name_or_path = "SomeLab/some-ankh"
    with pytest.raises(ValueError, match=match):
        load_tokenizer(config)


def test_original_t5_config_is_accepted():
    from transformers import T5Config

    assert load_tokenizer(T5Config(vocab_size=144))("MA")["input_ids"] == [19, 3, 1]
    with pytest.raises(ValueError, match="not a preset"):
        load_tokenizer("no_such_preset")
