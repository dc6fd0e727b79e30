"""Embedding at proteome scale: wall time, peak RSS and bytes written against the number of sequences N, FastANKH
(`embed_dataset` streaming a FASTA into a folder of safetensors shards) beside a plain transformers loop
(T5EncoderModel on the same weights, batches in input order, each record's result written to an HDF5 file with
h5py as ProtTrans / bio_embeddings do), in one run.

Setup: a random encoder of ankh_base width (d_model 768, so outputs have ankh_base's size) with `--layers`
(default 1) blocks of `--heads` x `--d-kv` attention and a `--d-ff` FFN (default 2 x 32 and 64: compute is small,
so the embedding machinery shows; `--heads 12 --d-kv 64 --d-ff 3072` is ankh_base's block); N random sequences
of 30-120 residues (seeded). Each (implementation, N, output)
runs in a fresh process, so peak RSS is that run's alone; bytes written are the process's write_bytes
(/proc/self/io), the output's size is measured on disk.

    python bench/embed_scale.py                                   # pooled 10^4, 10^5, 10^6; per residue 10^5
    python bench/embed_scale.py --pooled 10000 100000 --residue 10000 --tf-max 100000 --plot bench/embed-scale.png
    python bench/embed_scale.py --kill-test 100000                # kill -9 half-way, rerun, compare
    python bench/embed_scale.py --pooled --residue --predict 10000 100000   # predict.py, per-residue export
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone import make_checkpoint  # noqa: E402

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def write_fasta(path: Path, n: int, seed: int = 0) -> Path:
    if not path.exists():
        rng = random.Random(seed)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(n):
                f.write(f">s{i}\n{''.join(rng.choices(RESIDUES, k=rng.randint(30, 120)))}\n")
        tmp.rename(path)
    return path


def fasta_records(path: Path):
    record_id, parts = None, []
    with open(path) as f:
        for line in f:
            if line.startswith(">"):
                if record_id is not None:
                    yield record_id, "".join(parts)
                record_id, parts = line[1:].split()[0], []
            else:
                parts.append(line.strip())
    if record_id is not None:
        yield record_id, "".join(parts)


def written_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def run_fastankh(args, fasta: Path, output: Path) -> None:
    from fastankh import FastAnkhModel

    model = FastAnkhModel.from_pretrained(args.ckpt).eval()
    model.embed_dataset(
        fasta, batch_size=args.batch_size, full_embeddings=args.full, save_path=output, progress=False,
        precision=args.precision, window=args.window, shard_size=args.shard_size,
    )  # fmt: skip


def run_transformers(args, fasta: Path, output: Path) -> None:
    import h5py
    from transformers import T5EncoderModel

    from fastankh import load_tokenizer
    from fastankh.precision import resolve_precision

    dtype = resolve_precision(args.precision, "cpu")
    model = T5EncoderModel.from_pretrained(args.ckpt, dtype=dtype).eval()
    tokenizer = load_tokenizer("ankh_base")
    batch: list[tuple[str, str]] = []
    with h5py.File(output, "w") as out, torch.inference_mode():

        def flush() -> None:
            inputs = tokenizer([s for _, s in batch], padding=True, return_tensors="pt")
            hidden = model(**inputs).last_hidden_state.float()
            for row, (record_id, seq) in enumerate(batch):
                residues = hidden[row, : len(seq)]
                out.create_dataset(record_id, data=(residues if args.full else residues.mean(0)).numpy())
            batch.clear()

        for record in fasta_records(fasta):
            batch.append(record)
            if len(batch) == args.batch_size:
                flush()
        if batch:
            flush()


def make_export(path: Path, layers: int, block: dict[str, int]) -> None:
    """A per-residue (SS3-like) export of the same encoder shape with random weights, as export.py writes it."""
    from fastankh import FastAnkhConfig, FastAnkhForTokenClassification, load_tokenizer

    labels = {0: "H", 1: "E", 2: "C"}
    config = FastAnkhConfig.from_preset("ankh_base", num_layers=layers, id2label=labels, **block)
    config.problem_type = "single_label_classification"
    torch.manual_seed(0)
    FastAnkhForTokenClassification(config).save_pretrained(path)
    load_tokenizer("ankh_base").save_pretrained(path)


def run_predict(args, fasta: Path, output: Path) -> None:
    from tasks.infer.predict_job import predict_file

    predict_file(args.ckpt, fasta, output, batch_size=args.batch_size, precision=args.precision, progress=False)


RUNS = {"fastankh": run_fastankh, "transformers": run_transformers, "predict": run_predict}


def child(args) -> None:
    """One measured run (in its own process); prints one JSON line."""
    fasta, output = Path(args.fasta), Path(args.output)
    start, written = time.perf_counter(), written_bytes()
    RUNS[args.impl](args, fasta, output)
    seconds = time.perf_counter() - start
    result = {
        "impl": args.impl, "n": args.n, "output": "per_residue" if args.full else "pooled",
        "seconds": seconds, "us_per_seq": seconds / args.n * 1e6,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "written_gb": (written_bytes() - written) / 2**30, "output_gb": size_on_disk(output) / 2**30,
    }  # fmt: skip
    print(json.dumps(result), flush=True)


def measure(args, impl: str, n: int, full: bool, work: Path) -> dict:
    fasta = write_fasta(work / f"random-{n}.fasta", n)
    suffix = {"fastankh": ".safetensors", "transformers": ".h5", "predict": ".csv"}[impl]
    output = work / (f"{impl}-{n}-{'res' if full else 'pool'}" + suffix)
    shutil.rmtree(output, ignore_errors=True) if output.is_dir() else output.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", impl, "--fasta", str(fasta), "--output", str(output), "--n", str(n)]
    cmd += [
        "--ckpt",
        args.export if impl == "predict" else args.ckpt,
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
    ]
    cmd += ["--window", str(args.window), "--shard-size", str(args.shard_size)] + (["--full"] if full else [])
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = json.loads(line)
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True) if output.is_dir() else output.unlink(missing_ok=True)
    print(
        f"{impl:12s} {result['output']:11s} N={n:>8d} {result['seconds']:8.1f} s {result['us_per_seq']:7.0f} us/seq "
        f"peak RSS {result['peak_rss_gb']:5.2f} GB written {result['written_gb']:7.3f} GB "
        f"output {result['output_gb']:7.3f} GB ({result['written_gb'] / max(result['output_gb'], 1e-9):.2f}x)",
        flush=True,
    )
    return result


def kill_test(args, n: int, work: Path) -> dict:
    """kill -9 a FastANKH run half-way, rerun the same command, and compare with an uninterrupted run."""
    from safetensors import safe_open

    fasta = write_fasta(work / f"random-{n}.fasta", n)
    killed, clean = work / f"killed-{n}.safetensors", work / f"clean-{n}.safetensors"
    for path in (killed, clean):
        shutil.rmtree(path, ignore_errors=True)
    base = [sys.executable, __file__, "--child", "fastankh", "--fasta", str(fasta), "--n", str(n), "--ckpt", args.ckpt]
    base += ["--batch-size", str(args.batch_size), "--precision", args.precision, "--window", str(args.window)]
    base += ["--shard-size", str(args.kill_shard_size)]  # small shards: many resume points to kill between
    proc = subprocess.Popen([*base, "--output", str(killed)], stdout=subprocess.DEVNULL)
    shard_glob = "part-*.safetensors"
    while proc.poll() is None and len(list(killed.glob(shard_glob))) < args.kill_after:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in killed.glob(shard_glob)}
    subprocess.run([*base, "--output", str(killed)], check=True, stdout=subprocess.DEVNULL)
    after = {p.name: p.stat().st_mtime_ns for p in killed.glob(shard_glob)}
    subprocess.run([*base, "--output", str(clean)], check=True, stdout=subprocess.DEVNULL)
    kept = sum(1 for name, mtime in before.items() if after.get(name) == mtime)

    def tensors(folder: Path) -> dict:
        out = {}
        for shard in sorted(folder.glob(shard_glob)):
            with safe_open(str(shard), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
        return out

    a, b = tensors(killed), tensors(clean)
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = {"n": n, "shards_before_kill": len(before), "shards_not_rewritten": kept, "shards_after": len(after)}
    result.update({"records": len(a), "byte_equal_to_clean_run": equal})
    print(f"kill -9 test: {json.dumps(result)}", flush=True)
    return result


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for (impl, output), style in zip(sorted({(r["impl"], r["output"]) for r in rows}), ["o-", "s--", "^-", "v--"]):
        pts = sorted((r for r in rows if (r["impl"], r["output"]) == (impl, output)), key=lambda r: r["n"])
        label = f"{impl}, {output}"
        axes[0].plot([r["n"] for r in pts], [r["us_per_seq"] for r in pts], style, label=label)
        axes[1].plot([r["n"] for r in pts], [r["peak_rss_gb"] for r in pts], style, label=label)
        axes[2].plot(
            [r["n"] for r in pts], [r["written_gb"] / max(r["output_gb"], 1e-9) for r in pts], style, label=label
        )
    for ax, title in zip(axes, ["time per sequence (us)", "peak RSS (GB)", "bytes written / output size"]):
        ax.set_xscale("log")
        ax.set_xlabel("sequences N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pooled", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--residue", type=int, nargs="*", default=[100_000])
    parser.add_argument("--tf-max", type=int, default=1_000_000, help="largest N for the transformers loop")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--d-kv", type=int, default=32)
    parser.add_argument("--d-ff", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--work", default="/tmp/fastankh-embed-scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--predict", type=int, nargs="*", default=[], help="predict.py sizes (per-residue export)")
    parser.add_argument("--kill-test", type=int, default=None, metavar="N")
    parser.add_argument("--kill-after", type=int, default=8, help="shards written before the kill")
    parser.add_argument("--kill-shard-size", type=int, default=16 * 2**20, help="shard bytes in the kill test")
    parser.add_argument("--shard-size", type=int, default=256 * 2**20)
    # one measured run (internal)
    parser.add_argument("--child", choices=list(RUNS), default=None)
    parser.add_argument("--fasta"), parser.add_argument("--output"), parser.add_argument("--n", type=int)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    if args.child:
        args.impl = args.child
        return child(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    block = {"num_heads": args.heads, "d_kv": args.d_kv, "d_ff": args.d_ff}
    args.ckpt = str(work / f"d768-{args.layers}-layer-{args.heads}x{args.d_kv}-ff{args.d_ff}")
    if not Path(args.ckpt).exists():
        make_checkpoint(args.ckpt, args.layers, "ankh_base", **block)
    args.export = str(work / f"ss3-export-{Path(args.ckpt).name}")
    if args.predict and not Path(args.export).exists():
        make_export(Path(args.export), args.layers, block)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    amx = "amx_bf16" in open("/proc/cpuinfo").read()
    print(f"CPU: {cpu} ({'AMX' if amx else 'no AMX'}), {torch.get_num_threads()} threads; precision={args.precision}")
    rows = []
    if args.kill_test:
        rows.append({"kill_test": kill_test(args, args.kill_test, work)})
    for full, sizes in ((False, args.pooled), (True, args.residue)):
        for n in sizes:
            for impl in ("fastankh", "transformers"):
                if impl == "transformers" and n > args.tf_max:
                    continue
                rows.append(measure(args, impl, n, full, work))
    for n in args.predict:
        rows.append(measure(args, "predict", n, True, work))
    measured = [r for r in rows if "impl" in r]
    for impl in RUNS:
        for output in ("pooled", "per_residue"):
            pts = sorted((r for r in measured if (r["impl"], r["output"]) == (impl, output)), key=lambda r: r["n"])
            if len(pts) > 1:
                a, b = pts[-2], pts[-1]
                print(
                    f"{impl} {output}: N {a['n']} -> {b['n']}: time/seq x{b['us_per_seq'] / a['us_per_seq']:.2f}, "
                    f"peak RSS x{b['peak_rss_gb'] / a['peak_rss_gb']:.2f}"
                )
    for n in sorted({r["n"] for r in measured}):
        for output in ("pooled", "per_residue"):
            pair = {r["impl"]: r for r in measured if r["n"] == n and r["output"] == output}
            if {"fastankh", "transformers"} <= set(pair):
                fa, tf = pair["fastankh"], pair["transformers"]
                print(
                    f"N={n} {output}: FastANKH vs transformers: time x{tf['seconds'] / fa['seconds']:.2f} faster, "
                    f"peak RSS x{fa['peak_rss_gb'] / tf['peak_rss_gb']:.2f}, bytes written "
                    f"x{fa['written_gb'] / max(tf['written_gb'], 1e-9):.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "amx": amx, "rows": rows}, indent=1) + "\n")
    if args.plot and measured:
        plot(measured, args.plot)


if __name__ == "__main__":
    main()
