"""python benchmarks/probes/mm_dobench_rounds.py [--rounds 8]  (one GPU; twenty-sixth session)

Is a low do_bench cell in `bench_matmul.py --models` the kernel or the timing? The same call read
0.47-0.96 of cuBLAS over three do_bench rounds in one run (GPT-2 attn c_proj at M = 1), where
torch.mm in the mode, the same kernel behind more host work, read 0.95-1.07. Per cell and round,
triton.testing.do_bench (as bench_matmul.py: 256 MB zeroed before each call, rotating buffers)
of cuBLAS, detllm_kernels.mm and torch.mm in batch_invariant(), in that order, each call's times
kept (return_mode="all"): per round the median and the 10th / 90th percentiles in us, and the
median ratio; at the end the ratio of the pooled medians over all rounds.

``--only PREFIX`` keeps the cells whose label starts with it; ``--group-m G ...`` adds one km.mm
row per G, the production tile with that GROUP_M (same bits: the grouping only orders the
tiles; the script checks), timed in the same rounds (twenty-eighth session)."""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import triton

import detllm_kernels as km
from detllm_kernels.matmul import matmul_config
from pytest_detllm import batch_invariant

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_matmul import bench_times, rotating_buffers  # noqa: E402  (the table's own do_bench)

# (M, K, N, weight stored (K, N), label)
CELLS = ((1, 768, 768, True, "gpt2 attn c_proj"), (1024, 768, 768, True, "gpt2 attn c_proj"),
         (1024, 3072, 768, True, "gpt2 mlp c_proj"), (1024, 4096, 14336, False, "llama-8b gate/up"),
         (1024, 4096, 1024, False, "llama-8b k/v"), (1024, 4096, 1024, True, "x @ W 4096 x 1024"))


def times(fn: Callable[[int], object], nbuf: int) -> list[float]:
    return [t * 1e3 for t in bench_times(fn, nbuf)]


def q(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--only", nargs="+", metavar="PREFIX")
    ap.add_argument("--group-m", type=int, nargs="+", default=[])
    args = ap.parse_args()
    dt = torch.bfloat16
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    extra = "".join(f" | GROUP_M={g}" for g in args.group_m)
    print(f"# per round, us: median [p10, p90] for cuBLAS | km.mm | torch.mm in the mode{extra}; ratios of the medians")
    for m, k, n, kn, label in CELLS:
        if args.only and not label.startswith(tuple(args.only)):
            continue
        nbuf = rotating_buffers(k, n)
        ws = [torch.randn(k, n, device="cuda", dtype=dt) if kn else torch.randn(n, k, device="cuda", dtype=dt).t()
              for _ in range(nbuf)]
        xs = [torch.randn(m, k, device="cuda", dtype=dt) for _ in range(nbuf)]
        fns = [lambda i: torch.mm(xs[i], ws[i]), lambda i: km.mm(xs[i], ws[i])]
        cfgs = [dataclasses.replace(matmul_config(m, n, dt, kn, k), group_m=g) for g in args.group_m]
        ref = km.mm(xs[0], ws[0])
        same = all(torch.equal(km.mm(xs[0], ws[0], config=c), ref) for c in cfgs)
        pooled: list[list[float]] = [[] for _ in range(3 + len(cfgs))]
        print(f"{label} M={m} K={k} N={n}" + ("" if same else "  OTHER BITS"), flush=True)
        for r in range(args.rounds):
            row = [times(f, nbuf) for f in fns]
            with batch_invariant("cuda"), torch.inference_mode():
                row.append(times(lambda i: torch.mm(xs[i], ws[i]), nbuf))
            row += [times(lambda i, c=c: km.mm(xs[i], ws[i], config=c), nbuf) for c in cfgs]
            meds = [statistics.median(t) for t in row]
            for p, t in zip(pooled, row):
                p.extend(t)
            cells = " | ".join(f"{md:6.1f} [{q(t, 0.1):6.1f}, {q(t, 0.9):6.1f}]" for md, t in zip(meds, row))
            ratios = " / ".join(f"{meds[0] / x:.2f}" for x in meds[1:])
            print(f"  round {r}: {cells}   ratios {ratios}", flush=True)
        pm = [statistics.median(p) for p in pooled]
        print(f"  pooled medians {' / '.join(f'{x:.1f}' for x in pm)} us: ratios "
              + " / ".join(f"{pm[0] / x:.2f}" for x in pm[1:]), flush=True)
        del xs, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
