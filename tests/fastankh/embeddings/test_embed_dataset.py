"""embed_dataset (fastankh/embeddings): keys and order, residue-only pooling, layers and poolings, batch
invariance, windows, the duplicate policy, errors. Stores and resume: test_stores.py."""

from __future__ import annotations

import pytest
import torch

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


def _hidden(model, seq: str) -> torch.Tensor:
    """last_hidden_state of one unpadded sequence, computed directly: (tokens, d_model)."""
    ids = load_tokenizer(model.config)(seq, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0]


def test_list_keys_are_sequences_in_input_order(model, forwards):
    inputs = SEQS + ["MA", "mk ta y"]  # a repeat, and whitespace/lowercase kept as its own key
    with forwards(model) as rec:
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


def test_max_tokens_caps_padded_batch_size(model, forwards):
    with forwards(model) as rec:
        embed_dataset(model, SEQS, batch_size=16, max_tokens=24, progress=False)
    assert rec.rows == len(SEQS)
    assert all(b * w <= 24 for b, w in rec.shapes if b > 1)
    assert max(b for b, _ in rec.shapes) > 1  # the short sequences still share a batch


def test_dtype_is_honoured(model):
    out = embed_dataset(model, ["MKT"], dtype=torch.bfloat16, progress=False)["MKT"]
    assert out.dtype == torch.bfloat16


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
        (["MKT"], {"pooling": "mean+cls"}, ValueError, r"pooling must be one of"),
        (["MKT"], {"layers": [5]}, ValueError, r"layers \[5\] out of range: the encoder has hidden states 0..2"),
        (["MKT"], {"dtype": "int8"}, ValueError, r"dtype must be one of"),
        ("MKTAYIAKQ", {}, ValueError, r"not an existing file"),
        ("missing.fasta", {}, FileNotFoundError, r"missing.fasta: file not found"),
        (["MKT", "MKJ"], {}, ValueError, r"sequence #1: unknown residue letter\(s\) 'J'"),
        ({"a": "MK1"}, {}, ValueError, r"record 'a': unknown residue letter\(s\) '1'"),
        ([b"MKT"], {}, TypeError, r"sequence #0: expected a string"),
    ],
)
def test_bad_input_is_one_clear_error(model, sequences, kwargs, error, match, forwards):
    with forwards(model) as rec, pytest.raises(error, match=match):
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


def test_table_input_uses_the_shared_reader(model, tmp_path):
    """A CSV path works like a FASTA one: same reader as training and predict ("NA" is two residues)."""
    (tmp_path / "in.csv").write_text("id,sequence\na,mk v*\nb,NA\n")
    out = embed_dataset(model, tmp_path / "in.csv", full_embeddings=True, progress=False)
    assert list(out) == ["a", "b"] and out["a"].shape == (3, 96) and out["b"].shape == (2, 96)
    direct = embed_dataset(model, ["MKV"], full_embeddings=True, progress=False)["MKV"]
    torch.testing.assert_close(out["a"], direct, atol=1e-5, rtol=0)


def test_layers_and_poolings_concatenate_in_the_documented_order(model):
    seq = "MKTAYIAKQRQISFVKSHF"
    ids = load_tokenizer(model.config)(seq, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states  # embeddings, block 1, final
    residues = [h[0, : len(seq)] for h in states]
    out = embed_dataset(model, [seq], layers=[1, -1], pooling="mean+max+min+std", progress=False)[seq]
    both = torch.cat([residues[1], residues[2]], -1)  # layer 1 then the last, each d_model wide
    expected = torch.cat([both.mean(0), both.amax(0), both.amin(0), both.std(0, correction=0)])
    assert out.shape == (4 * 2 * 96,)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    full = embed_dataset(model, [seq], layers=0, full_embeddings=True, progress=False)[seq]
    torch.testing.assert_close(full, residues[0], atol=1e-6, rtol=0)  # layer 0: the embedding output
    last = embed_dataset(model, [seq], layers=2, progress=False)[seq]  # 2 == -1 on a 2-layer model
    torch.testing.assert_close(last, embed_dataset(model, [seq], progress=False)[seq], atol=0, rtol=0)


def test_windows_bound_the_sort_and_keep_input_order(model, forwards):
    """Length sorting happens inside each window of `window` records; results come back in input order."""
    seqs = ["MA", "M" * 30, "MKT", "M" * 20, "MK", "M" * 25]
    with forwards(model) as rec:
        out = embed_dataset(model, seqs, batch_size=1, window=2, progress=False)
    assert list(out) == seqs
    # Window by window: (MA, M*30) -> 31 then 3 tokens; (MKT, M*20) -> 21, 4; (MK, M*25) -> 26, 3 tokens.
    assert [w for _, w in rec.shapes] == [31, 3, 21, 4, 26, 3]
    whole = embed_dataset(model, seqs, batch_size=1, progress=False)
    assert all(torch.allclose(out[s], whole[s], atol=1e-6) for s in seqs)


def test_duplicate_policy_same_id_same_sequence_is_one_record(model, tmp_path, forwards):
    fasta = tmp_path / "dup.fa"
    fasta.write_text(">a\nMKT\n>b\nMA\n>a\nmkt\n>c\nMKT\n")
    with forwards(model) as rec:
        out = embed_dataset(model, fasta, progress=False)
    assert list(out) == ["a", "b", "c"]
    assert rec.rows == 2  # MKT once for a and c (same window), MA once
    assert torch.equal(out["a"], out["c"]) and out["a"].data_ptr() != out["c"].data_ptr()


def test_iterables_of_pairs_are_streamed(model):
    def pairs():
        yield ("x", "MKT")
        yield ("y", "MA")

    out = embed_dataset(model, pairs(), progress=False)
    assert list(out) == ["x", "y"]
    direct = embed_dataset(model, {"x": "MKT", "y": "MA"}, progress=False)["x"]
    assert torch.equal(out["x"], direct)

    def bad():
        yield ("x", "MKT")
        yield ("y", "MJ")

    with pytest.raises(ValueError, match=r"record 'y': unknown residue letter\(s\) 'J'"):
        embed_dataset(model, bad(), progress=False)


def test_a_bad_record_late_in_a_file_stops_before_any_compute(model, tmp_path, forwards):
    fasta = tmp_path / "late.fa"
    fasta.write_text("".join(f">p{i}\nMKTAY\n" for i in range(50)) + ">bad\nMKJ\n")
    with forwards(model) as rec, pytest.raises(ValueError, match=r"late\.fa: row 51 \(id bad\)"):
        embed_dataset(model, fasta, window=4, progress=False)
    assert rec.rows == 0


def test_method_is_a_real_method_of_the_class(model):
    from fastankh.embedding_method import EmbeddingMixin

    assert isinstance(model, EmbeddingMixin)
    assert "embed_dataset" in EmbeddingMixin.__dict__
    out = model.embed_dataset(sequences=["MKT", "MA"], batch_size=8, max_len=512, full_embeddings=True, progress=False)
    assert out["MKT"].shape == (3, 96)


def test_the_compute_copy_is_reused_until_a_weight_changes(model):
    from fastankh.embeddings.compute import weights_in

    first = weights_in(model, torch.bfloat16)
    assert first and all(t.dtype == torch.bfloat16 for t in first.values() if t.is_floating_point())
    assert weights_in(model, torch.bfloat16) is first  # no second conversion
    before = embed_dataset(model, ["MKTAYIAK"], precision="bf16", progress=False)["MKTAYIAK"]
    weight = model.encoder.final_norm.weight
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change must not be served from the stale copy
    try:
        assert weights_in(model, torch.bfloat16) is not first
        after = embed_dataset(model, ["MKTAYIAK"], precision="bf16", progress=False)["MKTAYIAK"]
        assert not torch.allclose(before, after)
    finally:
        with torch.no_grad():
            weight.div_(2.0)
