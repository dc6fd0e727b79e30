"""The user path's speed: `embed_dataset(precision="auto")` against the machine's own bf16 matmul rate and against
a plain transformers T5EncoderModel loop (fp32 and bf16 weights) on the same random weights and batches.

    python bench/embed_speed.py                  # ankh_base widths, 6 layers, 48 sequences of 100-500 residues
    python bench/embed_speed.py --reps 5 --json out.json

The target: MFU >= 55% of the bf16 matmul ceiling, >= 6x the transformers fp32 loop, >= 2x its bf16 loop.
Everything runs in one process, interleaved round by round (ceiling, FastANKH, transformers bf16, transformers
fp32), so a busy machine slows every column alike; times are medians over the rounds, the ceiling is the best
(bf16_ceiling: the faster of a large square bf16 matmul and one of the model's FFN shape, measured next to the
model in every round). `--breakdown` adds one profiled FastANKH run: time and FLOP/s of its matmuls, attention and
the rest (what keeps MFU from the ceiling).
Model FLOPs are bench/backbone.py's `model_flops` (real tokens only: projections, FFN, QK^T and AV). MFU/round:
the median over rounds of each round's rate against that round's own ceiling (on a shared machine the load moves
both together; the headline MFU divides the median time by the best ceiling, the stricter figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone import forward_flops, matmul_rate, model_flops  # noqa: E402

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def random_sequences(count: int, low: int, high: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (count,), generator=g).tolist()
    return ["".join(RESIDUES[i] for i in torch.randint(0, 20, (n,), generator=g).tolist()) for n in lengths]


def bf16_ceiling(preset: str, threads: int, size: int = 4096, repeats: int = 5) -> float:
    """What the cores can do: FLOP/s of the best bf16 matmul, a large (size x size) square one or one of the
    preset's FFN shape (bench/backbone.py's matmul_rate), whichever is faster here (on an AMX Xeon the FFN shape)."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return max(2 * size**3 / best, matmul_rate(preset, "bf16", "cpu", threads))


# Kernels of a profiled FastANKH forward (torch.profiler event names) -> (group, forward_flops part).
KERNEL_GROUPS = {
    "mkldnn::_linear_pointwise": ("FFN gate matmuls + activation epilogue", "ffn_gate"),
    "aten::mm": ("other matmuls (qkv, o, wo)", "projections"),
    "aten::addmm": ("other matmuls (qkv, o, wo)", "projections"),
    "aten::_scaled_dot_product_flash_attention_for_cpu": ("attention (sdpa flash, per sequence)", "attention"),
}


def time_breakdown(run, tokens: list[int], layers: int, preset: str) -> dict[str, dict[str, float]]:
    """Seconds, share of the profiled time and FLOP/s of each KERNEL_GROUPS group in one profiled `run()` (the
    rest: norms, residual adds, copies, Python); FLOPs per group as bench/backbone.py's forward_flops counts them."""
    from torch.profiler import ProfilerActivity, profile

    parts = forward_flops(tokens, layers, preset)
    flops = {group: parts[part] for group, part in KERNEL_GROUPS.values()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        run()
        total = time.perf_counter() - t
    seconds = dict.fromkeys(flops, 0.0)
    for event in prof.key_averages():
        if event.key in KERNEL_GROUPS:  # self time: the op's wall time on the calling thread
            seconds[KERNEL_GROUPS[event.key][0]] += event.self_cpu_time_total / 1e6
    seconds["the rest"] = total - sum(seconds.values())
    return {
        group: dict(seconds=s, share=s / total, tflops=flops[group] / s / 1e12 if group in flops else 0.0)
        for group, s in seconds.items()
    }


def transformers_model(fast, dtype: torch.dtype):
    """transformers' T5EncoderModel (sdpa) holding `fast`'s weights (fastankh.t5_conversion's key map, reversed)."""
    from transformers import T5Config, T5EncoderModel

    from fastankh.t5_conversion import t5_key_to_fastankh

    c = fast.config
    config = T5Config(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.d_kv,
        d_ff=c.d_ff,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        feed_forward_proj="gated-gelu" if c.dense_act_fn == "gelu_new" else "gated-silu",
        layer_norm_epsilon=c.layer_norm_epsilon,
        dropout_rate=0.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = T5EncoderModel(config)
    source = fast.state_dict()
    state = {k: source[t5_key_to_fastankh(k)] for k in model.state_dict()}
    model.load_state_dict(state)
    return model.to(dtype).eval()


def transformers_loop(model, tokenizer, sequences: list[str], batch_size: int, prefix: int) -> dict[str, torch.Tensor]:
    """Mean-pooled residue embeddings, in embed_dataset's batches (fastankh.length_batches, longest first)."""
    from fastankh import length_batches

    out = {}
    for batch in length_batches([len(s) for s in sequences], batch_size):
        chunk = [sequences[i] for i in batch]
        enc = tokenizer(chunk, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        for row, seq in enumerate(chunk):
            out[seq] = hidden[row, prefix : prefix + len(seq)].float().mean(0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ankh_base")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--fp32-reps", type=int, default=None, help="rounds that also run transformers fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--breakdown", action="store_true", help="also profile one FastANKH run (time by kernel)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from fastankh import FastAnkhConfig, FastAnkhModel, load_tokenizer, prefix_length

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fast = FastAnkhModel(FastAnkhConfig.from_preset(args.preset, num_layers=args.layers)).eval()
    tf = {"fp32": transformers_model(fast, torch.float32), "bf16": transformers_model(fast, torch.bfloat16)}
    tokenizer = load_tokenizer(fast.config)
    prefix = prefix_length(tokenizer)
    seqs = random_sequences(args.sequences, args.min_len, args.max_len, seed=0)
    residues = sum(map(len, seqs))
    tokens = [prefix + len(s) + 1 for s in seqs]
    flops = model_flops(tokens, args.layers, args.preset, "forward")

    runs = {
        "fastankh auto": lambda: fast.embed_dataset(seqs, batch_size=args.batch_size, precision="auto", progress=False),
        "transformers bf16": lambda: transformers_loop(tf["bf16"], tokenizer, seqs, args.batch_size, prefix),
        "transformers fp32": lambda: transformers_loop(tf["fp32"], tokenizer, seqs, args.batch_size, prefix),
    }
    # warm-up (compiled regions included)
    fast.embed_dataset(seqs[:4], batch_size=args.batch_size, precision="auto", progress=False)
    transformers_loop(tf["bf16"], tokenizer, seqs[:4], args.batch_size, prefix)
    fp32_reps = args.reps if args.fp32_reps is None else args.fp32_reps
    times: dict[str, list[float]] = {name: [] for name in runs}
    ceilings, outputs = [], {}
    for rep in range(args.reps):
        ceilings.append(bf16_ceiling(args.preset, args.threads))
        for name, run in runs.items():
            if name == "transformers fp32" and rep >= fp32_reps:
                continue
            t = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - t)
        done = {k: v[-1] for k, v in times.items() if len(v) == rep + 1}
        print(json.dumps({"round": rep, "ceiling_tflops": ceilings[-1] / 1e12, **done}), file=sys.stderr)
    ceiling = max(ceilings)
    ref = outputs["transformers fp32"]
    cosine = min(
        torch.cosine_similarity(outputs["fastankh auto"][s].float(), ref[s].float(), dim=0).item() for s in seqs
    )
    rows = {}
    for name, ts in times.items():
        seconds = statistics.median(ts)
        rows[name] = dict(
            seconds=seconds,
            times=ts,
            residues_per_s=residues / seconds,
            tflops=flops / seconds / 1e12,
            mfu=flops / seconds / ceiling,
            # each round against the ceiling of that round: steadier on a shared machine, whose load moves both
            mfu_per_round=statistics.median(flops / t / c for t, c in zip(ts, ceilings)),
        )
    fast_s = rows["fastankh auto"]["seconds"]
    for name in ("transformers fp32", "transformers bf16"):
        rows["fastankh auto"][f"x_{name.replace(' ', '_')}"] = rows[name]["seconds"] / fast_s
    result = dict(
        cpu=cpu_name(),
        threads=args.threads,
        torch=torch.__version__,
        preset=args.preset,
        layers=args.layers,
        sequences=args.sequences,
        residues=residues,
        model_tflop=flops / 1e12,
        bf16_ceiling_tflops=ceiling / 1e12,
        bf16_ceiling_rounds_tflops=[c / 1e12 for c in ceilings],
        min_cosine_fastankh_auto_vs_transformers_fp32=cosine,
        rows=rows,
    )
    print(
        f"{result['cpu']}, {args.threads} threads, torch {torch.__version__}; {args.preset} widths, {args.layers} "
        f"layers, {args.sequences} sequences ({residues} residues, {flops / 1e12:.2f} TFLOP); "
        f"bf16 matmul ceiling {ceiling / 1e12:.3f} TFLOP/s (rounds: "
        + ", ".join(f"{c / 1e12:.3f}" for c in ceilings)
        + ")"
    )
    print(f"{'':20s} {'s (median)':>11s} {'residues/s':>11s} {'TFLOP/s':>8s} {'MFU':>6s} {'MFU/round':>9s}  rounds")
    for name, r in rows.items():
        print(
            f"{name:20s} {r['seconds']:11.2f} {r['residues_per_s']:11.0f} {r['tflops']:8.3f} {r['mfu']:6.1%} "
            f"{r['mfu_per_round']:9.1%}  " + " ".join(f"{t:.2f}" for t in r["times"])
        )
    f = rows["fastankh auto"]
    print(
        f"fastankh auto: {f['x_transformers_fp32']:.2f}x transformers fp32 (goal >= 6x), "
        f"{f['x_transformers_bf16']:.2f}x transformers bf16 (goal >= 2x), MFU {f['mfu']:.1%} (goal >= 55%); "
        f"min cosine to transformers fp32 {cosine:.5f}"
    )
    if args.breakdown:
        breakdown = time_breakdown(runs["fastankh auto"], tokens, args.layers, args.preset)
        result["fastankh_auto_breakdown"] = breakdown
        print(f"one profiled fastankh auto run (ceiling {ceiling / 1e12:.3f} TFLOP/s):")
        for group, b in breakdown.items():
            share = b["tflops"] * 1e12 / ceiling
            rate = f"{b['tflops']:.3f} TFLOP/s ({share:.0%} of the ceiling)" if b["tflops"] else ""
            print(f"  {group:40s} {b['seconds']:6.3f} s {b['share']:6.1%}  {rate}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
