"""embed_dataset (fastankh/protein_embeddings.py): keys and order, residue-only pooling, batch invariance,
safetensors save/resume, errors."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

from fastankh import FastAnkhConfig, FastAnkhModel, embed_dataset, load_tokenizer, read_fasta

SEQS = ["MKTAYIAKQRQISFVKSHF", "MA", "GSUZBOXX", "MKTAYIAKQ", "LLLLLLLLLLLLLLLLLLLLLLLLLLLLLL"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2)).eval()


@pytest.fixture(scope="module")
def ankh3_model():
    torch.manual_seed(1)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, vocab_size=256)).eval()


class ForwardRecorder:
    """Records the (batch, width) of every forward; optionally fails at call `fail_at` (1-based)."""

    def __init__(self, model, fail_at: int | None = None):
        self.shapes: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.fail_at is not None and len(self.shapes) + 1 == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    @property
    def rows(self) -> int:
        return sum(b for b, _ in self.shapes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _hidden(model, seq: str) -> torch.Tensor:
    """last_hidden_state of one unpadded sequence, computed directly: (tokens, d_model)."""
    ids = load_tokenizer(model.config)(seq, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0]


def test_list_keys_are_sequences_in_input_order(model):
    inputs = SEQS + ["MA", "mk ta y"]  # a repeat, and whitespace/lowercase kept as its own key
    with ForwardRecorder(model) as rec:
        out = embed_dataset(model, inputs, batch_size=2, progress=False)
    assert list(out) == SEQS + ["mk ta y"]
    assert all(v.shape == (96,) and v.dtype == torch.float32 and v.device.type == "cpu" for v in out.values())
    # 6 distinct residue strings ("mk ta y" is "MKTAY"), each run once, longest batches first.
    assert rec.rows == 6
    widths = [w for _, w in rec.shapes]
    assert widths == sorted(widths, reverse=True)
    assert not out["MA"].is_inference()  # usable as training input for a downstream head


def test_fasta_keys_are_record_ids(model, tmp_path):
    fasta = tmp_path / "prots.fasta"
    fasta.write_text(">p1 first protein\nMKTAYIAK\nQRQISFVKSHF\n\n>p2\nMA\n;comment\n>p3 x\nGSUZ BOXX\n")
    assert read_fasta(fasta) == {"p1": SEQS[0], "p2": "MA", "p3": "GSUZBOXX"}
    out = embed_dataset(model, str(fasta), batch_size=2, progress=False)
    assert list(out) == ["p1", "p2", "p3"]
    by_seq = embed_dataset(model, SEQS[:3], batch_size=3, progress=False)
    for key, seq in zip(out, SEQS[:3]):
        torch.testing.assert_close(out[key], by_seq[seq], atol=1e-5, rtol=0)


def test_full_embeddings_one_vector_per_residue(model):
    out = embed_dataset(model, {"a": SEQS[0], "b": "GSUZBOXX", "c": "M*"}, full_embeddings=True, progress=False)
    assert out["a"].shape == (19, 96)
    assert out["b"].shape == (8, 96)  # rare letters (U Z B O X) are residues too
    assert out["c"].shape == (1, 96)  # a terminal stop codon is dropped
    assert out["c"].shape == (1, 96)


@pytest.mark.parametrize("which", ["model", "ankh3_model"])
def test_pooled_equals_hand_computation_over_residues(which, request):
    m = request.getfixturevalue(which)
    prefix = 1 if which == "ankh3_model" else 0  # ANKH3 vocabulary: [NLU] first
    seq = "MKTAYIAKQRQISFVKSHF"
    hidden = _hidden(m, seq)
    assert hidden.shape[0] == prefix + len(seq) + 1  # [NLU]? + residues + </s>
    residues = hidden[prefix : prefix + len(seq)]
    mean = embed_dataset(m, [seq], pooling="mean", progress=False)[seq]
    mx = embed_dataset(m, [seq], pooling="max", progress=False)[seq]
    full = embed_dataset(m, [seq], full_embeddings=True, progress=False)[seq]
    torch.testing.assert_close(mean, residues.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(mx, residues.max(0).values, atol=1e-6, rtol=0)
    torch.testing.assert_close(full, residues, atol=1e-6, rtol=0)
    # Including </s> (or [NLU]) would change the mean noticeably.
    assert not torch.allclose(mean, hidden.mean(0), atol=1e-4)


def test_alone_equals_inside_a_mixed_length_batch(model):
    alone = embed_dataset(model, ["MKTAYIAKQ"], full_embeddings=True, progress=False)["MKTAYIAKQ"]
    batch = embed_dataset(model, SEQS, full_embeddings=True, batch_size=len(SEQS), progress=False)
    torch.testing.assert_close(batch["MKTAYIAKQ"], alone, atol=1e-5, rtol=0)
    pooled_alone = embed_dataset(model, ["MA"], progress=False)["MA"]
    pooled_batch = embed_dataset(model, SEQS, batch_size=len(SEQS), progress=False)["MA"]
    torch.testing.assert_close(pooled_batch, pooled_alone, atol=1e-5, rtol=0)


def test_max_tokens_caps_padded_batch_size(model):
    with ForwardRecorder(model) as rec:
        embed_dataset(model, SEQS, batch_size=16, max_tokens=24, progress=False)
    assert rec.rows == len(SEQS)
    assert all(b * w <= 24 for b, w in rec.shapes if b > 1)
    assert max(b for b, _ in rec.shapes) > 1  # the short sequences still share a batch


def test_dtype_is_honoured(model):
    out = embed_dataset(model, ["MKT"], dtype=torch.bfloat16, progress=False)["MKT"]
    assert out.dtype == torch.bfloat16


def test_resume_computes_only_missing_ids(model, tmp_path):
    path = tmp_path / "emb.safetensors"
    first = embed_dataset(model, {"a": SEQS[0], "b": SEQS[1], "c": SEQS[2]}, save_path=path, progress=False)
    assert os.listdir(tmp_path) == ["emb.safetensors"]  # no temp file left behind
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["a", "b", "c"]
        assert f.metadata()["output"] == "pooled_mean"

    more = {"a": SEQS[0], "b": SEQS[1], "c": SEQS[2], "d": SEQS[3], "e": SEQS[4]}
    with ForwardRecorder(model) as rec:
        second = embed_dataset(model, more, save_path=path, batch_size=1, progress=False)
    assert rec.rows == 2  # only d and e ran
    assert list(second) == list(more)
    for key in "abc":
        assert torch.equal(second[key], first[key])
    with ForwardRecorder(model) as rec:
        third = embed_dataset(model, more, save_path=path, progress=False)
    assert rec.rows == 0
    assert torch.equal(third["e"], second["e"])
    assert os.listdir(tmp_path) == ["emb.safetensors"]


def test_crash_while_saving_keeps_the_previous_file(model, tmp_path, monkeypatch):
    """Atomic writes: a save that dies half-way leaves the last good file byte-identical."""
    import fastankh.protein_embeddings as embedding

    path = tmp_path / "emb.safetensors"
    embed_dataset(model, {"a": SEQS[0]}, save_path=path, progress=False)
    good = path.read_bytes()
    real_save = embedding.save_file

    def save_half_then_crash(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(embedding, "save_file", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        embed_dataset(model, {"a": SEQS[0], "b": SEQS[1]}, save_path=path, progress=False)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["emb.safetensors"]  # the half-written temp file is gone too
    monkeypatch.setattr(embedding, "save_file", real_save)
    with ForwardRecorder(model) as rec:
        embed_dataset(model, {"a": SEQS[0], "b": SEQS[1]}, save_path=path, progress=False)
    assert rec.rows == 1  # "a" still comes from the file


def test_interrupted_run_keeps_saved_batches(model, tmp_path):
    path = tmp_path / "emb.safetensors"
    data = {f"s{i}": seq for i, seq in enumerate(SEQS)}
    with ForwardRecorder(model, fail_at=3), pytest.raises(KeyboardInterrupt):
        embed_dataset(model, data, save_path=path, batch_size=1, save_every=1, progress=False)
    with safe_open(path, framework="pt") as f:
        assert len(list(f.keys())) == 2
    assert os.listdir(tmp_path) == ["emb.safetensors"]
    with ForwardRecorder(model) as rec:
        out = embed_dataset(model, data, save_path=path, batch_size=1, progress=False)
    assert rec.rows == 3
    assert list(out) == list(data)


def test_resume_with_other_options_is_refused(model, tmp_path):
    path = tmp_path / "emb.safetensors"
    embed_dataset(model, ["MKT"], save_path=path, progress=False)
    with pytest.raises(ValueError, match="output=pooled_mean.*output=pooled_max"):
        embed_dataset(model, ["MA"], save_path=path, pooling="max", progress=False)
    with pytest.raises(ValueError, match="per_residue"):
        embed_dataset(model, ["MA"], save_path=path, full_embeddings=True, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        embed_dataset(model, ["MA"], save_path=path, dtype=torch.float16, progress=False)
    foreign = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a FastANKH embeddings file"):
        embed_dataset(model, ["MA"], save_path=foreign, progress=False)


def test_model_training_flag_is_restored(model):
    model.train()
    try:
        embed_dataset(model, ["MKT"], progress=False)
        assert model.training
    finally:
        model.eval()


def test_truncate(model):
    with pytest.raises(ValueError, match=r"sequence #1: 19 residues > max_len=10"):
        embed_dataset(model, ["MA", SEQS[0]], max_len=10, progress=False)
    out = embed_dataset(model, [SEQS[0]], max_len=10, truncate=True, full_embeddings=True, progress=False)
    assert out[SEQS[0]].shape == (10, 96)


@pytest.mark.parametrize(
    "sequences, kwargs, error, match",
    [
        (["MKT", ""], {}, ValueError, r"sequence #1: empty sequence"),
        ({"a": "MKT", "b": "  "}, {}, ValueError, r"record 'b': empty sequence"),
        (["M<extra_id_0>K"], {}, ValueError, r"sequence #0: unknown residue letter\(s\) '0', '<'"),
        (["MKT"], {"pooling": "cls"}, ValueError, r"pooling must be one of"),
        ("MKTAYIAKQ", {}, ValueError, r"not an existing file"),
        ("missing.fasta", {}, FileNotFoundError, r"missing.fasta: file not found"),
        (["MKT", "MKJ"], {}, ValueError, r"sequence #1: unknown residue letter\(s\) 'J'"),
        ({"a": "MK1"}, {}, ValueError, r"record 'a': unknown residue letter\(s\) '1'"),
        ([b"MKT"], {}, TypeError, r"sequence #0: expected a string"),
    ],
)
def test_bad_input_is_one_clear_error(model, sequences, kwargs, error, match):
    with ForwardRecorder(model) as rec, pytest.raises(error, match=match):
        embed_dataset(model, sequences, progress=False, **kwargs)
    assert rec.rows == 0  # raised before any compute


@pytest.mark.parametrize(
    "text, match",
    [
        ("MKT\n>p1\nMA\n", r"line 1: sequence data before the first '>' header"),
        (">p1\nMA\n>\nMK\n", r"line 3: header '>' without a record id"),
        (">p1\nMA\n>p2\n\n", r"bad\.fa: row 2 \(id p2\): empty sequence"),
        (">p1\nMA\n>p1\nMK\n", r"bad\.fa: row 2 \(id p1\): id 'p1' appears twice with different sequences"),
        (">p1\nMA\n>p2\nMJ\n", r"bad\.fa: row 2 \(id p2\): unknown residue letter\(s\) 'J'"),
    ],
)
def test_bad_fasta_names_file_and_line(model, tmp_path, text, match):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        embed_dataset(model, fasta, progress=False)
    assert str(fasta) in str(err.value)


def test_matches_transformers_t5_encoder_on_the_same_weights(tmp_path):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(2)
    t5_config = T5Config(
        vocab_size=256,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-silu",
        dropout_rate=0.0,
    )
    reference = T5EncoderModel(t5_config).eval()
    reference.save_pretrained(tmp_path)
    ours = FastAnkhModel.from_pretrained(str(tmp_path))
    tokenizer = load_tokenizer("ankh3_large")  # [NLU] prefix: exercises the residue offset
    expected = embed_dataset(reference, SEQS, tokenizer=tokenizer, full_embeddings=True, batch_size=1, progress=False)
    got = embed_dataset(ours, SEQS, tokenizer=tokenizer, full_embeddings=True, batch_size=4, progress=False)
    for seq in SEQS:
        assert got[seq].shape == (len(seq), 64)
        torch.testing.assert_close(got[seq], expected[seq], atol=1e-5, rtol=1e-5)


def test_saved_file_has_the_umask_permissions(model, tmp_path):
    """The store is written through fastankh.atomic.atomic_path: a normal file, not mkstemp's owner-only 0600."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "emb.safetensors"
        embed_dataset(model, ["MKT"], save_path=path, progress=False)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_table_input_uses_the_shared_reader(model, tmp_path):
    """A CSV path works like a FASTA one: same reader as training and predict ("NA" is two residues)."""
    (tmp_path / "in.csv").write_text("id,sequence\na,mk v*\nb,NA\n")
    out = embed_dataset(model, tmp_path / "in.csv", full_embeddings=True, progress=False)
    assert list(out) == ["a", "b"] and out["a"].shape == (3, 96) and out["b"].shape == (2, 96)
    direct = embed_dataset(model, ["MKV"], full_embeddings=True, progress=False)["MKV"]
    torch.testing.assert_close(out["a"], direct, atol=1e-5, rtol=0)
