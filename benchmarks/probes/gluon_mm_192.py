"""python benchmarks/probes/gluon_mm_192.py [--ptxas]  (twentieth and twenty-first sessions)

The Hopper short-K prefill matmul in Gluon (kernels/matmul_gluon.py): the production matmul's k16
chain in 128 x 192 tiles, two accumulators (64 x 128 and 64 x 64) per consumer warpgroup. This
probe tuned it: written in the twentieth session with its own copy of the kernel, run on an H100
in the twenty-first (docs/results/gluon_mm_192_probe_h100_session21.log: every cell the
production bits; over CUDA graphs 0.96-1.04 of cuBLAS at M = 4096-8192, where the Triton kernel
ran 0.79-0.89), then moved into production. It now sweeps the production kernel's ring depth.

Without --ptxas (GPU): for GPT-2's four shapes in both weight layouts, the production kernel
launched with 3, 4 and 5 ring slots (`matmul_gluon.STAGES` is 4): bits against the Triton
kernel, ratio to cuBLAS under do_bench (Triton's launch wrapper, host included) and over CUDA
graphs, next to `detllm_kernels.mm` (the route production takes: Gluon where `usable` holds).
--ptxas (no GPU): registers, spills, shared memory from Triton's ptxas for sm_90a."""
from __future__ import annotations

import sys
import torch
import triton

from detllm_kernels import matmul_gluon as mg



def _args(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bn: int, c_tma: bool) -> tuple[tuple, bool, int]:
    """(kernel arguments, B_NK, tiles) of out = a @ b in 128 x bn tiles as `matmul_gluon.gluon_mm`
    passes them, C's descriptors with the output by TMA."""
    (m, k), n = a.shape, b.shape[1]
    sa, sb = (0, *a.stride()), (0, *b.stride())
    nk = bool(mg._b_nk(sb, a.element_size()))
    va, vb1, vb2 = mg._views(m, n, k, sa, sb, nk, bn)
    cd = tuple(mg._descriptor(out, *v) for v in mg._c_views(m, n, bn)) if c_tma else (None, None)
    ints = mg._ints(m, n, k, (0, 0, 0), bn)
    return ((out, out, mg._descriptor(a, *va), mg._descriptor(b, *vb1), mg._descriptor(b, *vb2), *cd, *ints),
            nk, ints[6])


def _const(nk: bool, has_x: bool, cell: tuple[int, int, bool]) -> dict[str, object]:
    stages, bn, c_tma = cell
    return mg._meta(nk, has_x, bn, c_tma, stages, pdl=False)


def mm_tile(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int, bool]) -> torch.Tensor:
    """a @ b by the production kernel with cell = (ring slots, tile width, output by TMA), no bias,
    through Triton's launch."""
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    args, nk, tiles = _args(a, b, out, cell[1], cell[2])
    grid = (min(tiles, torch.cuda.get_device_properties(a.device).multi_processor_count), )
    mg._mm192_kernel[grid](*args, **_const(nk, False, cell), num_warps=4)
    return out


# (ring slots, tile width, output by TMA) of the sweep; 144 only where N is a multiple of it (c_attn)
SWEEP = ((3, 192, False), (4, 192, False), (5, 192, False), (4, 192, True), (4, 144, False), (4, 144, True))


def _name(cell: tuple[int, int, bool]) -> str:
    return f"{cell[1]} s{cell[0]}{' c-tma' if cell[2] else ''}"


def _ptxas() -> None:
    from _common import gluon_mm_resources

    print(f"triton {triton.__version__}, sm_90a, bf16 128 x 192 / 144 tiles (Gluon, kernels/matmul_gluon.py)",
          flush=True)
    a = torch.empty(1024, 768, dtype=torch.bfloat16)
    for nk in (False, True):
        w = torch.empty((2304, 768) if nk else (768, 2304), dtype=torch.bfloat16)
        for cell in SWEEP:
            args, _nk, _tiles = _args(a, w.t() if nk else w, torch.empty(1024, 2304, dtype=torch.bfloat16), cell[1],
                                      cell[2])
            for has_x in (False, True):
                gluon_mm_resources(mg._mm192_kernel, args[2:7], _const(nk, has_x, cell),
                                   f"{'x @ W.t() (N, K)' if nk else 'x @ W (K, N)'}{' + bias' if has_x else ''} "
                                   f"{_name(cell)}")


def _gpu() -> None:
    from _common import GPT2_MM_SHAPES, mm_table

    def run(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int, bool]) -> "object | None":
        return None if b.shape[1] % cell[1] else (lambda: mm_tile(a, b, cell))

    mm_table(run, SWEEP, _name, shapes=GPT2_MM_SHAPES, layouts=(False, True))


def main() -> None:
    from _common import gluon_probe_main

    gluon_probe_main(__doc__, _ptxas, _gpu)


if __name__ == "__main__":
    sys.exit(main())
