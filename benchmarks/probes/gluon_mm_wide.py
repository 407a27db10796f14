"""python benchmarks/probes/gluon_mm_wide.py [--ptxas]  (twenty-third session)

Can the Gluon matmul (kernels/matmul_gluon.py, production's k16 chain) serve 8B prefill shapes,
where the Triton kernel's 128 x 256 persistent tiles read 0.90-0.97 of cuBLAS (Llama gate/up at
M = 1024: 0.90, the lowest; docs/benchmarks.md, twenty-third session)? Gluon tensors have
power-of-two sides, so the second accumulator is 16, 32, 64 or 128 columns: 144, 160, 192 or 256
wide tiles. N = 14336 divides only by 256 of those (the Triton kernel's tile; wave quantisation
unchanged at 448 tiles), N = 12288 by 192 and 256, N = 4096 by 256.

Without --ptxas (GPU): per shape (NK layout) and M, cuBLAS, production, and the Gluon kernel with
(ring slots, width, output by TMA) cells that fit in shared memory: bits against the Triton kernel,
ratio to cuBLAS under do_bench (Triton's launch wrapper: host-bound) and over CUDA graphs.
--ptxas (no GPU): registers, spills, shared memory for sm_90a.

Run on an H100 (docs/results/gluon_mm_wide_h100_session23.log): every cell the Triton kernel's bits
(K = 4096 included), and slower: over graphs 0.70-0.90 at 256 wide and 0.77-0.81 at 192 against
production's 0.84-1.03 in the same harness (llama gate/up M = 1024: 0.76 best against 0.84; only
q/o at M = 1024, one tile per SM, 1.04 against 0.99). The 8B shapes stay on the Triton kernel."""
from __future__ import annotations

import sys

import torch
import triton

from gluon_mm_192 import _args, _const, _name, mm_tile
from detllm_kernels import matmul_gluon as mg

SHAPES = ((4096, 14336, "llama-8b gate/up"), (4096, 12288, "qwen3-8b gate/up"), (4096, 4096, "llama-8b q/o"))
# 256 wide: 48 KB a slot, so 3 slots beside C's staging (64 KB) or 4 without it
SWEEP = ((3, 256, False), (4, 256, False), (3, 256, True), (4, 192, False), (4, 192, True))


def _ptxas() -> None:
    from _common import gluon_mm_resources

    print(f"triton {triton.__version__}, sm_90a, bf16, K = 4096 (Gluon, kernels/matmul_gluon.py)", flush=True)
    a = torch.empty(1024, 4096, dtype=torch.bfloat16)
    w = torch.empty(12288, 4096, dtype=torch.bfloat16)
    for cell in SWEEP:
        args, nk, _tiles = _args(a, w.t(), torch.empty(1024, 12288, dtype=torch.bfloat16), cell[1], cell[2])
        gluon_mm_resources(mg._mm192_kernel, args[2:7], _const(nk, False, cell), f"x @ W.t() {_name(cell)}")


def _gpu() -> None:
    from _common import mm_table

    def run(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int, bool]) -> "object | None":
        return None if b.shape[1] % cell[1] else (lambda: mm_tile(a, b, cell))

    mm_table(run, SWEEP, _name, shapes=SHAPES, layouts=(True,))


def main() -> None:
    from _common import gluon_probe_main

    gluon_probe_main(__doc__, _ptxas, _gpu)


if __name__ == "__main__":
    sys.exit(main())
