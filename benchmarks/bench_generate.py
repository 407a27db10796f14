"""Greedy generation time under the invariant mode vs stock kernels, one run, one card.

    python benchmarks/bench_generate.py [--device cuda] [--dtype bfloat16] [--batches 1 8 32]

A random-weight model of Llama-3.2-1B's shape (hub unreachable; timing needs shapes, not facts).
Stock uses transformers' default attention (sdpa); invariant uses detllm's attention and kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                max_position_embeddings=8192, tie_word_embeddings=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a quick CPU run")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, LlamaConfig

    from pytest_detllm.engine import Engine, Request

    cfg = dict(LLAMA_1B)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=getattr(torch, args.dtype))
    dev = torch.device(args.device)
    model = model.to(dev).eval()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"Llama-3.2-1B-shaped random model ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params), "
          f"{args.dtype}, {name}, torch {torch.__version__}, prompt {args.prompt_len}, {args.new} new tokens")
    g = torch.Generator().manual_seed(1)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"{'batch':>5} {'stock s':>9} {'invariant s':>12} {'ratio':>7}")
    for bsz in args.batches:
        reqs = [Request(tuple(torch.randint(100, 100000, (args.prompt_len,), generator=g).tolist()), args.new)
                for _ in range(bsz)]
        times = {}
        for mode in ("stock", "invariant"):
            eng = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=mode == "invariant")
            eng.generate([Request(r.input_ids, 4) for r in reqs])  # warm-up: compile, autotune, caches
            ts = []
            for _ in range(args.repeats):
                sync()
                t = time.perf_counter()
                eng.generate(reqs)
                sync()
                ts.append(time.perf_counter() - t)
            times[mode] = statistics.median(ts)
        print(f"{bsz:>5} {times['stock']:>9.3f} {times['invariant']:>12.3f} {times['invariant'] / times['stock']:>6.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
