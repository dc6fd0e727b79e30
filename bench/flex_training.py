"""GPU checks of flex training: packed-flex gradients equal sdpa's, and the cost of a trainable position bias.

    python bench/flex_training.py                    # CUDA: ankh_base widths, 4 layers, token-budget batches

flex has no backward on CPU, so this runs on a GPU only. For each of a few token-budget batches of random
lengths (20..1000) it checks that a bf16-autocast forward+backward through packed flex gives the gradients of
the padded sdpa path (relative error per parameter, printed), then times a training step with the position
bias table trainable (full fine-tuning: the compiled flex backward accumulates its gradient with atomics,
non-deterministic; pytorch/pytorch#137452, #145208) and frozen (LoRA, frozen and partial modes), and counts the
flex graphs compiled over the batches.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def batches(count: int, budget: int, seed: int = 0) -> list[list[int]]:
    from fastankh.batching import length_batches

    rng = random.Random(seed)
    lengths = [rng.randint(20, 1000) for _ in range(8 * count)]
    return [[lengths[i] for i in b] for b in length_batches(lengths, 64, budget)][:count]


def inputs(lengths: list[int], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 25, (len(lengths), max(lengths)), device=device)
    mask = (torch.arange(max(lengths), device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    return ids * mask, mask


def step(model, ids, mask) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    out.float().pow(2).mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ankh_base")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=16000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: flex has no backward on CPU; run this on a GPU")

    from torch._dynamo.utils import counters

    from fastankh import FastAnkhConfig, FastAnkhModel

    torch.manual_seed(0)
    model = FastAnkhModel(FastAnkhConfig.from_preset(args.preset, num_layers=args.layers)).cuda().train()
    epoch = batches(args.batches, args.max_tokens)
    worst = 0.0
    counters.clear()
    for lengths in epoch[:3]:
        ids, mask = inputs(lengths, "cuda")
        grads = {}
        for backend in ("sdpa", "flex"):
            model.config.attn_backend = backend
            model.zero_grad(set_to_none=True)
            step(model, ids, mask)
            grads[backend] = {n: p.grad.float().clone() for n, p in model.named_parameters()}
        for name, ref in grads["sdpa"].items():
            error = ((grads["flex"][name] - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            worst = max(worst, error)
    print(f"flex vs sdpa gradients (bf16 autocast): worst relative error per parameter {worst:.2e}")

    model.config.attn_backend = "flex"
    bias = model.encoder.position_bias.relative_attention_bias.weight
    for trainable in (True, False):
        bias.requires_grad_(trainable)
        times = []
        for lengths in epoch:
            ids, mask = inputs(lengths, "cuda")
            step(model, ids, mask)  # warm-up / compile for this row length
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.reps):
                step(model, ids, mask)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / args.reps / sum(lengths))
        label = "trainable" if trainable else "frozen"
        print(f"position bias {label}: {statistics.median(times) * 1e6:.2f} us per token per step")
    print(f"flex graphs compiled over {len(epoch)} batches: {counters['stats']['unique_graphs']}")


if __name__ == "__main__":
    main()
