"""Where a step spends its time: the top operators of transformers and of FastANKH, side by side.

    python bench/op_profile.py                                  # bf16 forward and fwd+bwd, L=513, CPU
    python bench/op_profile.py --dtype fp32 --lengths 129 513 --top 8
    python bench/op_profile.py --device cuda --lengths 1024

Same model and batches as bench/backbone.py (ankh_base widths, 4 layers, batch 8, bucketed lengths; bf16 forward
= bf16 weights, bf16 training = autocast). FastANKH is profiled twice: `compile_regions=false` (the eager path:
what the model did before its fused regions) and `compile_regions=true`; its default (`auto`) is one of the two,
README says which. Each row is the share of the step's self time (CPU, or CUDA kernels on a GPU) per operator.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone import DTYPES, batch, make_checkpoint  # noqa: E402


def top_ops(model, ids, mask, train: bool, dtype: torch.dtype, device: str, top: int) -> tuple[float, list]:
    """The step's profiled self time (ms) and (operator, share of it) for its `top` most expensive operators."""
    from torch.profiler import ProfilerActivity, profile

    autocast = train and dtype != torch.float32

    def step():
        with torch.autocast(device, dtype=dtype, enabled=autocast), torch.set_grad_enabled(train):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if train:
                out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    step()  # warm-up, compilation included
    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    name = lambda key: "compiled region" if key.startswith("## Call CompiledFxGraph") else key  # noqa: E731
    return total / 1e3, [(name(e.key), getattr(e, attr) / total) for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ankh_base")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[513])
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    from transformers import T5EncoderModel

    from fastankh import FastAnkhModel

    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as ckpt:
        make_checkpoint(ckpt, args.layers, args.preset)
        for length in args.lengths:
            ids, mask = batch(length, args.batch, args.device, "bucketed")
            for mode in args.modes:
                train = mode == "train"
                weights = torch.float32 if train else dtype
                models = {"transformers": T5EncoderModel.from_pretrained(ckpt, attn_implementation="sdpa")}
                for regions in (False, True):
                    name = f"fastankh compile_regions={str(regions).lower()}"
                    models[name] = FastAnkhModel.from_pretrained(ckpt, attn_backend="sdpa", compile_regions=regions)
                print(f"\n{args.dtype} {'fwd+bwd' if train else 'fwd'}, L={length}, {args.device}")
                for name, model in models.items():
                    model.to(args.device, dtype=weights).train(train)
                    ms, ops = top_ops(model, ids, mask, train, dtype, args.device, args.top)
                    print(f"  {name:32s} {ms:7.0f} ms  " + "  ".join(f"{op} {share:.0%}" for op, share in ops))


if __name__ == "__main__":
    main()
