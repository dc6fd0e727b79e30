"""ANKH tokenizers: one token per residue, `</s>` appended, right padding with `<pad>` = 0.

`load_tokenizer` returns a `transformers.PreTrainedTokenizerFast` built with the `tokenizers` library,
so everything (whitespace stripping, uppercasing, the `</s>` / `[NLU]` template) lives in
tokenizer.json and travels with `save_pretrained`; `AutoTokenizer.from_pretrained(dir)` reloads it.

Vocabularies
- v1/v2 (ankh_base, ankh_large, ankh2_large, ankh_tiny; 144 ids) — residue ids verified against the
  official tokenizer: 0 <pad> 1 </s> 2 <unk>, 3..27 = A L G V S R E D T I P K F Q N Y M H W C X B O U Z.
  28..143 hold 116 `<extra_id_N>` sentinels; their order is not verified, T5's is used
  (`<extra_id_0>` = the last id).
- ANKH3 (ankh3_large, ankh3_xl; 256 ids) — verified: 0 <pad> 1 </s> 2 <unk>,
  7..26 = L A G S V E R T I D P K N F Q Y H M C W. NOT verified, chosen here to fill 256 ids:
  3 [NLU], 4 [S2S], 5..6 placeholders `<reserved_5>`/`<reserved_6>`, 27..31 = X B O U Z,
  32..255 = 224 sentinels (`<extra_id_0>` = 255).
A checkpoint's own tokenizer.json (local dir or hub repo) always overrides these built-in tables:
its vocabulary is read with the `tokenizers` library (never transformers' T5Tokenizer, whose forced
Metaspace pre-tokenizer prepends `<unk>` to raw ANKH strings under transformers 5).

Input: raw residue strings; all whitespace is removed and lowercase is uppercased, unknown letters
(e.g. J) become `<unk>` (id 2), one token per character. Sentinels and [NLU]/[S2S] are matched whole.
When the vocabulary has `[NLU]`, inputs become `[NLU] residues </s>` (ANKH3 embedding usage), so
residue i of a sequence is token `prefix_length(tokenizer) + i`.
The empty string encodes to just the specials: `[</s>]` (v1) or `[[NLU], </s>]` (ANKH3).
"""

from __future__ import annotations

import json
import os
import re
import string
import warnings
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedConfig, PreTrainedTokenizerFast

from .configuration_fastankh import PRESETS, pinned_revision

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
NLU, S2S = "[NLU]", "[S2S]"
V1_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"  # ids 3..27
ANKH3_RESIDUES = "LAGSVERTIDPKNFQYHMCW"  # ids 7..26 (verified)
ANKH3_RARE_RESIDUES = "XBOUZ"  # ids 27..31 (unverified placement)
TOKENIZER_FILE = "tokenizer.json"


def _with_sentinels(head: list[str], vocab_size: int) -> dict[str, int]:
    """token -> id: `head` at ids 0.., then sentinels up to vocab_size, `<extra_id_0>` last (T5 order)."""
    n = vocab_size - len(head)
    return {tok: i for i, tok in enumerate(head + [f"<extra_id_{n - 1 - j}>" for j in range(n)])}


def v1_vocab() -> dict[str, int]:
    """ANKH v1/v2 table (144 ids)."""
    return _with_sentinels([PAD, EOS, UNK, *V1_RESIDUES], 144)


def ankh3_vocab() -> dict[str, int]:
    """ANKH3 table (256 ids); see the module docstring for which ids are verified."""
    head = [PAD, EOS, UNK, NLU, S2S, "<reserved_5>", "<reserved_6>", *ANKH3_RESIDUES, *ANKH3_RARE_RESIDUES]
    return _with_sentinels(head, 256)


def _is_markup(token: str) -> bool:
    return len(token) > 2 and (token[0], token[-1]) in (("<", ">"), ("[", "]"))


def build_tokenizer(vocab: dict[str, int], nlu_prefix: bool | None = None) -> PreTrainedTokenizerFast:
    """ANKH tokenizer over `vocab` (token -> id; must hold <pad>, </s>, <unk>).

    Single characters are residues (one token per character); markup entries (`<...>`, `[...]`:
    sentinels, [NLU], [S2S], <pad>, ...) are added special tokens matched whole. Other multi-character
    pieces a checkpoint may list keep their ids but are never produced. `nlu_prefix` (default: when
    the vocabulary has [NLU]) prepends [NLU] to every sequence.
    """
    missing = [t for t in (PAD, EOS, UNK) if t not in vocab]
    if missing:
        raise ValueError(f"ANKH vocabulary lacks {missing}")
    if nlu_prefix is None:
        nlu_prefix = NLU in vocab
    elif nlu_prefix and NLU not in vocab:
        raise ValueError(f"nlu_prefix=True but the vocabulary has no {NLU} token")

    # A BPE model without merges maps every character to its own id (unknown ones to <unk>, never
    # fused) and needs no pre-tokenizer, so it is faster than WordLevel over per-character splits.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    # Stripping and uppercasing live in tokenizer.json so they travel with a saved checkpoint.
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), "")] + [normalizers.Replace(c, c.upper()) for c in string.ascii_lowercase]
    )
    tok.decoder = decoders.Fuse()
    specials = sorted((t for t in vocab if _is_markup(t)), key=vocab.__getitem__)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    template = f"{NLU} $A {EOS}" if nlu_prefix else f"$A {EOS}"
    special_ids = [(t, vocab[t]) for t in ((NLU, EOS) if nlu_prefix else (EOS,))]
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} $B {EOS}", special_tokens=special_ids
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        model_max_length=1_000_000_000,  # ANKH has relative positions: no intrinsic length limit
    )


def vocab_from_tokenizer_json(path: str) -> dict[str, int]:
    """token -> id from a tokenizer.json: its model vocabulary plus its added tokens.

    Only these two tables are read (plain JSON, any model type: WordLevel/BPE/WordPiece map
    token -> id, Unigram lists [piece, score] by id); the file's pre-tokenizer and template are
    replaced by ours, and transformers' T5Tokenizer is never involved (see the module docstring).
    """
    try:
        with open(path) as f:
            data = json.load(f)
        raw = data["model"]["vocab"]
        vocab = {piece: i for i, (piece, _score) in enumerate(raw)} if isinstance(raw, list) else dict(raw)
        for added in data.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSON syntax or layout
        raise ValueError(f"{path}: not a readable {TOKENIZER_FILE} ({type(err).__name__}: {err})") from err
    if len(set(vocab.values())) != len(vocab):
        raise ValueError(f"{path}: two tokens share one id")
    return vocab


def _table_for(preset: str | None, vocab_size: int | None) -> dict[str, int]:
    if (preset or "").startswith("ankh3") or vocab_size == 256:
        return ankh3_vocab()
    return v1_vocab()


def _local_tokenizer_json(path: str | None) -> str | None:
    if path and os.path.isdir(path):
        file = os.path.join(path, TOKENIZER_FILE)
        return file if os.path.isfile(file) else None
    return None


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def _from_config(config: PreTrainedConfig, nlu_prefix: bool | None) -> PreTrainedTokenizerFast:
    source = getattr(config, "name_or_path", "") or ""
    file = _local_tokenizer_json(source)
    vocab = vocab_from_tokenizer_json(file) if file else None
    if vocab is None and _is_hub_id(source):
        try:
            vocab = _hub_vocab(source)
        except OSError as err:  # offline, no access, ...: the built-in table still has the verified ids
            # (a tokenizer.json that arrives but cannot be read is a ValueError, never hidden this way)
            warnings.warn(
                f"could not read {source}'s {TOKENIZER_FILE} ({type(err).__name__}); using the built-in ANKH table",
                stacklevel=2,
            )
    if vocab is None:
        vocab = _table_for(getattr(config, "preset", None), config.vocab_size)
    if max(vocab.values()) >= config.vocab_size:
        raise ValueError(
            f"tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {config.vocab_size}"
        )
    return build_tokenizer(vocab, nlu_prefix)


def _from_dir(path: str, nlu_prefix: bool | None) -> PreTrainedTokenizerFast:
    file = _local_tokenizer_json(path)
    if file:
        return build_tokenizer(vocab_from_tokenizer_json(file), nlu_prefix)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} and no config.json to pick a built-in ANKH vocabulary")
    with open(config_file) as f:
        config = json.load(f)
    return build_tokenizer(_table_for(config.get("preset"), config.get("vocab_size")), nlu_prefix)


def _hub_vocab(repo_id: str, **hub_kwargs: Any) -> dict[str, int]:
    """A hub repo's tokenizer.json vocabulary, or the table its config.json implies when it has none; a preset's
    hub id is read at its pinned revision unless `revision` is given."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    revision = pinned_revision(repo_id)
    if revision is not None:
        hub_kwargs.setdefault("revision", revision)

    try:
        return vocab_from_tokenizer_json(hf_hub_download(repo_id, TOKENIZER_FILE, **hub_kwargs))
    except EntryNotFoundError:
        preset = next((name for name, p in PRESETS.items() if p["hub_id"] == repo_id), None)
        with open(hf_hub_download(repo_id, "config.json", **hub_kwargs)) as f:
            return _table_for(preset, json.load(f).get("vocab_size"))


def load_tokenizer(
    name_or_path: str | os.PathLike | PreTrainedConfig, nlu_prefix: bool | None = None, **hub_kwargs: Any
) -> PreTrainedTokenizerFast:
    """The ANKH tokenizer for a preset name, a checkpoint directory, a hub id or a model config.

    - preset (`ankh_base`, ..., `ankh3_xl`, `ankh_tiny`): the built-in table, no network;
    - directory: its tokenizer.json's vocabulary if present, else the table its config.json implies;
    - hub id: the repo's tokenizer.json (needs internet; `hub_kwargs` go to `hf_hub_download`; a preset's hub id
      is read at its pinned revision unless `revision=` is given);
    - config (FastAnkhConfig, or the T5Config of an original checkpoint): the tokenizer.json of
      `config.name_or_path` (directory or hub id; an unreachable hub warns and falls back), else the
      table of `config.preset` / `config.vocab_size` (256 -> ANKH3).
    A tokenizer.json that is there but unreadable is a ValueError naming the file.
    `nlu_prefix`: prepend [NLU] (default: whenever the vocabulary has it, i.e. ANKH3).
    """
    if isinstance(name_or_path, PreTrainedConfig):
        return _from_config(name_or_path, nlu_prefix)
    name = os.fspath(name_or_path)
    if name in PRESETS:
        return build_tokenizer(_table_for(name, PRESETS[name]["vocab_size"]), nlu_prefix)
    if os.path.isdir(name):
        return _from_dir(name, nlu_prefix)
    if not _is_hub_id(name):
        raise ValueError(f"{name!r} is not a preset ({sorted(PRESETS)}), a checkpoint directory or a hub id")
    return build_tokenizer(_hub_vocab(name, **hub_kwargs), nlu_prefix)


def prefix_length(tokenizer: PreTrainedTokenizerFast) -> int:
    """Tokens before the first residue (1 when [NLU] is prepended, else 0): residue i is token prefix + i."""
    ids = tokenizer("")["input_ids"]  # only the template's specials: [prefix..., </s>]
    return ids.index(tokenizer.eos_token_id)


__all__ = ["load_tokenizer", "prefix_length", "build_tokenizer", "vocab_from_tokenizer_json", "v1_vocab", "ankh3_vocab"]
