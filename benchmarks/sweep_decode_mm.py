"""Decode-size (M <= 16, or --ms up to 64) matmul tile sweep: which BLOCK_N / BLOCK_K / stages / warps stream a weight
fastest, and does every candidate give the default config's bits?

    python benchmarks/sweep_decode_mm.py [--json FILE] [--engine] [--only 8b gpt2]

GPU time per call over CUDA graphs (no host overhead), against cuBLAS (torch.mm) timed the same
way, for the Llama-3-8B linear shapes as nn.Linear weights ((N, K), read as W.t()) and GPT-2's
Conv1D shapes ((K, N) weights, read as x @ W). Reports TB/s of weight read. Every candidate's
output at M=16 is compared bitwise with the default config's (the K loop is the same chain of
k16 MMA steps, so a mismatch would be a bug). --engine then times the 8B-shaped engine decode
with the default table and with the sweep's best config per N patched in (benchmark only).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import detllm_kernels as km  # noqa: E402
from detllm_kernels import matmul as kmm  # noqa: E402
from detllm_kernels.matmul import MatmulConfig  # noqa: E402

SHAPES = [(4096, 4096, "NK", "8b q/o"), (4096, 1024, "NK", "8b k/v"), (4096, 14336, "NK", "8b gate/up"),
          (14336, 4096, "NK", "8b down"), (4096, 128256, "NK", "8b lm_head"),
          (576, 576, "NK", "smollm2 q/o"), (576, 1536, "NK", "smollm2 gate/up"), (1536, 576, "NK", "smollm2 down"),
          (576, 49152, "NK", "smollm2 lm_head"),
          # the engine's fused products (engine/fuse.py): q/k/v and gate/up as one weight
          (4096, 6144, "NK", "8b qkv fused"), (4096, 28672, "NK", "8b gate_up fused"),
          (576, 960, "NK", "smollm2 qkv fused"), (576, 3072, "NK", "smollm2 gate_up fused"),
          (768, 2304, "KN", "gpt2 c_attn"), (768, 3072, "KN", "gpt2 c_fc"), (3072, 768, "KN", "gpt2 c_proj"),
          (768, 768, "KN", "gpt2 attn c_proj"),
          (4096, 4096, "KN", "x@W 4096")]


def deep_candidates(m: int) -> list[MatmulConfig]:
    """--deep: narrow tiles with long K steps and deep pipelines, by pointers and by TMA (more
    bytes in flight per program where N / BLOCK_N programs leave SMs idle: Llama k/v, GPT-2 c_proj)."""
    if m > 16:  # 64-row tiles read the weight once; 16-row ones four times (from L2) with 4x the programs
        return [MatmulConfig(bm, bn, 8, 4, st, False, bk, tma)
                for bm, bn, bk, st, tma in itertools.product((16, 64), (16, 32), (256, 512), (4, 6), (False, True))
                if (bm + bn) * bk * st * 2 <= 200 << 10]
    return [MatmulConfig(16, bn, 8, w, st, False, bk, tma)
            for bn, bk, st, w, tma in itertools.product((16, 32), (256, 512), (3, 4, 6, 8), (4, 8), (False, True))
            if (16 + bn) * bk * st * 2 <= 200 << 10]


def candidates(tma: bool = False) -> list[MatmulConfig]:
    """Pointer-load configs; with tma also TMA-load ones (a (K, N) weight read N-contiguous by
    pointers is the slow case: GPT-2's Conv1D at decode)."""
    out = [MatmulConfig(16, bn, 8, w, st, False, bk, True)
           for bn, bk, st, w in itertools.product((32, 64, 128), (64, 128, 256), (3, 4), (4,))] if tma else []
    out += [MatmulConfig(16, bn, 8, w, st, False, bk, False)
           for bn, bk, st, w in itertools.product((16, 32, 64, 128), (128, 256), (4, 6), (4,))]
    out += [MatmulConfig(16, bn, 8, w, 4, False, 128, False) for bn in (16, 32, 64) for w in (2, 8)]
    out += [MatmulConfig(16, 256, 8, 8, st, False, 64, False) for st in (4, 6)]
    return out


def graph_us(fn, nbuf: int) -> float:  # type: ignore[no-untyped-def]
    it = itertools.count()
    return triton.testing.do_bench_cudagraph(lambda: fn(next(it) % nbuf), rep=60, return_mode="median") * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write every timing and the best config per shape here")
    ap.add_argument("--engine", action="store_true", help="time the 8B engine decode with the best configs")
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tma", action="store_true", help="also TMA-load candidates")
    ap.add_argument("--deep", action="store_true", help="narrow tiles, K steps of 256-512, 3-8 stages (deep_candidates)")
    ap.add_argument("--only", nargs="+", metavar="PREFIX", help="shapes whose label starts with one of these (8b, smollm2, gpt2)")
    args = ap.parse_args()
    dt = torch.bfloat16
    card = torch.cuda.get_device_name()
    print(f"# {card} | torch {torch.__version__} | triton {triton.__version__} | bf16, GPU time over CUDA graphs")
    rows, best = [], {}
    cands = candidates(args.tma)
    for k, n, layout, label in SHAPES:
        if args.only and not label.startswith(tuple(args.only)):
            continue
        nbuf = max(2, min(8, (256 << 20) // (n * k * 2) + 1))
        base = [torch.randn(n, k, device="cuda", dtype=dt) for _ in range(nbuf)]
        ws = [w.t() for w in base] if layout == "NK" else [w.reshape(k, n) for w in base]
        gb = n * k * 2 / 1e9
        x16 = torch.randn(16, k, device="cuda", dtype=dt)
        ref_bits = km.mm(x16, ws[0])
        for m in args.ms:
            xs = [torch.randn(m, k, device="cuda", dtype=dt) for _ in range(nbuf)]
            t_cu = graph_us(lambda i: torch.mm(xs[i], ws[i]), nbuf)
            t_def = graph_us(lambda i: km.mm(xs[i], ws[i]), nbuf)
            line = {"shape": label, "K": k, "N": n, "layout": layout, "M": m, "cublas_us": t_cu, "default_us": t_def,
                    "default": repr(kmm.matmul_config(m, n, dt, layout == "KN", k)), "cands": []}
            for c in (deep_candidates(m) if args.deep else cands):
                try:
                    t = graph_us(lambda i: km.mm(xs[i], ws[i], config=c), nbuf)
                    same = bool(torch.equal(km.mm(x16, ws[0], config=c), ref_bits))
                except Exception as exc:  # a config that does not compile/fit is reported, not fatal
                    line["cands"].append({"cfg": repr(c), "error": f"{type(exc).__name__}: {str(exc)[:80]}"})
                    continue
                line["cands"].append({"cfg": repr(c), "us": t, "same_bits": same})
            ok = [c for c in line["cands"] if "us" in c]
            top = min(ok, key=lambda c: c["us"])
            bad = [c["cfg"] for c in ok if not c["same_bits"]]
            # the fastest pointer-load candidate too: a (K, N) weight's TMA descriptors cost host time
            ptr = [c for c in ok if "tma=False" in c["cfg"]]
            top_ptr = min(ptr, key=lambda c: c["us"]) if ptr else top
            print(f"{label:<16} {layout} K={k:>5} N={n:>6} M={m:>2}: cuBLAS {t_cu:7.1f} us ({gb / t_cu * 1e3:4.2f} TB/s)"
                  f" | default {t_def:7.1f} ({gb / t_def * 1e3:4.2f}) | best {top['us']:7.1f} "
                  f"({gb / top['us'] * 1e3:4.2f}) {top['cfg']} | bits differ: {len(bad)}"
                  f" | best ptr {top_ptr['us']:7.1f} {top_ptr['cfg']}", flush=True)
            for b in bad:
                print(f"    BITS DIFFER: {b}")
            rows.append(line)
            best[(n, layout, m)] = (top["cfg"], top["us"])
        del base, ws
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "rows": rows}, indent=1))
    if args.engine:
        engine_compare(rows)
    return 0


def engine_compare(rows: list[dict]) -> None:
    """8B engine decode: default table vs the best config per (N, layout NK) summed over M=1 and 16."""
    import time

    import bench_generate as bg  # type: ignore[import-not-found]
    from pytest_detllm.engine import Engine, Request

    table: dict[int, MatmulConfig] = {}
    for n in {r["N"] for r in rows if r["layout"] == "NK"}:
        cand_us: dict[str, float] = {}
        for r in rows:
            if r["N"] == n and r["layout"] == "NK":
                for c in r["cands"]:
                    if "us" in c and c["same_bits"]:
                        cand_us[c["cfg"]] = cand_us.get(c["cfg"], 0.0) + c["us"]
        table[n] = eval(min(cand_us, key=cand_us.get), {"MatmulConfig": MatmulConfig})  # our own repr
    print("engine table:", {n: repr(c) for n, c in sorted(table.items())})
    default = kmm.matmul_config

    def tuned(m: int, n: int, dtype: torch.dtype) -> MatmulConfig:
        return table[n] if (m <= 16 and n in table and dtype == torch.bfloat16) else default(m, n, dtype)

    dev = torch.device("cuda")
    model = bg.build("llama8b", torch.bfloat16, dev, None)
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor = wbytes / bg.copy_bandwidth(dev) * 1e3
    g = torch.Generator().manual_seed(1)
    for bsz in (1, 16):
        ids = torch.randint(100, 100000, (bsz, 256), generator=g).tolist()
        for name, fn in (("default", default), ("tuned", tuned), ("default", default), ("tuned", tuned)):
            kmm.matmul_config = fn
            eng = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=True)
            run = lambda n: eng.generate([Request(tuple(r), n) for r in ids], keep_logits=[0])  # noqa: E731
            run(64)
            ts = {}
            for n in (64, 1, 64, 1):
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = run(n)
                torch.cuda.synchronize()
                ts.setdefault(n, []).append(time.perf_counter() - t)
            ms = (min(ts[64]) - min(ts[1])) / 63 * 1e3
            print(f"  8B engine-inv batch {bsz:>2} {name:<8} {ms:6.2f} ms/token ({ms / floor:4.2f}x floor {floor:.2f})"
                  f" first tokens {out[0].token_ids[:4]}", flush=True)
    kmm.matmul_config = default


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
