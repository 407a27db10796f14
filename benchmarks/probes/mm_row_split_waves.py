"""python benchmarks/probes/mm_row_split_waves.py [--rounds 5]  (one Hopper GPU; twenty-sixth session)

Llama-3-8B gate/up at M = 1024 reads 0.88-0.91 of cuBLAS under do_bench and 0.90-0.93 over CUDA
graphs (docs/benchmarks.md, sessions 25-26). Its 128x256 tiles are 8 x 56 = 448 for 132 SMs: three
full waves and 52 tiles (a last wave 39 % full). `matmul.row_split` trims such a tail only after one
or two full waves (ROW_SPLIT_MAX_WAVES = 2: c_attn at M = 8192, four waves, did not gain). Here the
split that rule would give with three waves allowed (the first 896 rows, 392 tiles, in the persistent
128x256 kernel; the other 128 rows in a second launch of smaller tiles), and neighbours, against
cuBLAS and production: ratio to cuBLAS under do_bench (median of paired rounds, and their spread)
and over CUDA graphs; a split whose output is not production's bits is marked."""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import detllm_kernels as km
from detllm_kernels.matmul import MatmulConfig, _launch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_matmul import bench, graph_ms  # noqa: E402

RESTS = {"128x128 w8": MatmulConfig(128, 128, 8, 8, 4, persistent=False),
         "64x128x128": MatmulConfig(64, 128, 8, 4, 4, persistent=False, block_k=128),
         "64x256 s3": MatmulConfig(64, 256, 8, 8, 3, persistent=False),
         "128x256 grid": MatmulConfig(128, 256, 8, 8, 4, persistent=False)}
SHAPES = ((1024, 4096, 14336, "llama-8b gate/up"),)


def split_fn(xs, ws, m, n, k, first, rest):  # type: ignore[no-untyped-def]
    outs = [torch.empty((m, n), device="cuda", dtype=xs[0].dtype) for _ in xs]

    def fn(i: int) -> torch.Tensor:
        a, b, out = xs[i], ws[i], outs[i]
        sa, sb, sc, sx = (0, *a.stride()), (0, *b.stride()), (0, n, 1), (0, 0, 0)
        _launch(a, b, out, None, 1, first, n, k, sa, sb, sc, sx, 1.0, 0.0, MatmulConfig(128, 256, 8, 8, 4), None)
        _launch(a[first:], b, out[first:], None, 1, m - first, n, k, sa, sb, sc, sx, 1.0, 0.0, rest, None)
        return out
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    for m, k, n, label in SHAPES:
        nbuf = 4
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16).t() for _ in range(nbuf)]
        ref = km.mm(xs[0], ws[0])
        cub = lambda i: torch.mm(xs[i], ws[i])  # noqa: E731
        variants = [("production", lambda i: km.mm(xs[i], ws[i]))]
        for first in (896, 768):
            for name, rest in RESTS.items():
                variants.append((f"split {first} + {name}", split_fn(xs, ws, m, n, k, first, rest)))
        print(f"{label} M={m} K={k} N={n}", flush=True)
        for name, fn in variants:
            same = torch.equal(fn(0), ref)
            rounds = []
            for _ in range(args.rounds):
                rounds.append(bench(cub, nbuf) / bench(fn, nbuf))
            g = graph_ms(cub, nbuf) / graph_ms(fn, nbuf)
            print(f"  {name:<28} do_bench {statistics.median(rounds):.2f} ({min(rounds):.2f}-{max(rounds):.2f}) "
                  f"graph {g:.2f}{'' if same else '  OTHER BITS'}", flush=True)


if __name__ == "__main__":
    main()
