"""FastANKH vs transformers' T5EncoderModel on the same weights: speed and peak memory, side by side.

    python bench/backbone.py                         # CPU: ankh_base widths, 4 layers, batch 8, fp32 and bf16
    python bench/backbone.py --embed                 # + embedding throughput at full ankh_base depth (48 layers)
    python bench/backbone.py --device cuda --lengths 512 1024 2048 4096 --embed --plot bench/speedup-gpu.png

Every measurement runs in a fresh subprocess. Peak memory is the growth during one step after a
warm-up: CUDA max_memory_allocated, or on CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs) above the resident set before the step, measured in its own process where
glibc returns every freed block of 64 KiB or more to the system (MALLOC_MMAP_THRESHOLD_), so memory
freed by the warm-up cannot hide the peak; timings come from a process with the default allocator.
Inputs (`--inputs`, default both): `bucketed` = the length profile of a real training batch of the
shipped data (`data/*.csv`, batched by the project's own length-bucketing sampler, padding 0-6%),
rescaled so its longest sequence is L; `spread` = lengths spread evenly over L/2..L (25% padding, the
older, less favourable input). Default lengths include 129 and 513, one past a multiple of 128, where
flex pays for padding to its 128-token blocks. Every row has its own transformers measurement, taken
just before the project's; times are the median of `--reps` steps, with min..max shown.

Precisions (`--dtypes`): fp32 rows compare fp32 with fp32. bf16 rows run the forward with bf16 weights (what
`precision=bf16`/`auto` does for inference) and the training step under bf16 autocast (`bf16-mixed`), against
transformers doing the same, and also against transformers fp32 (what a user who does not switch gets).
MFU = model FLOPs per second (real tokens only: projections, FFN and attention; a training step counts 3x the
forward) / the rate of a plain (3072 x d_model) @ (d_model x d_ff) matmul in that dtype, measured at the start
of the same run on the same machine and threads.
`--embed`: residues per second of `embed_dataset` (FastANKH, fp32 and bf16) and of a transformers
T5EncoderModel loop (fp32 and bf16 weights, length-sorted batches of the same size) on the same real
sequences from data/localization.csv, at full ankh_base depth; plus the per-sequence cosine of FastANKH bf16
to fp32 embeddings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

IMPLS = ("transformers-sdpa", "fastankh-sdpa", "fastankh-flex")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def forward_flops(lengths: list[int], layers: int, preset: str) -> dict[str, float]:
    """Useful FLOPs of one forward on these sequences, by part: the FFN's gate and up matmuls ("ffn_gate"), the
    other projections (q, k, v, o, FFN out: "projections"), per real token; QK^T and AV per pair ("attention")."""
    from fastankh import PRESETS

    p = PRESETS[preset]
    d, inner, d_ff = p["d_model"], p["num_heads"] * p["d_kv"], p["d_ff"]
    tokens = sum(lengths)
    return {
        "ffn_gate": layers * 2 * tokens * 2 * d * d_ff,
        "projections": layers * 2 * tokens * (4 * d * inner + d * d_ff),
        "attention": layers * 4 * inner * sum(n * n for n in lengths),
    }


def model_flops(lengths: list[int], layers: int, preset: str, mode: str) -> float:
    """Useful FLOPs of one step on these sequences (forward_flops; a training step counts 3x the forward)."""
    return sum(forward_flops(lengths, layers, preset).values()) * (3 if mode == "train" else 1)


def matmul_rate(preset: str, dtype: str, device: str, threads: int) -> float:
    """FLOP/s of a plain (3072 x d_model) @ (d_model x d_ff) matmul: the machine's own ceiling for MFU."""
    from fastankh import PRESETS

    torch.set_num_threads(threads)
    p = PRESETS[preset]
    a = torch.randn(3072, p["d_model"], dtype=DTYPES[dtype], device=device)
    b = torch.randn(p["d_model"], p["d_ff"], dtype=DTYPES[dtype], device=device)
    for _ in range(10):
        a @ b
    best = float("inf")
    for _ in range(10):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best


def make_checkpoint(path: str, layers: int, preset: str, **overrides: int) -> None:
    """A random transformers T5 encoder of `preset`'s shape (`overrides`: d_kv, d_ff, num_heads), saved at path."""
    from transformers import T5Config, T5EncoderModel

    from fastankh import PRESETS

    p = {**PRESETS[preset], **overrides}
    config = T5Config(
        vocab_size=p["vocab_size"],
        d_model=p["d_model"],
        d_kv=p["d_kv"],
        d_ff=p["d_ff"],
        num_layers=layers,
        num_heads=p["num_heads"],
        relative_attention_num_buckets=64,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if p["dense_act_fn"] == "gelu_new" else "gated-silu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(path)


def shipped_profile(size: int) -> list[float]:
    """Lengths / longest of the median-padding training batch of the shipped data (project's own sampler)."""
    import glob

    import numpy as np
    import pandas as pd

    from tasks.data.loaders import BucketBatchSampler, SeededSampler

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
    batches = []
    for path in sorted(glob.glob(os.path.join(root, "*.csv"))):
        lengths = (pd.read_csv(path, usecols=["sequence"])["sequence"].str.len() + 1).to_numpy()  # + </s>
        sampler = BucketBatchSampler(SeededSampler(len(lengths), shuffle=True, seed=0), lengths, batch_size=size)
        batches += [np.sort(lengths[b])[::-1] / lengths[b].max() for b in sampler.batches() if len(b) == size]
    padding = [1 - b.mean() for b in batches]
    return batches[int(np.argsort(padding)[len(padding) // 2])].tolist()


def batch_lengths(length: int, size: int, inputs: str) -> list[int]:
    if inputs == "spread":
        return torch.linspace(length // 2, length, size).long().tolist()
    return [max(2, round(f * length)) for f in shipped_profile(size)]


def batch(length: int, size: int, device: str, inputs: str):
    g = torch.Generator().manual_seed(length)
    lengths = batch_lengths(length, size, inputs)
    ids = torch.zeros(size, length, dtype=torch.long)
    mask = torch.zeros(size, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(3, 23, (n - 1,), generator=g)
        ids[i, n - 1] = 1
        mask[i, :n] = 1
    return ids.to(device), mask.to(device)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(args) -> dict:
    """One (impl, length, mode) measurement, in this process."""
    from transformers import T5EncoderModel

    from fastankh import FastAnkhModel

    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.impl == "transformers-sdpa":
        model = T5EncoderModel.from_pretrained(args.ckpt, attn_implementation="sdpa")
    else:
        model = FastAnkhModel.from_pretrained(args.ckpt, attn_backend=args.impl.split("-")[1])
    train = args.mode == "train"
    # inference in bf16 = bf16 weights (precision=bf16); training in bf16 = autocast over fp32 weights (bf16-mixed)
    model.to(args.device, dtype=dtype if not train else torch.float32)
    ids, mask = batch(args.length, args.batch, args.device, args.inputs[0])  # one choice per measuring process
    model.train(train)
    autocast = train and dtype != torch.float32

    def step():
        with torch.autocast(args.device, dtype=dtype, enabled=autocast), torch.set_grad_enabled(train):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if train:
                out.float().pow(2).mean().backward()
        if train:
            model.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (and flex compilation)
    times = []
    for _ in range(args.reps if args.what == "time" else 0):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = rss_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (VmHWM)
        step()
        peak = rss_kib("VmHWM") * 1024 - before
    return {"times": times, "peak_bytes": max(peak, 0)}


def run_one(args, impl: str, length: int, mode: str) -> dict | None:
    """Step times (one process) and peak memory growth (another process)."""
    env = dict(os.environ)
    timed = _subprocess(args, impl, length, mode, "time", env)
    if args.device == "cpu":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    peak = _subprocess(args, impl, length, mode, "memory", env)
    if timed is None or peak is None:
        return None
    return {"times": timed["times"], "peak_bytes": peak["peak_bytes"]}


def _subprocess(args, impl: str, length: int, mode: str, what: str, env: dict) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--_measure",
        "--ckpt",
        args.ckpt,
        "--impl",
        impl,
        "--length",
        str(length),
        "--mode",
        mode,
        "--batch",
        str(args.batch),
        "--reps",
        str(args.reps),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--what",
        what,
        "--inputs",
        args.inputs,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {impl} L={length} {mode}: skipped ({last[:120]})", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def embed_throughput(args, sequences: list[str]) -> list[dict]:
    """Residues/s of FastANKH embed_dataset and of a transformers T5EncoderModel loop, fp32 and bf16, full depth."""
    from transformers import T5EncoderModel

    from fastankh import FastAnkhModel, embed_dataset, load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.preset)
    residues = sum(map(len, sequences))
    results, outputs = [], {}
    for impl, dtype in itertools.product(("transformers", "fastankh"), ("fp32", "bf16")):
        if impl == "transformers":
            model = T5EncoderModel.from_pretrained(args.embed_ckpt).to(args.device, DTYPES[dtype]).eval()

            def run(seqs: list[str], model=model) -> dict[str, torch.Tensor]:
                out = {}
                order = sorted(seqs, key=len, reverse=True)  # longest first, as embed_dataset batches
                for start in range(0, len(order), args.embed_batch):
                    chunk = order[start : start + args.embed_batch]
                    enc = tokenizer(chunk, padding=True, return_tensors="pt").to(args.device)
                    with torch.inference_mode():
                        hidden = model(**enc).last_hidden_state.float()
                    for row, seq in enumerate(chunk):
                        out[seq] = hidden[row, : len(seq)].mean(0).cpu()
                return out
        else:
            model = FastAnkhModel.from_pretrained(args.embed_ckpt).to(args.device).eval()
            precision = "32" if dtype == "fp32" else "bf16"

            def run(seqs: list[str], model=model, precision=precision) -> dict[str, torch.Tensor]:
                return embed_dataset(
                    model, seqs, tokenizer, batch_size=args.embed_batch, progress=False, precision=precision
                )

        run(sequences[: args.embed_batch])  # warm-up
        t = time.perf_counter()
        outputs[(impl, dtype)] = run(sequences)
        seconds = time.perf_counter() - t
        results.append(dict(impl=impl, dtype=dtype, seconds=seconds, residues_per_s=residues / seconds))
        print(json.dumps(results[-1]), file=sys.stderr)
        del model
    ref, bf16 = outputs[("fastankh", "fp32")], outputs[("fastankh", "bf16")]
    cosines = [torch.cosine_similarity(bf16[s], ref[s], dim=0).item() for s in sequences]
    errors = [((bf16[s] - ref[s]).abs().max() / ref[s].abs().max()).item() for s in sequences]
    for r in results:
        r["min_cosine_bf16_vs_fp32"] = min(cosines)
        r["max_relative_error_bf16_vs_fp32"] = max(errors)
    return results


def embed_sequences(count: int) -> list[str]:
    """`count` real proteins of at most 512 residues from the shipped localization set (fixed seed)."""
    import pandas as pd

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "localization.csv")
    seqs = pd.read_csv(path, usecols=["sequence"])["sequence"]
    return seqs[seqs.str.len() <= 512].sample(count, random_state=0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ankh_base", help="widths of this preset")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[129, 513, 1024])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--inputs", nargs="+", default=["bucketed", "spread"], choices=["bucketed", "spread"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--embed", action="store_true", help="also time embedding at full depth (48 layers)")
    parser.add_argument("--embed-sequences", type=int, default=200)
    parser.add_argument("--embed-batch", type=int, default=16)
    parser.add_argument("--plot", help="write a PNG of speed-up and memory ratio against length here")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--what", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args)))
        return

    from rich.console import Console
    from rich.table import Table

    # the ceiling is measured before and after the rows; the faster one counts (a busy or cold start reads low)
    rates = {dtype: matmul_rate(args.preset, dtype, args.device, args.threads) for dtype in args.dtypes}
    print(json.dumps({"matmul_tflops": {k: v / 1e12 for k, v in rates.items()}}), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        args.ckpt = tmp
        make_checkpoint(tmp, args.layers, args.preset)
        rows, fp32_refs = [], {}
        for dtype, inputs, length, mode, impl in itertools.product(
            args.dtypes, args.inputs, args.lengths, args.modes, args.impls
        ):
            if impl == "transformers-sdpa" or (impl == "fastankh-flex" and mode == "train" and args.device == "cpu"):
                continue  # the reference is measured per row below; no flex backward on CPU
            one = argparse.Namespace(**{**vars(args), "inputs": inputs, "dtype": dtype})
            base = run_one(one, "transformers-sdpa", length, mode)
            res = run_one(one, impl, length, mode)
            if dtype == "fp32" and base:
                fp32_refs[(inputs, length, mode)] = base
            ref32 = None
            if dtype != "fp32":
                ref32 = fp32_refs.get((inputs, length, mode)) or run_one(
                    argparse.Namespace(**{**vars(one), "dtype": "fp32"}), "transformers-sdpa", length, mode
                )
            if base and res:
                lengths = batch_lengths(length, args.batch, inputs)
                seconds = statistics.median(res["times"])
                rows.append(
                    dict(
                        impl=impl,
                        dtype=dtype,
                        inputs=inputs,
                        length=length,
                        mode=mode,
                        padding=1 - sum(lengths) / (len(lengths) * max(lengths)),
                        times=res["times"],
                        ref_times=base["times"],
                        seconds=seconds,
                        ref_seconds=statistics.median(base["times"]),
                        speedup=statistics.median(base["times"]) / seconds,
                        speedup_vs_fp32=statistics.median(ref32["times"]) / seconds if ref32 else None,
                        flops=model_flops(lengths, args.layers, args.preset, mode),
                        peak_mib=res["peak_bytes"] / 2**20,
                        ref_peak_mib=base["peak_bytes"] / 2**20,
                        memory_ratio=res["peak_bytes"] / max(base["peak_bytes"], 1),
                    )
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    for dtype in args.dtypes:
        rates[dtype] = max(rates[dtype], matmul_rate(args.preset, dtype, args.device, args.threads))
    for r in rows:
        r["mfu"] = r["flops"] / r["seconds"] / rates[r["dtype"]]
    embed_rows = []
    if args.embed:
        with tempfile.TemporaryDirectory() as tmp:
            args.embed_ckpt = tmp
            make_checkpoint(tmp, 48, args.preset)
            embed_rows = embed_throughput(args, embed_sequences(args.embed_sequences))

    title = (
        f"{args.preset} widths, {args.layers} layers, batch {args.batch}, {args.device}, {args.threads} threads; "
        f"ratios vs transformers T5EncoderModel (sdpa) in the same dtype; matmul TFLOP/s "
        + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in rates.items())
    )
    table = Table(title=title)
    for col in (
        "impl",
        "dtype",
        "inputs",
        "L",
        "pad",
        "step",
        "ms (min..max)",
        "ref ms (min..max)",
        "speed-up",
        "vs tf fp32",
        "MFU",
        "peak MiB",
        "ref MiB",
        "memory ratio",
    ):
        table.add_column(col, justify="right")

    def spread(times: list[float]) -> str:
        return f"{statistics.median(times) * 1e3:.0f} ({min(times) * 1e3:.0f}..{max(times) * 1e3:.0f})"

    for r in rows:
        table.add_row(
            r["impl"],
            r["dtype"],
            r["inputs"],
            str(r["length"]),
            f"{r['padding']:.0%}",
            "fwd+bwd" if r["mode"] == "train" else "fwd",
            spread(r["times"]),
            spread(r["ref_times"]),
            f"{r['speedup']:.2f}x",
            f"{r['speedup_vs_fp32']:.2f}x" if r["speedup_vs_fp32"] else "",
            f"{r['mfu']:.0%}",
            f"{r['peak_mib']:.0f}",
            f"{r['ref_peak_mib']:.0f}",
            f"{r['memory_ratio']:.2f}x",
        )
    Console(width=190).print(table)
    if embed_rows:
        table = Table(title=f"embedding, {args.preset} full depth (48 layers), {args.embed_sequences} sequences")
        for col in ("impl", "dtype", "s", "residues/s", "vs transformers fp32", "vs transformers bf16"):
            table.add_column(col, justify="right")
        rate = {(r["impl"], r["dtype"]): r["residues_per_s"] for r in embed_rows}
        for r in embed_rows:
            table.add_row(
                r["impl"],
                r["dtype"],
                f"{r['seconds']:.1f}",
                f"{r['residues_per_s']:.0f}",
                f"{r['residues_per_s'] / rate[('transformers', 'fp32')]:.2f}x",
                f"{r['residues_per_s'] / rate[('transformers', 'bf16')]:.2f}x",
            )
        Console(width=190).print(table)
        first = embed_rows[0]
        print(
            f"FastANKH bf16 vs fp32 mean-pooled embeddings: min per-sequence cosine "
            f"{first['min_cosine_bf16_vs_fp32']:.5f}, max relative error {first['max_relative_error_bf16_vs_fp32']:.2e}"
        )
    if args.plot:
        plot(rows, args.plot, title)
    if args.json:
        from fastankh.atomic import atomic_path

        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(
                {
                    "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                    "matmul_tflops": {k: v / 1e12 for k, v in rates.items()},
                    "rows": rows,
                    "embed": embed_rows,
                },
                f,
                indent=1,
            )


def plot(rows: list[dict], path: str, title: str) -> None:
    """Speed-up and memory ratio against L, one line per (impl, dtype, inputs, step); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastankh.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["impl"], r["dtype"], r["inputs"], r["mode"]), []).append(r)
    for (impl, dtype, inputs, mode), points in sorted(series.items()):
        points.sort(key=lambda r: r["length"])
        label = f"{impl.removeprefix('fastankh-')} {dtype} {inputs} {'fwd+bwd' if mode == 'train' else 'fwd'}"
        style = "-" if mode == "train" else "--"
        lengths = [r["length"] for r in points]
        axes[0].plot(lengths, [r["speedup"] for r in points], style, marker="o", label=label)
        axes[1].plot(lengths, [r["memory_ratio"] for r in points], style, marker="o", label=label)
    ticks = sorted({r["length"] for r in rows})
    for ax, name in zip(axes, ("speed-up vs transformers (x)", "peak memory / transformers")):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("L (longest sequence in the batch)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


if __name__ == "__main__":
    main()
