"""FastANKH vs transformers' T5EncoderModel on the same weights: speed and peak memory, side by side.

    python bench/backbone.py                         # CPU: ankh_base widths, 4 layers, batch 8
    python bench/backbone.py --device cuda --dtype bf16 --lengths 512 1024 2048 4096

Every measurement runs in a fresh subprocess. Peak memory is the growth during one step after a
warm-up: CUDA max_memory_allocated, or on CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs) above the resident set before the step, measured in its own process where
glibc returns every freed block of 64 KiB or more to the system (MALLOC_MMAP_THRESHOLD_), so memory
freed by the warm-up cannot hide the peak; timings come from a process with the default allocator.
A batch holds lengths spread over L/2..L, right padded, like a length-bucketed training batch.
"""

from __future__ import annotations

import argparse
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
        vocab_size=p["vocab_size"], d_model=p["d_model"], d_kv=p["d_kv"], d_ff=p["d_ff"], num_layers=layers,
        num_heads=p["num_heads"], relative_attention_num_buckets=64, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if p["dense_act_fn"] == "gelu_new" else "gated-silu",
        dropout_rate=0.0, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(path)


def batch(length: int, size: int, device: str):
    g = torch.Generator().manual_seed(length)
    lengths = torch.linspace(length // 2, length, size).long().tolist()
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
    ids, mask = batch(args.length, args.batch, args.device)
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
    return {"seconds": statistics.median(times) if times else None, "peak_bytes": max(peak, 0)}


def run_one(args, impl: str, length: int, mode: str) -> dict | None:
    """Median step time (one process) and peak memory growth (another process)."""
    result = {}
    for what in ("time", "memory"):
        env = dict(os.environ)
        if what == "memory" and args.device == "cpu":
            env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        measured = _subprocess(args, impl, length, mode, what, env)
        if measured is None:
            return None
        result["seconds" if what == "time" else "peak_bytes"] = measured["seconds" if what == "time" else "peak_bytes"]
    return result


def _subprocess(args, impl: str, length: int, mode: str, what: str, env: dict) -> dict | None:
    cmd = [
        sys.executable, __file__, "--_measure", "--ckpt", args.ckpt, "--impl", impl, "--length", str(length),
        "--mode", mode, "--batch", str(args.batch), "--reps", str(args.reps), "--device", args.device,
        "--dtype", args.dtype, "--threads", str(args.threads), "--what", what,
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
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--reps", type=int, default=3)
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
        for length in args.lengths:
            for mode in ("forward", "train"):
                base = run_one(args, "transformers-sdpa", length, mode)
                for impl in args.impls:
                    if impl == "transformers-sdpa":
                        continue
                    if impl == "fastankh-flex" and mode == "train" and args.device == "cpu":
                        continue  # no flex backward on CPU
                    res = run_one(args, impl, length, mode)
                    if base and res:
                        rows.append(dict(
                            impl=impl, length=length, mode=mode, seconds=res["seconds"], ref_seconds=base["seconds"],
                            speedup=base["seconds"] / res["seconds"], peak_mib=res["peak_bytes"] / 2**20,
                            ref_peak_mib=base["peak_bytes"] / 2**20,
                            memory_ratio=res["peak_bytes"] / max(base["peak_bytes"], 1),
                        ))
                        print(json.dumps(rows[-1]), file=sys.stderr)

    title = (f"{args.preset} widths, {args.layers} layers, batch {args.batch}, {args.device} {args.dtype}, "
             f"{args.threads} threads; ratios vs transformers T5EncoderModel (sdpa)")
    table = Table(title=title)
    for col in ("impl", "L", "step", "ms", "ref ms", "speed-up", "peak MiB", "ref MiB", "memory ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["impl"], str(r["length"]), "fwd+bwd" if r["mode"] == "train" else "fwd", f"{r['seconds']*1e3:.0f}",
            f"{r['ref_seconds']*1e3:.0f}", f"{r['speedup']:.2f}x", f"{r['peak_mib']:.0f}", f"{r['ref_peak_mib']:.0f}",
            f"{r['memory_ratio']:.2f}x",
        )
    Console(width=150).print(table)
    if args.json:
        tmp_path = args.json + ".tmp"
        with open(tmp_path, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}, f, indent=1)
        os.replace(tmp_path, args.json)


if __name__ == "__main__":
    main()
