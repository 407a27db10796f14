"""python benchmarks/probes/gluon_mm_narrow.py [--ptxas]  (twenty-sixth session)

The Gluon matmul's narrow tile (kernels/matmul_gluon.py, `NARROW_BN`): 64 x 96, one consumer
warpgroup, pieces of 64 and 32 columns, production's k16 chain. For GPT-2's N = 768 products at
M = 1024 the 128 x 192 tiles are 32 for 132 SMs and the Triton kernel's 64 x 128 tiles 96; the
narrow tile makes 128, each a quarter smaller (issue 10: mlp c_proj and attn c_proj at M = 1024
read 0.87-0.95 of cuBLAS under do_bench, session 25).

Without --ptxas (GPU): per GPT-2 shape, both weight layouts, M in --ms: cuBLAS, production, and
narrow cells (ring slots, output by TMA): bits against the Triton kernel, ratio to cuBLAS under
do_bench (Triton's launch wrapper: host-bound) and over CUDA graphs (the kernel's own time).
--ptxas (no GPU): registers, spills, shared memory for sm_90a."""
from __future__ import annotations

import argparse

import torch

from gluon_mm_192 import _args, _const, mm_tile
from detllm_kernels import matmul_gluon as mg

# (ring slots, tile width, output by TMA)
CELLS = ((4, 96, False), (6, 96, False), (8, 96, False), (6, 96, True), (4, 96, True))


def _name(cell: tuple[int, int, bool]) -> str:
    return f"64x{cell[1]} s{cell[0]}{' c-tma' if cell[2] else ''}"


def _ptxas() -> None:
    from _common import gluon_mm_resources

    m, k, n = 1024, 3072, 768
    for nk in (False, True):
        a = torch.empty((m, k), dtype=torch.bfloat16)
        b = torch.empty((n, k), dtype=torch.bfloat16).t() if nk else torch.empty((k, n), dtype=torch.bfloat16)
        out = torch.empty((m, n), dtype=torch.bfloat16)
        for cell in CELLS:
            args, nk_, _ = _args(a, b, out, cell[1], cell[2])
            gluon_mm_resources(mg._mm192_kernel, args[2:7], _const(nk_, False, cell),
                               f"{'x @ W.t()' if nk else 'x @ W'} {_name(cell)}")


def _gpu(ms: list[int]) -> None:
    from _common import GPT2_MM_SHAPES, mm_table

    def run(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int, bool]) -> "object | None":
        return None if b.shape[1] % cell[1] else (lambda: mm_tile(a, b, cell))

    mm_table(run, CELLS, _name, shapes=GPT2_MM_SHAPES, layouts=(False, True), ms=ms)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas", action="store_true", help="compile for sm_90a here and report resources (no GPU)")
    ap.add_argument("--ms", type=int, nargs="+", default=[512, 1024, 2048])
    args = ap.parse_args()
    _ptxas() if args.ptxas else _gpu(args.ms)
