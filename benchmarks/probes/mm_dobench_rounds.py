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
tiles; the script checks), timed in the same rounds (twenty-eighth session). ``--tile SPEC ...``
adds one row per tile spec, ``BMxBNxBK:wW:sS[:gG][:persistent][:ptr]`` (e.g. ``64x64x128:w4:s3``),
checked for the same bits. Both kinds of extra row run as the mode would run them were that tile
the table's entry: the lean launch km.mm binds (`bound_launch`), not the general path behind an
explicit config, whose host tails do_bench would time (twenty-ninth session)."""
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
import detllm_kernels.matmul as kmm
from detllm_kernels.matmul import MatmulConfig, matmul_config
from pytest_detllm import batch_invariant

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_matmul import bench_times, rotating_buffers  # noqa: E402  (the table's own do_bench)

# (M, K, N, weight stored (K, N), label)
CELLS = ((1, 768, 768, True, "gpt2 attn c_proj"), (1024, 768, 768, True, "gpt2 attn c_proj"),
         (1024, 3072, 768, True, "gpt2 mlp c_proj"), (1024, 4096, 14336, False, "llama-8b gate/up"),
         (1024, 4096, 1024, False, "llama-8b k/v"), (1024, 4096, 1024, True, "x @ W 4096 x 1024"))


def parse_tile(spec: str) -> MatmulConfig:
    """``BMxBNxBK:wW:sS[:gG][:persistent][:ptr]`` -> MatmulConfig (group 8, one program per tile, TMA
    unless said otherwise)."""
    head, *opts = spec.split(":")
    bm, bn, bk = (int(v) for v in head.split("x"))
    kw = {o[0]: int(o[1:]) for o in opts if o[0] in "wsg" and o[1:].isdigit()}
    return MatmulConfig(bm, bn, kw.get("g", 8), kw.get("w", 4), kw.get("s", 4), persistent="persistent" in opts,
                        block_k=bk, tma="ptr" not in opts)


def bound_launch(x: torch.Tensor, w: torch.Tensor, cfg: MatmulConfig) -> Callable[..., torch.Tensor]:
    """km.mm's lean launch for (x, w) bound with `cfg` as the table's entry (matmul_config patched for
    the one binding call; the plan and launch tables emptied around it, so production's entries
    neither serve it nor keep it). Bound under triton_kernel_only(), so a shape the Gluon tile
    would take still runs `cfg`. Called as f(None, a, b, 0, a.data_ptr(), b.data_ptr()) for
    operands shaped, strided and aligned as (x, w)."""
    saved = kmm.matmul_config
    kmm._LEAN.clear()
    kmm._PLANS.clear()
    kmm.matmul_config = lambda *_a, **_k: cfg
    try:
        with kmm.triton_kernel_only():
            km.mm(x, w)  # the general path's first call plans and compiles; lean binds the launch
            f = km.mm_lean(x, w)
    finally:
        kmm.matmul_config = saved
        kmm._LEAN.clear()
        kmm._PLANS.clear()
    if f is None:
        raise SystemExit(f"no lean launch for {cfg}")
    return f


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
    ap.add_argument("--tile", nargs="+", default=[], metavar="SPEC")
    args = ap.parse_args()
    dt = torch.bfloat16
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    extra = "".join(f" | GROUP_M={g}" for g in args.group_m) + "".join(f" | {t}" for t in args.tile)
    print(f"# per round, us: median [p10, p90] for cuBLAS | km.mm | torch.mm in the mode{extra}; ratios of the medians")
    for m, k, n, kn, label in CELLS:
        if args.only and not label.startswith(tuple(args.only)):
            continue
        nbuf = rotating_buffers(k, n)
        ws = [torch.randn(k, n, device="cuda", dtype=dt) if kn else torch.randn(n, k, device="cuda", dtype=dt).t()
              for _ in range(nbuf)]
        xs = [torch.randn(m, k, device="cuda", dtype=dt) for _ in range(nbuf)]
        fns = [lambda i: torch.mm(xs[i], ws[i]), lambda i: km.mm(xs[i], ws[i])]
        cfgs = ([dataclasses.replace(matmul_config(m, n, dt, kn, k), group_m=g) for g in args.group_m]
                + [parse_tile(t) for t in args.tile])
        ref = km.mm(xs[0], ws[0], lean=False)
        bound = [bound_launch(xs[0], ws[0], c) for c in cfgs]
        same = all(torch.equal(f(None, xs[0], ws[0], 0, xs[0].data_ptr(), ws[0].data_ptr()), ref) for f in bound)
        pooled: list[list[float]] = [[] for _ in range(3 + len(cfgs))]
        print(f"{label} M={m} K={k} N={n}" + ("" if same else "  OTHER BITS"), flush=True)
        for r in range(args.rounds):
            row = [times(f, nbuf) for f in fns]
            with batch_invariant("cuda"), torch.inference_mode():
                row.append(times(lambda i: torch.mm(xs[i], ws[i]), nbuf))
            row += [times(lambda i, f=f: f(None, xs[i], ws[i], 0, xs[i].data_ptr(), ws[i].data_ptr()), nbuf)
                    for f in bound]
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
