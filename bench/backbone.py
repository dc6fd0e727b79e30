"""FastANKH vs transformers' T5EncoderModel on the same weights: speed and peak memory, side by side.

    python bench/backbone.py                         # CPU: ankh_base widths, 4 layers, batch 8
    python bench/backbone.py --device cuda --dtype bf16 --lengths 512 1024 2048 4096

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


def make_checkpoint(path: str, layers: int, preset: str) -> None:
    from transformers import T5Config, T5EncoderModel

    from fastankh import PRESETS

    p = PRESETS[preset]
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

    from tasks.data_batching import BucketBatchSampler, SeededSampler

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
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.impl == "transformers-sdpa":
        model = T5EncoderModel.from_pretrained(args.ckpt, attn_implementation="sdpa")
    else:
        model = FastAnkhModel.from_pretrained(args.ckpt, attn_backend=args.impl.split("-")[1])
    model.to(args.device)
    ids, mask = batch(args.length, args.batch, args.device, args.inputs[0])  # one choice per measuring process
    train = args.mode == "train"
    model.train(train)

    def step():
        with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32), torch.set_grad_enabled(train):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ankh_base", help="widths of this preset")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[129, 513, 1024])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--inputs", nargs="+", default=["bucketed", "spread"], choices=["bucketed", "spread"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args)))
        return

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        args.ckpt = tmp
        make_checkpoint(tmp, args.layers, args.preset)
        rows = []
        for inputs, length, mode, impl in itertools.product(
            args.inputs, args.lengths, ("forward", "train"), args.impls
        ):
            if impl == "transformers-sdpa" or (impl == "fastankh-flex" and mode == "train" and args.device == "cpu"):
                continue  # the reference is measured per row below; no flex backward on CPU
            one = argparse.Namespace(**{**vars(args), "inputs": inputs})
            base = run_one(one, "transformers-sdpa", length, mode)
            res = run_one(one, impl, length, mode)
            if base and res:
                lengths = batch_lengths(length, args.batch, inputs)
                rows.append(
                    dict(
                        impl=impl,
                        inputs=inputs,
                        length=length,
                        mode=mode,
                        padding=1 - sum(lengths) / (len(lengths) * max(lengths)),
                        times=res["times"],
                        ref_times=base["times"],
                        seconds=statistics.median(res["times"]),
                        ref_seconds=statistics.median(base["times"]),
                        speedup=statistics.median(base["times"]) / statistics.median(res["times"]),
                        peak_mib=res["peak_bytes"] / 2**20,
                        ref_peak_mib=base["peak_bytes"] / 2**20,
                        memory_ratio=res["peak_bytes"] / max(base["peak_bytes"], 1),
                    )
                )
                print(json.dumps(rows[-1]), file=sys.stderr)

    title = (
        f"{args.preset} widths, {args.layers} layers, batch {args.batch}, {args.device} {args.dtype}, "
        f"{args.threads} threads; ratios vs transformers T5EncoderModel (sdpa)"
    )
    table = Table(title=title)
    for col in (
        "impl",
        "inputs",
        "L",
        "pad",
        "step",
        "ms (min..max)",
        "ref ms (min..max)",
        "speed-up",
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
            r["inputs"],
            str(r["length"]),
            f"{r['padding']:.0%}",
            "fwd+bwd" if r["mode"] == "train" else "fwd",
            spread(r["times"]),
            spread(r["ref_times"]),
            f"{r['speedup']:.2f}x",
            f"{r['peak_mib']:.0f}",
            f"{r['ref_peak_mib']:.0f}",
            f"{r['memory_ratio']:.2f}x",
        )
    Console(width=170).print(table)
    if args.json:
        from fastankh.atomic import atomic_path

        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(
                {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
