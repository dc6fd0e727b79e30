"""Memory of fine-tuning: a formula table per preset x mode x length, and measured CPU rows to check it.

    python bench/memory.py                  # formula table (markdown) + measured CPU rows (ankh_base widths, 4 layers)
    python bench/memory.py --formula-only   # the table alone, instantly
    python bench/memory.py --layers 48      # measured rows at full ankh_base depth (needs ~4 GB per run)

Formula (bytes; P = encoder parameters from the preset's shapes, T = trainable parameters; training in
bf16-mixed = fp32 master weights, bf16 autocast compute):
- weights 4P; gradients 4T; AdamW states 8T (exp_avg + exp_avg_sq, fp32); T = P (full), the LoRA adapters
  (r=8 on q,k,v,o: 2 r (d_model + inner) per projection and layer), ~0 (frozen: the head only).
- activations saved for the backward, per token and layer: residual-stream inputs of the two RMSNorms (fp32,
  4d each) and their bf16 outputs (2d each), q, k, v and the attention output (bf16, 2 x 4 inner), wi_0, wi_1
  and the gated product (bf16, 3 x 2 d_ff; the activation is recomputed in the backward): 12 d + 8 inner +
  6 d_ff. Attention keeps no L x L matrix per layer (flex; on CPU the flash kernel with probabilities recomputed
  in the backward); sdpa's one (B, heads, L, L) bias + padding mask is shared by all layers. Frozen: the
  encoder runs without autograd, nothing is kept per layer. LoRA keeps the same activations as full (every
  layer's inputs are needed for the adapters' gradients). With activation checkpointing (FSDP policy, or
  model.gradient_checkpointing=true) each layer keeps only its input (4d) plus one layer's activations.
- "one 80 GB GPU": weights + gradients + AdamW + batch x activations within 72 GB (10% headroom for the
  allocator, CUDA context and the head); the largest batch of sequences of length L is shown, without
  activation checkpointing. Below 8 sequences, also the FSDP size: the smallest N GPUs (FULL_SHARD splits
  weights, gradients and AdamW states N ways; activation checkpointing keeps 4d bytes per token and layer
  plus one layer's activations) that hold 8 sequences per GPU.

Measured rows (CPU, fp32, `train.py` in a fresh process per mode on a random T5 checkpoint of ankh_base widths
saved like the ElnaggarLab ones, 3 optimizer steps of batch 2 on ss3_local, then the test stage): peak resident
set of the process (VmHWM) and the size of each checkpoint file written; plus the activation check: the peak
resident set growth during one forward + backward of one sequence of length L on the bare encoder (process with
MALLOC_MMAP_THRESHOLD_=65536 so freed blocks return to the system, VmHWM reset through /proc/self/clear_refs),
minus the gradients, per layer, against the fp32 formula (16 d + 16 inner + 12 d_ff per token, plus four fp32
(heads, L, L) tensors that are not per layer, spread over the layers: sdpa's bias + padding mask and its gradient,
and the probabilities and their gradient that one layer's backward recomputes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
BUDGET = 72 * GB  # of 80 GB
MODES = ("frozen", "lora", "full")


def shapes(preset: str, layers: int | None = None) -> dict[str, int]:
    from fastankh.configuration_fastankh import PRESETS

    p = PRESETS[preset]
    return dict(
        d=p["d_model"],
        inner=p["num_heads"] * p["d_kv"],
        d_ff=p["d_ff"],
        layers=layers or p["num_layers"],
        heads=p["num_heads"],
        vocab=p["vocab_size"],
        buckets=p.get("relative_attention_num_buckets", 32),
    )


def encoder_params(s: dict[str, int]) -> int:
    per_layer = 4 * s["d"] * s["inner"] + 3 * s["d"] * s["d_ff"] + 2 * s["d"]
    return s["vocab"] * s["d"] + s["layers"] * per_layer + s["d"] + s["buckets"] * s["heads"]


def lora_params(s: dict[str, int], r: int = 8) -> int:
    return s["layers"] * 4 * r * (s["d"] + s["inner"])


def activation_bytes_per_token_layer(s: dict[str, int], bf16: bool = True) -> int:
    if bf16:
        return 12 * s["d"] + 8 * s["inner"] + 6 * s["d_ff"]
    return 16 * s["d"] + 16 * s["inner"] + 12 * s["d_ff"]


def formula_row(preset: str, mode: str, length: int) -> dict[str, float]:
    s = shapes(preset)
    p = encoder_params(s)
    t = {"full": p, "lora": lora_params(s), "frozen": 0}[mode]
    weights, grads, adam = 4 * p, 4 * t, 8 * t
    per_seq = 0 if mode == "frozen" else length * s["layers"] * activation_bytes_per_token_layer(s)
    # frozen: the no-grad forward's working set of one layer (a few tensors of the widest width)
    working = length * (4 * s["d"] + 6 * s["d_ff"]) if mode == "frozen" else 0
    static = weights + grads + adam
    row = dict(params=p, trainable=t, weights=weights, grads=grads, adam=adam, act=per_seq, static=static)
    if per_seq == 0:
        row["batch"] = math.inf if static < BUDGET else 0
    else:
        row["batch"] = max(0, int((BUDGET - static) // per_seq))
    if row["batch"] >= 8:
        row["fsdp"] = 1
    else:  # FSDP over N with activation checkpointing: per GPU static/N + 8 sequences' checkpointed activations
        ckpt_seq = length * (s["layers"] * 4 * s["d"] + activation_bytes_per_token_layer(s)) + working
        n = 2
        while static / n + 8 * ckpt_seq > BUDGET:
            n += 1
        row["fsdp"] = n
    return row


def human(x: float) -> str:
    return f"{x / GB:.2f}" if x >= 0.01 * GB else f"{x / GB:.3f}"


def formula_table() -> str:
    lines = [
        "| model | params | mode | weights GB | grads GB | AdamW GB | act./seq L=512 GB | act./seq L=1024 GB "
        "| one 80 GB GPU (L=512 / 1024) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in ("ankh_base", "ankh_large", "ankh2_large", "ankh3_large", "ankh3_xl"):
        for mode in MODES:
            a, b = formula_row(preset, mode, 512), formula_row(preset, mode, 1024)

            def fit(r: dict) -> str:
                if r["batch"] == math.inf:
                    return "1 GPU (no activations kept)"
                one = f"1 GPU, batch {r['batch']}" if r["batch"] >= 1 else "does not fit"
                return one if r["fsdp"] == 1 else f"{one}; FSDP over {r['fsdp']} for 8/GPU"

            lines.append(
                f"| {preset} | {a['params'] / 1e6:.0f}M | {mode} | {human(a['weights'])} | {human(a['grads'])} "
                f"| {human(a['adam'])} | {human(a['act'])} | {human(b['act'])} | {fit(a)} / {fit(b)} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ measured (CPU)
def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def child_train(base: str, mode: str, out: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    from hydra import compose, initialize_config_dir

    import tasks.task.schema  # noqa: F401
    from tasks.train.recipe import train

    overrides = [
        "task=ss3_local",
        "model=ankh_base",
        f"model.path={base}",
        "model.precision=32-true",
        "model.attn_backend=sdpa",
        f"finetune={mode}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "data.batch_size=2",
        "logger=csv",
        "~callbacks.progress_bar",
        f"paths.output_dir={out}",
    ]
    if mode == "partial":
        overrides.append("finetune.trainable_layers=1")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train(cfg)
    sizes = {p.name: p.stat().st_size for p in sorted(Path(out, "checkpoints").glob("*.ckpt"))}
    print("RESULT " + json.dumps({"mode": mode, "peak_rss": vm_hwm(), "checkpoints": sizes}))


def child_activations(base: str, length: int) -> None:
    import torch

    from fastankh import FastAnkhModel

    torch.manual_seed(0)
    model = FastAnkhModel.from_pretrained(base, attn_backend="sdpa")
    ids = torch.randint(3, 23, (1, length))
    ids[0, -1] = 1
    mask = torch.ones_like(ids)
    for _ in range(2):  # warm-up, gradients allocated
        model(input_ids=ids, attention_mask=mask).last_hidden_state.float().pow(2).mean().backward()
    before = vm_rss()
    Path("/proc/self/clear_refs").write_text("5")
    model(input_ids=ids, attention_mask=mask).last_hidden_state.float().pow(2).mean().backward()
    grow = vm_hwm() - before
    print("RESULT " + json.dumps({"length": length, "growth": grow}))


def run_child(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{args}: {done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def make_base(directory: Path, layers: int) -> None:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    s = shapes("ankh_base", layers)
    config = T5Config(
        vocab_size=s["vocab"],
        d_model=s["d"],
        d_kv=s["inner"] // s["heads"],
        d_ff=s["d_ff"],
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=s["heads"],
        relative_attention_num_buckets=64,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)


def measured(layers: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_base(base, layers)
        base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        s = shapes("ankh_base", layers)
        p = encoder_params(s)
        rows = [
            f"Measured on CPU: random T5 checkpoint of ankh_base widths, {layers} layers ({p / 1e6:.1f}M encoder "
            f"parameters; model.safetensors with the decoder {base_bytes / 1e6:.0f} MB), fp32, batch 2, 3 steps.",
            "",
            "| mode | trainable params | checkpoint MB (last.ckpt) | formula: trainable x 12 B | peak RSS GB |",
            "|---|---|---|---|---|",
        ]
        trainable = {
            "frozen": 0,
            "lora": lora_params(s),
            "partial": (p - s["vocab"] * s["d"] - s["buckets"] * s["heads"]) // layers,
            "full": p,
        }
        for mode in ("frozen", "lora", "partial", "full"):
            r = run_child("--child-train", str(base), mode, str(Path(tmp) / mode))
            size = r["checkpoints"].get("last.ckpt", max(r["checkpoints"].values()))
            t = trainable[mode]
            peak = r["peak_rss"] / GB
            rows.append(f"| {mode} | {t / 1e6:.2f}M (+ head) | {size / 1e6:.2f} | {t * 12 / 1e6:.2f} | {peak:.2f} |")
        rows += [
            "",
            "| L | measured activation growth / layer MB (fp32, sdpa, CPU) | formula fp32 + shared L x L / layer MB |",
            "|---|---|---|",
        ]
        for length in (512, 1024):
            r = run_child("--child-act", str(base), str(length), env={"MALLOC_MMAP_THRESHOLD_": "65536"})
            shared = 4 * (4 * length * length * s["heads"]) / layers
            formula = length * activation_bytes_per_token_layer(s, bf16=False) + shared
            rows.append(f"| {length} | {r['growth'] / layers / 1e6:.1f} | {formula / 1e6:.1f} |")
        return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formula-only", action="store_true")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child-train", nargs=3, metavar=("BASE", "MODE", "OUT"))
    parser.add_argument("--child-act", nargs=2, metavar=("BASE", "LENGTH"))
    args = parser.parse_args()
    if args.child_train:
        return child_train(*args.child_train)
    if args.child_act:
        return child_activations(args.child_act[0], int(args.child_act[1]))
    print(formula_table())
    if not args.formula_only:
        print()
        print(measured(args.layers))


if __name__ == "__main__":
    main()
