"""Greedy decode speed: the plugin's engine vs what a user would otherwise run, one run, one card.

    python benchmarks/bench_generate.py --shape llama8b --batches 1 16 --prompt-len 256 --new 64

Four ways to generate the same tokens from a random-weight model of a real shape (hub
unreachable; timing needs shapes, not facts):

* ``hf``            stock transformers ``model.generate`` (sdpa, cuBLAS): the baseline a user has;
* ``hf+inv``        the same ``generate`` inside ``pytest_detllm.batch_invariant()``;
* ``engine-stock``  the plugin's engine with stock kernels (the fuzz's negative control);
* ``engine-inv``    the plugin's engine under the invariant kernels (what ``llm()`` runs);
* ``engine-inv-qkv`` the same with only the q/k/v fusion (gate/up two products, RMSNorm and rotary
                    transformers' eager ops: DETLLM_FUSE_{GATE_UP,NORM,ROPE}=0), the sixth session's engine.

Decode ms/token = (time of N new tokens - time of 1 new token) / (N - 1): prefill excluded. The
floor is the time to read every weight once per step at the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "llama8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                    max_position_embeddings=8192, tie_word_embeddings=False),
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                    max_position_embeddings=8192, tie_word_embeddings=True),
}
MODES = ("hf", "hf+inv", "engine-stock", "engine-inv", "engine-inv-qkv")


def build(shape: str, dtype: torch.dtype, device: torch.device, layers: int | None):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    torch.manual_seed(0)
    with device:  # weights born on the device: an 8B model never touches host memory
        model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=dtype)
    return model.eval()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    if device.type != "cuda":
        return float("nan")
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (time.perf_counter() - t)


def profile_step(run, new: int) -> None:  # type: ignore[no-untyped-def]
    """Where a decode step's GPU time goes (kernels inside the replayed graphs included)."""
    from torch.profiler import ProfilerActivity, profile

    run(new)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(new)
        torch.cuda.synchronize()
    stats: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            s = stats.setdefault(ev.name[:60], [0, 0.0])
            s[0] += 1
            s[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    total = sum(v[1] for v in stats.values())
    print(f"    profile: {total / new / 1000:.2f} ms GPU time per generated token, "
          f"{sum(v[0] for v in stats.values()) / new:.0f} kernels per token")
    for name, (n, us) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:14]:
        print(f"      {us / total * 100:5.1f}%  {n / new:6.1f}/token  {us / n:8.1f} us  {name}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--profile", action="store_true", help="print the engine's top GPU kernels per decode step")
    args = ap.parse_args()
    # The native front (DETLLM_NATIVE) is built on first use, in the background by default: wait for
    # it, so every repeat measures the steady state.
    os.environ.setdefault("DETLLM_NATIVE", "wait")

    from pytest_detllm import batch_invariant
    from pytest_detllm.engine import Engine, Request

    dev = torch.device(args.device)
    model = build(args.shape, getattr(torch, args.dtype), dev, args.layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(dev)
    floor_ms = weight_bytes / bw * 1e3
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{args.shape}{f' ({args.layers} layers)' if args.layers else ''}: {weight_bytes / 1e9:.2f} GB of weights, "
          f"{args.dtype}, {card}, torch {torch.__version__}; prompt {args.prompt_len}, {args.new} new tokens, greedy")
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s -> weights-read floor {floor_ms:.2f} ms/token", flush=True)
    g = torch.Generator().manual_seed(1)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def runner(mode: str, ids: torch.Tensor):  # type: ignore[no-untyped-def]
        if mode.startswith("hf"):
            def run(n: int) -> None:
                ctx = batch_invariant(dev.type) if mode == "hf+inv" else contextlib.nullcontext()
                with ctx, torch.inference_mode():
                    model.generate(ids.to(dev), attention_mask=torch.ones_like(ids, device=dev), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
            return run
        off = ("DETLLM_FUSE_GATE_UP", "DETLLM_FUSE_NORM", "DETLLM_FUSE_ROPE") if mode == "engine-inv-qkv" else ()
        saved = {k: os.environ.get(k) for k in off}
        os.environ.update({k: "0" for k in off})
        try:
            eng = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=mode.startswith("engine-inv"))
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v
        if mode.startswith("engine-inv") and dev.type == "cuda":
            impl = eng._impl
            print(f"    {mode}: fused {len(getattr(impl, '_qkv', []))} projection groups, {len(getattr(impl, '_norms', []))} "
                  f"RMSNorms, {len(getattr(impl, '_ropes', []))} rotary", flush=True)
        reqs = [tuple(r) for r in ids.tolist()]
        return lambda n: eng.generate([Request(r, n) for r in reqs], keep_logits=[0])

    rows = []
    for bsz in args.batches:
        ids = torch.randint(100, 100000, (bsz, args.prompt_len), generator=g)
        runs = {}
        for mode in args.modes:
            runs[mode] = runner(mode, ids)
            runs[mode](args.new)  # warm-up: compile, capture graphs, allocate
        # Interleaved: every repeat times each mode once, the order rotating, so a burst of host
        # noise (a shared runner's other tenants) lands on every mode alike instead of on whichever
        # mode was being timed then (sequential blocks gave hf+inv 1.06x and 1.77x on one host).
        step_ms: dict[str, list[float]] = {m: [] for m in args.modes}
        whole: dict[str, list[float]] = {m: [] for m in args.modes}
        for r in range(args.repeats):
            order = args.modes[r % len(args.modes):] + args.modes[:r % len(args.modes)]
            for mode in order:
                took = {}
                for n in (args.new, 1):
                    sync()
                    t = time.perf_counter()
                    runs[mode](n)
                    sync()
                    took[n] = time.perf_counter() - t
                step_ms[mode].append((took[args.new] - took[1]) / (args.new - 1) * 1e3)
                whole[mode].append(took[args.new])
        res = {}
        for mode in args.modes:
            ratios = ([a / b for a, b in zip(step_ms[mode], step_ms["hf"])] if "hf" in step_ms
                      else [float("nan")])
            res[mode] = (statistics.median(step_ms[mode]), statistics.median(ratios))
            print(f"  batch {bsz:>3} {mode:<13} decode {res[mode][0]:8.2f} ms/token (runs "
                  f"{' '.join(f'{x:.2f}' for x in step_ms[mode])})   whole call {statistics.median(whole[mode]):7.3f} s",
                  flush=True)
        del runs
        rows.append((bsz, res))
        if args.profile and dev.type == "cuda":
            profile_step(runner("engine-inv", ids), args.new)
    print(f"\n{card}, {args.shape}: decode ms/token, median of {args.repeats} interleaved repeats (median of the "
          f"per-repeat ratios to stock transformers generate; x floor {floor_ms:.2f} ms)")
    print(f"{'batch':>5} " + " ".join(f"{m:>22}" for m in args.modes))
    for bsz, res in rows:
        cells = [f"{res[m][0]:7.2f} ({res[m][1]:4.2f}x, {res[m][0] / floor_ms:4.2f}F)" for m in args.modes]
        print(f"{bsz:>5} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
