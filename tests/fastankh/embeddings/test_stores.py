"""Outputs of embed_dataset (fastankh/embeddings/stores.py, formats.py, hdf5.py, reader.py): each format round
trips through open_embeddings and its ecosystem reader, shards are written once and atomically, resume skips
what is written, and a rerun with other settings is refused naming the field."""

from __future__ import annotations

import json
import os

import h5py
import pytest
import torch
from safetensors import safe_open

from fastankh import FastAnkhConfig, FastAnkhModel, embed_dataset, load_tokenizer, open_embeddings
from fastankh.embeddings import formats

SEQS = ["MKTAYIAKQRQISFVKSHF", "MA", "GSUZBOXX", "MKTAYIAKQ", "LLLLLLLLLLLLLLLLLLLLLLLLLLLLLL"]

DATA = {"a": SEQS[0], "b/c": SEQS[1], "tab\there": SEQS[2], "d": SEQS[3], "e": SEQS[4]}


def make_model(seed: int = 0, **overrides) -> FastAnkhModel:
    torch.manual_seed(seed)
    return FastAnkhModel(FastAnkhConfig.from_preset("ankh_tiny", num_layers=2, **overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def shard_files(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith("part-"))


@pytest.mark.parametrize("name", ["emb.safetensors", "emb.parquet", "emb.h5"])
@pytest.mark.parametrize("full", [False, True])
def test_every_format_round_trips_exactly(model, tmp_path, name, full):
    path = tmp_path / name
    memory = embed_dataset(model, DATA, full_embeddings=full, precision="32", progress=False)
    lazy = embed_dataset(model, DATA, save_path=path, full_embeddings=full, precision="32", progress=False)
    again = open_embeddings(path)
    assert list(lazy) == list(again) == again.ids == list(DATA) and len(again) == 5
    assert "b/c" in again and "zz" not in again
    assert again.metadata["output"] == ("per_residue" if full else "pooled_mean")
    for key in DATA:
        assert torch.equal(again[key], memory[key])  # fp32, exact
    # The ecosystem readers see the same numbers.
    if name.endswith(".h5"):
        with h5py.File(path) as f:
            assert sorted(f.attrs["fastankh"] and f.keys()) == sorted(["a", "b\\sc", "tab\\there", "d", "e"])
            assert torch.equal(torch.from_numpy(f["a"][()]), memory["a"])
            assert f["b\\sc"].attrs["id"] == "b/c"
    elif name.endswith(".parquet"):
        import datasets

        table = datasets.load_dataset("parquet", data_files=str(path / "*.parquet"), split="train")
        assert table["id"] == list(DATA)
        row = torch.tensor(table[0]["embedding"])
        assert torch.equal(row, memory["a"])
    else:
        [shard] = shard_files(path)
        with safe_open(str(path / shard), framework="pt") as f:
            assert sorted(f.keys()) == sorted(DATA)
            assert torch.equal(f.get_tensor("tab\there"), memory["tab\there"])


def test_resume_computes_only_missing_ids_and_never_rewrites_a_shard(model, tmp_path, forwards):
    path = tmp_path / "emb.safetensors"
    first = embed_dataset(model, {k: DATA[k] for k in ["a", "b/c", "tab\there"]}, save_path=path, progress=False)
    assert os.listdir(tmp_path) == ["emb.safetensors"]  # a folder; no temp file beside it
    assert sorted(os.listdir(path)) == sorted(["index.tsv", "run.json", *shard_files(path)])
    [old] = shard_files(path)
    before = (path / old).stat()
    with forwards(model) as rec:
        second = embed_dataset(model, DATA, save_path=path, batch_size=1, progress=False)
    assert rec.rows == 2  # only d and e ran
    assert list(second) == list(DATA)
    for key in ["a", "b/c", "tab\there"]:
        assert torch.equal(second[key], first[key])
    assert (path / old).stat().st_mtime_ns == before.st_mtime_ns and len(shard_files(path)) == 2
    with forwards(model) as rec:
        third = embed_dataset(model, DATA, save_path=path, progress=False)
    assert rec.rows == 0 and len(shard_files(path)) == 2
    assert torch.equal(third["e"], second["e"])


def test_interrupted_run_keeps_its_finished_shards(model, tmp_path, forwards):
    path = tmp_path / "emb.safetensors"
    data = {f"s{i}": seq for i, seq in enumerate(SEQS)}
    with forwards(model, fail_at=3), pytest.raises(KeyboardInterrupt):
        embed_dataset(model, data, save_path=path, batch_size=1, window=1, shard_size=1, progress=False)
    assert len(shard_files(path)) == 2 and not (path / "index.tsv").exists()
    assert list(open_embeddings(path)) == ["s0", "s1"]  # an interrupted output is readable too
    with forwards(model) as rec:
        out = embed_dataset(model, data, save_path=path, batch_size=1, progress=False)
    assert rec.rows == 3
    assert list(out) == list(data)


def test_crash_while_writing_a_shard_leaves_no_half_shard(model, tmp_path, monkeypatch, forwards):
    path = tmp_path / "emb.safetensors"
    real_write = formats.SafetensorsShards.write

    def write_half_then_crash(target, ids, tensors, meta):
        real_write(target, ids, tensors, meta)
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(formats.SafetensorsShards, "write", staticmethod(write_half_then_crash))
    with pytest.raises(OSError, match="disk full"):
        embed_dataset(model, {"a": SEQS[0]}, save_path=path, progress=False)
    assert sorted(os.listdir(path)) == ["run.json"]  # the half-written temp file is gone
    monkeypatch.setattr(formats.SafetensorsShards, "write", staticmethod(real_write))
    with forwards(model) as rec:
        out = embed_dataset(model, {"a": SEQS[0]}, save_path=path, progress=False)
    assert rec.rows == 1 and list(out) == ["a"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model": "other"}, "model"),
        ({"tokenizer": "v1"}, "tokenizer"),
        ({"precision": "bf16"}, "precision"),
        ({"layers": -2}, "layers"),
        ({"pooling": "max"}, "output"),
        ({"full_embeddings": True}, "output"),
        ({"dtype": torch.float16}, "dtype"),
        ({"max_len": 100}, "max_length"),
        ({"truncate": True}, "truncate"),
    ],
)
@pytest.mark.parametrize("name", ["emb.safetensors", "emb.h5"])
def test_resume_with_other_settings_is_refused_naming_the_field(tmp_path, change, field, name, forwards):
    model = make_model(vocab_size=256)
    path = tmp_path / name
    embed_dataset(model, {"a": "MKT"}, save_path=path, precision="32", progress=False)
    kwargs = {"precision": "32", **change}
    other = model
    if kwargs.pop("model", None):
        other = make_model(seed=1, vocab_size=256)
    if kwargs.pop("tokenizer", None):
        kwargs["tokenizer"] = load_tokenizer("ankh_base")  # v1 ids; the model has the ANKH3 vocabulary
    with forwards(other) as rec, pytest.raises(ValueError) as err:
        embed_dataset(other, {"a": "MKT", "b": "MA"}, save_path=path, progress=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message and f"written with {field}=" in message and f"this run has {field}=" in message
    assert rec.rows == 0


def test_a_changed_sequence_or_a_foreign_output_is_refused(model, tmp_path):
    path = tmp_path / "emb.safetensors"
    embed_dataset(model, {"a": "MKT"}, save_path=path, progress=False)
    with pytest.raises(ValueError, match=r"record 'a': .*emb\.safetensors holds id 'a' with another sequence"):
        embed_dataset(model, {"a": "MKV"}, save_path=path, progress=False)
    foreign = tmp_path / "other.safetensors"
    foreign.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a FastANKH embeddings output"):
        embed_dataset(model, ["MA"], save_path=foreign, progress=False)
    run = json.loads((path / "run.json").read_text())
    assert set(run["fingerprint"]["versions"]) == {"fastankh", "torch", "transformers"}


def test_shards_have_the_umask_permissions(model, tmp_path):
    """Shards are written through fastankh.atomic.atomic_path: normal files, not mkstemp's owner-only 0600."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "emb.safetensors"
        embed_dataset(model, ["MKT"], save_path=path, progress=False)
    finally:
        os.umask(old)
    assert all(os.stat(path / p).st_mode & 0o777 == 0o644 for p in os.listdir(path))


def test_a_shard_buffers_one_block_per_window_and_frees_the_heap_per_window(model, tmp_path, monkeypatch):
    """Memory at scale: a shard's buffered outputs are one allocation per window (not one per record, which
    pinned the allocator's pages), and freed heap pages go back to the OS after every window."""
    from fastankh.embeddings import engine, stores

    buffers, trims = [], []
    real_flush = stores.ShardFolder.flush

    def flush(self):
        buffers.append([t for _, t in self.buffer])
        real_flush(self)

    monkeypatch.setattr(stores.ShardFolder, "flush", flush)
    monkeypatch.setattr(engine, "release_free_memory", lambda: trims.append(1))
    data = {f"r{i}": SEQS[i % len(SEQS)] * (1 + i % 3) for i in range(10)}
    out = embed_dataset(model, data, save_path=tmp_path / "e", window=4, precision="32", progress=False)
    [tensors] = [b for b in buffers if b]  # one shard: everything fits shard_size
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 3  # windows of 4, 4 and 2 records
    assert len(trims) == 3
    memory = embed_dataset(model, data, window=4, precision="32", progress=False)  # same batches
    assert all(torch.equal(out[k], memory[k]) for k in data)


def test_release_free_memory_runs_malloc_trim_on_glibc():
    import platform

    from fastankh.embeddings.heap import release_free_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is glibc
